//! The sample store's engine: append (validate -> WAL group commit -> head),
//! flush (head -> catalog segment + Parquet per 2-hour partition ->
//! manifest -> WAL removal), select, retention and compaction.

use super::catalog::{self, Catalog};
use super::exemplars::ExemplarStore;
use super::model::*;
use super::rollup::{CellsBuilder, FileCells, Part, Summary};
use super::sfiles::{self, FileBuilder, PARTITION_MS, SampleFile};
use super::walrec;
use crate::error::{Result, StorageError};
use crate::lru::Lru;
use crate::telemetry::Telemetry;
use crate::wal::{self, Wal};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::{Mutex, RwLock};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, oneshot};

/// Settings of the sample store (the rest is shared with spans).
#[derive(Clone, Debug)]
pub struct SampleConfig {
    /// A sample older than its series' newest sample by more than this is
    /// rejected as out of order. Within it, it is stored (and sorted in).
    pub ooo_window: Duration,
    /// The catalog refuses new series beyond this many.
    pub max_series: usize,
    pub max_labels_per_series: usize,
    pub max_label_name_bytes: usize,
    pub max_label_value_bytes: usize,
    /// Flush the head to Parquet at this many samples...
    pub flush_samples: usize,
    /// ...or when its oldest sample arrived this long ago.
    pub flush_age: Duration,
    /// Bytes of recently read Parquet files kept in memory for queries
    /// (least recently used out first); 0 reads ranges from the object
    /// store every time. Plays the part of Prometheus's page cache.
    pub read_cache_bytes: usize,
    /// Bytes of per-minute summaries of sample files kept in memory (least
    /// recently used out first), so range functions over long windows do
    /// not decode every sample; 0 turns them off (every read is raw).
    pub rollup_cache_bytes: usize,
    /// Exemplars kept in memory (a ring; 0 keeps none).
    pub max_exemplars: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            ooo_window: Duration::from_secs(10 * 60),
            max_series: 10_000_000,
            max_labels_per_series: 128,
            max_label_name_bytes: 1024,
            max_label_value_bytes: 16 * 1024,
            flush_samples: 8_000_000,
            flush_age: Duration::from_secs(15 * 60),
            read_cache_bytes: 256 << 20,
            rollup_cache_bytes: 256 << 20,
            max_exemplars: super::exemplars::DEFAULT_MAX_EXEMPLARS,
        }
    }
}

/// What [`SampleStore::open`] needs from the storage configuration.
#[derive(Clone, Debug)]
pub(crate) struct OpenArgs {
    pub data_dir: std::path::PathBuf,
    pub retention: Duration,
    pub buffer_budget_bytes: u64,
    pub wal_budget_bytes: u64,
    pub maintenance_interval: Duration,
    pub samples: SampleConfig,
}

const MANIFEST: &str = "samples/manifest.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SampleManifest {
    version: u32,
    flushed_seq: u64,
    next_file_id: u64,
    /// Catalog segments in ordinal order.
    catalog_segments: Vec<String>,
    catalog_len: u32,
    files: Vec<SampleFile>,
}

#[derive(Clone, Default)]
struct SeriesBuf {
    ts: Vec<i64>,
    v: Vec<f64>,
}

impl SeriesBuf {
    /// Sorted by time with unique times; the last write of a time wins.
    fn normalized(&self) -> (Vec<i64>, Vec<f64>) {
        if self.ts.windows(2).all(|w| w[0] < w[1]) {
            return (self.ts.clone(), self.v.clone());
        }
        let mut idx: Vec<usize> = (0..self.ts.len()).collect();
        idx.sort_by_key(|&i| (self.ts[i], i));
        let mut ts = Vec::with_capacity(idx.len());
        let mut v: Vec<f64> = Vec::with_capacity(idx.len());
        for i in idx {
            if ts.last() == Some(&self.ts[i]) {
                if let Some(last) = v.last_mut() {
                    *last = self.v[i];
                }
            } else {
                ts.push(self.ts[i]);
                v.push(self.v[i]);
            }
        }
        (ts, v)
    }
}

#[derive(Default)]
struct Head {
    series: Vec<SeriesBuf>,
    samples: usize,
    since: Option<Instant>,
    flushing: Option<Arc<Vec<SeriesBuf>>>,
    flushing_samples: usize,
    files: Arc<Vec<SampleFile>>,
    /// Newest accepted timestamp per ordinal (i64::MIN when unknown).
    max_ts: Vec<i64>,
    next_seq: u64,
}

struct Inner {
    catalog: RwLock<Catalog>,
    head: Mutex<Head>,
    store: Arc<dyn ObjectStore>,
    manifest: tokio::sync::Mutex<SampleManifest>,
    telemetry: Telemetry,
    args: OpenArgs,
    wal_bytes: AtomicU64,
    flush_wanted: Notify,
    file_series: RwLock<HashMap<String, Arc<RoaringBitmap>>>,
    file_meta: Mutex<HashMap<String, ArrowReaderMetadata>>,
    /// Whole files read for queries, least recently used out first.
    file_bytes: Mutex<Lru<bytes::Bytes>>,
    /// Per-minute summaries of files (see [`rollup`]).
    file_cells: Mutex<Lru<Arc<FileCells>>>,
}

/// Sorts samples by time, keeping the last of equal times (stable: arrival
/// order among equal times).
fn sorted_unique(pts: &mut Vec<(i64, f64)>) {
    if pts.windows(2).all(|w| w[0].0 < w[1].0) {
        return;
    }
    pts.sort_by_key(|p| p.0);
    let mut dedup: Vec<(i64, f64)> = Vec::with_capacity(pts.len());
    for p in pts.drain(..) {
        match dedup.last_mut() {
            Some(last) if last.0 == p.0 => *last = p,
            _ => dedup.push(p),
        }
    }
    *pts = dedup;
}

type Snapshot = (
    Arc<Vec<SampleFile>>,
    Option<Arc<Vec<SeriesBuf>>>,
    Vec<(u32, Vec<(i64, f64)>)>,
);

/// The samples an append stored: series `i` is ordinal `ords[i]` with the
/// id and samples of entry `i` of `samples`.
#[derive(Default)]
struct Accepted {
    ords: Vec<u32>,
    samples: KnownSeriesSamples,
}

impl Accepted {
    fn iter(&self) -> impl Iterator<Item = (u32, &[Sample])> + '_ {
        self.ords
            .iter()
            .zip(self.samples.iter())
            .map(|(&o, (_, s))| (o, s))
    }
}
type RotateReply = std::io::Result<Option<(Arc<Vec<SeriesBuf>>, u64, u64)>>;

enum WalCmd {
    Append {
        payload: Vec<u8>,
        accepted: Accepted,
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

/// The sample store. Opened by [`crate::Storage::open`]; reach it with
/// [`crate::Storage::samples`].
pub struct SampleStore {
    inner: Arc<Inner>,
    wal_tx: Mutex<mpsc::Sender<WalCmd>>,
    wal_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stopping: AtomicBool,
    exemplars: ExemplarStore,
}

/// Counts for /metrics and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleStats {
    pub series: u64,
    pub head_samples: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub file_samples: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn describe_metrics(t: &Telemetry) {
    t.describe("meshlens_samples_series", "gauge", "Series in the catalog.");
    t.describe(
        "meshlens_samples_head",
        "gauge",
        "Samples in memory not yet in Parquet.",
    );
    t.describe(
        "meshlens_samples_stored",
        "gauge",
        "Samples in Parquet files.",
    );
    t.describe(
        "meshlens_samples_parquet_bytes",
        "gauge",
        "Bytes of sample Parquet files.",
    );
    t.describe(
        "meshlens_samples_wal_bytes",
        "gauge",
        "Bytes of sample WAL not yet flushed.",
    );
    t.describe(
        "meshlens_samples_appended_total",
        "counter",
        "Samples stored.",
    );
    t.describe(
        "meshlens_samples_refused_total",
        "counter",
        "Samples the store refused, by reason (out_of_order, too_old, series_limit, ...).",
    );
    t.describe(
        "meshlens_samples_flushes_total",
        "counter",
        "Head flushes to Parquet, by outcome.",
    );
    t.describe(
        "meshlens_samples_rollup_cache_bytes",
        "gauge",
        "Bytes of per-minute summaries of sample files held in memory (--rollup-cache-bytes bounds it).",
    );
    t.describe(
        "meshlens_samples_summarized_series_total",
        "counter",
        "Series summarised for long-window range functions, by how their files were read (per-minute summaries, or raw samples when a window edge cuts a minute).",
    );
    t.describe(
        "meshlens_samples_catalog_bytes",
        "gauge",
        "Approximate heap bytes of the series catalog and its index.",
    );
}

impl SampleStore {
    pub(crate) async fn open(
        args: OpenArgs,
        store: Arc<dyn ObjectStore>,
        telemetry: Telemetry,
    ) -> Result<Arc<SampleStore>> {
        describe_metrics(&telemetry);
        let manifest = match store.get(&ObjectPath::from(MANIFEST)).await {
            Ok(r) => serde_json::from_slice(&r.bytes().await?)?,
            Err(object_store::Error::NotFound { .. }) => SampleManifest {
                version: 1,
                next_file_id: 1,
                ..Default::default()
            },
            Err(e) => return Err(e.into()),
        };
        let mut cat = Catalog::default();
        for seg in &manifest.catalog_segments {
            let bytes = store
                .get(&ObjectPath::from(seg.as_str()))
                .await?
                .bytes()
                .await?;
            let (first, entries) = catalog::decode_segment(&bytes)?;
            if first as usize != cat.len() {
                return Err(StorageError::Corrupt {
                    what: "series catalog",
                    detail: format!("segment {seg} starts at {first}, expected {}", cat.len()),
                });
            }
            for (id, labels) in entries {
                cat.insert(id, &labels);
            }
        }
        cat.persisted = cat.len() as u32;
        if let Ok(r) = store.get(&ObjectPath::from("samples/metadata.json")).await
            && let Ok(m) = serde_json::from_slice::<Vec<MetricMetadata>>(&r.bytes().await?)
        {
            for m in m {
                cat.metadata.insert(m.metric_family.clone(), m);
            }
        }
        {
            let mut keep = std::collections::HashSet::new();
            for f in &manifest.files {
                keep.insert(f.path.clone());
                keep.insert(sfiles::series_sidecar(&f.path));
            }
            crate::manifest::delete_unlisted(
                store.as_ref(),
                "samples",
                &[".parquet", ".series"],
                &keep,
            )
            .await?;
        }
        let mut file_series = HashMap::new();
        for f in &manifest.files {
            let p = ObjectPath::from(sfiles::series_sidecar(&f.path));
            let bytes = store.get(&p).await?.bytes().await?;
            let bm =
                RoaringBitmap::deserialize_from(&bytes[..]).map_err(|e| StorageError::Corrupt {
                    what: "file series bitmap",
                    detail: format!("{p}: {e}"),
                })?;
            file_series.insert(f.path.clone(), Arc::new(bm));
        }

        let (mut wal, records, report) =
            Wal::open(&args.data_dir.join("wal-samples")).map_err(StorageError::Wal)?;
        let mut head = Head {
            files: Arc::new(manifest.files.clone()),
            next_seq: manifest.flushed_seq + 1,
            ..Default::default()
        };
        // Two passes: a record may use a series another record defines.
        let mut decoded = Vec::new();
        for rec in records {
            head.next_seq = head.next_seq.max(rec.seq + 1);
            if rec.seq <= manifest.flushed_seq {
                continue;
            }
            let r = walrec::decode(&rec.payload)?;
            for (id, labels) in &r.defs {
                cat.get_or_create(*id, labels)?;
            }
            for m in &r.metadata {
                cat.metadata.insert(m.metric_family.clone(), m.clone());
            }
            decoded.push(r);
        }
        let mut replayed = 0usize;
        for r in decoded {
            for (id, samples) in r.samples.iter() {
                let Some(ord) = cat.ordinal(id) else {
                    tracing::warn!(id, "WAL samples for an unknown series skipped");
                    continue;
                };
                replayed += samples.len();
                push_head(&mut head, ord, samples);
            }
        }
        if head.samples > 0 {
            head.since = Some(Instant::now());
        } else if let Some(last) = wal.last_sealed() {
            wal.remove_through(last)?;
        }
        tracing::info!(
            series = cat.len(),
            files = manifest.files.len(),
            wal_records = report.records,
            samples = replayed,
            "sample store opened; WAL replayed"
        );

        let read_cache_bytes = args.samples.read_cache_bytes;
        let rollup_cache_bytes = args.samples.rollup_cache_bytes;
        let exemplars = ExemplarStore::open(&args.data_dir, args.samples.max_exemplars);
        let inner = Arc::new(Inner {
            catalog: RwLock::new(cat),
            head: Mutex::new(head),
            store,
            manifest: tokio::sync::Mutex::new(manifest),
            telemetry,
            wal_bytes: AtomicU64::new(wal.total_bytes()),
            args,
            flush_wanted: Notify::new(),
            file_series: RwLock::new(file_series),
            file_meta: Mutex::new(HashMap::new()),
            file_bytes: Mutex::new(Lru::new(read_cache_bytes)),
            file_cells: Mutex::new(Lru::new(rollup_cache_bytes)),
        });
        let (tx, rx) = mpsc::channel();
        let thread_inner = inner.clone();
        let thread = std::thread::Builder::new()
            .name("meshlens-wal-samples".into())
            .spawn(move || wal_loop(wal, thread_inner, rx))?;
        let s = Arc::new(SampleStore {
            inner,
            wal_tx: Mutex::new(tx),
            wal_thread: Mutex::new(Some(thread)),
            background: Mutex::new(vec![]),
            stopping: AtomicBool::new(false),
            exemplars,
        });
        s.publish_gauges();
        let bg = s.clone();
        s.background
            .lock()
            .push(tokio::spawn(async move { bg.background_loop().await }));
        Ok(s)
    }

    /// Exemplars (trace ids attached to series), see [`ExemplarStore`].
    pub fn exemplars(&self) -> &ExemplarStore {
        &self.exemplars
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    pub fn config(&self) -> &SampleConfig {
        &self.inner.args.samples
    }

    fn send(&self, cmd: WalCmd) -> Result<()> {
        self.wal_tx
            .lock()
            .send(cmd)
            .map_err(|_| StorageError::ShuttingDown)
    }

    fn check_budget(&self) -> Result<()> {
        let a = &self.inner.args;
        let used = {
            let h = self.inner.head.lock();
            ((h.samples + h.flushing_samples) * 16) as u64
        };
        let retry_after = Duration::from_secs(1);
        if used > a.buffer_budget_bytes {
            self.inner.flush_wanted.notify_one();
            return Err(StorageError::Backpressure {
                what: "sample buffer",
                used,
                limit: a.buffer_budget_bytes,
                retry_after,
            });
        }
        let wal = self.inner.wal_bytes.load(Ordering::Relaxed);
        if wal > a.wal_budget_bytes {
            self.inner.flush_wanted.notify_one();
            return Err(StorageError::Backpressure {
                what: "sample WAL",
                used: wal,
                limit: a.wal_budget_bytes,
                retry_after,
            });
        }
        Ok(())
    }

    fn label_limit_problem(&self, labels: &Labels) -> Option<String> {
        let c = &self.inner.args.samples;
        if labels.len() > c.max_labels_per_series {
            return Some(format!(
                "{} labels, at most {} are accepted",
                labels.len(),
                c.max_labels_per_series
            ));
        }
        for l in labels.iter() {
            if l.name.len() > c.max_label_name_bytes {
                return Some(format!(
                    "label name of {} bytes, at most {} are accepted",
                    l.name.len(),
                    c.max_label_name_bytes
                ));
            }
            if l.value.len() > c.max_label_value_bytes {
                return Some(format!(
                    "label {} has a value of {} bytes, at most {} are accepted",
                    l.name,
                    l.value.len(),
                    c.max_label_value_bytes
                ));
            }
        }
        None
    }

    /// Stores samples durably. Samples that break a rule (out of order,
    /// too old, limits) are counted in the report, the rest stored; when
    /// this returns Ok, the stored ones are in the fsynced WAL and visible
    /// to queries.
    pub async fn append(&self, batch: SampleBatch) -> Result<AppendReport> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(StorageError::ShuttingDown);
        }
        self.check_budget()?;
        let mut report = AppendReport::default();
        let cfg = &self.inner.args.samples;
        let now = now_ms();
        let cutoff = now - self.inner.args.retention.as_millis() as i64;
        let future = now + 3_600_000;
        let ooo = cfg.ooo_window.as_millis() as i64;

        // Resolve series: existing ones under the read lock, new ones under
        // the write lock. Series sent by id take their labels from the
        // catalog (for the examples of refused samples).
        let mut ords: Vec<Option<u32>> = Vec::with_capacity(batch.series.len());
        let mut ids = Vec::with_capacity(batch.series.len());
        let mut known: Vec<Option<(u32, Labels)>> = Vec::with_capacity(batch.known.len());
        let mut missing = false;
        {
            let cat = self.inner.catalog.read();
            for s in &batch.series {
                let id = s.labels.series_id();
                ids.push(id);
                let o = cat.ordinal(id);
                missing |= o.is_none();
                ords.push(o);
            }
            for (id, samples) in batch.known.iter() {
                let o = cat.ordinal(id);
                if o.is_none() {
                    report.reject(RejectReason::UnknownSeries, samples.len() as u64, || {
                        format!("series id {id:016x}: sent by id but not in the catalog")
                    });
                }
                known.push(o.map(|o| (o, cat.labels(o).clone())));
            }
        }
        let mut defs: Vec<(u64, Labels)> = Vec::new();
        if missing {
            let mut cat = self.inner.catalog.write();
            for (i, s) in batch.series.iter().enumerate() {
                if ords[i].is_some() || s.samples.is_empty() {
                    continue;
                }
                if let Some(problem) = self.label_limit_problem(&s.labels) {
                    report.reject(RejectReason::LabelLimit, s.samples.len() as u64, || {
                        format!("{}: {problem}", s.labels)
                    });
                    continue;
                }
                if cat.ordinal(ids[i]).is_none() && cat.len() >= cfg.max_series {
                    report.reject(RejectReason::SeriesLimit, s.samples.len() as u64, || {
                        format!(
                            "{}: new series refused, the limit of {} series is reached",
                            s.labels, cfg.max_series
                        )
                    });
                    continue;
                }
                let (o, created) = cat.get_or_create(ids[i], &s.labels)?;
                if created {
                    report.series_created += 1;
                    defs.push((ids[i], cat.labels(o).clone()));
                }
                ords[i] = Some(o);
            }
            for m in &batch.metadata {
                cat.metadata.insert(m.metric_family.clone(), m.clone());
            }
        } else if !batch.metadata.is_empty() {
            let mut cat = self.inner.catalog.write();
            for m in &batch.metadata {
                cat.metadata.insert(m.metric_family.clone(), m.clone());
            }
        }

        let mut accepted = Accepted {
            ords: Vec::with_capacity(batch.series.len() + batch.known.len()),
            samples: KnownSeriesSamples::with_capacity(
                batch.series.len() + batch.known.len(),
                batch.sample_count(),
            ),
        };
        {
            let mut h = self.inner.head.lock();
            let mut keep = |o: u32, id: u64, labels: &Labels, samples: &[Sample]| {
                let o_us = o as usize;
                if h.max_ts.len() <= o_us {
                    h.max_ts.resize(o_us + 1, i64::MIN);
                }
                let mut max = h.max_ts[o_us];
                for smp in samples {
                    let t = smp.timestamp_ms;
                    let reason = if t < cutoff {
                        Some(RejectReason::TooOld)
                    } else if t > future {
                        Some(RejectReason::TooFarInFuture)
                    } else if max != i64::MIN && t < max.saturating_sub(ooo) {
                        Some(RejectReason::OutOfOrder)
                    } else {
                        None
                    };
                    match reason {
                        Some(r) => report.reject(r, 1, || {
                            let detail = match r {
                                RejectReason::TooOld => "older than the retention period".to_string(),
                                RejectReason::TooFarInFuture => "more than 1h ahead of this server's clock".to_string(),
                                _ => format!(
                                    "out of order: the series has a sample at {max}, and only {}s older are accepted",
                                    ooo / 1000
                                ),
                            };
                            format!("{labels} @ {t}: {detail}")
                        }),
                        None => {
                            max = max.max(t);
                            accepted.samples.push_sample(*smp);
                        }
                    }
                }
                h.max_ts[o_us] = max;
                if accepted.samples.end_series(id) {
                    accepted.ords.push(o);
                }
            };
            for (i, s) in batch.series.iter().enumerate() {
                if let Some(o) = ords[i] {
                    keep(o, ids[i], &s.labels, &s.samples);
                }
            }
            for ((id, samples), k) in batch.known.iter().zip(&known) {
                if let Some((o, labels)) = k {
                    keep(*o, id, labels, samples);
                }
            }
        }
        report.accepted = accepted.samples.sample_count() as u64;
        drop(known);
        let t = &self.inner.telemetry;
        for (r, n) in &report.rejected {
            t.inc(
                "meshlens_samples_refused_total",
                &[("reason", r.as_str())],
                *n as f64,
            );
        }
        if accepted.ords.is_empty() && defs.is_empty() && batch.metadata.is_empty() {
            return Ok(report);
        }
        let payload = walrec::encode(&defs, &accepted.samples, &batch.metadata);
        drop(defs);
        drop(batch);
        let (reply, rx) = oneshot::channel();
        self.send(WalCmd::Append {
            payload,
            accepted,
            reply,
        })?;
        rx.await.map_err(|_| StorageError::ShuttingDown)??;
        t.inc(
            "meshlens_samples_appended_total",
            &[],
            report.accepted as f64,
        );
        if self.inner.head.lock().samples >= cfg.flush_samples {
            self.inner.flush_wanted.notify_one();
        }
        Ok(report)
    }

    /// Whether each series id is in the catalog (one read lock for all):
    /// a receiver sends the known ones by id ([`SampleBatch::known`]).
    pub fn known_series(&self, ids: &[u64], out: &mut Vec<bool>) {
        let cat = self.inner.catalog.read();
        out.clear();
        out.extend(ids.iter().map(|&id| cat.ordinal(id).is_some()));
    }

    /// Ordinals of series matching all matchers that have samples in the
    /// head or in a file overlapping `[start, end]` (file granularity, as
    /// Prometheus answers by block).
    fn series_in_range(&self, matchers: &[Matcher], start: i64, end: i64) -> RoaringBitmap {
        let selected = self.inner.catalog.read().select(matchers);
        if selected.is_empty() {
            return selected;
        }
        let mut present = RoaringBitmap::new();
        {
            let h = self.inner.head.lock();
            for (o, b) in h.series.iter().enumerate() {
                if b.ts.iter().any(|&t| t >= start && t <= end) {
                    present.insert(o as u32);
                }
            }
            if let Some(f) = &h.flushing {
                for (o, b) in f.iter().enumerate() {
                    if b.ts.iter().any(|&t| t >= start && t <= end) {
                        present.insert(o as u32);
                    }
                }
            }
            let fs = self.inner.file_series.read();
            for f in h.files.iter() {
                if f.max_ts >= start
                    && f.min_ts <= end
                    && let Some(bm) = fs.get(&f.path)
                {
                    present |= bm.as_ref();
                }
            }
        }
        selected & present
    }

    fn union_sets(&self, sets: &[Vec<Matcher>], start: i64, end: i64) -> RoaringBitmap {
        if sets.is_empty() {
            return self.series_in_range(&[], start, end);
        }
        let mut out = RoaringBitmap::new();
        for s in sets {
            out |= self.series_in_range(s, start, end);
        }
        out
    }

    /// `GET /api/v1/series`: label sets matching any of the matcher sets.
    pub fn series(&self, sets: &[Vec<Matcher>], start: i64, end: i64, limit: usize) -> Vec<Labels> {
        let ords = self.union_sets(sets, start, end);
        let cat = self.inner.catalog.read();
        let mut out: Vec<Labels> = ords.iter().map(|o| cat.labels(o).clone()).collect();
        out.sort();
        if limit > 0 {
            out.truncate(limit);
        }
        out
    }

    /// `GET /api/v1/labels`.
    pub fn label_names(
        &self,
        sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
        limit: usize,
    ) -> Vec<String> {
        let ords = self.union_sets(sets, start, end);
        let mut out = self.inner.catalog.read().label_names(&ords);
        if limit > 0 {
            out.truncate(limit);
        }
        out
    }

    /// `GET /api/v1/label/<name>/values`.
    pub fn label_values(
        &self,
        name: &str,
        sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
        limit: usize,
    ) -> Vec<String> {
        let ords = self.union_sets(sets, start, end);
        let mut out = self.inner.catalog.read().label_values(name, &ords);
        if limit > 0 {
            out.truncate(limit);
        }
        out
    }

    /// Metadata by metric family (`metric` filters to one).
    pub fn metadata(&self, metric: Option<&str>) -> Vec<MetricMetadata> {
        let cat = self.inner.catalog.read();
        let mut out: Vec<MetricMetadata> = cat
            .metadata
            .values()
            .filter(|m| metric.is_none_or(|n| n == m.metric_family))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.metric_family.cmp(&b.metric_family));
        out
    }

    /// The samples of every series matching all matchers within
    /// `[start, end]` (ms, inclusive), sorted by labels; each series sorted
    /// by time with unique times. Series without samples there are left out.
    pub async fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesData>> {
        let ords = self.inner.catalog.read().select(matchers);
        if ords.is_empty() {
            return Ok(vec![]);
        }
        let got = self.select_ords(&ords, start, end).await?;
        let cat = self.inner.catalog.read();
        let mut out: Vec<SeriesData> = got
            .into_iter()
            .map(|(o, pts)| SeriesData {
                labels: cat.labels(o).clone(),
                timestamps: pts.iter().map(|p| p.0).collect(),
                values: pts.iter().map(|p| p.1).collect(),
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// The samples of the series `ords` in `[start, end]`, per series
    /// sorted by time with unique times (series without any left out).
    async fn select_ords(
        &self,
        ords: &RoaringBitmap,
        start: i64,
        end: i64,
    ) -> Result<Vec<(u32, Vec<(i64, f64)>)>> {
        // Collected (ts, v) per wanted series, indexed like `wanted` (sorted
        // file ids) so a sample costs no hashing; files first, then head
        // (newer wins on ties).
        let (files, flushing, head_part) = self.snapshot(ords, start, end);
        let (wanted, ord_of) = self.wanted_ids(ords);
        let slot_of: HashMap<u32, usize> =
            ord_of.iter().enumerate().map(|(k, o)| (*o, k)).collect();
        let mut acc: Vec<Vec<(i64, f64)>> = vec![Vec::new(); wanted.len()];
        for f in files.iter() {
            if f.max_ts < start || f.min_ts > end {
                continue;
            }
            let overlap = self
                .inner
                .file_series
                .read()
                .get(&f.path)
                .is_none_or(|bm| !bm.is_disjoint(ords));
            if !overlap {
                continue;
            }
            let meta = self.file_meta(f).await?;
            let cached = self.file_bytes(f).await?;
            sfiles::read_rows(
                self.inner.store.clone(),
                cached,
                f,
                meta,
                &wanted,
                start,
                end,
                {
                    // Rows come in runs of one id: find its slot once per run.
                    let mut last: Option<(i64, Option<usize>)> = None;
                    let (wanted, acc) = (&wanted, &mut acc);
                    move |id, t, v| {
                        let k = match last {
                            Some((l, k)) if l == id => k,
                            _ => {
                                let k = wanted.binary_search(&id).ok();
                                last = Some((id, k));
                                k
                            }
                        };
                        if let Some(k) = k {
                            acc[k].push((t, v));
                        }
                    }
                },
            )
            .await?;
        }
        if let Some(fl) = flushing {
            for (k, &o) in ord_of.iter().enumerate() {
                if let Some(b) = fl.get(o as usize) {
                    let e = &mut acc[k];
                    e.extend(
                        b.ts.iter()
                            .zip(&b.v)
                            .filter(|(t, _)| **t >= start && **t <= end)
                            .map(|(t, v)| (*t, *v)),
                    );
                }
            }
        }
        for (o, v) in head_part {
            if let Some(&k) = slot_of.get(&o) {
                acc[k].extend(v);
            }
        }
        let mut out = Vec::with_capacity(acc.len());
        for (k, mut pts) in acc.into_iter().enumerate() {
            if pts.is_empty() {
                continue;
            }
            sorted_unique(&mut pts);
            out.push((ord_of[k], pts));
        }
        Ok(out)
    }

    /// The head's samples of `ords` in `[start, end]` (arrival order), and
    /// the files and the head being flushed, as of now.
    fn snapshot(&self, ords: &RoaringBitmap, start: i64, end: i64) -> Snapshot {
        let h = self.inner.head.lock();
        let mut head_part: Vec<(u32, Vec<(i64, f64)>)> = Vec::new();
        for o in ords.iter() {
            if let Some(b) = h.series.get(o as usize) {
                let v: Vec<(i64, f64)> =
                    b.ts.iter()
                        .zip(&b.v)
                        .filter(|(t, _)| **t >= start && **t <= end)
                        .map(|(t, v)| (*t, *v))
                        .collect();
                if !v.is_empty() {
                    head_part.push((o, v));
                }
            }
        }
        (h.files.clone(), h.flushing.clone(), head_part)
    }

    /// The series ids of `ords`, sorted (as in files), and the ordinal of each.
    fn wanted_ids(&self, ords: &RoaringBitmap) -> (Vec<i64>, Vec<u32>) {
        let cat = self.inner.catalog.read();
        let mut pairs: Vec<(i64, u32)> = ords.iter().map(|o| (cat.id(o) as i64, o)).collect();
        pairs.sort_unstable();
        pairs.dedup_by_key(|p| p.0);
        let ord_of: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        (pairs.into_iter().map(|p| p.0).collect::<Vec<i64>>(), ord_of)
    }

    /// Per series matching every matcher, a [`Summary`] of its samples in
    /// `[start, end]` (ms, inclusive; staleness markers left out), in no
    /// particular order; series without samples there are left out. The same as
    /// summarising what [`SampleStore::select`] returns, but files are read
    /// through their per-minute summaries: a window whose edges fall on
    /// whole minutes (`start` = k·60 s + 1) decodes no sample of any file.
    /// Series whose file summaries do not line up (a cell cut by an edge,
    /// overlapping files) are read raw.
    pub async fn summarize(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, Summary)>> {
        let (labels, sums) = self.summarize_flat(matchers, &[(start, end)]).await?;
        Ok(labels
            .into_iter()
            .zip(sums)
            .filter_map(|(l, s)| s.map(|s| (l, s)))
            .collect())
    }

    /// [`SampleStore::summarize`] for several windows at once: per series
    /// with a sample in any of them (in no particular order), one summary
    /// per window (in the order of `windows`).
    pub async fn summarize_windows(
        &self,
        matchers: &[Matcher],
        windows: &[(i64, i64)],
    ) -> Result<Vec<(Labels, Vec<Option<Summary>>)>> {
        let nw = windows.len().max(1);
        let (labels, sums) = self.summarize_flat(matchers, windows).await?;
        Ok(labels
            .into_iter()
            .zip(sums.chunks(nw))
            .map(|(l, ch)| (l, ch.to_vec()))
            .collect())
    }

    /// The series (with a sample in some window) and their summaries, one
    /// per window, flat: series `k`'s are at `k * windows.len() ..`.
    async fn summarize_flat(
        &self,
        matchers: &[Matcher],
        windows: &[(i64, i64)],
    ) -> Result<(Vec<Labels>, Vec<Option<Summary>>)> {
        let ords = self.inner.catalog.read().select(matchers);
        if ords.is_empty() || windows.is_empty() {
            return Ok((vec![], vec![]));
        }
        let lo = windows.iter().map(|w| w.0).min().unwrap_or(0);
        let hi = windows.iter().map(|w| w.1).max().unwrap_or(0);
        let (files, flushing, head_part) = self.snapshot(&ords, lo, hi);
        let (wanted, ord_of) = self.wanted_ids(&ords);
        let n = wanted.len();
        let nw = windows.len();
        // Per series and window (index k * nw + w).
        let mut acc: Vec<Option<Summary>> = vec![None; n * nw];
        let mut raw = vec![self.inner.file_cells.lock().budget() == 0; n * nw];
        // Pieces must come in time order: files by their first sample.
        let mut files: Vec<&SampleFile> = files
            .iter()
            .filter(|f| f.max_ts >= lo && f.min_ts <= hi)
            .filter(|f| {
                self.inner
                    .file_series
                    .read()
                    .get(&f.path)
                    .is_none_or(|bm| !bm.is_disjoint(&ords))
            })
            .collect();
        files.sort_by(|a, b| (a.min_ts, &a.path).cmp(&(b.min_ts, &b.path)));
        let add =
            |acc: &mut [Option<Summary>], raw: &mut [bool], i: usize, s: Summary| match &mut acc[i]
            {
                None => acc[i] = Some(s),
                Some(a) if s.first_t > a.last_t => a.append(&s),
                Some(_) => raw[i] = true,
            };
        let slot_of: HashMap<u32, usize> =
            ord_of.iter().enumerate().map(|(k, o)| (*o, k)).collect();
        if !raw.iter().all(|r| *r) {
            for f in files {
                let Some(cells) = self.file_cells(f, &ords).await? else {
                    // Few of the file's series are wanted: cheaper to read
                    // those raw than to summarise the whole file.
                    if let Some(bm) = self.inner.file_series.read().get(&f.path) {
                        for o in bm.as_ref() & &ords {
                            if let Some(&k) = slot_of.get(&o) {
                                raw[k * nw..(k + 1) * nw].fill(true);
                            }
                        }
                    }
                    continue;
                };
                // Windows holding the whole file read each series' file
                // summary; the others its cells at the window's ends.
                let inside: Vec<bool> = windows
                    .iter()
                    .map(|&(a, b)| a <= f.min_ts && f.max_ts <= b)
                    .collect();
                cells.join(&wanted, |k, j| {
                    for (w, &(a, b)) in windows.iter().enumerate() {
                        let i = k * nw + w;
                        if raw[i] {
                            continue;
                        }
                        if inside[w] {
                            add(&mut acc, &mut raw, i, cells.whole(j));
                            continue;
                        }
                        match cells.part(j, a, b) {
                            Part::Partial => raw[i] = true,
                            Part::Whole(None) => {}
                            Part::Whole(Some(s)) => add(&mut acc, &mut raw, i, s),
                        }
                    }
                });
            }
        }
        // The head being flushed, then the head: raw, in memory.
        let mut pieces = |k: usize, pts: &mut Vec<(i64, f64)>| {
            sorted_unique(pts);
            let (ts, vs): (Vec<i64>, Vec<f64>) = pts.iter().copied().unzip();
            for (w, &(a, b)) in windows.iter().enumerate() {
                let i = k * nw + w;
                let x = ts.partition_point(|&t| t < a);
                let y = ts.partition_point(|&t| t <= b);
                if !raw[i]
                    && let Some(s) = Summary::of(&ts[x..y], &vs[x..y])
                {
                    add(&mut acc, &mut raw, i, s);
                }
            }
        };
        if let Some(fl) = &flushing {
            for (k, &o) in ord_of.iter().enumerate() {
                let Some(b) = fl.get(o as usize) else {
                    continue;
                };
                let mut pts: Vec<(i64, f64)> =
                    b.ts.iter()
                        .zip(&b.v)
                        .filter(|(t, _)| **t >= lo && **t <= hi)
                        .map(|(t, v)| (*t, *v))
                        .collect();
                if !pts.is_empty() {
                    pieces(k, &mut pts);
                }
            }
        }
        for (o, mut pts) in head_part {
            if let Some(&k) = slot_of.get(&o) {
                pieces(k, &mut pts);
            }
        }
        // Whatever did not line up: from the raw samples.
        let mut again = RoaringBitmap::new();
        let mut n_raw = 0;
        for k in 0..n {
            if raw[k * nw..(k + 1) * nw].iter().any(|r| *r) {
                again.insert(ord_of[k]);
                n_raw += 1;
            }
        }
        for (a, r) in acc.iter_mut().zip(&raw) {
            if *r {
                *a = None;
            }
        }
        let t = &self.inner.telemetry;
        t.inc(
            "meshlens_samples_summarized_series_total",
            &[("read", "summaries")],
            (n - n_raw) as f64,
        );
        t.inc(
            "meshlens_samples_summarized_series_total",
            &[("read", "raw")],
            n_raw as f64,
        );
        if !again.is_empty() {
            for (o, pts) in self.select_ords(&again, lo, hi).await? {
                let Some(&k) = slot_of.get(&o) else { continue };
                let (ts, vs): (Vec<i64>, Vec<f64>) = pts.into_iter().unzip();
                for (w, &(a, b)) in windows.iter().enumerate() {
                    let i = k * nw + w;
                    if raw[i] {
                        let x = ts.partition_point(|&t| t < a);
                        let y = ts.partition_point(|&t| t <= b);
                        acc[i] = Summary::of(&ts[x..y], &vs[x..y]);
                    }
                }
            }
        }
        let cat = self.inner.catalog.read();
        let mut labels = Vec::with_capacity(n);
        let mut sums = Vec::with_capacity(n * nw);
        for (k, ch) in acc.chunks(nw).enumerate() {
            if ch.iter().any(|s| s.is_some()) {
                labels.push(cat.labels(ord_of[k]).clone());
                sums.extend_from_slice(ch);
            }
        }
        Ok((labels, sums))
    }

    /// The per-minute summaries of a file: cached, or built by reading it
    /// when at least a tenth of its series are wanted (None otherwise).
    async fn file_cells(
        &self,
        f: &SampleFile,
        wanted: &RoaringBitmap,
    ) -> Result<Option<Arc<FileCells>>> {
        if let Some(c) = self.inner.file_cells.lock().get(&f.path) {
            return Ok(Some(c));
        }
        if let Some(bm) = self.inner.file_series.read().get(&f.path)
            && bm.intersection_len(wanted) * 10 < bm.len()
        {
            return Ok(None);
        }
        let mut b = CellsBuilder::new();
        let (mut id, mut ts, mut vs) = (None, Vec::new(), Vec::new());
        sfiles::read_all(self.inner.store.clone(), f, |i, t, v| {
            if id != Some(i) {
                if let Some(prev) = id {
                    b.push_series(prev, &ts, &vs);
                }
                id = Some(i);
                ts.clear();
                vs.clear();
            }
            ts.push(t);
            vs.push(v);
        })
        .await?;
        if let Some(prev) = id {
            b.push_series(prev, &ts, &vs);
        }
        let cells = Arc::new(b.finish());
        let size = cells.bytes();
        self.inner
            .file_cells
            .lock()
            .put(&f.path, cells.clone(), size);
        Ok(Some(cells))
    }

    /// The whole file from the read cache (loading it), or None when the
    /// cache is off.
    async fn file_bytes(&self, f: &SampleFile) -> Result<Option<bytes::Bytes>> {
        if self.inner.file_bytes.lock().budget() == 0 {
            return Ok(None);
        }
        if let Some(b) = self.inner.file_bytes.lock().get(&f.path) {
            return Ok(Some(b));
        }
        let b = self
            .inner
            .store
            .get(&ObjectPath::from(f.path.as_str()))
            .await?
            .bytes()
            .await?;
        self.inner
            .file_bytes
            .lock()
            .put(&f.path, b.clone(), b.len());
        Ok(Some(b))
    }

    async fn file_meta(&self, f: &SampleFile) -> Result<ArrowReaderMetadata> {
        if let Some(m) = self.inner.file_meta.lock().get(&f.path) {
            return Ok(m.clone());
        }
        let m = sfiles::load_metadata(self.inner.store.clone(), f).await?;
        self.inner
            .file_meta
            .lock()
            .insert(f.path.clone(), m.clone());
        Ok(m)
    }

    pub fn stats(&self) -> SampleStats {
        let h = self.inner.head.lock();
        SampleStats {
            series: self.inner.catalog.read().len() as u64,
            head_samples: (h.samples + h.flushing_samples) as u64,
            files: h.files.len() as u64,
            file_bytes: h.files.iter().map(|f| f.bytes).sum(),
            file_samples: h.files.iter().map(|f| f.rows).sum(),
        }
    }

    fn publish_gauges(&self) {
        let s = self.stats();
        let t = &self.inner.telemetry;
        t.set("meshlens_samples_series", &[], s.series as f64);
        t.set("meshlens_samples_head", &[], s.head_samples as f64);
        t.set("meshlens_samples_stored", &[], s.file_samples as f64);
        t.set("meshlens_samples_parquet_bytes", &[], s.file_bytes as f64);
        t.set(
            "meshlens_samples_wal_bytes",
            &[],
            self.inner.wal_bytes.load(Ordering::Relaxed) as f64,
        );
        t.set(
            "meshlens_samples_catalog_bytes",
            &[],
            self.inner.catalog.read().bytes as f64,
        );
        t.set(
            "meshlens_samples_rollup_cache_bytes",
            &[],
            self.inner.file_cells.lock().bytes() as f64,
        );
    }

    async fn background_loop(self: Arc<Self>) {
        let a = self.inner.args.clone();
        let mut last_maintenance = Instant::now();
        loop {
            tokio::select! {
                _ = self.inner.flush_wanted.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let due = {
                let h = self.inner.head.lock();
                h.samples >= a.samples.flush_samples
                    || (h.samples * 16) as u64 >= a.buffer_budget_bytes / 2
                    || self.inner.wal_bytes.load(Ordering::Relaxed) >= a.wal_budget_bytes / 2
                    || h.since.is_some_and(|t| t.elapsed() >= a.samples.flush_age)
                    || h.flushing.is_some()
            };
            if due && let Err(e) = self.flush().await {
                tracing::error!(error = %e, "sample flush failed; data stays in the WAL and is retried");
            }
            if last_maintenance.elapsed() >= a.maintenance_interval {
                last_maintenance = Instant::now();
                if let Err(e) = self.enforce_retention().await {
                    tracing::error!(error = %e, "sample retention failed");
                }
                if let Err(e) = self.compact().await {
                    tracing::error!(error = %e, "sample compaction failed");
                }
            }
            self.publish_gauges();
        }
    }

    /// Writes the head to Parquet now.
    pub async fn flush(&self) -> Result<()> {
        let mut manifest = self.inner.manifest.lock().await;
        let (reply, rx) = oneshot::channel();
        self.send(WalCmd::Rotate { reply })?;
        let Some((bufs, sealed, last_seq)) = rx.await.map_err(|_| StorageError::ShuttingDown)??
        else {
            return Ok(());
        };
        let t = self.inner.telemetry.clone();
        let res = self.write_flush(&mut manifest, &bufs, last_seq).await;
        if let Err(e) = res {
            t.inc(
                "meshlens_samples_flushes_total",
                &[("outcome", "error")],
                1.0,
            );
            return Err(e);
        }
        {
            let mut h = self.inner.head.lock();
            h.files = Arc::new(manifest.files.clone());
            h.flushing = None;
            h.flushing_samples = 0;
        }
        let _ = self.send(WalCmd::Remove { through: sealed });
        t.inc("meshlens_samples_flushes_total", &[("outcome", "ok")], 1.0);
        self.publish_gauges();
        Ok(())
    }

    async fn persist_catalog(&self, manifest: &mut SampleManifest) -> Result<()> {
        let (first, entries, meta) = {
            let cat = self.inner.catalog.read();
            let first = cat.persisted;
            (
                first,
                cat.entries[first as usize..].to_vec(),
                cat.metadata.values().cloned().collect::<Vec<_>>(),
            )
        };
        if !entries.is_empty() {
            let path = format!("samples/series/{first:010}.cat");
            self.inner
                .store
                .put(
                    &ObjectPath::from(path.as_str()),
                    catalog::encode_segment(first, &entries).into(),
                )
                .await?;
            manifest.catalog_segments.push(path);
            manifest.catalog_len = first + entries.len() as u32;
            self.inner.catalog.write().persisted = manifest.catalog_len;
        }
        self.inner
            .store
            .put(
                &ObjectPath::from("samples/metadata.json"),
                serde_json::to_vec(&meta)?.into(),
            )
            .await?;
        Ok(())
    }

    async fn write_flush(
        &self,
        manifest: &mut SampleManifest,
        bufs: &[SeriesBuf],
        last_seq: u64,
    ) -> Result<()> {
        self.persist_catalog(manifest).await?;
        // Series in id order.
        let mut order: Vec<(i64, u32)> = {
            let cat = self.inner.catalog.read();
            bufs.iter()
                .enumerate()
                .filter(|(_, b)| !b.ts.is_empty())
                .map(|(o, _)| (cat.id(o as u32) as i64, o as u32))
                .collect()
        };
        order.sort_unstable();
        let mut parts: std::collections::BTreeMap<i64, PartWriter> = Default::default();
        for (id, o) in order {
            let (ts, vs) = bufs[o as usize].normalized();
            let mut i = 0;
            while i < ts.len() {
                let p = ts[i].div_euclid(PARTITION_MS) * PARTITION_MS;
                let j = i + ts[i..].partition_point(|&t| t < p + PARTITION_MS);
                let w = match parts.entry(p) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => e.insert(PartWriter::new()?),
                };
                w.push(id as u64, o, &ts[i..j], &vs[i..j])?;
                i = j;
            }
        }
        let mut next = manifest.clone();
        for (p, w) in parts {
            let id = next.next_file_id;
            next.next_file_id += 1;
            next.files.push(self.write_part(p, id, 0, w).await?);
        }
        next.flushed_seq = last_seq;
        self.store_manifest(&next).await?;
        *manifest = next;
        Ok(())
    }

    async fn write_part(
        &self,
        partition: i64,
        id: u64,
        level: u32,
        w: PartWriter,
    ) -> Result<SampleFile> {
        let path = sfiles::file_path(partition, id);
        let (bytes, stats, bm, cells) = w.finish()?;
        let mut side = Vec::new();
        bm.serialize_into(&mut side)?;
        self.inner
            .store
            .put(
                &ObjectPath::from(sfiles::series_sidecar(&path)),
                side.into(),
            )
            .await?;
        let n = bytes.len() as u64;
        self.inner
            .store
            .put(&ObjectPath::from(path.as_str()), bytes.into())
            .await?;
        self.inner
            .file_series
            .write()
            .insert(path.clone(), Arc::new(bm));
        let size = cells.bytes();
        self.inner
            .file_cells
            .lock()
            .put(&path, Arc::new(cells), size);
        Ok(SampleFile {
            path,
            partition,
            min_ts: stats.min_ts,
            max_ts: stats.max_ts,
            rows: stats.rows as u64,
            bytes: n,
            series: stats.series,
            level,
        })
    }

    async fn store_manifest(&self, m: &SampleManifest) -> Result<()> {
        self.inner
            .store
            .put(
                &ObjectPath::from(MANIFEST),
                serde_json::to_vec_pretty(m)?.into(),
            )
            .await?;
        Ok(())
    }

    async fn replace_files(
        &self,
        manifest: &mut SampleManifest,
        remove: &[String],
        add: Vec<SampleFile>,
    ) -> Result<()> {
        let mut next = manifest.clone();
        next.files.retain(|f| !remove.contains(&f.path));
        next.files.extend(add);
        self.store_manifest(&next).await?;
        *manifest = next;
        self.inner.head.lock().files = Arc::new(manifest.files.clone());
        {
            let mut fs = self.inner.file_series.write();
            let mut fm = self.inner.file_meta.lock();
            let mut fb = self.inner.file_bytes.lock();
            let mut fc = self.inner.file_cells.lock();
            for p in remove {
                fs.remove(p);
                fm.remove(p);
                fb.remove(p);
                fc.remove(p);
            }
        }
        let store = self.inner.store.clone();
        let remove = remove.to_vec();
        tokio::spawn(async move {
            // Queries holding an older snapshot may still read these.
            tokio::time::sleep(Duration::from_secs(30)).await;
            for p in remove
                .iter()
                .cloned()
                .chain(remove.iter().map(|p| sfiles::series_sidecar(p)))
            {
                if let Err(e) = store.delete(&ObjectPath::from(p.as_str())).await
                    && !matches!(e, object_store::Error::NotFound { .. })
                {
                    tracing::warn!(path = %p, error = %e, "could not delete an obsolete sample file");
                }
            }
        });
        Ok(())
    }

    /// Deletes whole files whose newest sample is older than the retention period.
    pub async fn enforce_retention(&self) -> Result<usize> {
        let cutoff = now_ms() - self.inner.args.retention.as_millis() as i64;
        let mut manifest = self.inner.manifest.lock().await;
        let expired: Vec<String> = manifest
            .files
            .iter()
            .filter(|f| f.max_ts < cutoff)
            .map(|f| f.path.clone())
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        self.replace_files(&mut manifest, &expired, vec![]).await?;
        Ok(expired.len())
    }

    /// Merges the files of each closed partition into one. Returns merges.
    pub async fn compact(&self) -> Result<usize> {
        let now = now_ms();
        let age = self.inner.args.samples.flush_age.as_millis() as i64;
        let mut manifest = self.inner.manifest.lock().await;
        let mut by_part: std::collections::BTreeMap<i64, Vec<SampleFile>> = Default::default();
        for f in &manifest.files {
            by_part.entry(f.partition).or_default().push(f.clone());
        }
        let mut merges = 0;
        for (p, group) in by_part {
            let closed = p + PARTITION_MS + age <= now;
            if group.len() < 2 || (!closed && group.len() < 8) {
                continue;
            }
            let mut rows: HashMap<i64, SeriesBuf> = HashMap::new();
            // Older files first so later writes of the same time win.
            let mut group = group;
            group.sort_by_key(|f| f.path.clone());
            for f in &group {
                sfiles::read_all(self.inner.store.clone(), f, |id, t, v| {
                    let b = rows.entry(id).or_default();
                    b.ts.push(t);
                    b.v.push(v);
                })
                .await?;
            }
            let mut ids: Vec<i64> = rows.keys().copied().collect();
            ids.sort_unstable();
            let mut w = PartWriter::new()?;
            {
                let cat = self.inner.catalog.read();
                for id in ids {
                    let (ts, vs) = rows[&id].normalized();
                    let o = cat.ordinal(id as u64).unwrap_or(u32::MAX);
                    w.push(id as u64, o, &ts, &vs)?;
                }
            }
            let fid = manifest.next_file_id;
            manifest.next_file_id += 1;
            let level = group.iter().map(|f| f.level).max().unwrap_or(0) + 1;
            let file = self.write_part(p, fid, level, w).await?;
            let removed: Vec<String> = group.iter().map(|f| f.path.clone()).collect();
            tracing::info!(
                partition = p,
                inputs = removed.len(),
                rows = file.rows,
                "compacted sample files"
            );
            self.replace_files(&mut manifest, &removed, vec![file])
                .await?;
            merges += 1;
        }
        Ok(merges)
    }

    /// Stops writes, flushes the head, stops the WAL thread. Idempotent.
    pub async fn shutdown(&self) -> Result<()> {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.flush_wanted.notify_one();
        let handles: Vec<_> = self.background.lock().drain(..).collect();
        for h in handles {
            let _ = h.await;
        }
        let flushed = self.flush().await;
        if let Err(e) = self.exemplars.save() {
            tracing::warn!(error = %e, "exemplars not saved");
        }
        let _ = self.send(WalCmd::Stop);
        let thread = self.wal_thread.lock().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        flushed
    }
}

/// Writes one file incrementally: a batch per 64Ki rows.
struct PartWriter {
    writer: ArrowWriter<Vec<u8>>,
    builder: FileBuilder,
    cells: CellsBuilder,
    bitmap: RoaringBitmap,
    stats: PartStats,
}

#[derive(Default)]
struct PartStats {
    rows: usize,
    series: u64,
    min_ts: i64,
    max_ts: i64,
}

impl PartWriter {
    fn new() -> Result<Self> {
        Ok(PartWriter {
            writer: sfiles::writer(Vec::new())?,
            builder: FileBuilder::new(),
            cells: CellsBuilder::new(),
            bitmap: RoaringBitmap::new(),
            stats: PartStats {
                min_ts: i64::MAX,
                max_ts: i64::MIN,
                ..Default::default()
            },
        })
    }

    fn push(&mut self, id: u64, ord: u32, ts: &[i64], vs: &[f64]) -> Result<()> {
        if ts.is_empty() {
            return Ok(());
        }
        if ord != u32::MAX {
            self.bitmap.insert(ord);
        }
        self.stats.rows += ts.len();
        self.stats.series += 1;
        self.stats.min_ts = self.stats.min_ts.min(ts[0]);
        self.stats.max_ts = self.stats.max_ts.max(ts[ts.len() - 1]);
        self.builder.push_series(id, ts, vs);
        self.cells.push_series(id as i64, ts, vs);
        if self.builder.rows >= 64 * 1024 {
            let b = std::mem::replace(&mut self.builder, FileBuilder::new());
            self.writer.write(&b.finish()?)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<u8>, PartStats, RoaringBitmap, FileCells)> {
        if self.builder.rows > 0 {
            self.writer.write(&self.builder.finish()?)?;
        }
        let bytes = self.writer.into_inner()?;
        Ok((bytes, self.stats, self.bitmap, self.cells.finish()))
    }
}

fn push_head(h: &mut Head, ord: u32, samples: &[Sample]) {
    let o = ord as usize;
    if h.series.len() <= o {
        h.series.resize_with(o + 1, SeriesBuf::default);
    }
    if h.max_ts.len() <= o {
        h.max_ts.resize(o + 1, i64::MIN);
    }
    let b = &mut h.series[o];
    for s in samples {
        b.ts.push(s.timestamp_ms);
        b.v.push(s.value);
        h.max_ts[o] = h.max_ts[o].max(s.timestamp_ms);
    }
    h.samples += samples.len();
}

fn wal_loop(mut wal: Wal, inner: Arc<Inner>, rx: mpsc::Receiver<WalCmd>) {
    let mut frames = wal::Frames::default();
    let mut pending: Vec<(Accepted, oneshot::Sender<Result<()>>)> = Vec::new();
    let commit = |wal: &mut Wal,
                  frames: &mut wal::Frames,
                  pending: &mut Vec<(Accepted, oneshot::Sender<Result<()>>)>| {
        if pending.is_empty() {
            return;
        }
        let res = wal.write_frames_synced(frames);
        inner.wal_bytes.store(wal.total_bytes(), Ordering::Relaxed);
        frames.clear();
        match res {
            Ok(()) => {
                let mut h = inner.head.lock();
                for (acc, _) in pending.iter() {
                    for (o, s) in acc.iter() {
                        push_head(&mut h, o, s);
                    }
                }
                if h.since.is_none() && h.samples > 0 {
                    h.since = Some(Instant::now());
                }
                drop(h);
                for (_, reply) in pending.drain(..) {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sample WAL write failed; the appends are refused");
                for (_, reply) in pending.drain(..) {
                    let _ = reply.send(Err(StorageError::Wal(std::io::Error::new(
                        e.kind(),
                        e.to_string(),
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
                    accepted,
                    reply,
                } => {
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
                    let seq = {
                        let mut h = inner.head.lock();
                        let s = h.next_seq;
                        h.next_seq += 1;
                        s
                    };
                    frames.push(seq, wal::Payload::Bytes(payload));
                    pending.push((accepted, reply));
                }
                WalCmd::Rotate { reply } => {
                    commit(&mut wal, &mut frames, &mut pending);
                    let empty = {
                        let h = inner.head.lock();
                        h.samples == 0 && h.flushing.is_none()
                    };
                    if empty {
                        let _ = reply.send(Ok(None));
                        continue;
                    }
                    let res = wal.rotate().map(|sealed| {
                        let mut h = inner.head.lock();
                        let bufs = match h.flushing.take() {
                            // A failed flush left data behind: write it together with the new head.
                            Some(prev) => {
                                let mut merged = (*prev).clone();
                                let cur = std::mem::take(&mut h.series);
                                if merged.len() < cur.len() {
                                    merged.resize_with(cur.len(), SeriesBuf::default);
                                }
                                for (o, b) in cur.into_iter().enumerate() {
                                    merged[o].ts.extend(b.ts);
                                    merged[o].v.extend(b.v);
                                }
                                merged
                            }
                            None => std::mem::take(&mut h.series),
                        };
                        let bufs = Arc::new(bufs);
                        h.flushing_samples += h.samples;
                        h.samples = 0;
                        h.since = None;
                        h.flushing = Some(bufs.clone());
                        Some((bufs, sealed, h.next_seq - 1))
                    });
                    let _ = reply.send(res);
                }
                WalCmd::Remove { through } => {
                    commit(&mut wal, &mut frames, &mut pending);
                    if let Err(e) = wal.remove_through(through) {
                        tracing::warn!(error = %e, "could not remove flushed sample WAL segments");
                    }
                    inner.wal_bytes.store(wal.total_bytes(), Ordering::Relaxed);
                }
                WalCmd::Stop => {
                    commit(&mut wal, &mut frames, &mut pending);
                    return;
                }
            }
        }
        commit(&mut wal, &mut frames, &mut pending);
    }
}
