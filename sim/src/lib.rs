//! A simulated Istio Bookinfo mesh that reports to meshlens the way real
//! sidecars do, through meshlens's real receivers:
//!
//! - **spans** as Envoy's Zipkin tracer sends them (JSON v2 POSTed to
//!   `/api/v2/spans`, one batch per sidecar per tick; shared span ids, B3
//!   64-bit ids, Istio's tags), and ratings' own spans from an
//!   OpenTelemetry "SDK" as OTLP/HTTP protobuf to `/v1/traces`;
//! - **metrics** as each sidecar's `/stats/prometheus` (Istio's standard
//!   metrics from both reporters, a few raw Envoy cluster stats), served on
//!   local ports for meshlens's scrape manager ([`Simulator::serve_stats`],
//!   [`scrape_config_yaml`]);
//! - **scenarios** from Istio's traffic-management tutorials, switchable at
//!   run time ([`Simulator::router`]: `GET/POST /api/demo/scenario`).
//!
//! Used by `meshlens demo`, the tests and the benchmarks (it is also our
//! load generator: see `bench sim`).

pub mod mesh;
pub mod scenario;
pub mod stats;
pub mod traffic;

pub use scenario::Scenario;
pub use traffic::{Batch, Generator, ZipkinPost};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mesh::Workload;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use parking_lot::Mutex;
use prost::Message;
use serde::Deserialize;
use serde_json::json;
use stats::SidecarStats;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How the simulation runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Bookinfo requests per second through the ingress gateway (fortio adds
    /// a quarter as many to httpbin).
    pub rate: f64,
    pub scenario: Scenario,
    /// Generate and send this often.
    pub tick: Duration,
    /// Fixed seed for reproducible runs (tests); None: random.
    pub seed: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            rate: 20.0,
            scenario: Scenario::RoundRobin,
            tick: Duration::from_millis(200),
            seed: None,
        }
    }
}

/// Where the simulated proxies and SDK send their spans.
#[derive(Debug, Clone)]
pub struct Sink {
    /// `http://HOST:9411/api/v2/spans`.
    pub zipkin_url: String,
    /// `http://HOST:4318/v1/traces`.
    pub otlp_url: String,
}

/// A sidecar's stats endpoint, for the scrape configuration.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub workload: String,
    pub namespace: String,
    pub pod: String,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    spans_sent: AtomicU64,
    spans_failed: AtomicU64,
}

struct Control {
    scenario: Scenario,
    rate: f64,
    since_ms: u64,
}

struct Inner {
    mesh: Arc<Vec<Workload>>,
    stats: Arc<Vec<Mutex<SidecarStats>>>,
    control: Mutex<Control>,
    counters: Counters,
    config: SimConfig,
}

/// The simulated mesh. Cheap to clone.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Simulator {
    pub fn new(config: SimConfig) -> Simulator {
        let mesh = Arc::new(mesh::workloads());
        let stats = Arc::new(
            (0..mesh.len())
                .map(|_| Mutex::new(SidecarStats::default()))
                .collect(),
        );
        Simulator {
            inner: Arc::new(Inner {
                mesh,
                stats,
                control: Mutex::new(Control {
                    scenario: config.scenario,
                    rate: config.rate,
                    since_ms: now_ms(),
                }),
                counters: Counters::default(),
                config,
            }),
        }
    }

    pub fn workloads(&self) -> &[Workload] {
        &self.inner.mesh
    }

    pub fn scenario(&self) -> Scenario {
        self.inner.control.lock().scenario
    }

    pub fn set_scenario(&self, s: Scenario) {
        let mut c = self.inner.control.lock();
        if c.scenario != s {
            tracing::info!(scenario = %s, "demo scenario: {}", s.description());
        }
        c.scenario = s;
        c.since_ms = now_ms();
    }

    pub fn set_rate(&self, rate: f64) {
        self.inner.control.lock().rate = rate;
    }

    /// A generator sharing this mesh's counters (for benchmarks and tests
    /// that drive generation themselves).
    pub fn generator(&self) -> Generator {
        Generator::new(
            Arc::clone(&self.inner.mesh),
            Arc::clone(&self.inner.stats),
            self.inner.config.seed,
        )
    }

    /// One sidecar's `/stats/prometheus` text.
    pub fn stats_text(&self, w: mesh::W) -> String {
        self.inner.stats[w].lock().render(&self.inner.mesh)
    }

    /// Serves every sidecar's `/stats/prometheus` on its own port of `ip`
    /// (as each pod's :15090 would be), until the runtime stops.
    pub async fn serve_stats(&self, ip: IpAddr) -> std::io::Result<Vec<Target>> {
        let mut targets = Vec::new();
        for (i, w) in self.inner.mesh.iter().enumerate() {
            let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
            let addr = listener.local_addr()?;
            let sim = self.clone();
            let app = Router::new().route(
                "/stats/prometheus",
                get(move || {
                    let sim = sim.clone();
                    async move {
                        (
                            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                            sim.stats_text(i),
                        )
                    }
                }),
            );
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(error = %e, "simulated sidecar stats server stopped");
                }
            });
            targets.push(Target {
                addr,
                workload: w.name.to_string(),
                namespace: w.namespace.to_string(),
                pod: w.pod.clone(),
            });
        }
        Ok(targets)
    }

    /// Generates traffic and sends it to `sink` until the runtime stops.
    pub fn spawn(&self, sink: Sink) -> tokio::task::JoinHandle<()> {
        let sim = self.clone();
        tokio::spawn(async move { sim.run(sink).await })
    }

    async fn run(self, sink: Sink) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(32)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "demo: cannot build an HTTP client");
                return;
            }
        };
        let mut generator = self.generator();
        let tick = self.inner.config.tick;
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last = Instant::now();
        let mut carry = 0.0f64;
        let mut last_warning: Option<Instant> = None;
        loop {
            ticker.tick().await;
            let now = Instant::now();
            let dt = now.duration_since(last).min(Duration::from_secs(2));
            last = now;
            let (scenario, rate) = {
                let c = self.inner.control.lock();
                (c.scenario, c.rate)
            };
            generator.set_scenario(scenario);
            carry += rate.max(0.0) * dt.as_secs_f64();
            let n = carry.floor();
            carry -= n;
            let batch = generator.generate(n as usize, now_us(), tick.as_micros() as i64);
            if let Err(e) = self.send(&client, &sink, batch).await {
                let due = last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10));
                if due {
                    tracing::warn!(error = %e, "demo: meshlens refused or missed simulated telemetry (dropped, as a proxy would)");
                    last_warning = Some(Instant::now());
                }
            }
        }
    }

    /// Sends one batch: one Zipkin POST per sidecar and one OTLP export, all
    /// at once. Refused batches are dropped and counted, as Envoy does.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        sink: &Sink,
        batch: Batch,
    ) -> Result<(), String> {
        let c = &self.inner.counters;
        c.requests.fetch_add(batch.requests, Ordering::Relaxed);
        let mut posts = Vec::new();
        for p in batch.zipkin {
            let rq = client
                .post(&sink.zipkin_url)
                .header("content-type", "application/json")
                .body(p.body);
            posts.push((p.spans, rq));
        }
        if !batch.otlp.is_empty() {
            let n = batch.otlp.len();
            let body = otlp_request(batch.otlp).encode_to_vec();
            let rq = client
                .post(&sink.otlp_url)
                .header("content-type", "application/x-protobuf")
                .body(body);
            posts.push((n, rq));
        }
        let results = futures::future::join_all(posts.into_iter().map(|(n, rq)| async move {
            let r = match rq.send().await {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    Err(format!("HTTP {status}: {}", text.trim()))
                }
                Err(e) => Err(e.to_string()),
            };
            (n, r)
        }))
        .await;
        let mut first_error = None;
        for (n, r) in results {
            match r {
                Ok(()) => {
                    c.spans_sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    c.spans_failed.fetch_add(n as u64, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// The state `GET /api/demo/scenario` shows.
    pub fn status(&self) -> serde_json::Value {
        let (scenario, rate, since) = {
            let c = self.inner.control.lock();
            (c.scenario, c.rate, c.since_ms)
        };
        let c = &self.inner.counters;
        json!({
            "scenario": scenario.name(),
            "description": scenario.description(),
            "since": since,
            "rate": rate,
            "requests": c.requests.load(Ordering::Relaxed),
            "spans_sent": c.spans_sent.load(Ordering::Relaxed),
            "spans_refused": c.spans_failed.load(Ordering::Relaxed),
            "scenarios": Scenario::ALL.iter().map(|s| json!({
                "name": s.name(), "description": s.description()
            })).collect::<Vec<_>>(),
        })
    }

    /// `GET /api/demo/scenario` (the current scenario, rate and counts) and
    /// `POST /api/demo/scenario` (`{"scenario": "fault-abort", "rate": 50}`
    /// as JSON, or `?scenario=...&rate=...`).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/demo/scenario", get(get_status).post(post_scenario))
            .with_state(self.clone())
    }
}

#[derive(Debug, Default, Deserialize)]
struct ScenarioChange {
    scenario: Option<String>,
    rate: Option<f64>,
}

async fn get_status(State(sim): State<Simulator>) -> Json<serde_json::Value> {
    Json(sim.status())
}

fn bad_request(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"status": "error", "error": msg})),
    )
        .into_response()
}

async fn post_scenario(
    State(sim): State<Simulator>,
    Query(q): Query<ScenarioChange>,
    body: axum::body::Bytes,
) -> Response {
    let mut change = q;
    if !body.is_empty() {
        match serde_json::from_slice::<ScenarioChange>(&body) {
            Ok(b) => {
                change.scenario = b.scenario.or(change.scenario);
                change.rate = b.rate.or(change.rate);
            }
            Err(e) => {
                return bad_request(format!(
                    "the body must be JSON like {{\"scenario\": \"fault-abort\", \"rate\": 50}}: {e}"
                ));
            }
        }
    }
    if change.scenario.is_none() && change.rate.is_none() {
        return bad_request(format!(
            "nothing to change: give \"scenario\" (one of: {}) and/or \"rate\"",
            Scenario::names()
        ));
    }
    let scenario = match change.scenario.as_deref().map(str::parse::<Scenario>) {
        Some(Err(e)) => return bad_request(e),
        Some(Ok(s)) => Some(s),
        None => None,
    };
    if let Some(r) = change.rate
        && !(r.is_finite() && (0.0..=100_000.0).contains(&r))
    {
        return bad_request(format!(
            "rate {r} is out of range: requests per second from 0 to 100000"
        ));
    }
    if let Some(s) = scenario {
        sim.set_scenario(s);
    }
    if let Some(r) = change.rate {
        sim.set_rate(r);
    }
    Json(sim.status()).into_response()
}

fn otlp_request(
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
) -> ExportTraceServiceRequest {
    use traffic::kv;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "ratings"),
                    kv("service.namespace", "default"),
                    kv("service.version", "v1"),
                    kv("k8s.namespace.name", "default"),
                    kv("k8s.pod.name", "ratings-v1-7b8c9d6f4-j5n2s"),
                    kv("k8s.deployment.name", "ratings-v1"),
                    kv("telemetry.sdk.language", "nodejs"),
                    kv("telemetry.sdk.name", "opentelemetry"),
                    kv("telemetry.sdk.version", "1.30.0"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "@opentelemetry/instrumentation-http".to_string(),
                    version: "0.57.0".to_string(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The scrape configuration for the simulated sidecars, as Istio's
/// Prometheus would scrape pods (`namespace` and `pod` labels).
pub fn scrape_config_yaml(targets: &[Target], interval: Duration) -> String {
    let secs = interval.as_secs().max(1);
    let mut y = format!(
        "# Written by `meshlens demo`: the simulated sidecars' /stats/prometheus.\n\
         global:\n  scrape_interval: {secs}s\n  scrape_timeout: {}s\n\
         scrape_configs:\n  - job_name: envoy-stats\n    metrics_path: /stats/prometheus\n    static_configs:\n",
        secs.saturating_sub(1).max(1)
    );
    for t in targets {
        y.push_str(&format!(
            "      - targets: [\"{}\"]\n        labels: {{namespace: \"{}\", pod: \"{}\"}}\n",
            t.addr, t.namespace, t.pod
        ));
    }
    y
}
