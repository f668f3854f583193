//! A small LRU keyed by file path and bounded in bytes: whole-file contents
//! and per-minute summaries of sample files, footers of span files.

use std::collections::HashMap;

/// An LRU keyed by file path, bounded in bytes: whole-file contents for
/// queries, and the per-minute summaries of files.
pub(crate) struct Lru<V: Clone> {
    budget: usize,
    bytes: usize,
    tick: u64,
    map: HashMap<String, (V, usize, u64)>,
}

impl<V: Clone> Lru<V> {
    pub(crate) fn new(budget: usize) -> Self {
        Lru {
            budget,
            bytes: 0,
            tick: 0,
            map: HashMap::new(),
        }
    }

    pub(crate) fn get(&mut self, path: &str) -> Option<V> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(path).map(|e| {
            e.2 = t;
            e.0.clone()
        })
    }

    pub(crate) fn put(&mut self, path: &str, v: V, size: usize) {
        if size > self.budget {
            return;
        }
        self.tick += 1;
        self.bytes += size;
        if let Some(old) = self.map.insert(path.to_string(), (v, size, self.tick)) {
            self.bytes -= old.1;
        }
        while self.bytes > self.budget {
            let Some(oldest) = self.map.iter().min_by_key(|e| e.1.2).map(|e| e.0.clone()) else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest) {
                self.bytes -= e.1;
            }
        }
    }

    /// The byte budget (0: caching off).
    pub(crate) fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes held now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn remove(&mut self, path: &str) {
        if let Some(e) = self.map.remove(path) {
            self.bytes -= e.1;
        }
    }
}
