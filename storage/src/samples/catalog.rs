//! The series catalog: every series once, its stable id, and an inverted
//! index label=value -> series (roaring bitmaps of dense ordinals).
//!
//! Ordinals are positions in creation order. The catalog is persisted as
//! append-only segments (`series/<first ordinal>.cat`), written at flush
//! before any Parquet file that references the new series, so ordinals
//! written to disk (file series bitmaps) always resolve after a restart.

use super::model::{Label, Labels, MatchOp, Matcher, MetricMetadata};
use crate::error::{Result, StorageError};
use roaring::RoaringBitmap;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Default)]
pub(crate) struct Catalog {
    /// series id -> ordinal (looked up for every series of every write:
    /// foldhash, seeded per process, rather than SipHash)
    by_id: HashMap<u64, u32, foldhash::fast::RandomState>,
    /// ordinal -> (id, labels)
    pub(crate) entries: Vec<(u64, Labels)>,
    /// name -> value -> ordinals
    postings: HashMap<Arc<str>, HashMap<Arc<str>, RoaringBitmap>>,
    interned: HashSet<Arc<str>>,
    /// Entries `[0, persisted)` are in catalog segments.
    pub(crate) persisted: u32,
    /// Latest metadata per metric family.
    pub(crate) metadata: HashMap<String, MetricMetadata>,
    /// Approximate heap bytes (labels, index), for /metrics.
    pub(crate) bytes: u64,
}

impl Catalog {
    fn intern(&mut self, s: &Arc<str>) -> Arc<str> {
        if let Some(v) = self.interned.get(s) {
            return v.clone();
        }
        self.bytes += s.len() as u64 + 32;
        self.interned.insert(s.clone());
        s.clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn ordinal(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// The ordinal of a series, creating it when new. Errors on a 64-bit
    /// hash collision (two label sets, one id), which is reported, not hidden.
    pub(crate) fn get_or_create(&mut self, id: u64, labels: &Labels) -> Result<(u32, bool)> {
        if let Some(&o) = self.by_id.get(&id) {
            let existing = &self.entries[o as usize].1;
            if existing != labels {
                return Err(StorageError::Corrupt {
                    what: "series catalog",
                    detail: format!("series id collision between {existing} and {labels}"),
                });
            }
            return Ok((o, false));
        }
        Ok((self.insert(id, labels), true))
    }

    pub(crate) fn insert(&mut self, id: u64, labels: &Labels) -> u32 {
        let ord = self.entries.len() as u32;
        let mut v = Vec::with_capacity(labels.len());
        for l in labels.iter() {
            let name = self.intern(&l.name);
            let value = self.intern(&l.value);
            self.postings
                .entry(name.clone())
                .or_default()
                .entry(value.clone())
                .or_default()
                .insert(ord);
            v.push(Label { name, value });
        }
        self.bytes += 16 * labels.len() as u64 + 64;
        self.entries.push((id, Labels::from_sorted(v)));
        self.by_id.insert(id, ord);
        ord
    }

    pub(crate) fn all(&self) -> RoaringBitmap {
        let mut b = RoaringBitmap::new();
        b.insert_range(0..self.entries.len() as u32);
        b
    }

    /// Ordinals of the series matching every matcher. At least one matcher
    /// should not match the empty string (Prometheus requires it of
    /// selectors; the HTTP layer enforces that).
    pub(crate) fn select(&self, matchers: &[Matcher]) -> RoaringBitmap {
        let mut result: Option<RoaringBitmap> = None;
        // Matchers that select by a positive set go first, the rest subtract.
        let mut order: Vec<&Matcher> = matchers.iter().collect();
        order.sort_by_key(|m| m.matches_empty());
        for m in order {
            let set = self.matching(m);
            result = Some(match result {
                None => set,
                Some(r) => r & set,
            });
            if result.as_ref().is_some_and(|r| r.is_empty()) {
                break;
            }
        }
        result.unwrap_or_else(|| self.all())
    }

    /// Series whose value of `m.name` (empty when absent) matches.
    fn matching(&self, m: &Matcher) -> RoaringBitmap {
        let values = self.postings.get(m.name.as_str());
        let mut with_value = RoaringBitmap::new();
        if let Some(values) = values {
            match m.op {
                MatchOp::Equal if !m.value.is_empty() => {
                    return values.get(m.value.as_str()).cloned().unwrap_or_default();
                }
                MatchOp::Regex
                    if m.regex_literals()
                        .is_some_and(|l| !l.iter().any(String::is_empty)) =>
                {
                    // `a|b|c`: posting lookups, no scan of the values.
                    for v in m.regex_literals().unwrap_or_default() {
                        if let Some(ords) = values.get(v.as_str()) {
                            with_value |= ords;
                        }
                    }
                    return with_value;
                }
                _ => {
                    for (v, ords) in values {
                        if m.matches(v) {
                            with_value |= ords;
                        }
                    }
                }
            }
        }
        if m.matches_empty() {
            // Series without the label match too.
            let mut has_label = RoaringBitmap::new();
            if let Some(values) = values {
                for ords in values.values() {
                    has_label |= ords;
                }
            }
            let mut r = self.all() - has_label;
            r |= with_value;
            r
        } else {
            with_value
        }
    }

    /// Label names used by the given series, sorted.
    pub(crate) fn label_names(&self, within: &RoaringBitmap) -> Vec<String> {
        let mut out: Vec<String> = self
            .postings
            .iter()
            .filter(|(_, values)| values.values().any(|o| !o.is_disjoint(within)))
            .map(|(n, _)| n.to_string())
            .collect();
        out.sort();
        out
    }

    /// Values of `name` used by the given series, sorted.
    pub(crate) fn label_values(&self, name: &str, within: &RoaringBitmap) -> Vec<String> {
        let mut out: Vec<String> = match self.postings.get(name) {
            Some(values) => values
                .iter()
                .filter(|(_, o)| !o.is_disjoint(within))
                .map(|(v, _)| v.to_string())
                .collect(),
            None => vec![],
        };
        out.sort();
        out
    }

    pub(crate) fn labels(&self, ord: u32) -> &Labels {
        &self.entries[ord as usize].1
    }

    pub(crate) fn id(&self, ord: u32) -> u64 {
        self.entries[ord as usize].0
    }
}

// ---- segment encoding ----------------------------------------------------
// "MLC2", u32 uncompressed length, then zstd of: u32 first ordinal, u32 count, then per series: u64
// id, u16 labels, per label u32 len + name, u32 len + value; then u32 CRC32C
// of everything before it. Label strings repeat a lot: zstd makes a segment
// ~10x smaller than the raw strings.

pub(crate) fn encode_segment(first: u32, entries: &[(u64, Labels)]) -> Vec<u8> {
    // Compressing into memory cannot fail; keep raw bytes if it ever does.
    match encode_compressed(first, entries) {
        Ok(out) => out,
        Err(_) => encode_plain(raw_segment(first, entries)),
    }
}

/// Streams the entries through zstd (level 3: a segment of 100 k Istio
/// series, 115 MB raw, compresses in ~0.15 s instead of ~0.65 s at level
/// 9, ~20 % larger) in 64 KiB pieces, never holding the raw bytes whole.
fn encode_compressed(first: u32, entries: &[(u64, Labels)]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    const PIECE: usize = 64 * 1024;
    let mut enc = zstd::stream::Encoder::new(b"MLC2\0\0\0\0".to_vec(), 3)?;
    let mut piece = Vec::with_capacity(PIECE + 1024);
    piece.extend_from_slice(&first.to_le_bytes());
    piece.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let mut raw_len = 0usize;
    for (id, labels) in entries {
        put_entry(&mut piece, *id, labels);
        if piece.len() >= PIECE {
            enc.write_all(&piece)?;
            raw_len += piece.len();
            piece.clear();
        }
    }
    enc.write_all(&piece)?;
    raw_len += piece.len();
    let mut out = enc.finish()?;
    let len = u32::try_from(raw_len).map_err(std::io::Error::other)?;
    out[4..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn put_entry(out: &mut Vec<u8>, id: u64, labels: &Labels) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(labels.len() as u16).to_le_bytes());
    for l in labels.iter() {
        put_str(out, &l.name);
        put_str(out, &l.value);
    }
}

fn raw_segment(first: u32, entries: &[(u64, Labels)]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(entries.len() * 128 + 16);
    raw.extend_from_slice(&first.to_le_bytes());
    raw.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (id, labels) in entries {
        put_entry(&mut raw, *id, labels);
    }
    raw
}

/// The uncompressed form ("MLC1"), also read back.
fn encode_plain(raw: Vec<u8>) -> Vec<u8> {
    let mut out = b"MLC1".to_vec();
    out.extend_from_slice(&raw);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A little-endian reader that reports truncation instead of panicking.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
}

pub(crate) fn decode_segment(buf: &[u8]) -> Result<(u32, Vec<(u64, Labels)>)> {
    let bad = |detail: &str| StorageError::Corrupt {
        what: "series catalog segment",
        detail: detail.to_string(),
    };
    if buf.len() < 8 || (&buf[..4] != b"MLC1" && &buf[..4] != b"MLC2") {
        return Err(bad("bad header"));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().map_err(|_| bad("crc"))?) {
        return Err(bad("checksum mismatch"));
    }
    let raw;
    let payload: &[u8] = if &body[..4] == b"MLC2" {
        let len = body
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| bad("truncated"))?;
        raw = zstd::bulk::decompress(&body[8..], len as usize)
            .map_err(|e| bad(&format!("zstd: {e}")))?;
        if raw.len() != len as usize {
            return Err(bad("length mismatch"));
        }
        &raw
    } else {
        &body[4..]
    };
    let mut r = Reader::new(payload);
    let first = r.u32().ok_or_else(|| bad("truncated"))?;
    let n = r.u32().ok_or_else(|| bad("truncated"))?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let id = r.u64().ok_or_else(|| bad("truncated"))?;
        let k = r.u16().ok_or_else(|| bad("truncated"))?;
        let mut v = Vec::with_capacity(k as usize);
        for _ in 0..k {
            let name = r.str().ok_or_else(|| bad("truncated label"))?;
            let value = r.str().ok_or_else(|| bad("truncated label"))?;
            v.push(Label {
                name: Arc::from(name),
                value: Arc::from(value),
            });
        }
        out.push((id, Labels::from_sorted(v)));
    }
    Ok((first, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::series(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn matchers_select_like_prometheus() {
        let mut c = Catalog::default();
        let a = l(&[("__name__", "up"), ("job", "a")]);
        let b = l(&[("__name__", "up"), ("job", "b"), ("x", "1")]);
        let d = l(&[("__name__", "down")]);
        for s in [&a, &b, &d] {
            c.get_or_create(s.series_id(), s).unwrap();
        }
        let sel = |ms: Vec<Matcher>| c.select(&ms).iter().collect::<Vec<_>>();
        assert_eq!(sel(vec![Matcher::equal("__name__", "up")]), vec![0, 1]);
        assert_eq!(
            sel(vec![
                Matcher::equal("__name__", "up"),
                Matcher::new(MatchOp::NotEqual, "job", "a").unwrap()
            ]),
            vec![1]
        );
        // x="" matches series without x.
        assert_eq!(sel(vec![Matcher::equal("x", "")]), vec![0, 2]);
        assert_eq!(
            sel(vec![Matcher::new(MatchOp::Regex, "job", "a|b").unwrap()]),
            vec![0, 1]
        );
        // Anchored: "a" does not match "ab"-style partials.
        assert_eq!(
            sel(vec![Matcher::new(MatchOp::Regex, "__name__", "u").unwrap()]),
            Vec::<u32>::new()
        );
        assert_eq!(
            sel(vec![
                Matcher::new(MatchOp::NotRegex, "job", "a").unwrap(),
                Matcher::new(MatchOp::Regex, "__name__", ".+").unwrap()
            ]),
            vec![1, 2]
        );
        assert_eq!(c.label_values("job", &c.all()), vec!["a", "b"]);
        assert_eq!(
            c.label_names(&c.select(&[Matcher::equal("__name__", "down")])),
            vec!["__name__"]
        );
    }

    #[test]
    fn segments_round_trip_and_detect_damage() {
        let e = vec![
            (1u64, l(&[("__name__", "a"), ("k", "v")])),
            (2u64, l(&[("__name__", "b")])),
        ];
        let enc = encode_segment(7, &e);
        let (first, dec) = decode_segment(&enc).unwrap();
        assert_eq!(first, 7);
        assert_eq!(dec, e);
        let mut bad = enc.clone();
        bad[20] ^= 1;
        assert!(decode_segment(&bad).is_err());
        assert!(decode_segment(&enc[..enc.len() - 3]).is_err());

        // Many 64 KiB pieces through the stream; the same bytes as the
        // uncompressed form holds.
        let many: Vec<(u64, Labels)> = (0..5000u64)
            .map(|i| {
                let pod = format!("reviews-v{}-{:08x}", i % 3, i.wrapping_mul(0x9e37_79b9));
                (i, l(&[("__name__", "istio_requests_total"), ("pod", &pod)]))
            })
            .collect();
        let enc = encode_segment(100, &many);
        assert_eq!(&enc[..4], b"MLC2");
        let raw = raw_segment(100, &many);
        assert_eq!(
            u32::from_le_bytes(enc[4..8].try_into().unwrap()) as usize,
            raw.len()
        );
        assert!(raw.len() > 3 * 64 * 1024 && enc.len() < raw.len() / 3);
        assert_eq!(decode_segment(&enc).unwrap(), (100, many.clone()));
        assert_eq!(decode_segment(&encode_plain(raw)).unwrap(), (100, many));
    }

    #[test]
    fn collisions_are_errors() {
        let mut c = Catalog::default();
        c.get_or_create(5, &l(&[("__name__", "a")])).unwrap();
        assert!(c.get_or_create(5, &l(&[("__name__", "b")])).is_err());
        assert_eq!(
            c.get_or_create(5, &l(&[("__name__", "a")])).unwrap(),
            (0, false)
        );
    }
}
