//! The OTLP gRPC metrics service (`opentelemetry.proto.collector.metrics.v1.MetricsService`).
//!
//! Refused data points (conversion rules, or storage rules such as out of
//! order) are reported in `partial_success`; the rest is stored. Storage
//! over budget -> RESOURCE_EXHAUSTED with RetryInfo, shutting down -> UNAVAILABLE.

use super::grpc::to_status;
use super::metrics_convert::{MetricsBatch, convert_metrics_request};
use crate::IngestState;
use crate::error::IngestError;
use crate::metrics::receiver::OTLP_METRICS_GRPC;
use crate::remote_write::{count_decode_rejections, count_rejection, store_samples};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tonic::codec::CompressionEncoding;

/// Requests with more data points than this are converted on the blocking pool.
const INLINE_CONVERT_POINTS: usize = 2_000;

/// Implements `MetricsService/Export` over [`IngestState`].
#[derive(Clone)]
pub struct OtlpMetricsService {
    state: IngestState,
}

/// The tonic server type of [`OtlpMetricsService`].
pub type MetricsServer = MetricsServiceServer<OtlpMetricsService>;

/// The service with gzip accepted (and used for answers when the client
/// accepts it) and the message limit equal to the HTTP body limit.
pub fn grpc_service(state: IngestState) -> MetricsServer {
    let limit = state.config.max_body_bytes;
    MetricsServiceServer::new(OtlpMetricsService::new(state))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit)
}

fn point_count(req: &ExportMetricsServiceRequest) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        })
        .sum()
}

/// Stores a converted batch: the conversion's refusals are counted, the
/// storage's refusals added to them. Returns what to report as refused.
pub(crate) async fn store_batch(
    state: &IngestState,
    receiver: &'static str,
    batch: MetricsBatch,
) -> Result<MetricsBatch, IngestError> {
    let MetricsBatch {
        batch,
        mut rejected,
    } = batch;
    count_decode_rejections(state, receiver, &rejected);
    let report = store_samples(state, receiver, batch).await?;
    if report.rejected_total() > 0 {
        let counts: Vec<(&'static str, usize)> = report
            .rejected
            .iter()
            .map(|(r, n)| (r.as_str(), *n as usize))
            .collect();
        rejected.add_many(&counts, || {
            format!("storage: {}", report.describe_rejections())
        });
    }
    Ok(MetricsBatch {
        batch: Default::default(),
        rejected,
    })
}

/// The response: `partial_success` only when something was refused.
pub(crate) fn response(batch: &MetricsBatch) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (!batch.rejected.is_empty()).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: batch.rejected.count() as i64,
            error_message: batch.error_message(),
        }),
    }
}

impl OtlpMetricsService {
    /// The bare service; [`grpc_service`] wraps it with compression and limits.
    pub fn new(state: IngestState) -> Self {
        OtlpMetricsService { state }
    }

    async fn handle(&self, req: ExportMetricsServiceRequest) -> Result<MetricsBatch, IngestError> {
        let batch = if point_count(&req) > INLINE_CONVERT_POINTS {
            tokio::task::spawn_blocking(move || convert_metrics_request(req))
                .await
                .map_err(|e| IngestError::Internal(format!("converter task failed: {e}")))?
        } else {
            convert_metrics_request(req)
        };
        store_batch(&self.state, OTLP_METRICS_GRPC, batch).await
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpMetricsService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        match self.handle(request.into_inner()).await {
            Ok(batch) => Ok(tonic::Response::new(response(&batch))),
            Err(e) => {
                count_rejection(&self.state, OTLP_METRICS_GRPC, &e);
                Err(to_status(&e))
            }
        }
    }
}
