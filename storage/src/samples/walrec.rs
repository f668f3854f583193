//! The payload of one sample WAL record: the series this append created
//! (id + labels), then samples by series id, then metadata.
//!
//! `u32 defs; (u64 id, u16 n, (str name, str value)*n)*;`
//! `u32 series; (u64 id, u32 n, (i64 ts, u64 value bits)*n)*;`
//! `u32 metadata; (str json)*` — strings are u32 length + UTF-8.

use super::catalog::{Reader, put_str};
use super::model::{KnownSeriesSamples, Label, Labels, MetricMetadata, Sample};
use crate::error::{Result, StorageError};
use std::sync::Arc;

#[derive(Default, Debug, PartialEq)]
pub(crate) struct Record {
    pub defs: Vec<(u64, Labels)>,
    pub samples: KnownSeriesSamples,
    pub metadata: Vec<MetricMetadata>,
}

/// Encodes a record: the series created, the samples by id, the metadata.
pub(crate) fn encode(
    defs: &[(u64, Labels)],
    samples: &KnownSeriesSamples,
    metadata: &[MetricMetadata],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        12 + samples.sample_count() * 16 + samples.len() * 12 + defs.len() * 128,
    );
    out.extend_from_slice(&(defs.len() as u32).to_le_bytes());
    for (id, labels) in defs {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(labels.len() as u16).to_le_bytes());
        for l in labels.iter() {
            put_str(&mut out, &l.name);
            put_str(&mut out, &l.value);
        }
    }
    out.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    for (id, s) in samples.iter() {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        for smp in s {
            out.extend_from_slice(&smp.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&smp.value.to_bits().to_le_bytes());
        }
    }
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
        for _ in 0..n {
            let timestamp_ms = r.u64().ok_or_else(bad)? as i64;
            let value = f64::from_bits(r.u64().ok_or_else(bad)?);
            rec.samples.push_sample(Sample {
                timestamp_ms,
                value,
            });
        }
        rec.samples.end_series(id);
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
        let mut samples = KnownSeriesSamples::default();
        samples.push(
            l.series_id(),
            &[(1, 1.5), (2, f64::INFINITY)].map(|(timestamp_ms, value)| Sample {
                timestamp_ms,
                value,
            }),
        );
        let rec = Record {
            defs: vec![(l.series_id(), l.clone())],
            samples,
            metadata: vec![MetricMetadata {
                metric_family: "x".into(),
                kind: MetricType::Counter,
                help: "h".into(),
                unit: String::new(),
            }],
        };
        let enc = encode(&rec.defs, &rec.samples, &rec.metadata);
        assert_eq!(decode(&enc).unwrap(), rec);
        for cut in [0, 3, 10, enc.len() - 1] {
            assert!(decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
    }
}
