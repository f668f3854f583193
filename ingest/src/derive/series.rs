//! Cumulative counters and histograms kept in memory and written to the
//! sample store as Prometheus series at every tick, the way a Prometheus
//! client library exposes them and a scraper stores them.

use meshlens_storage::model::{SpanId, TraceId};
use meshlens_storage::samples::{Exemplar, Labels, Sample, SeriesWrite, stale_nan};

/// An exemplar as kept between ticks: plain ids, rendered only when written
/// (most are overwritten by a later span before the tick).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawExemplar {
    pub trace_id: TraceId,
    pub trace_64: bool,
    pub span_id: SpanId,
    pub value: f64,
    pub timestamp_ms: i64,
}

impl RawExemplar {
    pub fn render(&self) -> Exemplar {
        Exemplar {
            labels: vec![
                ("trace_id".into(), self.trace_id.to_hex(self.trace_64)),
                ("span_id".into(), self.span_id.to_hex()),
            ],
            value: self.value,
            timestamp_ms: self.timestamp_ms,
        }
    }
}
use std::collections::HashMap;

/// A fast, DoS-resistant hasher for the per-span lookups.
type Fast = foldhash::fast::RandomState;
use std::sync::Arc;

/// What one tick produces.
#[derive(Default)]
pub struct Emitted {
    pub series: Vec<SeriesWrite>,
    pub exemplars: Vec<(Labels, Exemplar)>,
}

impl Emitted {
    fn push(&mut self, labels: &Labels, zero_at: Option<i64>, ts: i64, v: f64) {
        let mut samples = Vec::with_capacity(2);
        if let Some(z) = zero_at {
            samples.push(Sample {
                timestamp_ms: z,
                value: 0.0,
            });
        }
        samples.push(Sample {
            timestamp_ms: ts,
            value: v,
        });
        self.series.push(SeriesWrite {
            labels: labels.clone(),
            samples,
        });
    }
    fn stale(&mut self, labels: &Labels, ts: i64) {
        self.series.push(SeriesWrite {
            labels: labels.clone(),
            samples: vec![Sample {
                timestamp_ms: ts,
                value: stale_nan(),
            }],
        });
    }
}

/// Something written as one or more series at every tick.
pub trait Emit {
    /// `zero_at`: the first emission also writes a 0 at that time, so that
    /// `rate()`/`increase()` see the first increments (the series did not
    /// exist before; its value then was 0).
    fn emit(&mut self, ts: i64, zero_at: Option<i64>, out: &mut Emitted);
    fn emit_stale(&self, ts: i64, out: &mut Emitted);
}

/// A monotonic counter.
pub struct Counter {
    pub labels: Labels,
    pub value: f64,
    pub exemplar: Option<RawExemplar>,
}

impl Counter {
    pub fn new(labels: Labels) -> Self {
        Counter {
            labels,
            value: 0.0,
            exemplar: None,
        }
    }
    pub fn add(&mut self, by: f64, exemplar: Option<RawExemplar>) {
        self.value += by;
        if exemplar.is_some() {
            self.exemplar = exemplar;
        }
    }
}

impl Emit for Counter {
    fn emit(&mut self, ts: i64, zero_at: Option<i64>, out: &mut Emitted) {
        out.push(&self.labels, zero_at, ts, self.value);
        if let Some(e) = self.exemplar.take() {
            out.exemplars.push((self.labels.clone(), e.render()));
        }
    }
    fn emit_stale(&self, ts: i64, out: &mut Emitted) {
        out.stale(&self.labels, ts);
    }
}

/// A classic histogram: `_bucket{le}` (cumulative), `_sum`, `_count`.
pub struct Histogram {
    bounds: Arc<[f64]>,
    bucket_labels: Vec<Labels>,
    sum_labels: Labels,
    count_labels: Labels,
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: Vec<f64>,
    sum: f64,
    count: f64,
    exemplar: Option<(usize, RawExemplar)>,
}

/// Prometheus's rendering of a bucket bound.
pub fn le_string(b: f64) -> String {
    if b.is_infinite() {
        "+Inf".into()
    } else {
        format!("{b}")
    }
}

impl Histogram {
    /// `base` carries every label but `__name__`; `name` is the family
    /// (without `_bucket`/`_sum`/`_count`).
    pub fn new(name: &str, base: &[(String, String)], bounds: Arc<[f64]>) -> Self {
        let with = |metric: String, le: Option<String>| {
            let mut v: Vec<(String, String)> = base.to_vec();
            v.push(("__name__".into(), metric));
            if let Some(le) = le {
                v.push(("le".into(), le));
            }
            Labels::new(v).unwrap_or_default()
        };
        let mut bucket_labels: Vec<Labels> = bounds
            .iter()
            .map(|b| with(format!("{name}_bucket"), Some(le_string(*b))))
            .collect();
        bucket_labels.push(with(format!("{name}_bucket"), Some("+Inf".into())));
        Histogram {
            counts: vec![0.0; bounds.len() + 1],
            bounds,
            bucket_labels,
            sum_labels: with(format!("{name}_sum"), None),
            count_labels: with(format!("{name}_count"), None),
            sum: 0.0,
            count: 0.0,
            exemplar: None,
        }
    }

    /// Observes `v` (seconds) `weight` times (the sampling multiplier).
    pub fn observe(&mut self, v: f64, weight: f64, exemplar: Option<RawExemplar>) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += weight;
        self.sum += v * weight;
        self.count += weight;
        if let Some(e) = exemplar {
            self.exemplar = Some((i, e));
        }
    }
}

impl Emit for Histogram {
    fn emit(&mut self, ts: i64, zero_at: Option<i64>, out: &mut Emitted) {
        let mut cum = 0.0;
        for (i, l) in self.bucket_labels.iter().enumerate() {
            cum += self.counts[i];
            out.push(l, zero_at, ts, cum);
        }
        out.push(&self.sum_labels, zero_at, ts, self.sum);
        out.push(&self.count_labels, zero_at, ts, self.count);
        if let Some((i, e)) = self.exemplar.take() {
            out.exemplars
                .push((self.bucket_labels[i].clone(), e.render()));
        }
    }
    fn emit_stale(&self, ts: i64, out: &mut Emitted) {
        for l in &self.bucket_labels {
            out.stale(l, ts);
        }
        out.stale(&self.sum_labels, ts);
        out.stale(&self.count_labels, ts);
    }
}

struct Entry<T> {
    v: T,
    last_update_ms: i64,
    emitted: bool,
}

/// Series groups by a string key (label values joined), with idle expiry.
pub struct Table<T> {
    index: HashMap<String, usize, Fast>,
    entries: Vec<Entry<T>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            index: HashMap::default(),
            entries: Vec::new(),
        }
    }
}

impl<T: Emit> Table<T> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The group under `key`, made by `make` when new. `key` is looked up
    /// without allocating; it is copied only for a new group.
    pub fn get_or_insert(&mut self, key: &str, now_ms: i64, make: impl FnOnce() -> T) -> &mut T {
        let i = match self.index.get(key) {
            Some(&i) => i,
            None => {
                self.entries.push(Entry {
                    v: make(),
                    last_update_ms: now_ms,
                    emitted: false,
                });
                let i = self.entries.len() - 1;
                self.index.insert(key.to_string(), i);
                i
            }
        };
        let e = &mut self.entries[i];
        e.last_update_ms = now_ms;
        &mut e.v
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.index.get(key).map(|&i| &self.entries[i].v)
    }

    /// Writes every group; groups idle for `stale_after_ms` get stale
    /// markers and are forgotten.
    pub fn emit(
        &mut self,
        ts: i64,
        prev_tick: Option<i64>,
        stale_after_ms: i64,
        out: &mut Emitted,
    ) {
        let mut removed = false;
        for e in &mut self.entries {
            if ts - e.last_update_ms > stale_after_ms {
                if e.emitted {
                    e.v.emit_stale(ts, out);
                }
                removed = true;
                continue;
            }
            let zero_at = if e.emitted {
                None
            } else {
                // Before the first sample of this group its value was 0:
                // at the previous tick (or just before this one).
                Some(prev_tick.filter(|p| *p < ts).unwrap_or(ts - 1))
            };
            e.v.emit(ts, zero_at, out);
            e.emitted = true;
        }
        if removed {
            let mut keys: Vec<(usize, String)> = self.index.drain().map(|(k, i)| (i, k)).collect();
            keys.sort_by_key(|(i, _)| *i);
            let old = std::mem::take(&mut self.entries);
            for ((_, k), e) in keys.into_iter().zip(old) {
                if ts - e.last_update_ms > stale_after_ms {
                    continue;
                }
                self.index.insert(k, self.entries.len());
                self.entries.push(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_le_inclusive() {
        let mut h = Histogram::new(
            "lat",
            &[("svc".into(), "a".into())],
            Arc::from(vec![0.1, 0.2]),
        );
        h.observe(0.1, 1.0, None);
        h.observe(0.15, 2.0, None);
        h.observe(5.0, 1.0, None);
        let mut out = Emitted::default();
        h.emit(1000, None, &mut out);
        let vals: Vec<(String, f64)> = out
            .series
            .iter()
            .map(|s| {
                (
                    format!(
                        "{}{}",
                        s.labels.metric_name().unwrap(),
                        s.labels.get("le").unwrap_or("")
                    ),
                    s.samples[0].value,
                )
            })
            .collect();
        assert_eq!(
            vals,
            vec![
                ("lat_bucket0.1".into(), 1.0),
                ("lat_bucket0.2".into(), 3.0),
                ("lat_bucket+Inf".into(), 4.0),
                ("lat_sum".into(), 0.1 + 0.3 + 5.0),
                ("lat_count".into(), 4.0),
            ]
        );
    }

    #[test]
    fn table_writes_initial_zero_then_values_then_stale_marker() {
        let mut t: Table<Counter> = Table::default();
        t.get_or_insert("a", 100, || Counter::new(labels(&[("__name__", "c")])))
            .add(2.0, None);
        let mut out = Emitted::default();
        t.emit(1000, Some(500), 60_000, &mut out);
        assert_eq!(out.series[0].samples.len(), 2);
        assert_eq!(
            out.series[0].samples[0],
            Sample {
                timestamp_ms: 500,
                value: 0.0
            }
        );
        assert_eq!(out.series[0].samples[1].value, 2.0);
        let mut out = Emitted::default();
        t.emit(2000, Some(1000), 60_000, &mut out);
        assert_eq!(out.series[0].samples.len(), 1, "zero only once");
        let mut out = Emitted::default();
        t.emit(100_000, Some(2000), 60_000, &mut out);
        assert!(meshlens_storage::samples::is_stale_nan(
            out.series[0].samples[0].value
        ));
        assert_eq!(t.len(), 0);
        assert!(t.get("a").is_none());
    }
}
