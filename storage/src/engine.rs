//! The span store: WAL -> Arrow buffer -> Parquet files + manifest.
//!
//! Write path: `append_spans` converts spans to a record batch, describes
//! its buffers as a WAL record ([`crate::walbatch`]) and hands both to the
//! WAL thread. That thread writes every
//! pending record, fsyncs once for the group, then puts the batches into the
//! in-memory buffer (queryable at once) and only then acknowledges. Doing
//! the buffer insert on the WAL thread keeps WAL order and buffer order the
//! same, so a rotation never separates a batch from its WAL segment.
//!
//! Flush: a background task asks the WAL thread to rotate; the thread seals
//! the segment and moves the buffer to `flushing` in one step. The task then
//! writes Parquet files per hour, stores the manifest (with the highest
//! flushed WAL sequence number), swaps `flushing` for the new files and
//! finally deletes the sealed WAL segments.

use crate::error::{Result, StorageError};
use crate::files::{self, HOUR_NANOS};
use crate::manifest::{FileEntry, Manifest};
use crate::model::{Span, UnixNanos};
use crate::samples::{OpenArgs, SampleConfig, SampleStore};
use crate::schema::{spans_schema, spans_to_batch};
use crate::table::SpansTable;
use crate::telemetry::Telemetry;
use crate::tindex::{TraceFilter, sidecar_path};
use crate::wal::{self, Wal};
use crate::walbatch::{self, EncodedBatch};
use arrow::ipc::reader::StreamReader;
#[cfg(test)]
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

/// Storage settings; the binary fills them from flags.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Files whose newest span ended longer ago than this are deleted.
    pub retention: Duration,
    /// Flush the buffer to Parquet at this many rows...
    pub flush_rows: usize,
    /// ...or when its oldest row is this old.
    pub flush_age: Duration,
    /// Over this many bytes of buffered Arrow data, appends are refused (retry later).
    pub buffer_budget_bytes: u64,
    /// Over this many bytes of WAL, appends are refused (retry later).
    pub wal_budget_bytes: u64,
    /// How often retention and compaction run.
    pub maintenance_interval: Duration,
    /// A closed hour with at least this many files is compacted.
    pub compaction_min_files: usize,
    /// Compaction writes files of at most this many rows.
    pub compaction_max_rows: u64,
    /// The sample store's own settings (budgets and retention are shared).
    pub samples: SampleConfig,
}

impl StorageConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            data_dir: data_dir.into(),
            retention: Duration::from_secs(7 * 24 * 3600),
            flush_rows: 1_000_000,
            flush_age: Duration::from_secs(60),
            buffer_budget_bytes: 1 << 30,
            wal_budget_bytes: 2 << 30,
            maintenance_interval: Duration::from_secs(30),
            compaction_min_files: 4,
            compaction_max_rows: 2_000_000,
            samples: SampleConfig::default(),
        }
    }
}

/// What queries see: buffered batches and the files of the manifest.
#[derive(Clone)]
pub struct Snapshot {
    pub batches: Vec<RecordBatch>,
    pub files: Arc<Vec<FileEntry>>,
}

#[derive(Default)]
struct State {
    buffer: Vec<RecordBatch>,
    buffer_rows: usize,
    buffer_bytes: u64,
    buffer_since: Option<Instant>,
    flushing: Vec<RecordBatch>,
    flushing_bytes: u64,
    files: Arc<Vec<FileEntry>>,
    next_seq: u64,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) store_url: ObjectStoreUrl,
    manifest: tokio::sync::Mutex<Manifest>,
    telemetry: Telemetry,
    config: StorageConfig,
    flush_wanted: Notify,
    wal_bytes: AtomicU64,
    /// Trace-id filter of each file, by path.
    pub(crate) filters: parking_lot::RwLock<HashMap<String, Arc<TraceFilter>>>,
    /// Decoded footers of span files, for trace-by-id reads.
    pub(crate) footers: crate::lookup::FooterCache,
}

impl Shared {
    pub(crate) fn snapshot(&self) -> Snapshot {
        let st = self.state.lock();
        let mut batches = Vec::with_capacity(st.buffer.len() + st.flushing.len());
        batches.extend(st.flushing.iter().cloned());
        batches.extend(st.buffer.iter().cloned());
        Snapshot {
            batches,
            files: st.files.clone(),
        }
    }
}

type RotateReply = std::io::Result<Option<(Vec<RecordBatch>, u64, u64)>>;

enum WalCmd {
    Append {
        payload: EncodedBatch,
        batch: RecordBatch,
        reply: oneshot::Sender<Result<()>>,
    },
    Rotate {
        reply: oneshot::Sender<RotateReply>,
    },
    Remove {
        through: u64,
    },
    Stop,
}

/// The span store. Open one per process and share it.
pub struct Storage {
    shared: Arc<Shared>,
    wal_tx: mpsc::Sender<WalCmd>,
    wal_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stopping: Arc<AtomicBool>,
    session: SessionContext,
    samples: Arc<SampleStore>,
}

/// A batch as Arrow IPC, the WAL record before [`EncodedBatch`] (tests:
/// such records must still replay).
#[cfg(test)]
fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    // Room for the whole message up front: growing a buffer of this size by
    // doubling costs more than the encoding.
    let room = batch.get_array_memory_size() + 16 * 1024;
    let mut w = StreamWriter::try_new(Vec::with_capacity(room), &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    Ok(w.into_inner()?)
}

fn decode_ipc(payload: &[u8]) -> Result<Vec<RecordBatch>> {
    let r = StreamReader::try_new(std::io::Cursor::new(payload), None)?;
    Ok(r.collect::<Result<Vec<_>, _>>()?)
}

/// The batches of a WAL record: an [`EncodedBatch`], or Arrow IPC as
/// earlier versions wrote.
fn decode_record(payload: Vec<u8>) -> Result<Vec<RecordBatch>> {
    if payload.starts_with(walbatch::MAGIC) {
        Ok(vec![walbatch::decode(
            arrow::buffer::Buffer::from_vec(payload),
            &spans_schema(),
        )?])
    } else {
        decode_ipc(&payload)
    }
}

fn describe_metrics(t: &Telemetry) {
    t.describe(
        "meshlens_wal_bytes",
        "gauge",
        "Bytes in WAL segments not yet flushed to Parquet.",
    );
    t.describe(
        "meshlens_span_footer_cache_bytes",
        "gauge",
        "Decoded footers and page indexes of span files kept for trace-by-id reads.",
    );
    t.describe(
        "meshlens_wal_fsync_seconds",
        "histogram",
        "Latency of one grouped WAL write + fsync.",
    );
    t.describe(
        "meshlens_wal_records_total",
        "counter",
        "Records written to the WAL.",
    );
    t.describe(
        "meshlens_buffer_rows",
        "gauge",
        "Spans in the in-memory buffer (incl. being flushed).",
    );
    t.describe(
        "meshlens_buffer_bytes",
        "gauge",
        "Arrow bytes in the in-memory buffer.",
    );
    t.describe(
        "meshlens_flushes_total",
        "counter",
        "Buffer flushes to Parquet, by outcome.",
    );
    t.describe(
        "meshlens_flush_seconds",
        "histogram",
        "Duration of a buffer flush.",
    );
    t.describe(
        "meshlens_parquet_files",
        "gauge",
        "Parquet files in the manifest.",
    );
    t.describe(
        "meshlens_parquet_bytes",
        "gauge",
        "Bytes of Parquet files in the manifest.",
    );
    t.describe("meshlens_stored_spans", "gauge", "Spans in Parquet files.");
    t.describe("meshlens_compactions_total", "counter", "Compactions run.");
    t.describe(
        "meshlens_retention_deleted_files_total",
        "counter",
        "Files deleted by retention.",
    );
    t.describe(
        "meshlens_appends_rejected_total",
        "counter",
        "Appends refused, by reason.",
    );
}

impl Storage {
    /// Opens (or creates) the store in `cfg.data_dir`, replaying the WAL
    /// before returning: callers open their ports only after this.
    pub async fn open(cfg: StorageConfig, telemetry: Telemetry) -> Result<Arc<Storage>> {
        describe_metrics(&telemetry);
        std::fs::create_dir_all(&cfg.data_dir)?;
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(&cfg.data_dir)?);
        let manifest = Manifest::load(store.as_ref()).await?;
        {
            let mut keep = std::collections::HashSet::new();
            for f in &manifest.files {
                keep.insert(f.path.clone());
                keep.insert(sidecar_path(&f.path));
            }
            crate::manifest::delete_unlisted(
                store.as_ref(),
                "spans",
                &[".parquet", ".tidx"],
                &keep,
            )
            .await?;
        }
        let wal_dir = cfg.data_dir.join("wal");
        let (mut wal, records, report) = Wal::open(&wal_dir).map_err(StorageError::Wal)?;

        let mut state = State {
            files: Arc::new(manifest.files.clone()),
            next_seq: manifest.flushed_seq + 1,
            ..Default::default()
        };
        let mut replayed = 0usize;
        for rec in records {
            state.next_seq = state.next_seq.max(rec.seq + 1);
            if rec.seq <= manifest.flushed_seq {
                continue;
            }
            for batch in decode_record(rec.payload)? {
                replayed += batch.num_rows();
                state.buffer_rows += batch.num_rows();
                state.buffer_bytes += batch.get_array_memory_size() as u64;
                state.buffer.push(batch);
            }
        }
        if !state.buffer.is_empty() {
            state.buffer_since = Some(Instant::now());
        } else if let Some(last) = wal.last_sealed() {
            wal.remove_through(last)?;
        }
        tracing::info!(
            segments = report.segments,
            records = report.records,
            spans = replayed,
            files = manifest.files.len(),
            "storage opened; WAL replayed"
        );

        let mut filters = HashMap::new();
        for f in &manifest.files {
            let side = ObjectPath::from(sidecar_path(&f.path));
            match store.get(&side).await {
                Ok(r) => match TraceFilter::decode(&r.bytes().await?) {
                    Some(tf) => {
                        filters.insert(f.path.clone(), Arc::new(tf));
                    }
                    None => {
                        tracing::warn!(path = %side, "unreadable trace-id filter; the file will always be read")
                    }
                },
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }

        let samples = SampleStore::open(
            OpenArgs {
                data_dir: cfg.data_dir.clone(),
                retention: cfg.retention,
                buffer_budget_bytes: cfg.buffer_budget_bytes,
                wal_budget_bytes: cfg.wal_budget_bytes,
                maintenance_interval: cfg.maintenance_interval,
                samples: cfg.samples.clone(),
            },
            store.clone(),
            telemetry.clone(),
        )
        .await?;

        let store_url = ObjectStoreUrl::parse("meshlens://data")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            store: store.clone(),
            store_url: store_url.clone(),
            manifest: tokio::sync::Mutex::new(manifest),
            telemetry,
            wal_bytes: AtomicU64::new(wal.total_bytes()),
            config: cfg,
            flush_wanted: Notify::new(),
            filters: parking_lot::RwLock::new(filters),
            footers: parking_lot::Mutex::new(crate::lru::Lru::new(
                crate::lookup::FOOTER_CACHE_BYTES,
            )),
        });

        let (wal_tx, wal_rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let wal_thread = std::thread::Builder::new()
            .name("meshlens-wal".into())
            .spawn(move || wal_loop(wal, thread_shared, wal_rx))?;

        let session = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(2)
                .with_information_schema(false),
        );
        session
            .runtime_env()
            .register_object_store(store_url.as_ref(), store);
        session.register_table("spans", Arc::new(SpansTable::new(shared.clone())))?;

        let storage = Arc::new(Storage {
            shared,
            wal_tx,
            wal_thread: Mutex::new(Some(wal_thread)),
            background: Mutex::new(Vec::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            session,
            samples,
        });
        storage.publish_gauges();
        let bg = storage.clone();
        let handle = tokio::spawn(async move { bg.background_loop().await });
        storage.background.lock().push(handle);
        Ok(storage)
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.shared.telemetry
    }

    pub fn config(&self) -> &StorageConfig {
        &self.shared.config
    }

    /// The metric sample store (same directory, object store and budgets).
    pub fn samples(&self) -> &Arc<SampleStore> {
        &self.samples
    }

    /// A DataFusion session with the `spans` table registered.
    pub fn session(&self) -> SessionContext {
        self.session.clone()
    }

    /// Buffered batches and the current files, for queries outside DataFusion.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// Every stored row of the traces `ids` (buffer and files, unordered),
    /// read without a query plan: see `lookup.rs`.
    pub async fn find_traces(&self, ids: &[[u8; 16]]) -> Result<Vec<RecordBatch>> {
        let started = Instant::now();
        let out = self.shared.find_traces(ids).await;
        self.telemetry().observe(
            "meshlens_storage_scan_seconds",
            &[],
            started.elapsed().as_secs_f64(),
        );
        out
    }

    fn check_budget(&self) -> Result<()> {
        let cfg = &self.shared.config;
        let (used, what, limit) = {
            let st = self.shared.state.lock();
            (
                st.buffer_bytes + st.flushing_bytes,
                "span buffer",
                cfg.buffer_budget_bytes,
            )
        };
        let retry_after = Duration::from_secs(1);
        if used > limit {
            self.shared.flush_wanted.notify_one();
            self.telemetry().inc(
                "meshlens_appends_rejected_total",
                &[("reason", "buffer_full")],
                1.0,
            );
            return Err(StorageError::Backpressure {
                what,
                used,
                limit,
                retry_after,
            });
        }
        let wal = self.shared.wal_bytes.load(Ordering::Relaxed);
        if wal > cfg.wal_budget_bytes {
            self.shared.flush_wanted.notify_one();
            self.telemetry().inc(
                "meshlens_appends_rejected_total",
                &[("reason", "wal_full")],
                1.0,
            );
            return Err(StorageError::Backpressure {
                what: "WAL",
                used: wal,
                limit: cfg.wal_budget_bytes,
                retry_after,
            });
        }
        Ok(())
    }

    /// Appends spans durably: when this returns Ok they are in the WAL,
    /// fsynced, and visible to queries.
    pub async fn append_spans(&self, spans: Vec<Span>) -> Result<()> {
        self.append_span_slice(&spans).await
    }

    /// [`Storage::append_spans`] for a caller that still needs the spans.
    pub async fn append_span_slice(&self, spans: &[Span]) -> Result<()> {
        if spans.is_empty() {
            return Ok(());
        }
        if self.stopping.load(Ordering::Acquire) {
            return Err(StorageError::ShuttingDown);
        }
        self.append_batch(spans_to_batch(spans)?).await
    }

    /// Appends a batch of the `spans` schema (from a
    /// [`crate::span_builder::SpanBatchBuilder`]) durably, as
    /// [`Storage::append_spans`] does.
    pub async fn append_batch(&self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.stopping.load(Ordering::Acquire) {
            return Err(StorageError::ShuttingDown);
        }
        let schema = batch.schema();
        if !Arc::ptr_eq(&schema, &spans_schema()) && schema != spans_schema() {
            return Err(arrow::error::ArrowError::SchemaError(
                "append_batch: the batch is not of the spans schema".into(),
            )
            .into());
        }
        self.check_budget()?;
        let payload = EncodedBatch::new(&batch)?;
        let (reply, rx) = oneshot::channel();
        self.wal_tx
            .send(WalCmd::Append {
                payload,
                batch,
                reply,
            })
            .map_err(|_| StorageError::ShuttingDown)?;
        rx.await.map_err(|_| StorageError::ShuttingDown)??;
        let rows = self.shared.state.lock().buffer_rows;
        if rows >= self.shared.config.flush_rows {
            self.shared.flush_wanted.notify_one();
        }
        Ok(())
    }

    async fn background_loop(self: Arc<Self>) {
        let cfg = self.shared.config.clone();
        let mut last_maintenance = Instant::now();
        loop {
            tokio::select! {
                _ = self.shared.flush_wanted.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let due = {
                let st = self.shared.state.lock();
                st.buffer_rows >= cfg.flush_rows
                    || st.buffer_bytes >= cfg.buffer_budget_bytes / 2
                    || self.shared.wal_bytes.load(Ordering::Relaxed) >= cfg.wal_budget_bytes / 2
                    || st
                        .buffer_since
                        .is_some_and(|t| t.elapsed() >= cfg.flush_age)
                    || !st.flushing.is_empty()
            };
            if due && let Err(e) = self.flush().await {
                tracing::error!(error = %e, "flush failed; data stays in the WAL and is retried");
            }
            if last_maintenance.elapsed() >= cfg.maintenance_interval {
                last_maintenance = Instant::now();
                if let Err(e) = self.enforce_retention().await {
                    tracing::error!(error = %e, "retention failed");
                }
                if let Err(e) = self.compact().await {
                    tracing::error!(error = %e, "compaction failed");
                }
            }
            self.publish_gauges();
        }
    }

    fn publish_gauges(&self) {
        let t = &self.shared.telemetry;
        let st = self.shared.state.lock();
        let rows: usize = st.buffer_rows + st.flushing.iter().map(|b| b.num_rows()).sum::<usize>();
        t.set("meshlens_buffer_rows", &[], rows as f64);
        t.set(
            "meshlens_buffer_bytes",
            &[],
            (st.buffer_bytes + st.flushing_bytes) as f64,
        );
        t.set("meshlens_parquet_files", &[], st.files.len() as f64);
        t.set(
            "meshlens_parquet_bytes",
            &[],
            st.files.iter().map(|f| f.bytes).sum::<u64>() as f64,
        );
        t.set(
            "meshlens_stored_spans",
            &[],
            st.files.iter().map(|f| f.rows).sum::<u64>() as f64,
        );
        t.set(
            "meshlens_wal_bytes",
            &[],
            self.shared.wal_bytes.load(Ordering::Relaxed) as f64,
        );
        t.set(
            "meshlens_span_footer_cache_bytes",
            &[],
            self.shared.footers.lock().bytes() as f64,
        );
    }

    async fn rotate(&self) -> Result<Option<(Vec<RecordBatch>, u64, u64)>> {
        let (reply, rx) = oneshot::channel();
        self.wal_tx
            .send(WalCmd::Rotate { reply })
            .map_err(|_| StorageError::ShuttingDown)?;
        Ok(rx.await.map_err(|_| StorageError::ShuttingDown)??)
    }

    /// Writes everything buffered to Parquet now.
    pub async fn flush(&self) -> Result<()> {
        let started = Instant::now();
        let mut manifest = self.shared.manifest.lock().await;
        let Some((batches, sealed, last_seq)) = self.rotate().await? else {
            return Ok(());
        };
        let result = async {
            let mut entries = Vec::new();
            let encoded =
                files::encode_files(batches, UnixNanos::now().0, 0, manifest.next_file_id).await?;
            self.put_files(&mut manifest, encoded, &mut entries).await?;
            let mut next = manifest.clone();
            next.files.extend(entries);
            next.flushed_seq = last_seq;
            next.store(self.shared.store.as_ref()).await?;
            *manifest = next;
            Ok::<_, StorageError>(())
        }
        .await;
        let t = &self.shared.telemetry;
        if let Err(e) = result {
            t.inc("meshlens_flushes_total", &[("outcome", "error")], 1.0);
            return Err(e);
        }
        {
            let mut st = self.shared.state.lock();
            st.files = Arc::new(manifest.files.clone());
            st.flushing.clear();
            st.flushing_bytes = 0;
        }
        let _ = self.wal_tx.send(WalCmd::Remove { through: sealed });
        t.inc("meshlens_flushes_total", &[("outcome", "ok")], 1.0);
        t.observe(
            "meshlens_flush_seconds",
            &[],
            started.elapsed().as_secs_f64(),
        );
        self.publish_gauges();
        Ok(())
    }

    /// Stores files from [`files::encode_files`] (numbered from the
    /// manifest's next id), remembers their trace-id filters and adds their
    /// entries to `out`; the manifest's next id moves past each stored file.
    async fn put_files(
        &self,
        manifest: &mut Manifest,
        encoded: Vec<files::EncodedFile>,
        out: &mut Vec<FileEntry>,
    ) -> Result<()> {
        for file in encoded {
            let (entry, filter) = files::put_file(self.shared.store.as_ref(), file).await?;
            self.remember_filter(&entry, filter);
            out.push(entry);
            manifest.next_file_id += 1;
        }
        Ok(())
    }

    fn remember_filter(&self, entry: &FileEntry, filter: Option<TraceFilter>) {
        if let Some(f) = filter {
            self.shared
                .filters
                .write()
                .insert(entry.path.clone(), Arc::new(f));
        }
    }

    async fn replace_files(
        &self,
        manifest: &mut Manifest,
        remove: &[String],
        add: Vec<FileEntry>,
    ) -> Result<()> {
        let mut next = manifest.clone();
        next.files.retain(|f| !remove.contains(&f.path));
        next.files.extend(add);
        next.store(self.shared.store.as_ref()).await?;
        *manifest = next;
        self.shared.state.lock().files = Arc::new(manifest.files.clone());
        {
            let mut filters = self.shared.filters.write();
            let mut footers = self.shared.footers.lock();
            for p in remove {
                filters.remove(p);
                footers.remove(p);
            }
        }
        // Queries that took a snapshot a moment ago may still read these.
        let store = self.shared.store.clone();
        let remove = remove.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            for p in remove
                .iter()
                .cloned()
                .chain(remove.iter().map(|p| sidecar_path(p)))
            {
                if let Err(e) = store.delete(&ObjectPath::from(p.as_str())).await
                    && !matches!(e, object_store::Error::NotFound { .. })
                {
                    tracing::warn!(path = %p, error = %e, "could not delete an obsolete file");
                }
            }
        });
        Ok(())
    }

    /// Deletes whole files older than the retention period.
    pub async fn enforce_retention(&self) -> Result<usize> {
        let cutoff = UnixNanos::now().0 - self.shared.config.retention.as_nanos() as i64;
        let mut manifest = self.shared.manifest.lock().await;
        let expired: Vec<String> = manifest
            .files
            .iter()
            .filter(|f| f.max_end_time < cutoff)
            .map(|f| f.path.clone())
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        self.replace_files(&mut manifest, &expired, vec![]).await?;
        self.shared.telemetry.inc(
            "meshlens_retention_deleted_files_total",
            &[],
            expired.len() as f64,
        );
        tracing::info!(files = expired.len(), "retention removed expired files");
        Ok(expired.len())
    }

    /// Merges the small files of closed hours. Returns the number of merges.
    pub async fn compact(&self) -> Result<usize> {
        let cfg = &self.shared.config;
        let now = UnixNanos::now().0;
        let mut manifest = self.shared.manifest.lock().await;
        let mut by_partition: std::collections::BTreeMap<i64, Vec<FileEntry>> = Default::default();
        for f in &manifest.files {
            by_partition.entry(f.partition).or_default().push(f.clone());
        }
        let mut merges = 0;
        for (partition, mut group) in by_partition {
            let closed = partition + HOUR_NANOS + cfg.flush_age.as_nanos() as i64 <= now;
            let small: Vec<FileEntry> = {
                group.sort_by_key(|f| f.rows);
                let mut picked = Vec::new();
                let mut rows = 0;
                for f in group {
                    if rows + f.rows > cfg.compaction_max_rows && !picked.is_empty() {
                        break;
                    }
                    rows += f.rows;
                    picked.push(f);
                }
                picked
            };
            let enough = small.len() >= cfg.compaction_min_files || (closed && small.len() >= 2);
            if !enough {
                continue;
            }
            let mut batches = Vec::new();
            for f in &small {
                batches.extend(files::read_file(self.shared.store.clone(), f).await?);
            }
            // Every row is of this partition's hour (rows without a start
            // time were put here by a flush, and stay): one file.
            let level = small.iter().map(|f| f.level).max().unwrap_or(0) + 1;
            let encoded =
                files::encode_files(batches, partition, level, manifest.next_file_id).await?;
            let mut written = Vec::new();
            self.put_files(&mut manifest, encoded, &mut written).await?;
            let removed: Vec<String> = small.iter().map(|f| f.path.clone()).collect();
            tracing::info!(
                partition,
                inputs = removed.len(),
                rows = written.iter().map(|e| e.rows).sum::<u64>(),
                "compacted"
            );
            self.replace_files(&mut manifest, &removed, written).await?;
            merges += 1;
        }
        self.shared
            .telemetry
            .inc("meshlens_compactions_total", &[], merges as f64);
        Ok(merges)
    }

    /// Stops accepting writes, flushes the buffer to Parquet and stops the
    /// WAL thread. Safe to call more than once.
    pub async fn shutdown(&self) -> Result<()> {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shared.flush_wanted.notify_one();
        let handles: Vec<_> = self.background.lock().drain(..).collect();
        for h in handles {
            let _ = h.await;
        }
        let flushed = self.flush().await;
        let _ = self.wal_tx.send(WalCmd::Stop);
        let thread = self.wal_thread.lock().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let samples = self.samples.shutdown().await;
        flushed.and(samples)
    }
}

fn wal_loop(mut wal: Wal, shared: Arc<Shared>, rx: mpsc::Receiver<WalCmd>) {
    let mut frames = wal::Frames::default();
    let mut appends: Vec<(RecordBatch, oneshot::Sender<Result<()>>)> = Vec::new();
    let commit = |wal: &mut Wal,
                  frames: &mut wal::Frames,
                  appends: &mut Vec<(RecordBatch, oneshot::Sender<Result<()>>)>| {
        if appends.is_empty() {
            return;
        }
        let started = Instant::now();
        let res = wal.write_frames_synced(frames);
        shared.telemetry.observe(
            "meshlens_wal_fsync_seconds",
            &[],
            started.elapsed().as_secs_f64(),
        );
        shared.wal_bytes.store(wal.total_bytes(), Ordering::Relaxed);
        frames.clear();
        match res {
            Ok(()) => {
                shared
                    .telemetry
                    .inc("meshlens_wal_records_total", &[], appends.len() as f64);
                let mut st = shared.state.lock();
                for (batch, _) in appends.iter() {
                    st.buffer_rows += batch.num_rows();
                    st.buffer_bytes += batch.get_array_memory_size() as u64;
                    st.buffer.push(batch.clone());
                }
                if st.buffer_since.is_none() {
                    st.buffer_since = Some(Instant::now());
                }
                drop(st);
                for (_, reply) in appends.drain(..) {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL write failed; the appends are refused");
                let kind = e.kind();
                let msg = e.to_string();
                for (_, reply) in appends.drain(..) {
                    let _ = reply.send(Err(StorageError::Wal(std::io::Error::new(
                        kind,
                        msg.clone(),
                    ))));
                }
            }
        }
    };
    while let Ok(first) = rx.recv() {
        let mut cmds = vec![first];
        while cmds.len() < 4096 {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(_) => break,
            }
        }
        for cmd in cmds {
            match cmd {
                WalCmd::Append {
                    payload,
                    batch,
                    reply,
                } => {
                    let seq = {
                        let mut st = shared.state.lock();
                        let s = st.next_seq;
                        st.next_seq += 1;
                        s
                    };
                    if payload.len() > wal::MAX_RECORD {
                        let _ = reply.send(Err(StorageError::Corrupt {
                            what: "append",
                            detail: format!(
                                "record of {} bytes is over the WAL record limit",
                                payload.len()
                            ),
                        }));
                        continue;
                    }
                    frames.push(seq, wal::Payload::Batch(payload));
                    appends.push((batch, reply));
                }
                WalCmd::Rotate { reply } => {
                    commit(&mut wal, &mut frames, &mut appends);
                    let out = {
                        let st = shared.state.lock();
                        st.buffer.is_empty() && st.flushing.is_empty()
                    };
                    if out {
                        let _ = reply.send(Ok(None));
                        continue;
                    }
                    let res = wal.rotate().map(|sealed| {
                        let mut st = shared.state.lock();
                        let moved = std::mem::take(&mut st.buffer);
                        st.flushing_bytes += st.buffer_bytes;
                        st.flushing.extend(moved);
                        st.buffer_rows = 0;
                        st.buffer_bytes = 0;
                        st.buffer_since = None;
                        Some((st.flushing.clone(), sealed, st.next_seq - 1))
                    });
                    let _ = reply.send(res);
                }
                WalCmd::Remove { through } => {
                    commit(&mut wal, &mut frames, &mut appends);
                    if let Err(e) = wal.remove_through(through) {
                        tracing::warn!(error = %e, "could not remove flushed WAL segments");
                    }
                    shared.wal_bytes.store(wal.total_bytes(), Ordering::Relaxed);
                }
                WalCmd::Stop => {
                    commit(&mut wal, &mut frames, &mut appends);
                    return;
                }
            }
        }
        commit(&mut wal, &mut frames, &mut appends);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::batch_to_spans;
    use crate::schema::tests::sample_span;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wal_records_of_both_formats_replay() {
        // A WAL written by an earlier version (Arrow IPC records) next to
        // records of today's format, in one segment.
        let dir = std::env::temp_dir().join(format!("meshlens-walfmt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let old: Vec<Span> = (0..5).map(sample_span).collect();
        let new: Vec<Span> = (100..107).map(sample_span).collect();
        {
            let (mut w, _, _) = Wal::open(&dir.join("wal")).expect("wal");
            let mut frames = wal::Frames::default();
            let ipc = encode_ipc(&spans_to_batch(&old).expect("batch")).expect("ipc");
            assert!(!ipc.starts_with(walbatch::MAGIC));
            frames.push(1, wal::Payload::Bytes(ipc));
            let b = spans_to_batch(&new).expect("batch");
            frames.push(2, wal::Payload::Batch(EncodedBatch::new(&b).expect("enc")));
            w.write_frames_synced(&frames).expect("write");
        }
        let storage = Storage::open(StorageConfig::new(&dir), Telemetry::new())
            .await
            .expect("open");
        for s in old.iter().chain(&new) {
            let found: Vec<Span> = storage
                .find_traces(&[s.trace_id.0])
                .await
                .expect("find")
                .iter()
                .flat_map(|b| batch_to_spans(b).expect("spans"))
                .collect();
            assert_eq!(found, vec![s.clone()]);
        }
        storage.shutdown().await.expect("shutdown");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
