//! The OTLP gRPC trace service (`opentelemetry.proto.collector.trace.v1.TraceService`).
//!
//! Served by [`TraceGrpcServer`], not tonic's generated server: the request
//! is handed over as its raw bytes and decoded in place ([`super::wire`]),
//! as the HTTP receiver does, instead of into prost's types first.

use super::RpcStatus;
use super::convert::Rejections;
use crate::error::IngestError;
use crate::metrics::{self, receiver::OTLP_GRPC};
use crate::{IngestState, pipeline};
use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{BoxFuture, StdError, http};

/// Implements `TraceService/Export` over [`IngestState`].
#[derive(Clone)]
pub struct OtlpTraceService {
    state: IngestState,
}

/// The gRPC server of [`OtlpTraceService`]: gzip accepted (and used for
/// answers when the client accepts it), the message limit equal to the HTTP
/// body limit.
#[derive(Clone)]
pub struct TraceGrpcServer {
    svc: Arc<OtlpTraceService>,
    max_decoding_message_size: usize,
}

/// The gRPC service name.
pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl tonic::server::NamedService for TraceGrpcServer {
    const NAME: &'static str = SERVICE_NAME;
}

/// See [`TraceGrpcServer`].
pub fn grpc_service(state: IngestState) -> TraceGrpcServer {
    let limit = state.config.max_body_bytes;
    TraceGrpcServer {
        svc: Arc::new(OtlpTraceService::new(state)),
        max_decoding_message_size: limit,
    }
}

/// Requests as their bytes, answers as prost messages.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawDecoder;
struct ResponseEncoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: ExportTraceServiceResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::Message::encode(&item, dst)
            .map_err(|e| tonic::Status::internal(format!("encoding the answer: {e}")))
    }
}

impl Codec for RawCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

struct ExportRaw(Arc<OtlpTraceService>);

impl tonic::server::UnaryService<Bytes> for ExportRaw {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<ExportTraceServiceResponse>, tonic::Status>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.export_bytes(req.into_inner()).await })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for TraceGrpcServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let svc = self.svc.clone();
        let limit = self.max_decoding_message_size;
        Box::pin(async move {
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(ExportRaw(svc), req).await)
        })
    }
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
    /// The bare service; [`grpc_service`] serves it.
    pub fn new(state: IngestState) -> Self {
        OtlpTraceService { state }
    }

    async fn handle(&self, body: Bytes) -> Result<Rejections, IngestError> {
        let batch = pipeline::decode(body, super::decode_otlp_proto).await?;
        metrics::spans_rejected(
            self.state.storage.telemetry(),
            OTLP_GRPC,
            "invalid_span",
            batch.rejected.count,
        );
        pipeline::store_batch(&self.state, OTLP_GRPC, batch.batch).await?;
        Ok(batch.rejected)
    }

    /// `Export` on the request message's bytes.
    pub async fn export_bytes(
        &self,
        body: Bytes,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        match self.handle(body).await {
            Ok(rejected) => Ok(tonic::Response::new(response(&rejected))),
            Err(e) => {
                pipeline::count_rejection(&self.state, OTLP_GRPC, &e);
                Err(to_status(&e))
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for OtlpTraceService {
    /// The generated trait's entry (tests, embedding): the server's path,
    /// from the message's bytes.
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let body = prost::Message::encode_to_vec(&request.into_inner());
        self.export_bytes(Bytes::from(body)).await
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
