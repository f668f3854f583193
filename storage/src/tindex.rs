//! A trace-id filter per Parquet file, held in memory.
//!
//! Trace ids are random, so every file's min/max trace id spans almost the
//! whole range and row-group statistics cannot tell which file holds a
//! trace. A binary fuse filter (~9 bits per trace, < 0.4 % false positives)
//! per file can: a lookup opens only the file that holds the trace (plus
//! the rare false positive). The filter is written beside the file as
//! `<file>.tidx` and loaded at start-up; a file without one is always read.

use xorf::{BinaryFuse8, Descriptor, Filter};

const MAGIC: &[u8; 4] = b"MLT1";

/// One u64 key per trace id: both halves mixed (64-bit ids are zero-padded).
pub fn key(id: &[u8; 16]) -> u64 {
    let hi = u64::from_be_bytes(id[..8].try_into().unwrap_or_default());
    let lo = u64::from_be_bytes(id[8..].try_into().unwrap_or_default());
    xorf::splitmix64(&mut (hi.rotate_left(29) ^ lo))
}

pub struct TraceFilter(BinaryFuse8);

impl TraceFilter {
    /// Builds a filter from the (possibly repeated) trace ids of a file.
    pub fn build<'a>(ids: impl Iterator<Item = &'a [u8]>) -> Option<TraceFilter> {
        let mut keys: Vec<u64> = ids
            .filter_map(|b| <[u8; 16]>::try_from(b).ok())
            .map(|id| key(&id))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return None;
        }
        BinaryFuse8::try_from(&keys).ok().map(TraceFilter)
    }

    pub fn may_contain(&self, id: &[u8; 16]) -> bool {
        self.0.contains(&key(id))
    }

    pub fn encode(&self) -> Vec<u8> {
        let d = &self.0.descriptor;
        let mut out = Vec::with_capacity(24 + self.0.fingerprints.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&d.seed.to_le_bytes());
        out.extend_from_slice(&d.segment_length.to_le_bytes());
        out.extend_from_slice(&d.segment_length_mask.to_le_bytes());
        out.extend_from_slice(&d.segment_count_length.to_le_bytes());
        out.extend_from_slice(&self.0.fingerprints);
        out
    }

    pub fn decode(b: &[u8]) -> Option<TraceFilter> {
        if b.len() < 24 || &b[..4] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let descriptor = Descriptor {
            seed: u64::from_le_bytes(b[4..12].try_into().ok()?),
            segment_length: u32_at(12),
            segment_length_mask: u32_at(16),
            segment_count_length: u32_at(20),
        };
        // A filter whose arrays do not match its descriptor would index out
        // of bounds: refuse it (the file is then simply always read).
        let fingerprints: Box<[u8]> = b[24..].into();
        let needed =
            descriptor.segment_count_length as usize + 2 * descriptor.segment_length as usize;
        if fingerprints.len() < needed || descriptor.segment_length == 0 {
            return None;
        }
        Some(TraceFilter(BinaryFuse8 {
            descriptor,
            fingerprints,
        }))
    }
}

/// `spans/…/000042.parquet` -> `spans/…/000042.tidx`
pub fn sidecar_path(parquet_path: &str) -> String {
    match parquet_path.strip_suffix(".parquet") {
        Some(stem) => format!("{stem}.tidx"),
        None => format!("{parquet_path}.tidx"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_few_false_positives_and_round_trip() {
        let ids: Vec<[u8; 16]> = (1..=10_000u64)
            .map(|i| {
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&(i * 0x9e37_79b9).to_be_bytes());
                id
            })
            .collect();
        let f =
            TraceFilter::build(ids.iter().chain(ids.iter()).map(|i| i.as_slice())).expect("filter");
        let f = TraceFilter::decode(&f.encode()).expect("decode");
        assert!(ids.iter().all(|id| f.may_contain(id)));
        let fp = (20_000..30_000u64)
            .filter(|i| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&i.to_be_bytes());
                f.may_contain(&id)
            })
            .count();
        assert!(fp < 100, "{fp} false positives in 10000");
        assert!(TraceFilter::decode(b"MLT1short").is_none());
        assert_eq!(sidecar_path("spans/x/1.parquet"), "spans/x/1.tidx");
    }
}
