//! One target's scrape loop: schedule, fetch, parse with the series cache,
//! limits, staleness, the synthetic series, the write, self-metrics.

use super::config::JobConfig;
use super::metrics as m;
use super::parse::{Line, MetadataSet, normalize_float_label, parse_line, parse_series};
use super::relabel::{self, LabelMap};
use super::sink::SampleSink;
use super::target::Target;
use meshlens_storage::Telemetry;
use meshlens_storage::samples::{
    Labels, METRIC_NAME, MetricMetadata, Sample, SampleBatch, SeriesWrite, stale_nan,
};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// The `Accept` header Prometheus sends when only the text format is enabled.
pub const ACCEPT_HEADER: &str = "text/plain;version=0.0.4;q=1,*/*;q=0.1";

/// Cache entries not seen for this many scrapes are evicted.
const CACHE_KEEP_ITERATIONS: u64 = 10;

/// Health of a target, as `/api/v1/targets` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TargetHealth {
    #[default]
    Unknown,
    Up,
    Down,
}

/// What the loop last did; read by [`super::ScrapeManager::targets`].
#[derive(Clone, Debug, Default)]
pub(crate) struct TargetStatus {
    pub health: TargetHealth,
    pub last_error: String,
    pub last_scrape_ms: Option<i64>,
    pub last_duration: Duration,
}

/// How a loop is asked to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// The target went away: write stale markers for all its series.
    Stale,
    /// A replacement loop for the same target takes over the state.
    Handover,
    /// meshlens shuts down: no stale markers (as Prometheus).
    Shutdown,
}

struct CacheEntry {
    /// `None`: dropped by metric relabeling.
    series: Option<(u64, Labels)>,
    last_iter: u64,
}

/// The state a loop carries between scrapes (and hands over on reload).
#[derive(Default)]
pub(crate) struct LoopState {
    /// Raw series text -> final series (Prometheus's scrape cache).
    cache: HashMap<Box<str>, CacheEntry>,
    iteration: u64,
    /// Series written by the last scrape, for staleness (not those with
    /// explicit timestamps, not the synthetic ones).
    prev: HashMap<u64, Labels>,
    /// Metadata as last sent.
    metadata: MetadataSet,
    report_written: bool,
    last_ts: Option<i64>,
    last_failure: Option<&'static str>,
}

impl LoopState {
    /// Keeps staleness tracking and metadata, forgets cached relabel results.
    pub(crate) fn for_new_config(mut self) -> LoopState {
        self.cache.clear();
        self
    }
}

/// Why a scrape failed (`reason` is a stable word used as a metric label).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Failure {
    pub reason: &'static str,
    pub message: String,
    /// Samples parsed before the failure (`scrape_samples_scraped`).
    pub scraped: u64,
}

impl Failure {
    fn new(reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
            scraped: 0,
        }
    }
}

/// The outcome of processing one successful fetch.
#[derive(Debug, Default)]
pub(crate) struct Processed {
    pub series: Vec<SeriesWrite>,
    pub metadata: Vec<MetricMetadata>,
    pub scraped: u64,
    pub post_relabel: u64,
    pub added: u64,
    pub duplicates: u64,
    pub stale: u64,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Turns a response body into series writes. On success `state.prev`
/// becomes this scrape's series and stale markers for vanished series are
/// part of the result; on failure `state.prev` is untouched (the caller
/// writes stale markers for all of it).
pub(crate) fn process(
    job: &JobConfig,
    target: &Target,
    state: &mut LoopState,
    body: &str,
    ts: i64,
) -> Result<Processed, Failure> {
    state.iteration += 1;
    let iter = state.iteration;
    let mut out = Processed::default();
    let mut meta = MetadataSet::default();
    let mut cur: HashMap<u64, Labels> = HashMap::with_capacity(state.prev.len());
    let mut seen: HashSet<u64> = HashSet::with_capacity(state.prev.len());
    let mut limit_exceeded = false;
    for (n, line) in body.split('\n').enumerate() {
        let parsed = parse_line(line).map_err(|e| Failure {
            reason: "parse_error",
            message: format!("line {}: {e}", n + 1),
            scraped: out.scraped,
        })?;
        let (series, value, explicit_ts) = match parsed {
            Line::Blank => continue,
            Line::Help { family, text } => {
                meta.add_help(family, text);
                continue;
            }
            Line::Type { family, kind } => {
                if state.metadata.kind(family).is_some_and(|k| k != kind) {
                    // `le`/`quantile` normalization depends on the type.
                    state.cache.clear();
                }
                meta.add_type(family, kind);
                continue;
            }
            Line::Sample {
                series,
                value,
                timestamp_ms,
            } => (series, value, timestamp_ms),
        };
        out.scraped += 1;
        if limit_exceeded {
            continue;
        }
        let entry = match state.cache.get_mut(series) {
            Some(e) => {
                e.last_iter = iter;
                e
            }
            None => {
                let built = build_series(job, target, &meta, series).map_err(|mut f| {
                    f.message = format!("line {}: {}", n + 1, f.message);
                    f.scraped = out.scraped;
                    f
                })?;
                if built.is_some() {
                    out.added += 1;
                }
                state.cache.entry(Box::from(series)).or_insert(CacheEntry {
                    series: built,
                    last_iter: iter,
                })
            }
        };
        let Some((id, labels)) = &entry.series else {
            continue;
        };
        out.post_relabel += 1;
        if job.sample_limit > 0 && out.post_relabel > job.sample_limit {
            limit_exceeded = true;
            continue;
        }
        if !seen.insert(*id) {
            out.duplicates += 1;
            continue;
        }
        let t = match explicit_ts {
            Some(t) if job.honor_timestamps => t,
            _ => {
                cur.insert(*id, labels.clone());
                ts
            }
        };
        out.series.push(SeriesWrite {
            labels: labels.clone(),
            samples: vec![Sample {
                timestamp_ms: t,
                value,
            }],
        });
    }
    if limit_exceeded {
        return Err(Failure {
            reason: "sample_limit",
            message: format!(
                "sample limit exceeded ({} samples after metric relabeling, limit {})",
                out.post_relabel, job.sample_limit
            ),
            scraped: out.scraped,
        });
    }
    // Staleness: series of the last scrape that are gone now.
    for (id, labels) in &state.prev {
        if !cur.contains_key(id) {
            out.series.push(stale_write(labels.clone(), ts));
            out.stale += 1;
        }
    }
    state.prev = cur;
    // Metadata: only what is new or changed since it was last sent.
    for (family, v) in &meta.families {
        if state.metadata.families.get(family) != Some(v) {
            out.metadata.push(MetricMetadata {
                metric_family: family.clone(),
                kind: v.0,
                help: v.1.clone(),
                unit: String::new(),
            });
        }
    }
    state.metadata = meta;
    if iter.is_multiple_of(2) || state.cache.len() > 2 * out.scraped as usize + 16 {
        state
            .cache
            .retain(|_, e| iter.saturating_sub(e.last_iter) <= CACHE_KEEP_ITERATIONS);
    }
    Ok(out)
}

fn stale_write(labels: Labels, ts: i64) -> SeriesWrite {
    SeriesWrite {
        labels,
        samples: vec![Sample {
            timestamp_ms: ts,
            value: stale_nan(),
        }],
    }
}

/// Raw series text -> final labels (parse, normalize, target labels,
/// metric relabeling, limits). `Ok(None)` = dropped by relabeling.
pub(crate) fn build_series(
    job: &JobConfig,
    target: &Target,
    meta: &MetadataSet,
    raw: &str,
) -> Result<Option<(u64, Labels)>, Failure> {
    let (name, labels) = parse_series(raw).map_err(|e| Failure::new("parse_error", e))?;
    let norm = meta.float_label_of(name);
    let mut lb = LabelMap::new();
    lb.insert(METRIC_NAME.to_string(), name.to_string());
    for (k, v) in labels {
        if v.is_empty() {
            continue;
        }
        let v = if Some(k) == norm {
            normalize_float_label(&v).into_owned()
        } else {
            v.into_owned()
        };
        if lb.insert(k.to_string(), v).is_some() {
            return Err(Failure::new(
                "invalid_series",
                format!("label {k:?} appears twice in {raw:?}"),
            ));
        }
    }
    merge_target_labels(&mut lb, &target.labels, job.honor_labels);
    if !relabel::process(&job.metric_relabel_configs, &mut lb) {
        return Ok(None);
    }
    let labels = Labels::series(lb.iter()).map_err(|e| {
        Failure::new(
            "invalid_series",
            format!("{e} (series {raw:?} after relabeling)"),
        )
    })?;
    check_label_limits(job, &labels)?;
    Ok(Some((labels.series_id(), labels)))
}

/// Prometheus's `mutateSampleLabels` (before metric relabeling).
pub(crate) fn merge_target_labels(lb: &mut LabelMap, target: &Labels, honor_labels: bool) {
    if honor_labels {
        for l in target.iter() {
            if !lb.contains_key(&*l.name) {
                lb.insert(l.name.to_string(), l.value.to_string());
            }
        }
        return;
    }
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for l in target.iter() {
        if let Some(old) = lb.insert(l.name.to_string(), l.value.to_string()) {
            conflicts.push((l.name.to_string(), old));
        }
    }
    conflicts.sort_by_key(|(n, _)| n.len());
    for (name, value) in conflicts {
        let mut new = name;
        loop {
            new = format!("exported_{new}");
            if let std::collections::btree_map::Entry::Vacant(e) = lb.entry(new.clone()) {
                e.insert(value);
                break;
            }
        }
    }
}

fn trunc(s: &str) -> &str {
    match s.char_indices().nth(50) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn check_label_limits(job: &JobConfig, labels: &Labels) -> Result<(), Failure> {
    let metric = labels.metric_name().unwrap_or("");
    if job.label_limit > 0 && labels.len() as u64 > job.label_limit {
        return Err(Failure::new(
            "label_limit",
            format!(
                "label_limit exceeded (metric: {}, number of labels: {}, limit: {})",
                trunc(metric),
                labels.len(),
                job.label_limit
            ),
        ));
    }
    for l in labels.iter() {
        if job.label_name_length_limit > 0 && l.name.len() as u64 > job.label_name_length_limit {
            return Err(Failure::new(
                "label_name_length_limit",
                format!(
                    "label_name_length_limit exceeded (metric: {}, label name: {}, length: {}, limit: {})",
                    trunc(metric),
                    trunc(&l.name),
                    l.name.len(),
                    job.label_name_length_limit
                ),
            ));
        }
        if job.label_value_length_limit > 0 && l.value.len() as u64 > job.label_value_length_limit {
            return Err(Failure::new(
                "label_value_length_limit",
                format!(
                    "label_value_length_limit exceeded (metric: {}, label name: {}, value: {:?}, length: {}, limit: {})",
                    trunc(metric),
                    trunc(&l.name),
                    trunc(&l.value),
                    l.value.len(),
                    job.label_value_length_limit
                ),
            ));
        }
    }
    Ok(())
}

/// `up`, `scrape_duration_seconds`, ... with the target's labels.
pub(crate) struct ReportSeries {
    up: Labels,
    duration: Labels,
    scraped: Labels,
    post_relabel: Labels,
    added: Labels,
}

impl ReportSeries {
    pub(crate) fn new(target: &Labels) -> ReportSeries {
        let l = |n: &str| target.with(METRIC_NAME, n);
        ReportSeries {
            up: l("up"),
            duration: l("scrape_duration_seconds"),
            scraped: l("scrape_samples_scraped"),
            post_relabel: l("scrape_samples_post_metric_relabeling"),
            added: l("scrape_series_added"),
        }
    }

    fn all(&self) -> [&Labels; 5] {
        [
            &self.up,
            &self.duration,
            &self.scraped,
            &self.post_relabel,
            &self.added,
        ]
    }

    fn write(&self, out: &mut Vec<SeriesWrite>, ts: i64, vals: [f64; 5]) {
        for (l, v) in self.all().into_iter().zip(vals) {
            out.push(SeriesWrite {
                labels: l.clone(),
                samples: vec![Sample {
                    timestamp_ms: ts,
                    value: v,
                }],
            });
        }
    }
}

/// Everything a loop needs.
pub(crate) struct LoopContext {
    pub job: Arc<JobConfig>,
    pub target: Arc<Target>,
    pub client: reqwest::Client,
    pub sink: Arc<dyn SampleSink>,
    pub telemetry: Telemetry,
    pub status: Arc<Mutex<TargetStatus>>,
}

impl LoopContext {
    fn instance(&self) -> &str {
        self.target
            .labels
            .get("instance")
            .unwrap_or(&self.target.url)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// GETs the target's URL within its timeout, capped at `body_size_limit`.
pub(crate) async fn fetch(ctx: &LoopContext) -> Result<String, Failure> {
    let t = &ctx.target;
    let limit = ctx.job.body_limit();
    let timeout = t.timeout;
    let work = async {
        let classify = |e: reqwest::Error| {
            let reason = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connection"
            } else {
                "http"
            };
            Failure::new(reason, error_chain(&e))
        };
        let mut resp = ctx
            .client
            .get(&t.url)
            .header(reqwest::header::ACCEPT, ACCEPT_HEADER)
            .header(
                "X-Prometheus-Scrape-Timeout-Seconds",
                format!("{}", timeout.as_secs_f64()),
            )
            .timeout(timeout)
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            return Err(Failure::new(
                "http_status",
                format!("server returned HTTP status {status}"),
            ));
        }
        let mut body: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if let Some(l) = limit
                && (body.len() + chunk.len()) as u64 > l
            {
                return Err(Failure::new(
                    "body_size_limit",
                    format!("body size limit exceeded (limit: {l} bytes)"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body)
            .map_err(|e| Failure::new("parse_error", format!("body is not UTF-8: {e}")))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new(
            "timeout",
            format!("scrape timed out after {timeout:?}"),
        )),
    }
}

/// Runs the loop until told to stop; returns the state (for a handover).
pub(crate) async fn run(
    ctx: LoopContext,
    handover: Option<tokio::task::JoinHandle<LoopState>>,
    mut stop: oneshot::Receiver<StopMode>,
) -> LoopState {
    let mut state = match handover {
        Some(h) => h.await.map(LoopState::for_new_config).unwrap_or_default(),
        None => LoopState::default(),
    };
    let report = ReportSeries::new(&ctx.target.labels);
    let interval_ms = ctx.target.interval.as_millis().max(1) as i64;
    // Stable offset inside the interval (Prometheus: hash of the target):
    // the scrape times are first + k * interval, on a fixed grid.
    let offset = (ctx.target.key % interval_ms as u64) as i64;
    let now = now_ms();
    let mut first = now - now.rem_euclid(interval_ms) + offset;
    if first < now {
        first += interval_ms;
    }
    let start = Instant::now() + Duration::from_millis((first - now) as u64);
    let mut k: u64 = 0;
    loop {
        let due = start + Duration::from_millis(k.saturating_mul(interval_ms as u64));
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {}
            mode = &mut stop => {
                return finish(&ctx, state, &report, mode.unwrap_or(StopMode::Shutdown)).await;
            }
        }
        let ts = first + k as i64 * interval_ms;
        if state.last_ts.is_none_or(|l| ts > l) {
            scrape_and_report(&ctx, &mut state, &report, ts).await;
        }
        match stop.try_recv() {
            Ok(mode) => return finish(&ctx, state, &report, mode).await,
            Err(oneshot::error::TryRecvError::Closed) => {
                return finish(&ctx, state, &report, StopMode::Shutdown).await;
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        // Next tick; ticks missed while scraping are skipped.
        let elapsed = Instant::now().saturating_duration_since(start);
        let behind = (elapsed.as_millis() / interval_ms as u128) as u64 + 1;
        k = (k + 1).max(behind);
    }
}

async fn finish(
    ctx: &LoopContext,
    mut state: LoopState,
    report: &ReportSeries,
    mode: StopMode,
) -> LoopState {
    if mode == StopMode::Stale {
        let ts = state.last_ts.map_or(now_ms(), |l| now_ms().max(l + 1));
        let mut series: Vec<SeriesWrite> = state
            .prev
            .drain()
            .map(|(_, l)| stale_write(l, ts))
            .collect();
        if state.report_written {
            series.extend(report.all().into_iter().map(|l| stale_write(l.clone(), ts)));
        }
        if !series.is_empty() {
            ctx.telemetry.inc(
                m::STALE_MARKERS,
                &[("job", &ctx.target.job)],
                series.len() as f64,
            );
            append(
                ctx,
                SampleBatch {
                    known: Default::default(),
                    series,
                    metadata: Vec::new(),
                },
            )
            .await;
        }
        state.last_ts = Some(ts);
    }
    state
}

/// One scrape: fetch, process, write, record.
pub(crate) async fn scrape_and_report(
    ctx: &LoopContext,
    state: &mut LoopState,
    report: &ReportSeries,
    ts: i64,
) {
    let started = Instant::now();
    let result = match fetch(ctx).await {
        Ok(body) => process(&ctx.job, &ctx.target, state, &body, ts),
        Err(f) => Err(f),
    };
    let took = started.elapsed();
    let job: &str = &ctx.target.job;
    let mut batch = SampleBatch::default();
    let failure = match result {
        Ok(p) => {
            if p.duplicates > 0 {
                ctx.telemetry
                    .inc(m::DUPLICATES, &[("job", job)], p.duplicates as f64);
            }
            if p.stale > 0 {
                ctx.telemetry
                    .inc(m::STALE_MARKERS, &[("job", job)], p.stale as f64);
            }
            batch.series = p.series;
            batch.metadata = p.metadata;
            report.write(
                &mut batch.series,
                ts,
                [
                    1.0,
                    took.as_secs_f64(),
                    p.scraped as f64,
                    p.post_relabel as f64,
                    p.added as f64,
                ],
            );
            None
        }
        Err(f) => {
            let n = state.prev.len();
            batch
                .series
                .extend(state.prev.drain().map(|(_, l)| stale_write(l, ts)));
            if n > 0 {
                ctx.telemetry
                    .inc(m::STALE_MARKERS, &[("job", job)], n as f64);
            }
            report.write(
                &mut batch.series,
                ts,
                [0.0, took.as_secs_f64(), f.scraped as f64, 0.0, 0.0],
            );
            Some(f)
        }
    };
    state.report_written = true;
    state.last_ts = Some(ts);
    ctx.telemetry
        .observe(m::SCRAPE_DURATION, &[("job", job)], took.as_secs_f64());
    record_outcome(ctx, state, failure.as_ref());
    {
        let mut st = ctx.status.lock();
        st.health = if failure.is_some() {
            TargetHealth::Down
        } else {
            TargetHealth::Up
        };
        st.last_error = failure
            .as_ref()
            .map(|f| f.message.clone())
            .unwrap_or_default();
        st.last_scrape_ms = Some(ts);
        st.last_duration = took;
    }
    append(ctx, batch).await;
}

fn record_outcome(ctx: &LoopContext, state: &mut LoopState, failure: Option<&Failure>) {
    let job: &str = &ctx.target.job;
    let instance = ctx.instance().to_string();
    let new_reason = failure.map(|f| f.reason);
    if let Some(old) = state.last_failure
        && Some(old) != new_reason
    {
        ctx.telemetry.set(
            m::LAST_ERROR,
            &[("job", job), ("instance", &instance), ("reason", old)],
            0.0,
        );
    }
    if let Some(f) = failure {
        ctx.telemetry
            .inc(m::FAILURES, &[("job", job), ("reason", f.reason)], 1.0);
        ctx.telemetry.set(
            m::LAST_ERROR,
            &[("job", job), ("instance", &instance), ("reason", f.reason)],
            1.0,
        );
        if state.last_failure != Some(f.reason) {
            tracing::warn!(job, instance, reason = f.reason, url = %ctx.target.url, "scrape failed: {}", f.message);
        } else {
            tracing::debug!(
                job,
                instance,
                reason = f.reason,
                "scrape failed: {}",
                f.message
            );
        }
    } else if state.last_failure.is_some() {
        tracing::info!(job, instance, "scrape target is up again");
    }
    state.last_failure = new_reason;
}

async fn append(ctx: &LoopContext, batch: SampleBatch) {
    let job: &str = &ctx.target.job;
    match ctx.sink.append(batch).await {
        Ok(report) => {
            for (reason, n) in &report.rejected {
                ctx.telemetry.inc(
                    m::SAMPLES_REJECTED,
                    &[("job", job), ("reason", reason.as_str())],
                    *n as f64,
                );
            }
            if report.rejected_total() > 0 {
                tracing::debug!(job, url = %ctx.target.url, "storage rejected samples: {}", report.describe_rejections());
            }
        }
        Err(e) => {
            ctx.telemetry.inc(m::APPEND_FAILURES, &[("job", job)], 1.0);
            tracing::warn!(job, url = %ctx.target.url, "writing scraped samples failed: {e}");
        }
    }
}
