//! meshlens's own metrics, rendered in the Prometheus text format at `/metrics`.
//!
//! Every crate records into one shared [`Telemetry`]; it is deliberately
//! tiny: counters, gauges and summaries-as-histograms keyed by name + labels.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

type Key = (&'static str, Vec<(&'static str, String)>);

#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Upper bounds, in seconds, of the latency histograms.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Inner {
    help: BTreeMap<&'static str, (&'static str, &'static str)>,
    counters: BTreeMap<Key, f64>,
    gauges: BTreeMap<Key, f64>,
    histograms: BTreeMap<Key, Histogram>,
}

/// A registry of meshlens's own metrics. Cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Arc<Mutex<Inner>>,
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    (
        name,
        labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
    )
}

impl Telemetry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a metric's help text and type ("counter", "gauge", "histogram").
    pub fn describe(&self, name: &'static str, kind: &'static str, help: &'static str) {
        self.inner.lock().help.insert(name, (kind, help));
    }

    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)], by: f64) {
        *self
            .inner
            .lock()
            .counters
            .entry(key(name, labels))
            .or_default() += by;
    }

    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], v: f64) {
        self.inner.lock().gauges.insert(key(name, labels), v);
    }

    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], seconds: f64) {
        let mut inner = self.inner.lock();
        let h = inner.histograms.entry(key(name, labels)).or_default();
        if h.buckets.is_empty() {
            h.buckets = vec![0; LATENCY_BUCKETS.len()];
        }
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.buckets[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Current value of a gauge (0 when never set).
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> f64 {
        self.inner
            .lock()
            .gauges
            .get(&key(name, labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// Current value of a counter (tests and the budget checks read it).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> f64 {
        self.inner
            .lock()
            .counters
            .get(&key(name, labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        let inner = self.inner.lock();
        let mut out = String::new();
        let mut last = "";
        let mut header = |out: &mut String, name: &'static str, default_kind: &str| {
            if last != name {
                let (kind, help) = inner.help.get(name).copied().unwrap_or((default_kind, ""));
                if !help.is_empty() {
                    let _ = writeln!(out, "# HELP {name} {help}");
                }
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last = name;
            }
        };
        for ((name, labels), v) in &inner.counters {
            header(&mut out, name, "counter");
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels, None));
        }
        for ((name, labels), v) in &inner.gauges {
            header(&mut out, name, "gauge");
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels, None));
        }
        for ((name, labels), h) in &inner.histograms {
            header(&mut out, name, "histogram");
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    fmt_labels(labels, Some(&le.to_string())),
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                fmt_labels(labels, Some("+Inf")),
                h.count
            );
            let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(labels, None), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", fmt_labels(labels, None), h.count);
        }
        out
    }
}

fn fmt_labels(labels: &[(&'static str, String)], le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    let mut first = true;
    for (k, v) in labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(le.map(|l| ("le", l)))
    {
        if !first {
            s.push(',');
        }
        first = false;
        let escaped = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{escaped}\"");
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_histograms() {
        let t = Telemetry::new();
        t.describe("x_total", "counter", "things");
        t.inc("x_total", &[("reason", "bad \"json\"")], 2.0);
        t.set("g", &[], 3.0);
        t.observe("lat_seconds", &[("api", "a")], 0.003);
        let s = t.render();
        assert!(s.contains("# HELP x_total things"), "{s}");
        assert!(s.contains("x_total{reason=\"bad \\\"json\\\"\"} 2"), "{s}");
        assert!(s.contains("g 3"), "{s}");
        assert!(
            s.contains("lat_seconds_bucket{api=\"a\",le=\"0.0025\"} 0"),
            "{s}"
        );
        assert!(
            s.contains("lat_seconds_bucket{api=\"a\",le=\"0.005\"} 1"),
            "{s}"
        );
        assert!(s.contains("lat_seconds_count{api=\"a\"} 1"), "{s}");
    }
}
