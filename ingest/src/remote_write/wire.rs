//! A decoder of `prometheus.WriteRequest` that reads the protobuf wire
//! format in place, borrowing names and values from the body.
//!
//! Why not prost: decoding into prost's types costs two heap strings per
//! label, and building the store's `Labels` two more; a remote-write body is mostly
//! labels of series the catalog holds already. This decoder hashes each
//! series' labels as it reads them ([`SeriesIdHasher`], the catalog's own
//! series id), asks the store once per request which ids it knows, and
//! sends those by id ([`KnownSeriesSamples`]). Only new series, and series
//! that fail the cheap checks below, have their labels built and validated.
//!
//! Why skipping validation is sound for a known id: a series goes by id
//! only when every name and value is non-empty and free of the bytes 0xfe
//! and 0xff (the id's separators, never in UTF-8), and the names are
//! strictly increasing. Then the hashed bytes spell the label pairs out
//! unambiguously, so an equal id means equal labels (up to a 64-bit
//! collision, the same trust the catalog puts in ids), and a series in the
//! catalog was validated when it was created. Any other series (an empty
//! value, which the id would skip; a stray byte that could shift where a
//! name ends) takes the slow path and is validated in full.
//!
//! It accepts exactly what prost accepts (unknown fields of any wire type,
//! groups, repeated scalars last-wins, a recursion limit of 100) and gives
//! the same result; `tests.rs` checks this against prost on valid, mutated
//! and random bodies, and the fuzz target does too.

use super::{Decoded, reason};
use crate::error::DecodeError;
use crate::protowire::{Cursor, RECURSION_LIMIT, WT_I64, WT_LEN, WT_VARINT, WireResult, expect_wt};
use meshlens_storage::samples::{KnownSeriesSamples, Sample, SeriesIdHasher};

/// `a < b` in byte order, inline: label names are short and usually
/// differ in their first bytes, where a call to `memcmp` costs more than
/// the comparison.
#[inline(always)]
fn less(a: &[u8], b: &[u8]) -> bool {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x < y;
        }
    }
    a.len() < b.len()
}

/// Whether no byte is 0xfe or 0xff, the id's separators (never in UTF-8).
/// Written as a max so that it vectorizes.
#[inline]
fn no_separator_bytes(b: &[u8]) -> bool {
    b.iter().fold(0u8, |m, &x| m.max(x)) < 0xfe
}

/// `prometheus.Label`: name and value, last one wins.
#[inline(always)]
fn label<'a>(mut c: Cursor<'a>, budget: u32) -> WireResult<(&'a [u8], &'a [u8])> {
    let (mut name, mut value): (&[u8], &[u8]) = (&[], &[]);
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("name", wt, WT_LEN)?;
                name = c.bytes()?;
            }
            2 => {
                expect_wt("value", wt, WT_LEN)?;
                value = c.bytes()?;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok((name, value))
}

/// `prometheus.Sample`.
#[inline]
fn sample(mut c: Cursor<'_>, budget: u32) -> WireResult<Sample> {
    let mut s = Sample {
        timestamp_ms: 0,
        value: 0.0,
    };
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("value", wt, WT_I64)?;
                s.value = f64::from_bits(c.fixed64()?);
            }
            2 => {
                expect_wt("timestamp", wt, WT_VARINT)?;
                s.timestamp_ms = c.varint()? as i64;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(s)
}

/// `prometheus.Exemplar`: checked like prost checks it, then only counted.
fn exemplar(mut c: Cursor<'_>, budget: u32) -> WireResult<()> {
    let mut i = 0usize;
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("labels", wt, WT_LEN)?;
                label(c.message()?, budget - 1).map_err(|e| format!("labels[{i}]: {e}"))?;
                i += 1;
            }
            2 => {
                expect_wt("value", wt, WT_I64)?;
                c.fixed64()?;
            }
            3 => {
                expect_wt("timestamp", wt, WT_VARINT)?;
                c.varint()?;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(())
}

/// `prometheus.Histogram`: only its timestamp is declared (as in the prost
/// type), so only that field's wire type is checked.
fn histogram(mut c: Cursor<'_>, budget: u32) -> WireResult<()> {
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            15 => {
                expect_wt("timestamp", wt, WT_VARINT)?;
                c.varint()?;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(())
}

/// One `TimeSeries` as read: where it is in the body, its id when the
/// cheap checks passed, where its samples are in the request's flat list.
struct RawSeries {
    start: usize,
    end: usize,
    id: Option<u64>,
    samples_end: usize,
    exemplars: usize,
    histograms: usize,
}

impl RawSeries {
    /// The id to ask the store about: the cheap checks passed and there are
    /// no native histograms (whose refusal message needs the labels).
    fn by_id_candidate(&self) -> Option<u64> {
        self.id.filter(|_| self.histograms == 0)
    }
}

/// A `MetricMetadata` as read.
struct RawMetadata<'a> {
    kind: i32,
    family: &'a [u8],
    help: &'a [u8],
    unit: &'a [u8],
}

fn metadata<'a>(mut c: Cursor<'a>, budget: u32) -> WireResult<RawMetadata<'a>> {
    let mut m = RawMetadata {
        kind: 0,
        family: &[],
        help: &[],
        unit: &[],
    };
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("type", wt, WT_VARINT)?;
                m.kind = c.varint()? as i32;
            }
            2 => {
                expect_wt("metric_family_name", wt, WT_LEN)?;
                m.family = c.bytes()?;
            }
            4 => {
                expect_wt("help", wt, WT_LEN)?;
                m.help = c.bytes()?;
            }
            5 => {
                expect_wt("unit", wt, WT_LEN)?;
                m.unit = c.bytes()?;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(m)
}

/// A whole request as read.
struct Walk<'a> {
    series: Vec<RawSeries>,
    samples: Vec<Sample>,
    metadata: Vec<RawMetadata<'a>>,
}

fn time_series(
    mut c: Cursor<'_>,
    budget: u32,
    hasher: &mut SeriesIdHasher,
    samples: &mut Vec<Sample>,
) -> WireResult<RawSeries> {
    let (start, end) = (c.pos, c.end);
    hasher.clear();
    let mut ok = true;
    let mut prev: Option<&[u8]> = None;
    let (mut nl, mut ns, mut exemplars, mut histograms) = (0usize, 0usize, 0usize, 0usize);
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("labels", wt, WT_LEN)?;
                let (name, value) =
                    label(c.message()?, budget - 1).map_err(|e| format!("labels[{nl}]: {e}"))?;
                nl += 1;
                ok &= !name.is_empty()
                    && !value.is_empty()
                    && prev.is_none_or(|p| less(p, name))
                    && no_separator_bytes(name)
                    && no_separator_bytes(value);
                prev = Some(name);
                if ok {
                    hasher.push(name, value);
                }
            }
            2 => {
                expect_wt("samples", wt, WT_LEN)?;
                samples.push(
                    sample(c.message()?, budget - 1).map_err(|e| format!("samples[{ns}]: {e}"))?,
                );
                ns += 1;
            }
            3 => {
                expect_wt("exemplars", wt, WT_LEN)?;
                exemplar(c.message()?, budget - 1)
                    .map_err(|e| format!("exemplars[{exemplars}]: {e}"))?;
                exemplars += 1;
            }
            4 => {
                expect_wt("histograms", wt, WT_LEN)?;
                histogram(c.message()?, budget - 1)
                    .map_err(|e| format!("histograms[{histograms}]: {e}"))?;
                histograms += 1;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(RawSeries {
        start,
        end,
        id: ok.then(|| hasher.finish()),
        samples_end: samples.len(),
        exemplars,
        histograms,
    })
}

fn walk(body: &[u8]) -> WireResult<Walk<'_>> {
    let mut c = Cursor::new(body);
    let budget = RECURSION_LIMIT;
    let mut hasher = SeriesIdHasher::default();
    // A sample is at least 2 bytes (key + length), a series with a label
    // and a sample at least ~16: room for the common case, no more.
    let mut w = Walk {
        series: Vec::with_capacity(body.len() / 128),
        samples: Vec::with_capacity(body.len() / 64),
        metadata: Vec::new(),
    };
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                let i = w.series.len();
                expect_wt("timeseries", wt, WT_LEN).map_err(|e| format!("timeseries[{i}]: {e}"))?;
                let m = c.message().map_err(|e| format!("timeseries[{i}]: {e}"))?;
                let s = time_series(m, budget - 1, &mut hasher, &mut w.samples)
                    .map_err(|e| format!("timeseries[{i}].{e}"))?;
                w.series.push(s);
            }
            3 => {
                let i = w.metadata.len();
                expect_wt("metadata", wt, WT_LEN).map_err(|e| format!("metadata[{i}]: {e}"))?;
                let m = c.message().map_err(|e| format!("metadata[{i}]: {e}"))?;
                w.metadata
                    .push(metadata(m, budget - 1).map_err(|e| format!("metadata[{i}]: {e}"))?);
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(w)
}

/// The labels of a series the walk read already (so well-formed), in order.
fn labels_of<'a>(body: &'a [u8], s: &RawSeries) -> Vec<(&'a [u8], &'a [u8])> {
    let mut c = Cursor {
        buf: body,
        pos: s.start,
        end: s.end,
    };
    let mut out = Vec::new();
    while c.more() {
        let Ok((tag, wt)) = c.key() else { break };
        if tag == 1 && wt == WT_LEN {
            match c.message().and_then(|m| label(m, RECURSION_LIMIT)) {
                Ok(l) => out.push(l),
                Err(_) => break,
            }
        } else if c.skip(tag, wt, RECURSION_LIMIT).is_err() {
            break;
        }
    }
    out
}

/// Decodes a (decompressed) `WriteRequest`. `known` is asked once which of
/// the series ids read are in the catalog (and answers in order); those
/// series are sent by id, the others by labels after validation.
pub fn decode_with_known(
    body: &[u8],
    known: impl FnOnce(&[u64], &mut Vec<bool>),
) -> Result<Decoded, DecodeError> {
    let w = walk(body).map_err(|detail| DecodeError::Protobuf {
        message_name: "prometheus.WriteRequest",
        detail,
    })?;
    let mut ids = Vec::with_capacity(w.series.len());
    ids.extend(w.series.iter().filter_map(RawSeries::by_id_candidate));
    let mut is_known = Vec::with_capacity(ids.len());
    if !ids.is_empty() {
        known(&ids, &mut is_known);
    }
    let mut known_flags = is_known.iter().copied();

    let mut out = Decoded::default();
    out.batch.known = KnownSeriesSamples::with_capacity(ids.len(), w.samples.len());
    let mut start = 0usize;
    for (i, s) in w.series.iter().enumerate() {
        let samples = &w.samples[start..s.samples_end];
        start = s.samples_end;
        out.exemplars_dropped += s.exemplars;
        if let Some(id) = s.by_id_candidate()
            && known_flags.next().unwrap_or(false)
        {
            out.batch.known.push(id, samples);
            continue;
        }
        let raw = labels_of(body, s);
        if let Some(write) = super::series_write(&mut out, i, &raw, samples, s.histograms) {
            out.batch.series.push(write);
        }
    }
    for (i, m) in w.metadata.iter().enumerate() {
        match super::metadata(m.kind, m.family, m.help, m.unit) {
            Ok(md) => out.batch.metadata.push(md),
            Err(problem) => out.rejected.add(reason::INVALID_METADATA, 0, || {
                format!("metadata[{i}]: {problem}")
            }),
        }
    }
    Ok(out)
}
