//! Parquet files of spans: layout, writing, reading back (for compaction).

use crate::error::Result;
use crate::manifest::FileEntry;
use crate::schema::{SERVICE, START, TRACE_ID, UNIQUE_TAGS, spans_schema};
use crate::tindex::{TraceFilter, sidecar_path};
use arrow::array::{Array, AsArray, FixedSizeBinaryArray};
use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices, take_record_batch};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::collections::{BTreeMap, BTreeSet};
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
        .set_statistics_enabled(EnabledStatistics::Page)
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

/// Sorts rows by trace id, then start time: a trace is then a few adjacent rows.
pub fn sort_batch(batch: &RecordBatch) -> Result<RecordBatch> {
    let cols = [TRACE_ID, START]
        .iter()
        .map(|c| {
            Ok(SortColumn {
                values: batch.column_by_name(c).cloned().ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError(format!("no column {c}"))
                })?,
                options: Some(SortOptions {
                    descending: false,
                    nulls_first: true,
                }),
            })
        })
        .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
    let idx = lexsort_to_indices(&cols, None)?;
    Ok(take_record_batch(batch, &idx)?)
}

/// The rows of `batches` sorted as [`sort_batch`] sorts them and split by
/// the hour their span starts in (spans without a start time go to
/// `fallback`'s hour), each row copied
/// once: only the two sort-key columns are concatenated, the rows are then
/// gathered straight from the input batches (`interleave`), instead of
/// concatenating everything and copying it again in sorted order.
pub fn sorted_partitions(
    batches: &[RecordBatch],
    fallback: i64,
) -> Result<Vec<(i64, RecordBatch)>> {
    let column = |name: &str| -> Result<Vec<&dyn arrow::array::Array>> {
        batches
            .iter()
            .map(|b| {
                b.column_by_name(name).map(|c| c.as_ref()).ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError(format!("no column {name}")).into()
                })
            })
            .collect()
    };
    let trace = arrow::compute::concat(&column(TRACE_ID)?)?;
    let start = arrow::compute::concat(&column(START)?)?;
    let options = Some(SortOptions {
        descending: false,
        nulls_first: true,
    });
    let idx = lexsort_to_indices(
        &[
            SortColumn {
                values: trace,
                options,
            },
            SortColumn {
                values: start.clone(),
                options,
            },
        ],
        None,
    )?;
    // Global row number -> (batch, row in batch).
    let mut first_row = Vec::with_capacity(batches.len() + 1);
    let mut n = 0usize;
    for b in batches {
        first_row.push(n);
        n += b.num_rows();
    }
    first_row.push(n);
    let start = start.as_primitive::<Int64Type>();
    let mut groups: BTreeMap<i64, Vec<(usize, usize)>> = BTreeMap::new();
    for &i in idx.values() {
        let i = i as usize;
        let t = if start.is_null(i) {
            fallback
        } else {
            start.value(i)
        };
        let b = first_row.partition_point(|&f| f <= i) - 1;
        groups
            .entry(t.div_euclid(HOUR_NANOS) * HOUR_NANOS)
            .or_default()
            .push((b, i - first_row[b]));
    }
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    groups
        .into_iter()
        .map(|(k, rows)| Ok((k, arrow::compute::interleave_record_batch(&refs, &rows)?)))
        .collect()
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

/// Writes one sorted batch as a Parquet file (and its trace-id filter
/// beside it) and describes it for the manifest.
pub async fn write_file(
    store: &dyn ObjectStore,
    path: &str,
    partition: i64,
    level: u32,
    batch: &RecordBatch,
) -> Result<(FileEntry, Option<TraceFilter>)> {
    let rows = batch.num_rows();
    let mut buf = Vec::with_capacity(rows * 64);
    {
        let mut w = ArrowWriter::try_new(&mut buf, spans_schema(), Some(writer_props(rows)))?;
        w.write(batch)?;
        w.close()?;
    }
    let bytes = buf.len() as u64;
    let entry = describe(batch, path, partition, level, bytes)?;
    let filter = batch
        .column_by_name(TRACE_ID)
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>())
        .and_then(|ids| TraceFilter::build(ids.iter().flatten()));
    if let Some(f) = &filter {
        store
            .put(&ObjectPath::from(sidecar_path(path)), f.encode().into())
            .await?;
    }
    store.put(&ObjectPath::from(path), buf.into()).await?;
    Ok((entry, filter))
}

fn describe(
    batch: &RecordBatch,
    path: &str,
    partition: i64,
    level: u32,
    bytes: u64,
) -> Result<FileEntry> {
    let start = batch
        .column_by_name(START)
        .map(|c| c.as_primitive::<Int64Type>());
    let dur = batch
        .column_by_name("duration_nano")
        .map(|c| c.as_primitive::<Int64Type>());
    let (mut min_time, mut max_time, mut max_end) = (i64::MAX, i64::MIN, i64::MIN);
    if let Some(start) = start {
        for i in 0..start.len() {
            if start.is_null(i) {
                continue;
            }
            let s = start.value(i);
            let d = dur.filter(|d| !d.is_null(i)).map_or(0, |d| d.value(i));
            min_time = min_time.min(s);
            max_time = max_time.max(s);
            max_end = max_end.max(s.saturating_add(d));
        }
    }
    if min_time == i64::MAX {
        (min_time, max_time, max_end) = (partition, partition, partition);
    }
    let mut services = BTreeSet::new();
    if let Some(c) = batch.column_by_name(SERVICE) {
        let s = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8)?;
        let s = s.as_string::<i32>();
        for v in s.iter().flatten() {
            if !services.contains(v) {
                services.insert(v.to_string());
            }
        }
    }
    let ids = batch
        .column_by_name(TRACE_ID)
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>());
    let (min_id, max_id) = match ids {
        Some(ids) if !ids.is_empty() => {
            let mut lo = ids.value(0);
            let mut hi = ids.value(0);
            for v in ids.iter().flatten() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
            (hex::encode(lo), hex::encode(hi))
        }
        _ => (String::new(), String::new()),
    };
    Ok(FileEntry {
        path: path.to_string(),
        partition,
        min_time,
        max_time,
        max_end_time: max_end,
        rows: batch.num_rows() as u64,
        bytes,
        services: services.into_iter().collect(),
        min_trace_id: min_id,
        max_trace_id: max_id,
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
