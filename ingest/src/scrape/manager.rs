//! The scrape manager: one pool per job, one task per target, reloads that
//! keep unchanged targets running.

use super::config::{ConfigError, JobConfig, PromDuration, ScrapeConfig};
use super::discovery::FileSd;
use super::metrics as m;
use super::scrape_loop::{self, LoopContext, LoopState, StopMode, TargetHealth, TargetStatus};
use super::sink::SampleSink;
use super::target::{DroppedTarget, Target, TargetGroup, build_targets, static_groups};
use meshlens_storage::Telemetry;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where [`ScrapeManager::reload_from_source`] (and `POST /-/reload`) gets
/// the configuration: an optional user file, plus the self-scrape job when
/// `self_target` is set (the user's own `meshlens` job wins).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub self_target: Option<String>,
}

impl ConfigSource {
    pub fn load(&self) -> Result<ScrapeConfig, ConfigError> {
        let cfg = match &self.file {
            Some(p) => ScrapeConfig::load(p)?,
            None => ScrapeConfig::default(),
        };
        Ok(match &self.self_target {
            Some(t) => cfg.with_self_scrape(t),
            None => cfg,
        })
    }
}

/// Tuning knobs that are not part of the Prometheus file.
#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// How often file_sd files are checked for changes (mtime, size).
    pub file_sd_poll: Duration,
    pub user_agent: String,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            file_sd_poll: Duration::from_secs(2),
            user_agent: format!("meshlens/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A target being scraped, for `/api/v1/targets`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveTarget {
    pub job: String,
    pub scrape_url: String,
    pub labels: BTreeMap<String, String>,
    pub discovered_labels: BTreeMap<String, String>,
    pub health: TargetHealth,
    /// Empty when the last scrape succeeded.
    pub last_error: String,
    /// Scheduled time of the last scrape, ms since the epoch.
    pub last_scrape_ms: Option<i64>,
    pub last_scrape_duration_seconds: f64,
    pub scrape_interval: String,
    pub scrape_timeout: String,
}

/// All targets, sorted by job then scrape URL.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetsSnapshot {
    pub active_targets: Vec<ActiveTarget>,
    pub dropped_targets: Vec<DroppedTarget>,
}

struct LoopHandle {
    target: Arc<Target>,
    status: Arc<Mutex<TargetStatus>>,
    stop: Option<oneshot::Sender<StopMode>>,
    join: JoinHandle<LoopState>,
}

impl LoopHandle {
    fn signal(&mut self, mode: StopMode) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(mode);
        }
    }
}

struct Pool {
    job: Arc<JobConfig>,
    generation: u64,
    static_groups: Vec<TargetGroup>,
    file_groups: Vec<TargetGroup>,
    discovery: Option<JoinHandle<()>>,
    loops: HashMap<u64, LoopHandle>,
    dropped: Vec<DroppedTarget>,
}

struct State {
    config: Arc<ScrapeConfig>,
    pools: BTreeMap<String, Pool>,
    stopped: bool,
    generation: u64,
}

struct Inner {
    sink: Arc<dyn SampleSink>,
    telemetry: Telemetry,
    client: reqwest::Client,
    options: ManagerOptions,
    state: Mutex<State>,
    source: Mutex<ConfigSource>,
}

/// The Prometheus-compatible scrape manager. Cheap to clone (shared state).
///
/// Must be started inside a tokio runtime (it spawns its tasks).
#[derive(Clone)]
pub struct ScrapeManager {
    inner: Arc<Inner>,
}

impl ScrapeManager {
    /// Starts scraping every target of `config`.
    pub fn start(
        config: ScrapeConfig,
        sink: Arc<dyn SampleSink>,
        telemetry: Telemetry,
    ) -> ScrapeManager {
        Self::start_with_options(config, sink, telemetry, ManagerOptions::default())
    }

    pub fn start_with_options(
        config: ScrapeConfig,
        sink: Arc<dyn SampleSink>,
        telemetry: Telemetry,
        options: ManagerOptions,
    ) -> ScrapeManager {
        m::describe(&telemetry);
        let client = reqwest::Client::builder()
            .no_proxy()
            .user_agent(options.user_agent.clone())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let source = ConfigSource {
            file: config.source.clone(),
            self_target: None,
        };
        let inner = Arc::new(Inner {
            sink,
            telemetry,
            client,
            options,
            state: Mutex::new(State {
                config: Arc::new(ScrapeConfig::default()),
                pools: BTreeMap::new(),
                stopped: false,
                generation: 0,
            }),
            source: Mutex::new(source),
        });
        // Nothing runs yet, so there is nothing to wait for.
        let _ = inner.apply(config);
        ScrapeManager { inner }
    }

    /// Loads `source` (user file and/or self-scrape) and starts; `/-/reload`
    /// re-reads the same source.
    pub fn start_from_source(
        source: ConfigSource,
        sink: Arc<dyn SampleSink>,
        telemetry: Telemetry,
        options: ManagerOptions,
    ) -> Result<ScrapeManager, ConfigError> {
        let config = source.load()?;
        let mgr = Self::start_with_options(config, sink, telemetry, options);
        *mgr.inner.source.lock() = source;
        Ok(mgr)
    }

    /// Applies a new configuration: unchanged jobs keep running untouched;
    /// in changed jobs, targets that still exist continue with their
    /// staleness state; removed targets stop after writing stale markers
    /// for all their series (awaited here); new targets start.
    pub async fn reload(&self, config: ScrapeConfig) {
        let waits = self.inner.apply(config);
        join_all(waits).await;
    }

    /// Loads `path` (plus the self-scrape job if the source has one) and
    /// applies it; when the file is invalid, the running configuration stays
    /// and the error is returned. Later `/-/reload`s re-read this path.
    pub async fn reload_from_file(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let source = ConfigSource {
            file: Some(path.as_ref().to_path_buf()),
            self_target: self.inner.source.lock().self_target.clone(),
        };
        self.reload_source(source).await
    }

    /// Re-reads the configured source (what `POST /-/reload` does).
    pub async fn reload_from_source(&self) -> Result<(), ConfigError> {
        let source = self.inner.source.lock().clone();
        self.reload_source(source).await
    }

    async fn reload_source(&self, source: ConfigSource) -> Result<(), ConfigError> {
        let t = &self.inner.telemetry;
        match source.load() {
            Ok(cfg) => {
                *self.inner.source.lock() = source;
                self.reload(cfg).await;
                t.inc(m::RELOADS, &[("result", "success")], 1.0);
                t.set(m::LAST_RELOAD_OK, &[], 1.0);
                tracing::info!("scrape configuration reloaded");
                Ok(())
            }
            Err(e) => {
                t.inc(m::RELOADS, &[("result", "failure")], 1.0);
                t.set(m::LAST_RELOAD_OK, &[], 0.0);
                tracing::error!("scrape configuration reload failed, keeping the old one: {e}");
                Err(e)
            }
        }
    }

    /// The configuration running now.
    pub fn config(&self) -> Arc<ScrapeConfig> {
        self.inner.state.lock().config.clone()
    }

    /// The configuration source `/-/reload` reads.
    pub fn source(&self) -> ConfigSource {
        self.inner.source.lock().clone()
    }

    /// Active and dropped targets with their labels and last scrape.
    pub fn targets(&self) -> TargetsSnapshot {
        let st = self.inner.state.lock();
        let mut out = TargetsSnapshot::default();
        for pool in st.pools.values() {
            for h in pool.loops.values() {
                let s = h.status.lock().clone();
                let t = &h.target;
                out.active_targets.push(ActiveTarget {
                    job: t.job.to_string(),
                    scrape_url: t.url.clone(),
                    labels: t
                        .labels
                        .iter()
                        .map(|l| (l.name.to_string(), l.value.to_string()))
                        .collect(),
                    discovered_labels: t.discovered.clone(),
                    health: s.health,
                    last_error: s.last_error,
                    last_scrape_ms: s.last_scrape_ms,
                    last_scrape_duration_seconds: s.last_duration.as_secs_f64(),
                    scrape_interval: PromDuration(t.interval).to_string(),
                    scrape_timeout: PromDuration(t.timeout).to_string(),
                });
            }
            out.dropped_targets.extend(pool.dropped.iter().cloned());
        }
        out.active_targets
            .sort_by(|a, b| (&a.job, &a.scrape_url).cmp(&(&b.job, &b.scrape_url)));
        out
    }

    /// Stops every loop and discovery task (no stale markers, as Prometheus
    /// on shutdown: the series continue after a restart). Later reloads are
    /// ignored.
    pub async fn stop(&self) {
        let waits = {
            let mut st = self.inner.state.lock();
            st.stopped = true;
            let mut waits = Vec::new();
            for (_, mut pool) in std::mem::take(&mut st.pools) {
                if let Some(d) = pool.discovery.take() {
                    d.abort();
                }
                for (_, mut h) in pool.loops.drain() {
                    h.signal(StopMode::Shutdown);
                    waits.push(h.join);
                }
            }
            waits
        };
        join_all(waits).await;
    }
}

async fn join_all(waits: Vec<JoinHandle<LoopState>>) {
    for w in waits {
        let _ = w.await;
    }
}

impl Inner {
    /// Applies `config` (under the state lock, without awaiting). Returns
    /// the loops that were told to stop; awaiting them waits for their
    /// stale markers.
    fn apply(self: &Arc<Self>, config: ScrapeConfig) -> Vec<JoinHandle<LoopState>> {
        let mut st = self.state.lock();
        if st.stopped {
            return Vec::new();
        }
        let mut waits = Vec::new();
        let mut old = std::mem::take(&mut st.pools);
        for job in &config.scrape_configs {
            let name = job.job_name.clone();
            let pool = match old.remove(&name) {
                Some(p) if *p.job == *job => p,
                Some(mut p) => {
                    if let Some(d) = p.discovery.take() {
                        d.abort();
                    }
                    let loops = std::mem::take(&mut p.loops);
                    st.generation += 1;
                    self.new_pool(job, st.generation, loops, &mut waits)
                }
                None => {
                    st.generation += 1;
                    self.new_pool(job, st.generation, HashMap::new(), &mut waits)
                }
            };
            st.pools.insert(name, pool);
        }
        for (name, mut pool) in old {
            if let Some(d) = pool.discovery.take() {
                d.abort();
            }
            for (_, mut h) in pool.loops.drain() {
                h.signal(StopMode::Stale);
                waits.push(h.join);
            }
            for state in ["active", "dropped"] {
                self.telemetry
                    .set(m::TARGETS, &[("job", &name), ("state", state)], 0.0);
            }
        }
        st.config = Arc::new(config);
        waits
    }

    fn new_pool(
        self: &Arc<Self>,
        job: &JobConfig,
        generation: u64,
        previous: HashMap<u64, LoopHandle>,
        waits: &mut Vec<JoinHandle<LoopState>>,
    ) -> Pool {
        let job = Arc::new(job.clone());
        let mut pool = Pool {
            job: job.clone(),
            generation,
            static_groups: static_groups(&job),
            file_groups: Vec::new(),
            discovery: None,
            loops: HashMap::new(),
            dropped: Vec::new(),
        };
        if !job.file_sd_configs.is_empty() {
            // The first read is synchronous, so a reload does not briefly
            // see a job without its file targets.
            let mut fsd = FileSd::new(job.file_sd_configs.clone());
            let (_, errors) = fsd.refresh();
            self.report_sd_errors(&job.job_name, &errors);
            pool.file_groups = fsd.groups();
            let weak = Arc::downgrade(self);
            let poll = self.options.file_sd_poll;
            pool.discovery = Some(tokio::spawn(discovery_task(
                weak,
                job.job_name.clone(),
                generation,
                fsd,
                poll,
            )));
        }
        waits.extend(self.sync_pool(&mut pool, previous));
        pool
    }

    fn report_sd_errors(&self, job: &str, errors: &[super::discovery::FileSdError]) {
        for e in errors {
            self.telemetry.inc(m::SD_FILE_ERRORS, &[("job", job)], 1.0);
            tracing::warn!(job, file = %e.path.display(), "file_sd: keeping the previous targets of this file: {}", e.message);
        }
    }

    /// Brings the pool's loops in line with its groups. Loops in
    /// `previous` (of an older config of the same job) hand their state to
    /// the loop of the same target or are stopped with stale markers.
    fn sync_pool(
        &self,
        pool: &mut Pool,
        mut previous: HashMap<u64, LoopHandle>,
    ) -> Vec<JoinHandle<LoopState>> {
        let groups: Vec<TargetGroup> = pool
            .static_groups
            .iter()
            .chain(pool.file_groups.iter())
            .cloned()
            .collect();
        let (targets, dropped) = build_targets(&pool.job, &groups);
        pool.dropped = dropped;
        let mut running = std::mem::take(&mut pool.loops);
        for t in targets {
            let key = t.key;
            if let Some(mut h) = running.remove(&key) {
                h.target = Arc::new(t);
                pool.loops.insert(key, h);
                continue;
            }
            let handover = previous.remove(&key).map(|mut h| {
                h.signal(StopMode::Handover);
                h.join
            });
            pool.loops
                .insert(key, self.spawn_loop(&pool.job, t, handover));
        }
        let mut waits = Vec::new();
        for (_, mut h) in running.into_iter().chain(previous) {
            h.signal(StopMode::Stale);
            waits.push(h.join);
        }
        let job: &str = &pool.job.job_name;
        self.telemetry.set(
            m::TARGETS,
            &[("job", job), ("state", "active")],
            pool.loops.len() as f64,
        );
        self.telemetry.set(
            m::TARGETS,
            &[("job", job), ("state", "dropped")],
            pool.dropped.len() as f64,
        );
        waits
    }

    fn spawn_loop(
        &self,
        job: &Arc<JobConfig>,
        target: Target,
        handover: Option<JoinHandle<LoopState>>,
    ) -> LoopHandle {
        let target = Arc::new(target);
        let status = Arc::new(Mutex::new(TargetStatus::default()));
        let (tx, rx) = oneshot::channel();
        let ctx = LoopContext {
            job: job.clone(),
            target: target.clone(),
            client: self.client.clone(),
            sink: self.sink.clone(),
            telemetry: self.telemetry.clone(),
            status: status.clone(),
        };
        let join = tokio::spawn(scrape_loop::run(ctx, handover, rx));
        LoopHandle {
            target,
            status,
            stop: Some(tx),
            join,
        }
    }
}

async fn discovery_task(
    weak: Weak<Inner>,
    job: String,
    generation: u64,
    mut fsd: FileSd,
    poll: Duration,
) {
    loop {
        tokio::time::sleep(poll).await;
        let (changed, errors) = fsd.refresh();
        let Some(inner) = weak.upgrade() else {
            return;
        };
        inner.report_sd_errors(&job, &errors);
        if !changed {
            continue;
        }
        let waits = {
            let mut st = inner.state.lock();
            if st.stopped {
                return;
            }
            let Some(pool) = st
                .pools
                .get_mut(&job)
                .filter(|p| p.generation == generation)
            else {
                return;
            };
            pool.file_groups = fsd.groups();
            inner.sync_pool(pool, HashMap::new())
        };
        drop(inner);
        join_all(waits).await;
    }
}
