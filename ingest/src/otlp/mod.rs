//! OTLP trace receivers: gRPC (`TraceService/Export`) and HTTP
//! (`POST /v1/traces`, protobuf or JSON). Invalid spans are dropped and
//! reported in `partial_success`; the valid rest is stored.
//!
//! OTLP metric receivers (`MetricsService/Export`, `POST /v1/metrics`):
//! `metrics_convert` (Prometheus 3 translation), `metrics_grpc`, `metrics_http`.

pub mod convert;
pub mod grpc;
pub mod http;
pub mod metrics_convert;
pub mod metrics_grpc;
pub mod metrics_http;
pub mod wire;

#[cfg(test)]
mod metrics_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_tests;

pub use convert::{OtlpBatch, Rejections, convert_request};
pub use metrics_convert::{MetricsBatch, convert_metrics_request};

use crate::error::DecodeError;
use arrow::record_batch::RecordBatch;
use meshlens_storage::schema::spans_to_batch;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// A request's valid spans as one batch of the `spans` table, and what
/// was wrong with the others.
#[derive(Debug)]
pub struct OtlpSpanBatch {
    pub batch: RecordBatch,
    pub rejected: Rejections,
}

impl OtlpBatch {
    /// The spans as a batch of the `spans` table.
    pub fn into_span_batch(self) -> Result<OtlpSpanBatch, DecodeError> {
        let batch = spans_to_batch(&self.spans).map_err(|e| DecodeError::Batch(e.to_string()))?;
        Ok(OtlpSpanBatch {
            batch,
            rejected: self.rejected,
        })
    }
}

/// Decodes an OTLP protobuf `ExportTraceServiceRequest` in place
/// ([`wire::decode_traces`]).
pub fn decode_otlp_proto(bytes: &[u8]) -> Result<OtlpSpanBatch, DecodeError> {
    wire::decode_traces(bytes)
}

/// The same through prost's types and [`convert_request`]: the reference
/// the in-place decoder is tested against.
pub fn decode_otlp_proto_prost(bytes: &[u8]) -> Result<OtlpBatch, DecodeError> {
    let req = <ExportTraceServiceRequest as prost::Message>::decode(bytes).map_err(|e| {
        DecodeError::Protobuf {
            message_name: "ExportTraceServiceRequest",
            detail: e.to_string(),
        }
    })?;
    Ok(convert_request(req))
}

/// Decodes OTLP/JSON (hex ids, int64 as strings or numbers, enums as
/// integers, per the OTLP spec) and converts it.
pub fn decode_otlp_json(bytes: &[u8]) -> Result<OtlpBatch, DecodeError> {
    let text = DecodeError::check_utf8(bytes)?;
    let req: ExportTraceServiceRequest =
        serde_json::from_str(text).map_err(|e| DecodeError::from_json(&e, None))?;
    Ok(convert_request(req))
}

/// Decodes an OTLP protobuf `ExportMetricsServiceRequest` and converts it
/// to samples (refused data points in `rejected`).
pub fn decode_otlp_metrics_proto(bytes: &[u8]) -> Result<MetricsBatch, DecodeError> {
    let req = <ExportMetricsServiceRequest as prost::Message>::decode(bytes).map_err(|e| {
        DecodeError::Protobuf {
            message_name: "ExportMetricsServiceRequest",
            detail: e.to_string(),
        }
    })?;
    Ok(convert_metrics_request(req))
}

/// Decodes an OTLP/JSON `ExportMetricsServiceRequest` and converts it.
pub fn decode_otlp_metrics_json(bytes: &[u8]) -> Result<MetricsBatch, DecodeError> {
    let text = DecodeError::check_utf8(bytes)?;
    let req: ExportMetricsServiceRequest =
        serde_json::from_str(text).map_err(|e| DecodeError::from_json(&e, None))?;
    Ok(convert_metrics_request(req))
}

/// `google.rpc.Status`, the OTLP error body (HTTP) and gRPC status details.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`: OTLP exporters retry RESOURCE_EXHAUSTED only
/// when the status carries one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl RpcStatus {
    pub fn with_retry(
        code: i32,
        message: String,
        retry_after: Option<std::time::Duration>,
    ) -> Self {
        let details = retry_after
            .map(|d| ProtoAny {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: prost::Message::encode_to_vec(&RetryInfo {
                    retry_delay: Some(ProtoDuration {
                        seconds: d.as_secs() as i64,
                        nanos: d.subsec_nanos() as i32,
                    }),
                }),
            })
            .into_iter()
            .collect();
        RpcStatus {
            code,
            message,
            details,
        }
    }
}
