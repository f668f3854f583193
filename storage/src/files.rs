//! Parquet files of spans: layout, writing, reading back (for compaction).

use crate::error::Result;
use crate::manifest::FileEntry;
use crate::scatter::scatter_batch;
use crate::schema::{SERVICE, START, TRACE_ID, UNIQUE_TAGS, spans_schema};
use crate::tindex::{TraceFilter, sidecar_path};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
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
fn sort_positions(batches: &[RecordBatch], fallback: i64) -> Result<(Vec<Vec<u32>>, HourRanges)> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Key {
        hour: i64,
        trace: u128,
        start: Option<i64>,
        batch: u32,
        row: u32,
    }
    let schema_err = |what: &str| arrow::error::ArrowError::SchemaError(what.to_string());
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if u32::try_from(total).is_err() || u32::try_from(batches.len()).is_err() {
        return Err(schema_err("too many rows to sort at once").into());
    }
    let mut keys = Vec::with_capacity(total);
    for (b, batch) in batches.iter().enumerate() {
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
            keys.push(Key {
                hour: start.unwrap_or(fallback).div_euclid(HOUR_NANOS) * HOUR_NANOS,
                trace: u128::from_be_bytes(id),
                start,
                batch: b as u32,
                row: r as u32,
            });
        }
    }
    keys.sort_unstable();
    let mut pos: Vec<Vec<u32>> = batches.iter().map(|b| vec![0; b.num_rows()]).collect();
    let mut parts: HourRanges = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        pos[k.batch as usize][k.row as usize] = i as u32;
        match parts.last_mut() {
            Some((hour, range)) if *hour == k.hour => range.end = i + 1,
            _ => parts.push((k.hour, i..i + 1)),
        }
    }
    Ok((pos, parts))
}

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
    {
        let mut w = ArrowWriter::try_new(&mut buf, spans_schema(), Some(writer_props(rows)))?;
        w.write(batch)?;
        w.close()?;
    }
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
}
