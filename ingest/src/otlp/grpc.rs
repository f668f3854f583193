//! The OTLP gRPC trace service (`opentelemetry.proto.collector.trace.v1.TraceService`).

use super::RpcStatus;
use super::convert::{Rejections, convert_request};
use crate::error::IngestError;
use crate::metrics::{self, receiver::OTLP_GRPC};
use crate::{IngestState, pipeline};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;

/// Requests with more spans than this are converted on the blocking pool.
const INLINE_CONVERT_SPANS: usize = 2_000;

/// Implements `TraceService/Export` over [`IngestState`].
#[derive(Clone)]
pub struct OtlpTraceService {
    state: IngestState,
}

/// The service with gzip accepted (and used for answers when the client
/// accepts it) and the message limit equal to the HTTP body limit.
pub fn grpc_service(state: IngestState) -> TraceServiceServer<OtlpTraceService> {
    let limit = state.config.max_body_bytes;
    TraceServiceServer::new(OtlpTraceService::new(state))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit)
}

fn span_count(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

/// The gRPC status for an error; "retry later" carries a RetryInfo, which
/// OTLP exporters require before retrying RESOURCE_EXHAUSTED.
pub fn to_status(err: &IngestError) -> tonic::Status {
    let code = err.grpc_code();
    let message = err.to_string();
    match err.retry_after() {
        Some(d) => {
            let details = RpcStatus::with_retry(code as i32, message.clone(), Some(d));
            tonic::Status::with_details(
                code,
                message,
                prost::Message::encode_to_vec(&details).into(),
            )
        }
        None => tonic::Status::new(code, message),
    }
}

impl OtlpTraceService {
    /// The bare service; [`grpc_service`] wraps it with compression and limits.
    pub fn new(state: IngestState) -> Self {
        OtlpTraceService { state }
    }

    async fn handle(&self, req: ExportTraceServiceRequest) -> Result<Rejections, IngestError> {
        let big = span_count(&req) > INLINE_CONVERT_SPANS;
        let convert = move || convert_request(req).into_span_batch();
        let batch = if big {
            tokio::task::spawn_blocking(convert)
                .await
                .map_err(|e| IngestError::Internal(format!("converter task failed: {e}")))??
        } else {
            convert()?
        };
        metrics::spans_rejected(
            self.state.storage.telemetry(),
            OTLP_GRPC,
            "invalid_span",
            batch.rejected.count,
        );
        pipeline::store_batch(&self.state, OTLP_GRPC, batch.batch).await?;
        Ok(batch.rejected)
    }
}

#[tonic::async_trait]
impl TraceService for OtlpTraceService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        match self.handle(request.into_inner()).await {
            Ok(batch) => Ok(tonic::Response::new(response(&batch))),
            Err(e) => {
                pipeline::count_rejection(&self.state, OTLP_GRPC, &e);
                Err(to_status(&e))
            }
        }
    }
}

/// The response: `partial_success` only when spans were rejected.
pub(crate) fn response(rejected: &Rejections) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (rejected.count > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected.count as i64,
            error_message: rejected.message(),
        }),
    }
}
