//! Exemplars: a bounded ring of (series, trace id, value, time), like
//! Prometheus's exemplar storage (`--storage.exemplars.max-exemplars`).
//!
//! Exemplars point a chart point at a trace. They are derived data (the
//! spans themselves are durable), so they live in memory; a clean shutdown
//! writes them to `exemplars.json` in the data directory and the next start
//! reads them back. A crash loses at most the exemplars, never a span.

use super::model::{Labels, Matcher};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// Default number of exemplars kept (Prometheus's default too).
pub const DEFAULT_MAX_EXEMPLARS: usize = 100_000;

/// One exemplar of one series.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Exemplar {
    /// Exemplar labels, e.g. `trace_id`, `span_id`.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp_ms: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    series: Vec<(String, String)>,
    #[serde(flatten)]
    exemplar: Exemplar,
}

/// The exemplars of one series, as `/api/v1/query_exemplars` groups them.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesExemplars {
    pub series: Labels,
    pub exemplars: Vec<Exemplar>,
}

/// A ring of the most recent exemplars of all series.
pub struct ExemplarStore {
    capacity: usize,
    ring: Mutex<VecDeque<(Labels, Exemplar)>>,
    path: Option<PathBuf>,
}

impl ExemplarStore {
    /// An empty store keeping at most `capacity` exemplars (0: keep none).
    pub fn new(capacity: usize) -> Self {
        ExemplarStore {
            capacity,
            ring: Mutex::new(VecDeque::new()),
            path: None,
        }
    }

    /// A store persisted to `dir/exemplars.json` on [`ExemplarStore::save`];
    /// loads what a previous clean shutdown saved (a damaged file is ignored
    /// with a warning: exemplars are derived data).
    pub fn open(dir: &Path, capacity: usize) -> Self {
        let path = dir.join("exemplars.json");
        let mut s = ExemplarStore::new(capacity);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut ring = VecDeque::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Stored>(line) {
                    Ok(st) => match Labels::new(st.series) {
                        Ok(l) => ring.push_back((l, st.exemplar)),
                        Err(e) => tracing::warn!(error = %e, "exemplars.json: bad series skipped"),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "exemplars.json is damaged; the rest of it is ignored");
                        break;
                    }
                }
            }
            while ring.len() > capacity {
                ring.pop_front();
            }
            *s.ring.get_mut() = ring;
        }
        s.path = Some(path);
        s
    }

    /// Writes the ring to `exemplars.json` (no-op for an in-memory store).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut out = String::new();
        for (series, e) in self.ring.lock().iter() {
            let st = Stored {
                series: series
                    .iter()
                    .map(|l| (l.name.to_string(), l.value.to_string()))
                    .collect(),
                exemplar: e.clone(),
            };
            if let Ok(line) = serde_json::to_string(&st) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, out)?;
        std::fs::rename(&tmp, path)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.ring.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds exemplars; the oldest fall out when the ring is full.
    pub fn add(&self, items: impl IntoIterator<Item = (Labels, Exemplar)>) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring.lock();
        for it in items {
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(it);
        }
    }

    /// Exemplars in `[start_ms, end_ms]` of series matching any of the
    /// matcher sets, grouped by series (in order of first appearance), each
    /// group in time order.
    pub fn select(
        &self,
        sets: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<SeriesExemplars> {
        let ring = self.ring.lock();
        let mut out: Vec<SeriesExemplars> = Vec::new();
        let mut index: std::collections::HashMap<Labels, usize> = std::collections::HashMap::new();
        for (series, e) in ring.iter() {
            if e.timestamp_ms < start_ms || e.timestamp_ms > end_ms {
                continue;
            }
            let hit = sets.iter().any(|set| {
                set.iter()
                    .all(|m| m.matches(series.get(&m.name).unwrap_or("")))
            });
            if !hit {
                continue;
            }
            let i = *index.entry(series.clone()).or_insert_with(|| {
                out.push(SeriesExemplars {
                    series: series.clone(),
                    exemplars: Vec::new(),
                });
                out.len() - 1
            });
            out[i].exemplars.push(e.clone());
        }
        for g in &mut out {
            g.exemplars.sort_by_key(|e| e.timestamp_ms);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(trace: &str, ts: i64) -> Exemplar {
        Exemplar {
            labels: vec![("trace_id".into(), trace.into())],
            value: 1.0,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn ring_keeps_newest_and_selects_by_matchers_and_time() {
        let s = ExemplarStore::new(3);
        let a = Labels::series([("__name__", "m"), ("svc", "a")]).unwrap();
        let b = Labels::series([("__name__", "m"), ("svc", "b")]).unwrap();
        s.add([(a.clone(), ex("1", 10)), (b.clone(), ex("2", 20))]);
        s.add([(a.clone(), ex("3", 30)), (a.clone(), ex("4", 40))]);
        assert_eq!(s.len(), 3, "oldest dropped");
        let all = s.select(&[vec![Matcher::equal("__name__", "m")]], 0, 100);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].series, b);
        assert_eq!(all[1].exemplars.len(), 2);
        let only_a = s.select(&[vec![Matcher::equal("svc", "a")]], 35, 100);
        assert_eq!(only_a.len(), 1);
        assert_eq!(only_a[0].exemplars, vec![ex("4", 40)]);
    }

    #[test]
    fn saved_ring_reloads() {
        let dir = std::env::temp_dir().join(format!("ml-exemplars-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = ExemplarStore::open(&dir, 10);
        let a = Labels::series([("__name__", "m"), ("svc", "a")]).unwrap();
        s.add([(a.clone(), ex("abc", 5))]);
        s.save().unwrap();
        let t = ExemplarStore::open(&dir, 10);
        assert_eq!(
            t.select(&[vec![Matcher::equal("svc", "a")]], 0, 10)[0].exemplars,
            vec![ex("abc", 5)]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
