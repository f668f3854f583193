//! `meshlens serve`: opens the storage (replaying the WAL), then starts the
//! HTTP, OTLP/HTTP and OTLP/gRPC listeners; on SIGINT/SIGTERM stops them and
//! flushes the buffer to Parquet.

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Args;
use meshlens_ingest::derive::{DeriveConfig, Deriver, Dimension};
use meshlens_ingest::scrape::{ConfigSource, ManagerOptions, SampleSink, ScrapeManager};
use meshlens_ingest::{IngestConfig, IngestState};
use meshlens_query::QueryState;
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Settings shared by `serve` and `demo`. Every flag has a `MESHLENS_*`
/// environment variable.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where the WAL, Parquet files and manifest live [default: ./meshlens-data;
    /// for `demo`, ./meshlens-demo-data].
    #[arg(long, env = "MESHLENS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Zipkin API (ingest and query), Prometheus API, meshlens's own APIs.
    #[arg(long, env = "MESHLENS_HTTP_ADDR", default_value = "0.0.0.0:9411")]
    pub http_addr: SocketAddr,
    /// OTLP over gRPC (TraceService/Export, MetricsService/Export).
    #[arg(long, env = "MESHLENS_OTLP_GRPC_ADDR", default_value = "0.0.0.0:4317")]
    pub otlp_grpc_addr: SocketAddr,
    /// OTLP over HTTP (POST /v1/traces and /v1/metrics, protobuf or JSON).
    #[arg(long, env = "MESHLENS_OTLP_HTTP_ADDR", default_value = "0.0.0.0:4318")]
    pub otlp_http_addr: SocketAddr,
    /// How long spans are kept, e.g. 7d, 12h, 30m. Whole expired files are deleted.
    #[arg(long, env = "MESHLENS_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Largest request body accepted, before and after decompression (bytes).
    #[arg(long, env = "MESHLENS_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Write the in-memory buffer to Parquet at least this often.
    #[arg(long, env = "MESHLENS_FLUSH_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// Write the in-memory buffer to Parquet when it holds this many spans.
    #[arg(long, env = "MESHLENS_FLUSH_ROWS", default_value_t = 1_000_000)]
    pub flush_rows: usize,
    /// Refuse spans (HTTP 429/503, gRPC RESOURCE_EXHAUSTED) above this much buffered data (bytes).
    #[arg(long, env = "MESHLENS_BUFFER_BUDGET_BYTES", default_value_t = 1 << 30)]
    pub buffer_budget_bytes: u64,
    /// How often retention and compaction run.
    #[arg(long, env = "MESHLENS_MAINTENANCE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub maintenance_interval: Duration,
    /// Metric samples up to this much older than their series' newest sample are
    /// still stored (out of order); older ones are refused with a count.
    #[arg(long, env = "MESHLENS_OOO_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub ooo_window: Duration,
    /// Most metric series kept; samples of new series beyond it are refused.
    #[arg(long, env = "MESHLENS_MAX_SERIES", default_value_t = 10_000_000)]
    pub max_series: usize,
    /// Most labels per metric series.
    #[arg(long, env = "MESHLENS_MAX_LABELS_PER_SERIES", default_value_t = 128)]
    pub max_labels_per_series: usize,
    /// Write buffered metric samples to Parquet at least this often.
    #[arg(long, env = "MESHLENS_SAMPLES_FLUSH_INTERVAL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub samples_flush_interval: Duration,
    /// Prometheus-compatible scrape configuration (scrape_configs, static and
    /// file service discovery, relabeling). Re-read on SIGHUP and POST /-/reload.
    #[arg(long, env = "MESHLENS_SCRAPE_CONFIG")]
    pub scrape_config: Option<PathBuf>,
    /// Do not scrape meshlens's own /metrics (job "meshlens").
    #[arg(long, env = "MESHLENS_NO_SELF_SCRAPE")]
    pub no_self_scrape: bool,
    /// Bytes of recently read sample files kept in memory for queries (0: off).
    #[arg(long, env = "MESHLENS_QUERY_CACHE_BYTES", default_value_t = 256 << 20)]
    pub query_cache_bytes: usize,
    /// Bytes of per-minute summaries of sample files kept in memory, so
    /// long-window rates and the topology read a summary per series and
    /// minute instead of every sample (0: off; answers are the same).
    #[arg(long, env = "MESHLENS_ROLLUP_CACHE_BYTES", default_value_t = 256 << 20)]
    pub rollup_cache_bytes: usize,
    /// PromQL: longest a query may run before it fails with a timeout (503).
    #[arg(long, env = "MESHLENS_QUERY_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub query_timeout: Duration,
    /// PromQL: most samples one query may load (Prometheus's
    /// --query.max-samples); beyond it the query fails (422).
    #[arg(long, env = "MESHLENS_QUERY_MAX_SAMPLES", default_value_t = 50_000_000)]
    pub query_max_samples: usize,
    /// PromQL: how far back an instant selector looks for a sample.
    #[arg(long, env = "MESHLENS_QUERY_LOOKBACK_DELTA", default_value = "5m", value_parser = humantime::parse_duration)]
    pub query_lookback_delta: Duration,
    /// Do not derive span metrics and service-graph series from spans.
    #[arg(long, env = "MESHLENS_NO_DERIVE")]
    pub no_derive: bool,
    /// How often span metrics and service-graph series are written.
    #[arg(long, env = "MESHLENS_DERIVE_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub derive_interval: Duration,
    /// How long half of a call (client or server span) waits for the other half.
    #[arg(long, env = "MESHLENS_SERVICE_GRAPH_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub service_graph_wait: Duration,
    /// Most call halves waiting for their other half; more are dropped and counted.
    #[arg(
        long,
        env = "MESHLENS_SERVICE_GRAPH_MAX_PENDING",
        default_value_t = 100_000
    )]
    pub service_graph_max_pending: usize,
    /// Extra labels of the derived series, comma-separated LABEL=ATTR[|ATTR...]
    /// (span attribute, then resource attribute; the first present wins).
    #[arg(
        long,
        env = "MESHLENS_SPAN_DIMENSIONS",
        default_value = "version=istio.canonical_revision|service.version,namespace=istio.namespace|service.namespace|k8s.namespace.name",
        value_delimiter = ','
    )]
    pub span_dimensions: Vec<String>,
    /// Sampling probability per service (SERVICE=P, comma-separated) for
    /// spans that do not carry it: derived counts are multiplied by 1/P.
    #[arg(long, env = "MESHLENS_SPAN_SAMPLING", value_delimiter = ',')]
    pub span_sampling: Vec<String>,
    /// Exemplars (trace ids on derived series) kept in memory.
    #[arg(long, env = "MESHLENS_MAX_EXEMPLARS", default_value_t = 100_000)]
    pub max_exemplars: usize,
}

impl ServeArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./meshlens-data"))
    }

    fn storage_config(&self) -> StorageConfig {
        let mut cfg = StorageConfig::new(self.data_dir());
        cfg.retention = self.retention;
        cfg.flush_age = self.flush_interval;
        cfg.flush_rows = self.flush_rows;
        cfg.buffer_budget_bytes = self.buffer_budget_bytes;
        cfg.maintenance_interval = self.maintenance_interval;
        cfg.samples.ooo_window = self.ooo_window;
        cfg.samples.max_series = self.max_series;
        cfg.samples.max_labels_per_series = self.max_labels_per_series;
        cfg.samples.flush_age = self.samples_flush_interval;
        cfg.samples.read_cache_bytes = self.query_cache_bytes;
        cfg.samples.rollup_cache_bytes = self.rollup_cache_bytes;
        cfg.samples.max_exemplars = self.max_exemplars;
        cfg
    }

    fn derive_config(&self) -> anyhow::Result<DeriveConfig> {
        let mut dimensions = Vec::new();
        for d in self.span_dimensions.iter().filter(|d| !d.trim().is_empty()) {
            dimensions
                .push(Dimension::parse(d).map_err(|e| anyhow::anyhow!("--span-dimensions: {e}"))?);
        }
        let mut sampling = std::collections::HashMap::new();
        for s in self.span_sampling.iter().filter(|d| !d.trim().is_empty()) {
            let parsed = s
                .rsplit_once('=')
                .and_then(|(svc, p)| Some((svc.trim().to_string(), p.trim().parse::<f64>().ok()?)))
                .filter(|(svc, p)| !svc.is_empty() && *p > 0.0 && *p <= 1.0);
            let Some((svc, p)) = parsed else {
                anyhow::bail!(
                    "--span-sampling {s:?}: expected SERVICE=PROBABILITY with 0 < PROBABILITY <= 1"
                );
            };
            sampling.insert(svc, p);
        }
        Ok(DeriveConfig {
            interval: self.derive_interval,
            wait: self.service_graph_wait,
            max_pending: self.service_graph_max_pending,
            dimensions,
            sampling,
            ..Default::default()
        })
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for {what} (is another process using it?)")
    })
}

/// Runs once the server's own ports are bound (so whatever it binds cannot
/// take them), before scraping starts; may return the scrape configuration.
pub type Prepare = Box<
    dyn FnOnce() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = anyhow::Result<Option<PathBuf>>> + Send>,
        > + Send,
>;

/// What `demo` adds to a server: more HTTP routes, a preparation step after
/// the listeners are bound, and a callback once they serve.
pub struct Extension {
    pub router: axum::Router,
    pub prepare: Prepare,
    /// Returns what to run when shutdown starts (e.g. stop sending).
    pub on_ready: Box<dyn FnOnce(Ready) -> Box<dyn FnOnce() + Send> + Send>,
}

/// The addresses a server actually listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub http: SocketAddr,
    pub otlp_http: SocketAddr,
    pub otlp_grpc: SocketAddr,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    run_with(args, None).await
}

pub async fn run_with(args: ServeArgs, extension: Option<Extension>) -> anyhow::Result<()> {
    let derive_config = args.derive_config()?;
    let telemetry = Telemetry::new();
    let storage = Storage::open(args.storage_config(), telemetry)
        .await
        .with_context(|| format!("cannot open storage in {}", args.data_dir().display()))?;

    let mut ingest = IngestState::new(
        storage.clone(),
        IngestConfig {
            max_body_bytes: args.max_body_bytes,
        },
    );
    let deriver =
        (!args.no_derive).then(|| Deriver::new(derive_config, Some(storage.telemetry().clone())));
    if let Some(d) = &deriver {
        ingest = ingest.with_deriver(d.clone());
        d.spawn(storage.samples().clone());
    }
    let query = QueryState::with_engine_options(
        storage.clone(),
        meshlens_query::promql::EngineOptions {
            timeout: args.query_timeout,
            max_samples: args.query_max_samples,
            lookback_ms: args.query_lookback_delta.as_millis() as i64,
            ..Default::default()
        },
    );

    let http = bind(args.http_addr, "the Zipkin/HTTP API").await?;
    let otlp_http = bind(args.otlp_http_addr, "OTLP/HTTP").await?;
    let otlp_grpc = bind(args.otlp_grpc_addr, "OTLP/gRPC").await?;
    tracing::info!(
        http = %http.local_addr()?, otlp_http = %otlp_http.local_addr()?, otlp_grpc = %otlp_grpc.local_addr()?,
        data_dir = %args.data_dir().display(), "meshlens is serving"
    );

    let (router, prepare, on_ready) = match extension {
        Some(e) => (Some(e.router), Some(e.prepare), Some(e.on_ready)),
        None => (None, None, None),
    };
    let mut scrape_file = args.scrape_config.clone();
    if let Some(prepare) = prepare
        && let Some(f) = prepare().await?
    {
        scrape_file = Some(f);
    }

    // Scraping: the user's file (if any) plus meshlens's own /metrics.
    let http_local = http.local_addr()?;
    let source = ConfigSource {
        file: scrape_file,
        self_target: (!args.no_self_scrape).then(|| format!("127.0.0.1:{}", http_local.port())),
    };
    let sink: Arc<dyn SampleSink> = Arc::new(storage.samples().clone());
    let scraper = ScrapeManager::start_from_source(
        source,
        sink,
        storage.telemetry().clone(),
        ManagerOptions::default(),
    )
    .map_err(|e| anyhow::anyhow!("invalid scrape configuration: {e}"))?;
    #[cfg(unix)]
    {
        let scraper = scraper.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                match scraper.reload_from_source().await {
                    Ok(()) => tracing::info!("scrape configuration reloaded (SIGHUP)"),
                    Err(e) => {
                        tracing::error!(error = %e, "scrape configuration not reloaded; the previous one keeps running")
                    }
                }
            }
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let http_app = meshlens_ingest::zipkin_router(ingest.clone())
        .merge(meshlens_ingest::remote_write_router(ingest.clone()))
        .merge(meshlens_ingest::scrape::router(scraper.clone()))
        .merge(meshlens_query::router(query))
        .merge(meshlens_ui::router());
    let http_app = match router {
        Some(r) => http_app.merge(r),
        None => http_app,
    };
    let ready = Ready {
        http: http.local_addr()?,
        otlp_http: otlp_http.local_addr()?,
        otlp_grpc: otlp_grpc.local_addr()?,
    };
    // Small responses must not wait for delayed ACKs.
    let http = http.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let otlp_http = otlp_http.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http_task = tokio::spawn(
        axum::serve(http, http_app.into_make_service())
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let otlp_http_task = tokio::spawn(
        axum::serve(
            otlp_http,
            meshlens_ingest::otlp_http_router(ingest.clone())
                .merge(meshlens_ingest::otlp_metrics_http_router(ingest.clone()))
                .into_make_service(),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future(),
    );
    let incoming = tonic::transport::server::TcpIncoming::from(otlp_grpc).with_nodelay(Some(true));
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(meshlens_ingest::otlp_grpc_service(ingest.clone()))
            .add_service(meshlens_ingest::otlp_metrics_grpc_service(ingest.clone()))
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
    );

    let on_shutdown = on_ready.map(|f| f(ready));

    shutdown_signal().await;
    if let Some(f) = on_shutdown {
        f();
    }
    tracing::info!("shutting down: closing listeners, then flushing buffered spans");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = http_task.await;
        let _ = otlp_http_task.await;
        let _ = grpc_task.await;
    })
    .await;
    scraper.stop().await;
    if let Some(d) = &deriver {
        let _ = d.write_to(storage.samples()).await;
    }
    storage.shutdown().await.context("flushing on shutdown")?;
    tracing::info!("stopped cleanly");
    Ok(())
}
