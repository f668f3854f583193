//! meshlens-ingest: the span receivers (Zipkin v1/v2 JSON, Zipkin proto3,
//! OTLP gRPC, OTLP HTTP protobuf/JSON) and the metric receivers (Prometheus
//! remote write 1.0, OTLP metrics gRPC and HTTP).
//!
//! Every receiver has the same shape: a router or service constructor, pure
//! decode functions (`bytes -> Vec<Span>`, validation included) that the fuzz
//! targets and other crates can call, and tests. See README.md for the map.

// Tests may unwrap; the library itself never does on wire data.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod body;
pub mod derive;
pub mod error;
pub mod metrics;
pub mod otlp;
pub mod remote_write;
pub mod scrape;
pub mod validate;
pub mod zipkin;

mod pipeline;
mod protowire;
#[cfg(test)]
mod test_util;

use meshlens_storage::Storage;
use std::sync::Arc;

pub use error::{DecodeError, IngestError, InvalidSpan, Problem, Rejections};
pub use otlp::grpc::OtlpTraceService;
pub use otlp::metrics_grpc::OtlpMetricsService;

/// Default request body limit, compressed or not: 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Receiver settings; the binary fills them from flags.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Largest accepted request body, applied both to the bytes on the wire
    /// and to the body after decompression (gRPC: the largest message).
    pub max_body_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// What every receiver needs: where spans go and the limits. Cheap to clone.
#[derive(Clone)]
pub struct IngestState {
    pub storage: Arc<Storage>,
    pub config: IngestConfig,
    /// Span metrics and service-graph derivation, when on.
    pub deriver: Option<Arc<derive::Deriver>>,
}

impl IngestState {
    /// Also registers the help text of the receivers' own metrics.
    pub fn new(storage: Arc<Storage>, config: IngestConfig) -> Self {
        metrics::describe(storage.telemetry());
        IngestState {
            storage,
            config,
            deriver: None,
        }
    }

    /// Derives span metrics and service-graph edges from stored spans.
    pub fn with_deriver(mut self, d: Arc<derive::Deriver>) -> Self {
        self.deriver = Some(d);
        self
    }
}

/// `POST /api/v2/spans` and `POST /api/v1/spans`. Only POST routes are
/// registered, so this merges with a router serving `GET /api/v2/spans`.
pub fn zipkin_router(state: IngestState) -> axum::Router {
    zipkin::router(state)
}

/// `POST /v1/traces` (OTLP/HTTP, protobuf or JSON).
pub fn otlp_http_router(state: IngestState) -> axum::Router {
    otlp::http::router(state)
}

/// The OTLP gRPC trace service, ready for `tonic::transport::Server::add_service`.
pub fn otlp_grpc_service(state: IngestState) -> otlp::grpc::TraceGrpcServer {
    otlp::grpc::grpc_service(state)
}

/// `POST /api/v1/write` (Prometheus remote write 1.0).
pub fn remote_write_router(state: IngestState) -> axum::Router {
    remote_write::router(state)
}

/// `POST /v1/metrics` (OTLP/HTTP, protobuf or JSON).
pub fn otlp_metrics_http_router(state: IngestState) -> axum::Router {
    otlp::metrics_http::router(state)
}

/// The OTLP gRPC metrics service (a `MetricsServiceServer<OtlpMetricsService>`),
/// ready for `tonic::transport::Server::add_service`.
pub fn otlp_metrics_grpc_service(state: IngestState) -> otlp::metrics_grpc::MetricsServer {
    otlp::metrics_grpc::grpc_service(state)
}
