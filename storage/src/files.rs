//! Parquet files of spans: layout, writing, reading back (for compaction).

use crate::dictchunk;
use crate::error::Result;
use crate::manifest::FileEntry;
use crate::scatter::scatter_batch;
use crate::schema::{SERVICE, START, TRACE_ID, UNIQUE_TAGS, spans_schema};
use crate::tindex::{TraceFilter, sidecar_path};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::compute_leaves;
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::collections::BTreeSet;
use std::sync::Arc;

pub const HOUR_NANOS: i64 = 3_600 * 1_000_000_000;

/// Rows per row group: small enough that min/max trace ids per group prune well.
const ROW_GROUP_ROWS: usize = 128 * 1024;

fn writer_props(rows: usize) -> WriterProperties {
    let ndv = rows.clamp(1, ROW_GROUP_ROWS) as u64;
    let mut b = WriterProperties::builder();
    // Nearly unique values: a dictionary would hold a row group's worth of
    // them (the request id's took ~0.6 MB per 128 Ki rows), and every trace
    // lookup would read and decode it whole. Rows are sorted by trace, so
    // the spans of a trace share the request id: prefix deltas store a
    // repeat in a few bits.
    for col in UNIQUE_TAGS {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(*col), false)
            .set_column_encoding(ColumnPath::from(*col), Encoding::DELTA_BYTE_ARRAY);
    }
    b.set_compression(Compression::LZ4_RAW)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(8 * 1024)
        // Statistics only where queries prune with them: the trace id
        // (lookup), start time and duration (search windows, minDuration)
        // page by page; service, remote service and span name per row
        // group. The rest (tags, endpoints, maps) would cost a string
        // comparison per value per column at every flush for ranges that
        // cover everything: rows are sorted by trace, so every row group
        // holds every service's tags.
        .set_statistics_enabled(EnabledStatistics::None)
        .set_column_statistics_enabled(ColumnPath::from(TRACE_ID), EnabledStatistics::Page)
        .set_column_statistics_enabled(ColumnPath::from(START), EnabledStatistics::Page)
        .set_column_statistics_enabled(ColumnPath::from("duration_nano"), EnabledStatistics::Page)
        .set_column_statistics_enabled(ColumnPath::from(SERVICE), EnabledStatistics::Chunk)
        .set_column_statistics_enabled(
            ColumnPath::from("remote_service_name"),
            EnabledStatistics::Chunk,
        )
        .set_column_statistics_enabled(ColumnPath::from("name"), EnabledStatistics::Chunk)
        .set_column_dictionary_enabled(ColumnPath::from(TRACE_ID), false)
        .set_column_encoding(ColumnPath::from(TRACE_ID), Encoding::DELTA_BYTE_ARRAY)
        .set_column_bloom_filter_enabled(ColumnPath::from(TRACE_ID), true)
        .set_column_bloom_filter_fpp(ColumnPath::from(TRACE_ID), 0.01)
        .set_column_bloom_filter_max_ndv(ColumnPath::from(TRACE_ID), ndv)
        .set_column_bloom_filter_enabled(ColumnPath::from(SERVICE), true)
        .set_column_bloom_filter_max_ndv(ColumnPath::from(SERVICE), 64)
        .set_column_dictionary_enabled(ColumnPath::from("span_id"), false)
        .set_column_dictionary_enabled(ColumnPath::from("parent_span_id"), false)
        .set_column_dictionary_enabled(ColumnPath::from(START), false)
        .set_column_encoding(ColumnPath::from(START), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(ColumnPath::from("duration_nano"), false)
        .set_column_encoding(
            ColumnPath::from("duration_nano"),
            Encoding::DELTA_BINARY_PACKED,
        )
        .build()
}

/// The rows of `batches` in file order, one batch per hour: each span goes
/// to the hour it starts in (spans without a start time to `fallback`'s
/// hour), and within the hour rows are sorted by trace id, then start time
/// (spans without one first), then arrival. A trace is then a few adjacent
/// rows. Each row is copied once (see [`crate::scatter`]).
pub fn sorted_partitions(
    batches: &[RecordBatch],
    fallback: i64,
) -> Result<Vec<(i64, RecordBatch)>> {
    let (pos, parts) = sort_positions(batches, fallback)?;
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let sorted = scatter_batch(batches, &pos)?;
    Ok(parts
        .into_iter()
        .map(|(hour, range)| (hour, sorted.slice(range.start, range.len())))
        .collect())
}

/// Each hour's range of rows in [`sorted_partitions`]' order.
type HourRanges = Vec<(i64, std::ops::Range<usize>)>;

/// Where each row goes in [`sorted_partitions`]' order (`pos[batch][row]`),
/// and each hour's range of that order.
///
/// Rows are put into their hours by counting, then each hour's rows are
/// sorted by [`sort_rows`] on keys of plain integers.
fn sort_positions(batches: &[RecordBatch], fallback: i64) -> Result<(Vec<Vec<u32>>, HourRanges)> {
    let schema_err = |what: &str| arrow::error::ArrowError::SchemaError(what.to_string());
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if u32::try_from(total).is_err() || u32::try_from(batches.len()).is_err() {
        return Err(schema_err("too many rows to sort at once").into());
    }
    // Per row in arrival order: its key (the whole trace id for now) and
    // its hour, as an index into `hours` (in order of first appearance).
    let mut keys: Vec<SortRow> = Vec::with_capacity(total);
    let mut hour_of: Vec<u32> = Vec::with_capacity(total);
    let mut hours: Vec<Hour> = Vec::new();
    for batch in batches {
        let ids = batch
            .column_by_name(TRACE_ID)
            .and_then(|c| c.as_fixed_size_binary_opt())
            .filter(|c| c.value_length() == 16)
            .ok_or_else(|| schema_err("trace_id is not a 16-byte column"))?;
        let start = batch
            .column_by_name(START)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| schema_err("no start time column"))?;
        for r in 0..batch.num_rows() {
            let start = start.is_valid(r).then(|| start.value(r));
            let id: [u8; 16] = ids.value(r).try_into().unwrap_or_default();
            let id = u128::from_be_bytes(id);
            let hour = start.unwrap_or(fallback).div_euclid(HOUR_NANOS) * HOUR_NANOS;
            let h = match hours.iter().position(|x| x.hour == hour) {
                Some(h) => h,
                None => {
                    hours.push(Hour {
                        hour,
                        first_id: id,
                        varying: 0,
                        rows: 0,
                    });
                    hours.len() - 1
                }
            };
            let of = &mut hours[h];
            of.varying |= id ^ of.first_id;
            of.rows += 1;
            hour_of.push(h as u32);
            keys.push(SortRow {
                hi: (id >> 64) as u64,
                lo: id as u64,
                has_start: start.is_some(),
                start: start.unwrap_or(0),
                row: keys.len() as u32,
            });
        }
    }
    // Hours in time order, each a range of `order`; its rows put there in
    // arrival order.
    let mut by_time: Vec<usize> = (0..hours.len()).collect();
    by_time.sort_unstable_by_key(|&h| hours[h].hour);
    let mut next = vec![0usize; hours.len()];
    let mut parts: HourRanges = Vec::with_capacity(hours.len());
    for &h in &by_time {
        let at = parts.last().map_or(0, |(_, r)| r.end);
        next[h] = at;
        parts.push((hours[h].hour, at..at + hours[h].rows));
    }
    let mut order: Vec<SortRow> = vec![SortRow::default(); total];
    for (key, &h) in keys.iter().zip(&hour_of) {
        order[next[h as usize]] = *key;
        next[h as usize] += 1;
    }
    drop(keys);
    for (&h, (_, range)) in by_time.iter().zip(&parts) {
        // The bits every trace id of the hour shares are shifted out, so
        // that the top bits, which `sort_rows` buckets by, vary.
        let shared = hours[h].varying.leading_zeros().min(127);
        let rows = &mut order[range.clone()];
        if shared > 0 {
            for r in rows.iter_mut() {
                let id = ((u128::from(r.hi) << 64) | u128::from(r.lo)) << shared;
                (r.hi, r.lo) = ((id >> 64) as u64, id as u64);
            }
        }
        sort_rows(rows);
    }
    let mut flat = vec![0u32; total];
    for (i, &SortRow { row, .. }) in order.iter().enumerate() {
        flat[row as usize] = i as u32;
    }
    let mut pos = Vec::with_capacity(batches.len());
    let mut rest = &flat[..];
    for batch in batches {
        let (mine, after) = rest.split_at(batch.num_rows());
        pos.push(mine.to_vec());
        rest = after;
    }
    Ok((pos, parts))
}

/// An hour's rows while [`sort_positions`] reads them.
struct Hour {
    hour: i64,
    first_id: u128,
    /// The bits in which some trace id of the hour differs from the first.
    varying: u128,
    rows: usize,
}

/// A row being sorted, its fields in the order of the sort: its trace id
/// (without the bits every id of its hour shares), whether it has a start
/// time and that time, its place in arrival order.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct SortRow {
    hi: u64,
    lo: u64,
    has_start: bool,
    start: i64,
    row: u32,
}

/// Sorts `rows`: one pass puts them into buckets by the top
/// [`BUCKET_BITS`] bits of `hi` that vary (trace ids spread them evenly),
/// then each bucket is sorted on its own, a few rows each. Sorting a
/// million 48-byte keys with pdqsort, comparing `Option`s and `u128`s,
/// had been ~3 % of one-core ingest.
fn sort_rows(rows: &mut [SortRow]) {
    if rows.len() < 1 << 12 {
        rows.sort_unstable();
        return;
    }
    let (min, max) = rows
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), r| (lo.min(r.hi), hi.max(r.hi)));
    let shift = (64 - (min ^ max).leading_zeros()).saturating_sub(BUCKET_BITS);
    let bucket = |k: u64| ((k - min) >> shift) as usize;
    let buckets = bucket(max) + 1;
    let mut starts = vec![0usize; buckets + 1];
    for r in rows.iter() {
        starts[bucket(r.hi) + 1] += 1;
    }
    for i in 0..buckets {
        starts[i + 1] += starts[i];
    }
    let mut next = starts.clone();
    let mut out = vec![SortRow::default(); rows.len()];
    for &r in rows.iter() {
        let b = bucket(r.hi);
        out[next[b]] = r;
        next[b] += 1;
    }
    for w in starts.windows(2) {
        let part = &mut out[w[0]..w[1]];
        if part.len() > 1 {
            part.sort_unstable();
        }
    }
    rows.copy_from_slice(&out);
}

/// Bits of the trace key [`sort_rows`] buckets by.
const BUCKET_BITS: u32 = 16;

/// `spans/2026-11-25T21/00000000000000000042.parquet`
pub fn file_path(partition: i64, file_id: u64) -> String {
    let secs = partition.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3_600;
    let (y, m, d) = civil_from_days(days);
    format!("spans/{y:04}-{m:02}-{d:02}T{hour:02}/{file_id:020}.parquet")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A span file, encoded: the Parquet bytes, its manifest entry and its
/// trace-id filter.
pub struct EncodedFile {
    pub bytes: Vec<u8>,
    pub entry: FileEntry,
    pub filter: Option<TraceFilter>,
}

/// Encodes one sorted batch (from [`sorted_partitions`]) as a Parquet file
/// and describes it for the manifest. CPU-bound: callers on an async
/// runtime run it on the blocking pool.
pub fn encode_file(
    batch: &RecordBatch,
    path: &str,
    partition: i64,
    level: u32,
) -> Result<EncodedFile> {
    let rows = batch.num_rows();
    let mut buf = Vec::with_capacity(rows * 32);
    write_parquet(batch, &mut buf, writer_props(rows), ROW_GROUP_ROWS)?;
    let entry = describe(batch, path, partition, level, buf.len() as u64)?;
    let filter = batch
        .column_by_name(TRACE_ID)
        .and_then(|c| c.as_fixed_size_binary_opt())
        .and_then(|ids| TraceFilter::build(ids.iter().flatten()));
    Ok(EncodedFile {
        bytes: buf,
        entry,
        filter,
    })
}

/// Writes `batch` (of the `spans` schema) as a Parquet file of row groups
/// of `group_rows` rows: what `ArrowWriter` writes, except that the flat
/// columns are written by [`crate::dictchunk`]: string dictionary columns
/// from their Arrow dictionaries, small integer columns dictionary-encoded
/// (instead of parquet-rs hashing every value), delta-encoded and boolean
/// columns by [`crate::delta`], maps of strings leaf by leaf. Only events,
/// links and the rare plain strings are parquet-rs's.
pub(crate) fn write_parquet(
    batch: &RecordBatch,
    out: &mut Vec<u8>,
    props: WriterProperties,
    group_rows: usize,
) -> Result<()> {
    let schema = spans_schema();
    if batch.schema().fields() != schema.fields() {
        return Err(arrow::error::ArrowError::SchemaError(
            "a span file is written from batches of the spans schema".into(),
        )
        .into());
    }
    // The Arrow schema goes into the footer as ArrowWriter puts it, so that
    // readers get the dictionary types back.
    let (mut file, factory) =
        ArrowWriter::try_new(out, schema.clone(), Some(props))?.into_serialized_writer()?;
    let leaves = file.schema_descr().columns().to_vec();
    let props = file.properties().clone();
    let rows = batch.num_rows();
    for (group, first) in (0..rows).step_by(group_rows.max(1)).enumerate() {
        let part = batch.slice(first, group_rows.min(rows - first));
        let mut writers = factory.create_column_writers(group)?.into_iter();
        let mut leaf = 0;
        let mut out = file.next_row_group()?;
        for (field, col) in schema.fields().iter().zip(part.columns()) {
            let descr = leaves.get(leaf).ok_or_else(|| no_leaf(field.name()))?;
            if let (DataType::Map(..), Some(k), Some(v)) =
                (field.data_type(), leaves.get(leaf), leaves.get(leaf + 1))
                && let Some(chunks) = dictchunk::encode_map(col, [k, v], &props)?
            {
                for chunk in chunks {
                    writers.next().ok_or_else(|| no_leaf(field.name()))?;
                    out.append_column(&chunk.bytes, chunk.close)?;
                    leaf += 1;
                }
                continue;
            }
            // `dictchunk` answers `None` for every column it does not
            // write (nested, not a dictionary or small integer, ...).
            if let Some(chunk) = dictchunk::encode(col, descr, &props)? {
                writers.next().ok_or_else(|| no_leaf(field.name()))?;
                out.append_column(&chunk.bytes, chunk.close)?;
                leaf += 1;
                continue;
            }
            for l in compute_leaves(field, col)? {
                let mut writer = writers.next().ok_or_else(|| no_leaf(field.name()))?;
                writer.write(&l)?;
                writer.close()?.append_to_row_group(&mut out)?;
                leaf += 1;
            }
        }
        out.close()?;
    }
    file.close()?;
    Ok(())
}

fn no_leaf(field: &str) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::General(format!("no Parquet column for field {field}"))
}

/// Stores an encoded file (its trace-id filter first, beside it).
pub async fn put_file(
    store: &dyn ObjectStore,
    file: EncodedFile,
) -> Result<(FileEntry, Option<TraceFilter>)> {
    if let Some(f) = &file.filter {
        store
            .put(
                &ObjectPath::from(sidecar_path(&file.entry.path)),
                f.encode().into(),
            )
            .await?;
    }
    store
        .put(
            &ObjectPath::from(file.entry.path.as_str()),
            file.bytes.into(),
        )
        .await?;
    Ok((file.entry, file.filter))
}

/// Sorts `batches` into hours ([`sorted_partitions`]) and encodes one file
/// per hour, numbered from `first_id`, on the blocking pool (seconds of CPU
/// for a million spans: not on an async worker).
pub async fn encode_files(
    batches: Vec<RecordBatch>,
    fallback: i64,
    level: u32,
    first_id: u64,
) -> Result<Vec<EncodedFile>> {
    tokio::task::spawn_blocking(move || {
        sorted_partitions(&batches, fallback)?
            .into_iter()
            .zip(first_id..)
            .map(|((partition, batch), id)| {
                encode_file(&batch, &file_path(partition, id), partition, level)
            })
            .collect()
    })
    .await
    .map_err(|e| crate::error::StorageError::Corrupt {
        what: "flush",
        detail: format!("the file encoder stopped: {e}"),
    })?
}

/// What a file's manifest entry says about its rows.
fn describe(
    batch: &RecordBatch,
    path: &str,
    partition: i64,
    level: u32,
    bytes: u64,
) -> Result<FileEntry> {
    let (mut min_time, mut max_time, mut max_end) = (i64::MAX, i64::MIN, i64::MIN);
    let mut services = BTreeSet::new();
    let mut id_range: Option<([u8; 16], [u8; 16])> = None;
    let rows = batch.num_rows() as u64;
    if let (Some(start), Some(dur)) = (
        batch
            .column_by_name(START)
            .and_then(|c| c.as_primitive_opt::<Int64Type>()),
        batch
            .column_by_name("duration_nano")
            .and_then(|c| c.as_primitive_opt::<Int64Type>()),
    ) {
        for i in 0..start.len() {
            if start.is_null(i) {
                continue;
            }
            let s = start.value(i);
            let d = if dur.is_null(i) { 0 } else { dur.value(i) };
            min_time = min_time.min(s);
            max_time = max_time.max(s);
            max_end = max_end.max(s.saturating_add(d));
        }
    }
    if let Some(c) = batch.column_by_name(SERVICE) {
        // The values some row uses (a merged dictionary may hold more).
        let d = c.as_dictionary_opt::<Int32Type>().ok_or_else(|| {
            arrow::error::ArrowError::SchemaError("service_name is not a dictionary".into())
        })?;
        let values = d.values().as_string_opt::<i32>().ok_or_else(|| {
            arrow::error::ArrowError::SchemaError("service_name values are not strings".into())
        })?;
        let mut used = vec![false; values.len()];
        for k in d.keys().iter().flatten() {
            if let Some(u) = usize::try_from(k).ok().and_then(|k| used.get_mut(k)) {
                *u = true;
            }
        }
        for (i, u) in used.into_iter().enumerate() {
            if u && values.is_valid(i) && !services.contains(values.value(i)) {
                services.insert(values.value(i).to_string());
            }
        }
    }
    if let Some(ids) = batch
        .column_by_name(TRACE_ID)
        .and_then(|c| c.as_fixed_size_binary_opt())
    {
        for v in ids.iter().flatten() {
            let Ok(v) = <[u8; 16]>::try_from(v) else {
                continue;
            };
            id_range = Some(match id_range {
                None => (v, v),
                Some((lo, hi)) => (lo.min(v), hi.max(v)),
            });
        }
    }
    if min_time == i64::MAX {
        (min_time, max_time, max_end) = (partition, partition, partition);
    }
    let (min_trace_id, max_trace_id) = id_range
        .map_or((String::new(), String::new()), |(lo, hi)| {
            (hex::encode(lo), hex::encode(hi))
        });
    Ok(FileEntry {
        path: path.to_string(),
        partition,
        min_time,
        max_time,
        max_end_time: max_end,
        rows,
        bytes,
        services: services.into_iter().collect(),
        min_trace_id,
        max_trace_id,
        level,
    })
}

/// Reads a whole file back (compaction).
pub async fn read_file(store: Arc<dyn ObjectStore>, entry: &FileEntry) -> Result<Vec<RecordBatch>> {
    let bytes = store
        .get(&ObjectPath::from(entry.path.as_str()))
        .await?
        .bytes()
        .await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;

    #[test]
    fn paths_are_readable_dates() {
        // 2026-11-25T21:00:00Z
        let p = 1_795_640_400i64 * 1_000_000_000;
        assert_eq!(
            file_path(p, 42),
            "spans/2026-11-25T21/00000000000000000042.parquet"
        );
        assert_eq!(
            file_path(0, 1),
            "spans/1970-01-01T00/00000000000000000001.parquet"
        );
    }

    /// Flushing many small batches: every span lands in its hour, each
    /// hour's rows sorted by trace id then start, nothing lost or repeated;
    /// the same as concatenating, splitting and sorting.
    #[test]
    fn sorted_partitions_sort_and_split_across_batches() {
        use crate::model::{Span, SpanId, TraceId, UnixNanos};
        use crate::schema::{batch_to_spans, spans_to_batch};
        let hour = HOUR_NANOS;
        let t0 = 1_795_640_400i64 * 1_000_000_000;
        let mut rng = 11u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 33
        };
        let batches: Vec<RecordBatch> = (0..7)
            .map(|b| {
                let spans: Vec<Span> = (0..(b * 13 % 29 + 1))
                    .map(|i| Span {
                        trace_id: TraceId::from_u64s(0, next() % 40 + 1),
                        span_id: SpanId(((b * 1000 + i) as u64 + 1).to_be_bytes()),
                        name: format!("op{}", next() % 5),
                        start: (next() % 9 != 0).then(|| {
                            UnixNanos(t0 + (next() % 3) as i64 * hour + (next() % 1000) as i64)
                        }),
                        ..Default::default()
                    })
                    .collect();
                spans_to_batch(&spans).unwrap()
            })
            .collect();
        let fallback = t0 + 5 * hour + 7;
        let parts = sorted_partitions(&batches, fallback).unwrap();
        let all: Vec<Span> = batches
            .iter()
            .flat_map(|b| batch_to_spans(b).unwrap())
            .collect();
        let mut seen = 0;
        for (p, batch) in &parts {
            let spans = batch_to_spans(batch).unwrap();
            seen += spans.len();
            for w in spans.windows(2) {
                assert!((w[0].trace_id, w[0].start) <= (w[1].trace_id, w[1].start));
                if (w[0].trace_id, w[0].start) == (w[1].trace_id, w[1].start) {
                    // Ties in arrival order (span ids grow with arrival).
                    assert!(w[0].span_id.0 < w[1].span_id.0);
                }
            }
            for s in &spans {
                let t = s.start.map_or(fallback, |t| t.0);
                assert_eq!(t.div_euclid(hour) * hour, *p);
                assert!(all.contains(s));
            }
        }
        assert_eq!(seen, all.len());
        assert_eq!(parts.len(), 4, "three hours and the fallback's");
    }

    /// Spans whose dictionary columns take every path of
    /// [`crate::dictchunk`]: a constant (one-value dictionary), nulls in
    /// runs and scattered, many distinct values, all null (local IPv6).
    fn varied_spans(n: usize, seed: u64) -> Vec<crate::model::Span> {
        use crate::model::{
            AttrValue, Endpoint, Span, SpanId, SpanKind, StatusCode, TraceId, UnixNanos,
        };
        let t0 = 1_795_640_400i64 * 1_000_000_000;
        let mut rng = seed;
        let mut next = move || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 33
        };
        (0..n)
            .map(|i| {
                let mut attributes = crate::model::Attributes::new();
                if next() % 3 != 0 {
                    let m = ["GET", "POST", "PUT"][next() as usize % 3];
                    attributes.insert("http.method".into(), AttrValue::Str(m.into()));
                }
                if (i / 50) % 2 == 0 {
                    let peer = format!("10.0.{}.{}:9080", next() % 7, next() % 250);
                    attributes.insert("peer.address".into(), AttrValue::Str(peer));
                }
                attributes.insert("component".into(), AttrValue::Str("proxy".into()));
                // Nearly unique strings (prefix-delta columns), some absent.
                if i % 11 != 5 {
                    let url = format!("http://svc-{}:9080/p/{}", next() % 6, next() % 100_000);
                    attributes.insert("http.url".into(), AttrValue::Str(url));
                }
                let rid = format!("{:08x}-{:04x}", next(), next() % 65_536);
                attributes.insert("guid:x-request-id".into(), AttrValue::Str(rid));
                // The maps: strings not promoted (none on some spans),
                // typed values, resource attributes.
                if i % 4 != 1 {
                    attributes.insert(
                        "istio.mesh_id".into(),
                        AttrValue::Str("cluster.local".into()),
                    );
                }
                if i % 3 == 0 {
                    let k = format!("custom.k{}", next() % 5);
                    attributes.insert(k, AttrValue::Str(format!("v{}", next() % 50)));
                }
                if i % 6 == 0 {
                    attributes.insert("retries".into(), AttrValue::Int((next() % 4) as i64));
                }
                let mut resource = crate::model::Attributes::new();
                if i % 8 != 3 {
                    let svc = format!("svc-{}", i % 6);
                    resource.insert("service.name".into(), AttrValue::Str(svc));
                    resource.insert("host.name".into(), AttrValue::Str(format!("h{}", i % 9)));
                }
                let mut s = Span {
                    trace_id: TraceId::from_u64s(0, next() % 300 + 1),
                    span_id: SpanId((i as u64 + 1).to_be_bytes()),
                    name: format!("op-{}", next() % 40),
                    start: Some(UnixNanos(t0 + (next() % 1_000_000) as i64)),
                    duration_nanos: (next() % 13 != 0).then(|| (next() % 5000) as i64),
                    trace_id_64: i % 5 == 0,
                    shared: next() % 2 == 0,
                    debug: i % 17 == 0,
                    local: Endpoint {
                        service_name: Some(format!("svc-{}", next() % 6)),
                        ipv4: Some(format!("10.1.0.{}", next() % 30)),
                        port: Some(9080 + (next() % 3) as i32),
                        ..Default::default()
                    },
                    remote: Endpoint {
                        service_name: (next() % 4 == 0).then(|| format!("peer-{}", next() % 3)),
                        port: (i % 3 == 0).then_some(15006),
                        ..Default::default()
                    },
                    attributes,
                    resource,
                    scope_name: Some("envoy".into()),
                    kind: [SpanKind::Client, SpanKind::Server][next() as usize % 2],
                    status_code: if next() % 10 == 0 {
                        StatusCode::Error
                    } else {
                        StatusCode::Unset
                    },
                    flags: (i % 7 == 0).then_some(0x8000_0001),
                    ..Default::default()
                };
                // A resource of the span's service alone: a null map, in
                // runs and scattered.
                if i % 8 == 0 || (i / 40) % 3 == 1 {
                    s.resource = [(
                        "service.name".to_string(),
                        AttrValue::Str(s.local.service_name.clone().unwrap_or_default()),
                    )]
                    .into();
                }
                s
            })
            .collect()
    }

    /// How many columns of each kind [`assert_matches_arrow_writer`]
    /// compared, summed over row groups.
    #[derive(Debug, Default, PartialEq)]
    struct Compared {
        dictionary: usize,
        fixed: usize,
        delta: usize,
        bools: usize,
        column_indexes: usize,
        map_leaves: usize,
    }

    /// A file written by [`write_parquet`] from `batch` reads back as the
    /// spans written, whole and through a page-skipping row selection (the
    /// offset index), with the statistics, column index and bloom filters
    /// parquet-rs's own writer puts in the same file, and no larger.
    fn assert_matches_arrow_writer(batch: &RecordBatch, group: usize, page: usize) -> Compared {
        use crate::schema::batch_to_spans;
        use parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection, RowSelector};
        use parquet::file::page_index::column_index::ColumnIndexMetaData;
        use parquet::file::properties::ReaderProperties;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::file::serialized_reader::ReadOptionsBuilder;

        let want = batch_to_spans(batch).unwrap();
        let props = || {
            let p = writer_props(batch.num_rows());
            // parquet-rs checks the page limit every `write_batch_size`
            // rows (1024 by default, below the 8 Ki of a page in our files).
            let mut b = p
                .into_builder()
                .set_data_page_row_count_limit(page)
                .set_write_batch_size(page);
            b = b.set_max_row_group_row_count(Some(group));
            b.build()
        };
        let mut ours = Vec::new();
        write_parquet(batch, &mut ours, props(), group).unwrap();
        let mut theirs = Vec::new();
        let mut w = ArrowWriter::try_new(&mut theirs, spans_schema(), Some(props())).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        // Within 1 %: the RLE / bit-packing choices differ a little, and
        // parquet-rs keeps size statistics we do not.
        assert!(
            ours.len() * 100 <= theirs.len() * 101,
            "ours {} bytes, ArrowWriter's {}",
            ours.len(),
            theirs.len()
        );

        let read = |bytes: &[u8], selection: Option<RowSelection>| {
            let opts = ArrowReaderOptions::new()
                .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required);
            let mut b = ParquetRecordBatchReaderBuilder::try_new_with_options(
                bytes::Bytes::copy_from_slice(bytes),
                opts,
            )
            .unwrap();
            assert!(b.metadata().offset_index().is_some(), "offset index");
            if let Some(s) = selection {
                b = b.with_row_selection(s);
            }
            let batches: Vec<RecordBatch> = b.build().unwrap().map(|b| b.unwrap()).collect();
            batches
                .iter()
                .flat_map(|b| batch_to_spans(b).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(read(&ours, None), want);
        let n = want.len();
        let cuts = [
            n * 6 / 100,
            n * 11 / 100,
            n * 65 / 100,
            n * 66 / 100,
            n * 78 / 100,
        ];
        let selection = RowSelection::from(vec![
            RowSelector::skip(cuts[0]),
            RowSelector::select(cuts[1] - cuts[0]),
            RowSelector::skip(cuts[2] - cuts[1]),
            RowSelector::select(cuts[3] - cuts[2]),
            RowSelector::skip(cuts[4] - cuts[3]),
            RowSelector::select(n - cuts[4]),
        ]);
        let picked: Vec<_> = want[cuts[0]..cuts[1]]
            .iter()
            .chain(&want[cuts[2]..cuts[3]])
            .chain(&want[cuts[4]..])
            .cloned()
            .collect();
        assert_eq!(read(&ours, Some(selection)), picked);

        let reader = |bytes: &[u8]| {
            let opts = ReadOptionsBuilder::new()
                .with_page_index()
                .with_reader_properties(
                    ReaderProperties::builder()
                        .set_read_bloom_filter(true)
                        .build(),
                )
                .build();
            SerializedFileReader::new_with_options(bytes::Bytes::copy_from_slice(bytes), opts)
                .unwrap()
        };
        // Each page's (null page, null count, min, max) and the boundary order.
        let bounds = |ci: &ColumnIndexMetaData| {
            let pages = (0..ci.num_pages() as usize)
                .map(|p| {
                    let (lo, hi) = match ci {
                        ColumnIndexMetaData::INT64(i) => (
                            i.min_value(p).map(|v| v.to_le_bytes().to_vec()),
                            i.max_value(p).map(|v| v.to_le_bytes().to_vec()),
                        ),
                        ColumnIndexMetaData::FIXED_LEN_BYTE_ARRAY(i) => (
                            i.min_value(p).map(<[u8]>::to_vec),
                            i.max_value(p).map(<[u8]>::to_vec),
                        ),
                        other => panic!("unexpected column index {other:?}"),
                    };
                    (ci.is_null_page(p), ci.null_count(p), lo, hi)
                })
                .collect::<Vec<_>>();
            (pages, ci.get_boundary_order())
        };
        let (ours, theirs) = (reader(&ours), reader(&theirs));
        let (om, tm) = (ours.metadata(), theirs.metadata());
        assert_eq!(om.num_row_groups(), batch.num_rows().div_ceil(group));
        assert_eq!(om.num_row_groups(), tm.num_row_groups());
        let schema = spans_schema();
        let mut compared = Compared::default();
        for g in 0..om.num_row_groups() {
            let (og, tg) = (om.row_group(g), tm.row_group(g));
            assert_eq!(og.num_rows(), tg.num_rows());
            for field in schema.fields() {
                let name = field.name();
                let fixed = matches!(field.data_type(), DataType::FixedSizeBinary(_));
                let delta = name == TRACE_ID
                    || name == START
                    || name == "duration_nano"
                    || UNIQUE_TAGS.contains(&name.as_str());
                let boolean = field.data_type() == &DataType::Boolean;
                let dictionary = matches!(
                    field.data_type(),
                    DataType::Dictionary(..) | DataType::UInt8 | DataType::Int32 | DataType::UInt32
                );
                if !fixed && !delta && !boolean && !dictionary {
                    continue;
                }
                let c = (0..og.num_columns())
                    .find(|&c| og.column(c).column_path().string() == *name)
                    .unwrap();
                let (oc, tc) = (og.column(c), tg.column(c));
                assert_eq!(oc.num_values(), tc.num_values(), "{name}");
                assert_eq!(oc.statistics(), tc.statistics(), "{name}");
                assert_eq!(oc.page_encoding_stats(), tc.page_encoding_stats(), "{name}");
                assert_eq!(encodings(oc), encodings(tc), "{name}");
                if delta {
                    compared.delta += 1;
                } else if fixed {
                    compared.fixed += 1;
                } else if boolean {
                    compared.bools += 1;
                } else {
                    compared.dictionary += 1;
                }
                assert_eq!(
                    oc.dictionary_page_offset().is_some(),
                    dictionary,
                    "{name}: a dictionary page"
                );
                let index = |m: &parquet::file::metadata::ParquetMetaData| {
                    m.column_index()
                        .and_then(|i| i.get(g))
                        .and_then(|i| i.get(c))
                        .filter(|i| !matches!(i, ColumnIndexMetaData::NONE))
                        .map(bounds)
                };
                assert_eq!(index(om), index(tm), "{name}: column index");
                if index(om).is_some() {
                    compared.column_indexes += 1;
                }
                let (ob, tb) = (
                    ours.get_row_group(g)
                        .unwrap()
                        .get_column_bloom_filter(c)
                        .cloned(),
                    theirs
                        .get_row_group(g)
                        .unwrap()
                        .get_column_bloom_filter(c)
                        .cloned(),
                );
                assert_eq!(ob.is_some(), tb.is_some(), "{name}");
                if let Some(ob) = ob {
                    let first = g * group;
                    for s in &want[first..(first + group).min(want.len())] {
                        if fixed {
                            assert!(ob.check(s.trace_id.0.as_slice()), "trace id in group {g}");
                        } else {
                            let svc = s.local.service_name.as_deref().unwrap();
                            assert!(ob.check(&svc), "{svc} in row group {g}");
                        }
                    }
                    assert!(!ob.check(&"not-a-service"));
                    if fixed {
                        // The same filter as parquet-rs's (same values,
                        // same folding): the same false positives.
                        let tb = tb.unwrap();
                        let mut x = 0x9e37_79b9_7f4a_7c15u64;
                        for _ in 0..2000 {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                            let id = u128::from(x).to_be_bytes();
                            assert_eq!(ob.check(id.as_slice()), tb.check(id.as_slice()));
                        }
                    }
                }
                let pages = |m: &parquet::file::metadata::ParquetMetaData| {
                    m.offset_index().unwrap()[g][c].page_locations().len()
                };
                assert_eq!(pages(om), pages(tm), "{name}");
            }
            compared.map_leaves += compare_map_leaves(om, tm, g, page);
        }
        compared
    }

    /// A column chunk's encodings, in a fixed order.
    fn encodings(m: &parquet::file::metadata::ColumnChunkMetaData) -> Vec<Encoding> {
        let mut e: Vec<_> = m.encodings().collect();
        e.sort_by_key(|e| format!("{e:?}"));
        e
    }

    /// The leaves of the map columns in row group `g` of two files: the
    /// same level counts, encodings and dictionary pages; ours in pages of
    /// `page` rows (parquet-rs checks the row count only every
    /// `write_batch_size` levels, so its pages run on past it). Answers how
    /// many leaves it compared.
    fn compare_map_leaves(
        om: &parquet::file::metadata::ParquetMetaData,
        tm: &parquet::file::metadata::ParquetMetaData,
        g: usize,
        page: usize,
    ) -> usize {
        let (og, tg) = (om.row_group(g), tm.row_group(g));
        let mut n = 0;
        for c in 0..og.num_columns() {
            let (oc, tc) = (og.column(c), tg.column(c));
            let path = oc.column_path().string();
            if !path.contains(".entries.") {
                continue;
            }
            assert_eq!(path, tc.column_path().string());
            assert_eq!(oc.num_values(), tc.num_values(), "{path}: levels");
            assert_eq!(oc.statistics(), tc.statistics(), "{path}");
            assert_eq!(oc.page_encoding_stats(), tc.page_encoding_stats(), "{path}");
            assert_eq!(encodings(oc), encodings(tc), "{path}");
            assert_eq!(
                oc.dictionary_page_offset().is_some(),
                tc.dictionary_page_offset().is_some(),
                "{path}"
            );
            let rows = |m: &parquet::file::metadata::ParquetMetaData| {
                m.offset_index().unwrap()[g][c]
                    .page_locations()
                    .iter()
                    .map(|p| p.first_row_index)
                    .collect::<Vec<_>>()
            };
            let want: Vec<i64> = (0..og.num_rows()).step_by(page).collect();
            assert_eq!(rows(om), want, "{path}: pages");
            assert_eq!(rows(tm)[0], 0);
            n += 1;
        }
        n
    }

    /// Sorted spans, as a flush writes them: merged dictionaries, a slice
    /// (the keys use part of them).
    #[test]
    fn hand_written_chunks_match_the_arrow_writer() {
        use crate::schema::spans_to_batch;
        let spans = varied_spans(2600, 5);
        let batches: Vec<RecordBatch> = spans
            .chunks(400)
            .map(|c| spans_to_batch(c).unwrap())
            .collect();
        let sorted = &sorted_partitions(&batches, 0).unwrap()[0].1;
        let batch = sorted.slice(100, 2400);
        let compared = assert_matches_arrow_writer(&batch, 700, 128);
        assert!(
            compared.dictionary >= 4 * 20,
            "{} dictionary chunks compared",
            compared.dictionary
        );
        let groups = 4;
        assert_eq!(compared.fixed, groups * 2, "span and parent ids");
        assert_eq!(
            compared.delta,
            groups * 5,
            "trace id, start, duration, URL, request id"
        );
        assert_eq!(compared.bools, groups * 3, "64-bit trace id, shared, debug");
        assert_eq!(
            compared.column_indexes,
            groups * 3,
            "trace id, start and duration: page statistics"
        );
        assert_eq!(compared.map_leaves, groups * 4 * 2, "four maps");
    }

    /// Unsorted rows (the boundary order unordered), pages all null (the
    /// durations of runs of spans), and one row group.
    #[test]
    fn hand_written_chunks_match_with_null_pages() {
        use crate::schema::spans_to_batch;
        let mut spans = varied_spans(1000, 9);
        for s in &mut spans[200..500] {
            s.duration_nanos = None;
        }
        for s in &mut spans[600..] {
            s.attributes.remove("http.url");
        }
        let batch = spans_to_batch(&spans).unwrap();
        let compared = assert_matches_arrow_writer(&batch, 1000, 100);
        assert_eq!(compared.map_leaves, 8);
        assert_eq!(compared.delta, 5);
        assert_eq!(compared.column_indexes, 3);
    }

    /// `batch` written by [`write_parquet`], and the spans read back.
    fn write_and_read(
        batch: &RecordBatch,
        props: WriterProperties,
        group: usize,
    ) -> (bytes::Bytes, Vec<crate::model::Span>) {
        let mut out = Vec::new();
        write_parquet(batch, &mut out, props, group).unwrap();
        let bytes = bytes::Bytes::from(out);
        let r = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
            .unwrap()
            .build()
            .unwrap();
        let spans = r
            .flat_map(|b| crate::schema::batch_to_spans(&b.unwrap()).unwrap())
            .collect();
        (bytes, spans)
    }

    /// Null maps, empty maps and null values (which the span builder never
    /// writes, but a reader of the schema allows) take their levels as in
    /// parquet-rs's file, and read back.
    #[test]
    fn map_chunks_with_null_maps_and_values() {
        use crate::schema::spans_to_batch;
        use arrow::array::{ArrayRef, MapBuilder, MapFieldNames, StringBuilder};
        let base = spans_to_batch(&varied_spans(600, 2)).unwrap();
        let names = MapFieldNames {
            entry: "entries".into(),
            key: "keys".into(),
            value: "values".into(),
        };
        let mut b = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
        for i in 0..base.num_rows() {
            match i % 7 {
                0 => b.append(false).unwrap(),
                1 => b.append(true).unwrap(),
                _ => {
                    for e in 0..(i % 4) {
                        b.keys().append_value(format!("k{}", (i + e) % 9));
                        if (i + e) % 5 == 0 {
                            b.values().append_null();
                        } else {
                            b.values().append_value(format!("v{}", i % 13));
                        }
                    }
                    b.append(true).unwrap();
                }
            }
        }
        let map: ArrayRef = Arc::new(b.finish());
        let schema = spans_schema();
        let at = schema.index_of("attributes").unwrap();
        let mut columns = base.columns().to_vec();
        columns[at] = map.clone();
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let (group, page) = (600, 64);
        let props = writer_props(batch.num_rows())
            .into_builder()
            .set_data_page_row_count_limit(page)
            .build();
        let mut ours = Vec::new();
        write_parquet(&batch, &mut ours, props.clone(), group).unwrap();
        let mut theirs = Vec::new();
        let mut w = ArrowWriter::try_new(&mut theirs, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let read = |bytes: Vec<u8>| {
            let opts = parquet::arrow::arrow_reader::ArrowReaderOptions::new()
                .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required);
            let b = ParquetRecordBatchReaderBuilder::try_new_with_options(
                bytes::Bytes::from(bytes),
                opts,
            )
            .unwrap();
            let mask = parquet::arrow::ProjectionMask::roots(b.parquet_schema(), [at]);
            let meta = b.metadata().clone();
            let batches: Vec<RecordBatch> = b
                .with_projection(mask)
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect();
            let cols: Vec<&dyn Array> = batches.iter().map(|b| b.column(0).as_ref()).collect();
            (arrow::compute::concat(&cols).unwrap(), meta)
        };
        let ((got, om), (_, tm)) = (read(ours), read(theirs));
        assert_eq!(got.as_ref(), map.as_ref());
        assert_eq!(got.null_count(), map.null_count());
        assert_eq!(compare_map_leaves(&om, &tm, 0, page), 8);
    }

    /// A page of strings ends once its values pass the page size limit
    /// (the row that passes it included), not only at the row count.
    #[test]
    fn string_pages_end_at_the_byte_limit() {
        use crate::schema::spans_to_batch;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::file::serialized_reader::ReadOptionsBuilder;
        let mut spans = varied_spans(700, 3);
        for (i, s) in spans.iter_mut().enumerate() {
            let url = format!("http://x/{}", "a".repeat(i % 97));
            s.attributes
                .insert("http.url".into(), crate::model::AttrValue::Str(url));
        }
        let batch = spans_to_batch(&spans).unwrap();
        let limit = 1000;
        let props = writer_props(batch.num_rows())
            .into_builder()
            .set_data_page_size_limit(limit)
            .build();
        let (bytes, got) = write_and_read(&batch, props, 700);
        assert_eq!(got, spans);
        let opts = ReadOptionsBuilder::new().with_page_index().build();
        let reader = SerializedFileReader::new_with_options(bytes, opts).unwrap();
        let meta = reader.metadata();
        let c = (0..meta.row_group(0).num_columns())
            .find(|&c| meta.row_group(0).column(c).column_path().string() == "tag_http_url")
            .unwrap();
        let firsts: Vec<usize> = meta.offset_index().unwrap()[0][c]
            .page_locations()
            .iter()
            .map(|p| p.first_row_index as usize)
            .chain([spans.len()])
            .collect();
        let len = |i: usize| match &spans[i].attributes["http.url"] {
            crate::model::AttrValue::Str(s) => s.len(),
            _ => unreachable!(),
        };
        assert!(firsts.len() > 10, "{} pages", firsts.len() - 1);
        for w in firsts.windows(2) {
            let sizes: Vec<usize> = (w[0]..w[1]).map(len).collect();
            let total: usize = sizes.iter().sum();
            assert!(
                total >= limit || w[1] == spans.len(),
                "page {w:?}: {total} bytes"
            );
            assert!(
                total - sizes[sizes.len() - 1] < limit,
                "page {w:?} went on past the limit"
            );
        }
    }

    /// Where the layout does not apply, parquet-rs writes the column: a
    /// dictionary over the page size limit, page statistics.
    #[test]
    fn dictionary_chunks_fall_back_to_parquet_rs() {
        use crate::schema::spans_to_batch;
        let spans = varied_spans(900, 5);
        let batch = spans_to_batch(&spans).unwrap();
        let descr = {
            let w = ArrowWriter::try_new(Vec::new(), spans_schema(), None).unwrap();
            let (f, _) = w.into_serialized_writer().unwrap();
            f.schema_descr().columns().to_vec()
        };
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let leaf = |name: &str| descr.iter().find(|d| d.path().string() == name).unwrap();
        let encoded = |name: &str, props: &WriterProperties| {
            dictchunk::encode(&col(name), leaf(name), props)
                .unwrap()
                .is_some()
        };
        let small = WriterProperties::builder()
            .set_dictionary_page_size_limit(64)
            .build();
        assert!(!encoded("tag_peer_address", &small));
        let paged = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::Page)
            .build();
        assert!(!encoded("name", &paged));
        let plain = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::None)
            .set_compression(Compression::LZ4_RAW)
            .build();
        assert!(encoded("name", &plain));
        // Integers: ours without statistics, parquet-rs's with them.
        let ours = writer_props(batch.num_rows());
        for int in ["kind", "status_code", "local_port", "remote_port", "flags"] {
            assert!(encoded(int, &ours), "{int}");
            assert!(!encoded(int, &paged), "{int}");
        }
        // Fixed-width ids: ours PLAIN without statistics, bloom filter or
        // dictionary (span and parent ids), or with prefix deltas (the
        // trace id); ids with a dictionary or statistics otherwise are
        // parquet-rs's.
        assert!(encoded("span_id", &ours));
        assert!(encoded("parent_span_id", &ours));
        let with = |f: fn(
            parquet::file::properties::WriterPropertiesBuilder,
        ) -> parquet::file::properties::WriterPropertiesBuilder| {
            f(ours.clone().into_builder()).build()
        };
        // Delta-encoded columns and booleans: ours, page statistics
        // included, except where statistics would need truncating or a
        // bloom filter hashing integers.
        for c in [
            TRACE_ID,
            START,
            "duration_nano",
            "tag_http_url",
            "tag_request_id",
        ] {
            assert!(encoded(c, &ours), "{c}");
        }
        for c in ["trace_id_64", "shared", "debug"] {
            assert!(encoded(c, &ours), "{c}");
            assert!(!encoded(c, &paged), "{c}");
        }
        let truncated = with(|b| b.set_column_index_truncate_length(Some(8)));
        assert!(!encoded(TRACE_ID, &truncated));
        let hashed = with(|b| b.set_column_bloom_filter_enabled(START.into(), true));
        assert!(!encoded(START, &hashed));
        let url_stats = with(|b| {
            b.set_column_statistics_enabled("tag_http_url".into(), EnabledStatistics::Chunk)
        });
        assert!(!encoded("tag_http_url", &url_stats));
        let no_delta = with(|b| b.set_column_encoding(START.into(), Encoding::PLAIN));
        assert!(!encoded(START, &no_delta));
        let chunk_stats =
            with(|b| b.set_column_statistics_enabled("span_id".into(), EnabledStatistics::Chunk));
        assert!(!encoded("span_id", &chunk_stats));
        let dictionary = with(|b| b.set_column_dictionary_enabled("span_id".into(), true));
        assert!(!encoded("span_id", &dictionary));
        let bloom = with(|b| b.set_column_bloom_filter_enabled("parent_span_id".into(), true));
        assert!(!encoded("parent_span_id", &bloom));
        // Maps of strings: ours with a dictionary and no statistics.
        let map = |name: &str, props: &WriterProperties| {
            let (k, v) = (
                format!("{name}.entries.keys"),
                format!("{name}.entries.values"),
            );
            dictchunk::encode_map(&col(name), [leaf(&k), leaf(&v)], props)
                .unwrap()
                .is_some()
        };
        for name in ["attributes", "resource_attributes"] {
            assert!(map(name, &ours), "{name}");
            let tiny = with(|b| b.set_dictionary_page_size_limit(16));
            assert!(!map(name, &tiny), "{name}: a dictionary over the limit");
            assert!(!map(name, &paged), "{name}: statistics");
            let plain = with(|b| b.set_dictionary_enabled(false));
            assert!(!map(name, &plain), "{name}: no dictionary");
        }
        for props in [small, paged, truncated, hashed, url_stats, no_delta] {
            assert_eq!(write_and_read(&batch, props, 300).1, spans);
        }
    }

    /// [`sort_positions`]' order, the obvious way: every row's whole key.
    fn positions_by_whole_keys(
        batches: &[RecordBatch],
        fallback: i64,
    ) -> (Vec<Vec<u32>>, HourRanges) {
        let mut keys = Vec::new();
        for (b, batch) in batches.iter().enumerate() {
            let ids = batch
                .column_by_name(TRACE_ID)
                .unwrap()
                .as_fixed_size_binary();
            let start = batch
                .column_by_name(START)
                .unwrap()
                .as_primitive::<Int64Type>();
            for r in 0..batch.num_rows() {
                let start = start.is_valid(r).then(|| start.value(r));
                let id: [u8; 16] = ids.value(r).try_into().unwrap();
                let hour = start.unwrap_or(fallback).div_euclid(HOUR_NANOS) * HOUR_NANOS;
                keys.push((hour, u128::from_be_bytes(id), start, b, r));
            }
        }
        keys.sort();
        let mut pos: Vec<Vec<u32>> = batches.iter().map(|b| vec![0; b.num_rows()]).collect();
        let mut parts: HourRanges = Vec::new();
        for (i, &(hour, _, _, b, r)) in keys.iter().enumerate() {
            pos[b][r] = i as u32;
            match parts.last_mut() {
                Some((h, range)) if *h == hour => range.end = i + 1,
                _ => parts.push((hour, i..i + 1)),
            }
        }
        (pos, parts)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Bucketed and plain sorts agree with a comparison sort: trace
        /// keys spread over all bits, over a few low bits, all equal, with
        /// long runs of equal keys.
        #[test]
        fn sort_rows_orders_as_a_comparison_sort(
            n in 0usize..20_000,
            seed in proptest::prelude::any::<u64>(),
            spread in 0u32..65,
            repeat in 1u64..12,
        ) {
            let mut x = seed | 1;
            let mut rows: Vec<SortRow> = (0..n as u32)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = if spread == 64 { x } else { x & ((1u64 << spread) - 1) };
                    SortRow {
                        hi: (key / repeat * repeat) ^ 0xF0F0_0000_0000_0000,
                        lo: x % 3,
                        has_start: x % 5 != 0,
                        start: (x % 7) as i64 - 3,
                        row: i.wrapping_mul(2_654_435_761),
                    }
                })
                .collect();
            let mut want = rows.clone();
            want.sort();
            sort_rows(&mut rows);
            proptest::prop_assert_eq!(rows, want);
        }

        /// Rows are ordered as sorting their whole keys (hour, trace id,
        /// optional start, arrival) orders them: random ids, 64-bit ids
        /// (zero high half), ids sharing long prefixes, repeated ids with
        /// and without start times, several hours and empty batches.
        #[test]
        fn sort_positions_order_rows_by_their_whole_keys(
            rows in proptest::collection::vec(
                (0u8..4, 0u64..6, proptest::prelude::any::<u64>(), proptest::option::weighted(0.8, 0i64..4)),
                0..300,
            ),
            cuts in proptest::collection::vec(0usize..300, 0..6),
            shape in 0u8..4,
        ) {
            use crate::model::{Span, SpanId, TraceId, UnixNanos};
            use crate::schema::spans_to_batch;
            let t0 = 1_795_640_400i64 * 1_000_000_000;
            let spans: Vec<Span> = rows
                .iter()
                .enumerate()
                .map(|(i, &(pick, small, wide, start))| {
                    let (hi, lo) = match (shape, pick) {
                        (0, _) => (wide, wide.rotate_left(17)),
                        (1, _) => (0, small * (wide >> 40)),
                        (2, 0) => (0xABCD, small),
                        (2, _) => (0xABCD, small << 60 | (wide & 3)),
                        (_, _) => (small, pick as u64),
                    };
                    Span {
                        trace_id: TraceId::from_u64s(hi, lo),
                        span_id: SpanId((i as u64 + 1).to_be_bytes()),
                        start: start.map(|h| UnixNanos(t0 + h * HOUR_NANOS / 2 + (wide % 5) as i64)),
                        ..Default::default()
                    }
                })
                .collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(spans.len())).collect();
            cuts.push(0);
            cuts.push(spans.len());
            cuts.sort_unstable();
            let batches: Vec<RecordBatch> = cuts
                .windows(2)
                .map(|w| spans_to_batch(&spans[w[0]..w[1]]).unwrap())
                .collect();
            let fallback = t0 + 3 * HOUR_NANOS;
            let (pos, parts) = sort_positions(&batches, fallback).unwrap();
            let (want_pos, want_parts) = positions_by_whole_keys(&batches, fallback);
            proptest::prop_assert_eq!(pos, want_pos);
            proptest::prop_assert_eq!(parts, want_parts);
        }

        /// Any row group and page size, any slice of merged dictionaries:
        /// the file reads back as the spans written.
        #[test]
        fn dictionary_chunks_read_back(
            seed in 0u64..1_000_000,
            n in 1usize..1500,
            group in 1usize..900,
            page in 1usize..300,
            skip in 0usize..50,
        ) {
            use crate::schema::{batch_to_spans, spans_to_batch};
            let spans = varied_spans(n + skip, seed);
            let batches: Vec<RecordBatch> = spans
                .chunks(97)
                .map(|c| spans_to_batch(c).unwrap())
                .collect();
            let sorted = &sorted_partitions(&batches, 0).unwrap()[0].1;
            let batch = sorted.slice(skip, n);
            let props = writer_props(n)
                .into_builder()
                .set_data_page_row_count_limit(page)
                .set_write_batch_size(page)
                .build();
            let mut out = Vec::new();
            write_parquet(&batch, &mut out, props, group).unwrap();
            let r = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(out))
                .unwrap()
                .build()
                .unwrap();
            let got: Vec<_> = r.flat_map(|b| batch_to_spans(&b.unwrap()).unwrap()).collect();
            proptest::prop_assert_eq!(got, batch_to_spans(&batch).unwrap());
        }
    }

    /// Within a trace: no start first, then by start (negative ones too),
    /// ties by arrival; hours in order whatever the arrival order.
    #[test]
    fn sort_order_within_a_trace_and_across_hours() {
        use crate::model::{Span, SpanId, TraceId, UnixNanos};
        use crate::schema::{batch_to_spans, spans_to_batch};
        let h = HOUR_NANOS;
        let fallback = 2 * h + 10;
        let span = |i: u8, start: Option<i64>| Span {
            trace_id: TraceId::from_u64s(0, 7),
            span_id: SpanId([i; 8]),
            start: start.map(UnixNanos),
            ..Default::default()
        };
        let batches = vec![
            spans_to_batch(&[
                span(1, Some(2 * h + 5)),
                span(2, None),
                span(3, Some(-5)),
                span(4, Some(2 * h + 1)),
            ])
            .unwrap(),
            spans_to_batch(&[span(5, None), span(6, Some(2 * h + 1)), span(7, Some(3))]).unwrap(),
        ];
        let parts = sorted_partitions(&batches, fallback).unwrap();
        let order: Vec<(i64, Vec<u8>)> = parts
            .iter()
            .map(|(hour, b)| {
                let ids = batch_to_spans(b)
                    .unwrap()
                    .iter()
                    .map(|s| s.span_id.0[0])
                    .collect();
                (*hour / h, ids)
            })
            .collect();
        assert_eq!(
            order,
            vec![(-1, vec![3]), (0, vec![7]), (2, vec![2, 5, 4, 6, 1])]
        );
    }
}
