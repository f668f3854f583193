//! Trace-by-id reads without a query plan: the buffer is filtered in memory;
//! for files, the in-memory trace-id filter and the file's trace-id range
//! pick the files, the row-group statistics and the `trace_id` page index
//! pick the pages, and the Parquet reader decodes the `trace_id` pages first
//! and the other columns only for the matching rows.
//!
//! Each file's footer with its page index is kept decoded (an LRU bounded in
//! bytes), so a lookup reads nothing but the pages it needs.

use crate::engine::Shared;
use crate::error::{Result, StorageError};
use crate::lru::Lru;
use crate::manifest::FileEntry;
use crate::schema::TRACE_ID;
use crate::table::Hints;
use arrow::array::{Array, BooleanArray, FixedSizeBinaryArray, RecordBatch};
use arrow::compute::filter_record_batch;
use bytes::Bytes;
use futures::FutureExt;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, RowFilter, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;
use std::ops::Range;
use std::sync::Arc;

/// Decoded footers (with page indexes) of span files, by path.
pub(crate) type FooterCache = parking_lot::Mutex<Lru<ArrowReaderMetadata>>;

/// Bytes of decoded footers kept: a 1 M-span file's footer with its page
/// index takes about 0.3 MB.
pub(crate) const FOOTER_CACHE_BYTES: usize = 64 << 20;

/// Reads byte ranges of one object for the Parquet reader.
struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    size: u64,
}

impl StoreReader {
    fn new(store: &Arc<dyn ObjectStore>, f: &FileEntry) -> Self {
        StoreReader {
            store: store.clone(),
            path: ObjectPath::from(f.path.as_str()),
            size: f.bytes,
        }
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let meta = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(meta))
        }
        .boxed()
    }
}

/// Whether `id` lies in `[min, max]`; missing bounds do not exclude.
fn in_range(id: &[u8], min: Option<&[u8]>, max: Option<&[u8]>) -> bool {
    min.is_none_or(|m| m <= id) && max.is_none_or(|m| id <= m)
}

/// Rows of the buffer whose trace id is one of `ids` (sorted).
fn filter_buffer(batches: &[RecordBatch], ids: &[[u8; 16]]) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for b in batches {
        let Some(col) = b.column_by_name(TRACE_ID) else {
            continue;
        };
        let Some(col) = col.as_any().downcast_ref::<FixedSizeBinaryArray>() else {
            continue;
        };
        let mask = matches(col, ids);
        if mask.true_count() > 0 {
            out.push(filter_record_batch(b, &mask)?);
        }
    }
    Ok(out)
}

fn matches(col: &FixedSizeBinaryArray, ids: &[[u8; 16]]) -> BooleanArray {
    let hit = |v: &[u8]| match ids {
        [one] => v == one.as_slice(),
        _ => ids.binary_search_by(|id| id.as_slice().cmp(v)).is_ok(),
    };
    (0..col.len())
        .map(|i| Some(col.is_valid(i) && hit(col.value(i))))
        .collect()
}

/// The leaf column of `trace_id` in a file's Parquet schema.
fn trace_id_leaf(meta: &ParquetMetaData) -> Option<usize> {
    meta.file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().string() == TRACE_ID)
}

/// The row groups, and the rows inside them, that may hold one of `ids`.
fn plan(meta: &ParquetMetaData, leaf: usize, ids: &[[u8; 16]]) -> (Vec<usize>, Vec<RowSelector>) {
    let mut groups = Vec::new();
    let mut selectors = Vec::new();
    for (rg, group) in meta.row_groups().iter().enumerate() {
        let rows = group.num_rows().max(0) as usize;
        let (min, max) = match group.column(leaf).statistics() {
            Some(Statistics::FixedLenByteArray(s)) => {
                (s.min_opt().map(|v| v.data()), s.max_opt().map(|v| v.data()))
            }
            _ => (None, None),
        };
        if !ids.iter().any(|id| in_range(id, min, max)) {
            continue;
        }
        // Row ranges of the pages whose bounds admit an id.
        let pages = meta
            .column_index()
            .and_then(|ci| ci.get(rg))
            .and_then(|c| c.get(leaf))
            .zip(
                meta.offset_index()
                    .and_then(|oi| oi.get(rg))
                    .and_then(|c| c.get(leaf)),
            );
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        match pages {
            Some((ColumnIndexMetaData::FIXED_LEN_BYTE_ARRAY(ci), oi)) => {
                let locs = oi.page_locations();
                for p in 0..locs.len() {
                    let (lo, hi) = (ci.min_value(p), ci.max_value(p));
                    if ids.iter().any(|id| in_range(id, lo, hi)) {
                        let from = locs[p].first_row_index.max(0) as usize;
                        let to = locs
                            .get(p + 1)
                            .map_or(rows, |l| l.first_row_index.max(0) as usize);
                        match ranges.last_mut() {
                            Some(last) if last.1 == from => last.1 = to,
                            _ => ranges.push((from, to)),
                        }
                    }
                }
            }
            _ => ranges.push((0, rows)),
        }
        if ranges.is_empty() {
            continue;
        }
        groups.push(rg);
        let mut at = 0;
        for (from, to) in ranges {
            if from > at {
                selectors.push(RowSelector::skip(from - at));
            }
            selectors.push(RowSelector::select(to - from));
            at = to;
        }
        if rows > at {
            selectors.push(RowSelector::skip(rows - at));
        }
    }
    (groups, selectors)
}

impl Shared {
    /// The decoded footer of a span file, from the cache or read now.
    async fn footer(&self, f: &FileEntry) -> Result<ArrowReaderMetadata> {
        if let Some(m) = self.footers.lock().get(&f.path) {
            return Ok(m);
        }
        let mut reader = StoreReader::new(&self.store, f);
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let meta = ArrowReaderMetadata::load_async(&mut reader, options).await?;
        let size = meta.metadata().memory_size();
        self.footers.lock().put(&f.path, meta.clone(), size);
        Ok(meta)
    }

    /// Rows of one file whose trace id is one of `ids` (sorted).
    async fn read_traces(&self, f: &FileEntry, ids: &[[u8; 16]]) -> Result<Vec<RecordBatch>> {
        let meta = self.footer(f).await?;
        let Some(leaf) = trace_id_leaf(meta.metadata()) else {
            return Err(StorageError::Corrupt {
                what: "span file",
                detail: format!("{} has no trace_id column", f.path),
            });
        };
        let (groups, selectors) = plan(meta.metadata(), leaf, ids);
        if groups.is_empty() {
            return Ok(vec![]);
        }
        let mask = ProjectionMask::leaves(meta.parquet_schema(), [leaf]);
        let wanted: Vec<[u8; 16]> = ids.to_vec();
        let predicate = ArrowPredicateFn::new(mask, move |b: RecordBatch| {
            let col = b
                .column(0)
                .as_any()
                .downcast_ref::<FixedSizeBinaryArray>()
                .ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError("trace_id is not 16 bytes wide".into())
                })?;
            Ok(matches(col, &wanted))
        });
        let reader = StoreReader::new(&self.store, f);
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta)
            .with_row_groups(groups)
            .with_row_selection(RowSelection::from(selectors))
            .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
            .with_batch_size(8 * 1024)
            .build()?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        Ok(batches.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// Every stored row (buffer and files) of the traces `ids`, unordered.
    pub(crate) async fn find_traces(&self, ids: &[[u8; 16]]) -> Result<Vec<RecordBatch>> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(vec![]);
        }
        // Files replaced by compaction or expired stay on disk for 30 s after
        // they leave the manifest, so a snapshot's files can still be read.
        let snapshot = self.snapshot();
        // The same file pruning as the `spans` table's for a trace-id filter.
        let hints = Hints {
            trace_ids: Some(ids.clone()),
            ..Default::default()
        };
        let files: Vec<FileEntry> = {
            let filters = self.filters.read();
            snapshot
                .files
                .iter()
                .filter(|f| hints.may_match(f, filters.get(&f.path).map(|x| x.as_ref())))
                .cloned()
                .collect()
        };
        let mut out = filter_buffer(&snapshot.batches, &ids)?;
        let mut reads = Vec::with_capacity(files.len());
        for f in &files {
            reads.push(Box::pin(self.read_traces(f, &ids)));
        }
        for r in futures::future::join_all(reads).await {
            out.extend(r?);
        }
        Ok(out)
    }
}
