//! The payload of one sample WAL record: the series this append created
//! (id + labels), then samples by series id, then metadata.
//!
//! `u32 defs; (u64 id, u16 n, (str name, str value)*n)*;`
//! `u32 series; (u64 id, u32 n, (i64 ts, u64 value bits)*n)*;`
//! `u32 metadata; (str json)*` — strings are u32 length + UTF-8.

use super::catalog::{Reader, put_str};
use super::model::{Label, Labels, MetricMetadata};
use crate::error::{Result, StorageError};
use std::sync::Arc;

#[derive(Default, Debug, PartialEq)]
pub(crate) struct Record {
    pub defs: Vec<(u64, Labels)>,
    pub samples: Vec<(u64, Vec<(i64, f64)>)>,
    pub metadata: Vec<MetricMetadata>,
}

#[cfg(test)]
pub(crate) fn encode(r: &Record) -> Vec<u8> {
    let n: usize = r.samples.iter().map(|(_, s)| s.len()).sum();
    encode_parts(
        &r.defs,
        r.samples.len(),
        n,
        r.samples.iter().map(|(id, s)| (*id, s.as_slice())),
        &r.metadata,
    )
}

/// Encodes a record from its parts: `series` entries holding `samples`
/// samples in all (for the size), given as `(id, samples)`.
pub(crate) fn encode_parts<'a>(
    defs: &[(u64, Labels)],
    series: usize,
    samples: usize,
    entries: impl Iterator<Item = (u64, &'a [(i64, f64)])>,
    metadata: &[MetricMetadata],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + samples * 16 + series * 12 + defs.len() * 128);
    out.extend_from_slice(&(defs.len() as u32).to_le_bytes());
    for (id, labels) in defs {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(labels.len() as u16).to_le_bytes());
        for l in labels.iter() {
            put_str(&mut out, &l.name);
            put_str(&mut out, &l.value);
        }
    }
    out.extend_from_slice(&(series as u32).to_le_bytes());
    let mut written = 0usize;
    for (id, s) in entries {
        written += 1;
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        for (t, v) in s {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    debug_assert_eq!(written, series, "series count announced and written differ");
    out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    for m in metadata {
        put_str(&mut out, &serde_json::to_string(m).unwrap_or_default());
    }
    out
}

pub(crate) fn decode(buf: &[u8]) -> Result<Record> {
    let bad = || StorageError::Corrupt {
        what: "sample WAL record",
        detail: "truncated or malformed".into(),
    };
    let mut r = Reader::new(buf);
    let mut rec = Record::default();
    let defs = r.u32().ok_or_else(bad)?;
    for _ in 0..defs {
        let id = r.u64().ok_or_else(bad)?;
        let k = r.u16().ok_or_else(bad)?;
        let mut v = Vec::with_capacity(k as usize);
        for _ in 0..k {
            let name = r.str().ok_or_else(bad)?;
            let value = r.str().ok_or_else(bad)?;
            v.push(Label {
                name: Arc::from(name),
                value: Arc::from(value),
            });
        }
        rec.defs.push((id, Labels::from_sorted(v)));
    }
    let series = r.u32().ok_or_else(bad)?;
    for _ in 0..series {
        let id = r.u64().ok_or_else(bad)?;
        let n = r.u32().ok_or_else(bad)? as usize;
        if n > buf.len() / 16 {
            return Err(bad());
        }
        let mut s = Vec::with_capacity(n);
        for _ in 0..n {
            let t = r.u64().ok_or_else(bad)? as i64;
            let v = f64::from_bits(r.u64().ok_or_else(bad)?);
            s.push((t, v));
        }
        rec.samples.push((id, s));
    }
    let meta = r.u32().ok_or_else(bad)?;
    for _ in 0..meta {
        let s = r.str().ok_or_else(bad)?;
        if let Ok(m) = serde_json::from_str(s) {
            rec.metadata.push(m);
        }
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::model::MetricType;

    #[test]
    fn round_trip() {
        let l = Labels::series([("__name__", "x"), ("a", "b")]).unwrap();
        let rec = Record {
            defs: vec![(l.series_id(), l.clone())],
            samples: vec![(l.series_id(), vec![(1, 1.5), (2, f64::INFINITY)])],
            metadata: vec![MetricMetadata {
                metric_family: "x".into(),
                kind: MetricType::Counter,
                help: "h".into(),
                unit: String::new(),
            }],
        };
        let enc = encode(&rec);
        assert_eq!(decode(&enc).unwrap(), rec);
        for cut in [0, 3, 10, enc.len() - 1] {
            assert!(decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
    }
}
