//! Parquet files of samples: rows sorted by (series id, timestamp).
//!
//! Columns: `series_id` (the u64 id bit-cast to i64; dictionary + RLE, so a
//! run of one series costs a few bytes), `timestamp` (ms, DELTA_BINARY_PACKED:
//! regular scrape intervals encode to ~0 bits), `value_int` (integral values,
//! DELTA_BINARY_PACKED: counters cost the bits of their increments) and
//! `value` (every other value incl. NaN and stale markers, BYTE_STREAM_SPLIT).
//! Exactly one of the two value columns is non-null per row.

// ParquetObjectReader is deprecated in parquet 59 in favour of a hand-written
// AsyncFileReader; it still works and is what DataFusion 55 uses. TODO: move
// to our own reader when we add a cache of column chunks.
#![allow(deprecated)]

use crate::error::Result;
use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, Int64Array, Int64Builder};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};

pub(crate) const SERIES_ID: &str = "series_id";
pub(crate) const TIMESTAMP: &str = "timestamp";
pub(crate) const VALUE_INT: &str = "value_int";
pub(crate) const VALUE: &str = "value";

/// Rows per row group. Large: the page index on series_id does the fine
/// pruning, and every column chunk read costs a codec set-up (parquet-rs
/// builds a zstd compressor and decompressor per chunk). The writer holds
/// one encoded row group in memory: ~15 MB at this size.
const ROW_GROUP_ROWS: usize = 16 * 1024 * 1024;

/// Rows per data page. `series_id` carries page-level min/max (the page
/// index), so a read of a few series decodes only the pages holding them
/// (a series of a 2-hour partition at 15 s is 480 rows).
const PAGE_ROWS: usize = 4096;

pub(crate) static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(SERIES_ID, DataType::Int64, false),
        Field::new(TIMESTAMP, DataType::Int64, false),
        Field::new(VALUE_INT, DataType::Int64, true),
        Field::new(VALUE, DataType::Float64, true),
    ]))
});

/// One Parquet file of samples, as the manifest lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SampleFile {
    pub path: String,
    /// Start of the partition (ms), see `PARTITION_MS`.
    pub partition: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub rows: u64,
    pub bytes: u64,
    pub series: u64,
    pub level: u32,
}

/// Two hours, like Prometheus's head blocks.
pub(crate) const PARTITION_MS: i64 = 2 * 3_600 * 1_000;

/// `samples/2026-11-25T20/00000000000000000042.parquet`
pub(crate) fn file_path(partition_ms: i64, id: u64) -> String {
    let secs = partition_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3_600;
    let (y, m, d) = crate::files::civil_from_days(days);
    format!("samples/{y:04}-{m:02}-{d:02}T{hour:02}/{id:020}.parquet")
}

pub(crate) fn series_sidecar(path: &str) -> String {
    format!("{}.series", path.trim_end_matches(".parquet"))
}

fn props() -> WriterProperties {
    let ts = ColumnPath::from(TIMESTAMP);
    let vi = ColumnPath::from(VALUE_INT);
    let v = ColumnPath::from(VALUE);
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_column_statistics_enabled(ColumnPath::from(SERIES_ID), EnabledStatistics::Page)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_column_dictionary_enabled(ts.clone(), false)
        .set_column_encoding(ts, Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(vi.clone(), false)
        .set_column_encoding(vi, Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(v.clone(), false)
        .set_column_encoding(v, Encoding::BYTE_STREAM_SPLIT)
        .build()
}

/// Whether a value goes to `value_int` (exactly representable, not -0.0).
fn integral(v: f64) -> Option<i64> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 && !(v == 0.0 && v.is_sign_negative()) {
        Some(v as i64)
    } else {
        None
    }
}

/// Builds the columns of a file from series already sorted by id, each
/// with samples sorted by time and unique.
pub(crate) struct FileBuilder {
    ids: Int64Builder,
    ts: Int64Builder,
    vi: Int64Builder,
    vf: Float64Builder,
    pub(crate) rows: usize,
    pub(crate) series: u64,
    pub(crate) min_ts: i64,
    pub(crate) max_ts: i64,
}

impl FileBuilder {
    pub(crate) fn new() -> Self {
        FileBuilder {
            ids: Int64Builder::new(),
            ts: Int64Builder::new(),
            vi: Int64Builder::new(),
            vf: Float64Builder::new(),
            rows: 0,
            series: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        }
    }

    pub(crate) fn push_series(&mut self, id: u64, ts: &[i64], vals: &[f64]) {
        if ts.is_empty() {
            return;
        }
        self.series += 1;
        self.rows += ts.len();
        self.min_ts = self.min_ts.min(ts[0]);
        self.max_ts = self.max_ts.max(ts[ts.len() - 1]);
        for (&t, &v) in ts.iter().zip(vals) {
            self.ids.append_value(id as i64);
            self.ts.append_value(t);
            match integral(v) {
                Some(i) => {
                    self.vi.append_value(i);
                    self.vf.append_null();
                }
                None => {
                    self.vi.append_null();
                    self.vf.append_value(v);
                }
            }
        }
    }

    pub(crate) fn finish(mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.ids.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.vi.finish()),
            Arc::new(self.vf.finish()),
        ];
        Ok(RecordBatch::try_new(SCHEMA.clone(), cols)?)
    }
}

pub(crate) fn writer(buf: Vec<u8>) -> Result<ArrowWriter<Vec<u8>>> {
    Ok(ArrowWriter::try_new(buf, SCHEMA.clone(), Some(props()))?)
}

/// Reader metadata of one file, cached by the store (footer read once).
pub(crate) async fn load_metadata(
    store: Arc<dyn ObjectStore>,
    file: &SampleFile,
) -> Result<ArrowReaderMetadata> {
    let mut reader = ParquetObjectReader::new(store, ObjectPath::from(file.path.as_str()))
        .with_file_size(file.bytes);
    Ok(ArrowReaderMetadata::load_async(
        &mut reader,
        ArrowReaderOptions::new().with_page_index(true),
    )
    .await?)
}

/// Rows of the wanted series (sorted, as i64 bit patterns) within
/// `[start, end]`, as (series id, timestamp, value) callbacks. Row groups
/// whose id or time range cannot hold a wanted row are skipped.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_rows(
    store: Arc<dyn ObjectStore>,
    cached: Option<bytes::Bytes>,
    file: &SampleFile,
    meta: ArrowReaderMetadata,
    wanted: &[i64],
    start: i64,
    end: i64,
    mut out: impl FnMut(i64, i64, f64),
) -> Result<u64> {
    let mut groups = Vec::new();
    for (i, rg) in meta.metadata().row_groups().iter().enumerate() {
        let range = |c: usize| match rg.column(c).statistics() {
            Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                (Some(a), Some(b)) => Some((*a, *b)),
                _ => None,
            },
            _ => None,
        };
        if let Some((lo, hi)) = range(0) {
            let k = wanted.partition_point(|&w| w < lo);
            if k == wanted.len() || wanted[k] > hi {
                continue;
            }
        }
        if let Some((lo, hi)) = range(1)
            && (hi < start || lo > end)
        {
            continue;
        }
        groups.push(i);
    }
    if groups.is_empty() {
        return Ok(0);
    }
    let selection = page_selection(&meta, &groups, wanted);
    if let Some(bytes) = cached {
        // In memory: decode synchronously, no range requests.
        let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, meta)
            .with_row_groups(groups)
            .with_batch_size(64 * 1024);
        if let Some(sel) = selection {
            builder = builder.with_row_selection(sel);
        }
        let mut rows = 0u64;
        for batch in builder.build()? {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            visit(&batch, wanted, start, end, &mut out);
        }
        return Ok(rows);
    }
    let reader = ParquetObjectReader::new(store, ObjectPath::from(file.path.as_str()))
        .with_file_size(file.bytes);
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta)
        .with_row_groups(groups)
        .with_batch_size(64 * 1024);
    if let Some(sel) = selection {
        builder = builder.with_row_selection(sel);
    }
    let mut stream = builder.build()?;
    let mut rows = 0u64;
    while let Some(batch) = stream.try_next().await? {
        rows += batch.num_rows() as u64;
        visit(&batch, wanted, start, end, &mut out);
    }
    Ok(rows)
}

/// With a page index on `series_id`: the rows of the pages of the chosen
/// row groups whose id range holds a wanted id (None: read whole groups).
fn page_selection(
    meta: &ArrowReaderMetadata,
    groups: &[usize],
    wanted: &[i64],
) -> Option<RowSelection> {
    let md = meta.metadata();
    let (ci, oi) = (md.column_index()?, md.offset_index()?);
    let mut sel: Vec<RowSelector> = Vec::new();
    for &g in groups {
        let rows = md.row_group(g).num_rows() as usize;
        let (Some(ColumnIndexMetaData::INT64(idx)), Some(off)) = (
            ci.get(g).and_then(|c| c.first()),
            oi.get(g).and_then(|c| c.first()),
        ) else {
            return None;
        };
        let pages = off.page_locations();
        if pages.len() != idx.num_pages() as usize {
            return None;
        }
        for (k, p) in pages.iter().enumerate() {
            let first = p.first_row_index as usize;
            let next = pages
                .get(k + 1)
                .map_or(rows, |q| q.first_row_index as usize);
            let keep = match (idx.min_value(k), idx.max_value(k)) {
                (Some(&lo), Some(&hi)) => {
                    let i = wanted.partition_point(|&w| w < lo);
                    i < wanted.len() && wanted[i] <= hi
                }
                _ => true,
            };
            let n = next.saturating_sub(first);
            sel.push(if keep {
                RowSelector::select(n)
            } else {
                RowSelector::skip(n)
            });
        }
    }
    Some(RowSelection::from(sel))
}

/// Calls `out` for every row of the wanted series in `[start, end]`.
pub(crate) fn visit(
    batch: &RecordBatch,
    wanted: &[i64],
    start: i64,
    end: i64,
    out: &mut impl FnMut(i64, i64, f64),
) {
    let ids: &Int64Array = batch.column(0).as_primitive::<Int64Type>();
    let ts = batch.column(1).as_primitive::<Int64Type>();
    let vi = batch.column(2).as_primitive::<Int64Type>();
    let vf = batch.column(3).as_primitive::<Float64Type>();
    let ids = ids.values();
    let n = ids.len();
    let mut i = 0;
    // Rows are sorted by id: jump run by run.
    while i < n {
        let id = ids[i];
        let run_end = i + ids[i..].partition_point(|&x| x == id);
        if wanted.binary_search(&id).is_ok() {
            let tsv = &ts.values()[i..run_end];
            let a = i + tsv.partition_point(|&t| t < start);
            let b = i + tsv.partition_point(|&t| t <= end);
            for r in a..b {
                let v = if vi.is_valid(r) {
                    vi.value(r) as f64
                } else {
                    vf.value(r)
                };
                out(id, ts.value(r), v);
            }
        }
        i = run_end;
    }
}

/// Every row of a file (compaction).
pub(crate) async fn read_all(
    store: Arc<dyn ObjectStore>,
    file: &SampleFile,
    mut out: impl FnMut(i64, i64, f64),
) -> Result<()> {
    let meta = load_metadata(store.clone(), file).await?;
    let reader = ParquetObjectReader::new(store, ObjectPath::from(file.path.as_str()))
        .with_file_size(file.bytes);
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta)
        .with_batch_size(64 * 1024)
        .build()?;
    while let Some(batch) = stream.try_next().await? {
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let ts = batch.column(1).as_primitive::<Int64Type>();
        let vi = batch.column(2).as_primitive::<Int64Type>();
        let vf = batch.column(3).as_primitive::<Float64Type>();
        for r in 0..batch.num_rows() {
            let v = if vi.is_valid(r) {
                vi.value(r) as f64
            } else {
                vf.value(r)
            };
            out(ids.value(r), ts.value(r), v);
        }
    }
    Ok(())
}
