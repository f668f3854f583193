//! meshlens-query: the read side. Trace lookups and searches over the
//! storage, and the HTTP APIs that serve them (Zipkin v2 now; Prometheus,
//! Tempo later), plus meshlens's own `/metrics`.

pub mod error;
pub mod prom;
pub mod promql;
pub mod topology;
pub mod traces;
pub mod zipkin;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use meshlens_storage::Storage;
use std::sync::Arc;

/// Shared by every query handler.
#[derive(Clone)]
pub struct QueryState {
    pub storage: Arc<Storage>,
    /// The PromQL engine over the sample store.
    pub engine: promql::Engine,
    pub traces: Arc<traces::TraceStore>,
}

impl QueryState {
    pub fn new(storage: Arc<Storage>) -> Self {
        QueryState::with_engine_options(storage, promql::EngineOptions::default())
    }

    /// Like [`QueryState::new`] with explicit PromQL limits. Must be called
    /// inside a Tokio runtime (queries wait on it for storage reads).
    pub fn with_engine_options(storage: Arc<Storage>, opts: promql::EngineOptions) -> Self {
        storage.telemetry().describe(
            "meshlens_query_seconds",
            "histogram",
            "Latency of query API calls, by API.",
        );
        let source = promql::StoreSource {
            store: storage.samples().clone(),
            handle: tokio::runtime::Handle::current(),
        };
        QueryState {
            engine: promql::Engine::new(Arc::new(source), opts),
            traces: Arc::new(traces::TraceStore::new(storage.clone())),
            storage,
        }
    }

    fn observe(&self, api: &'static str, started: std::time::Instant) {
        self.storage.telemetry().observe(
            "meshlens_query_seconds",
            &[("api", api)],
            started.elapsed().as_secs_f64(),
        );
    }
}

/// Every query API on one router (the binary serves it on :9411).
pub fn router(state: QueryState) -> Router {
    zipkin::router(state.clone())
        .merge(prom::router(state.clone()))
        .merge(topology::router(state.clone()))
        .merge(
            Router::new()
                .route("/metrics", get(metrics))
                .route("/health", get(|| async { "ok" }))
                .with_state(state),
        )
}

async fn metrics(State(st): State<QueryState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.storage.telemetry().render(),
    )
}
