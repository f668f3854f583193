//! OTLP/HTTP metrics: `POST /v1/metrics` with `application/x-protobuf` or
//! `application/json`, optionally gzip. Same content-type handling, answer
//! encoding and error bodies (`google.rpc.Status`) as `/v1/traces`; refused
//! data points -> 200 with `partial_success`.

use super::http::{Enc, encode_ok, encoding, error_response};
use super::metrics_convert::MetricsBatch;
use super::metrics_grpc::{response, store_batch};
use super::{decode_otlp_metrics_json, decode_otlp_metrics_proto};
use crate::error::IngestError;
use crate::metrics::receiver;
use crate::remote_write::count_rejection;
use crate::{IngestState, body, pipeline};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;

pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/metrics", post(post_metrics))
        .with_state(state)
}

fn receiver_name(enc: Enc) -> &'static str {
    match enc {
        Enc::Proto => receiver::OTLP_METRICS_HTTP_PROTO,
        Enc::Json => receiver::OTLP_METRICS_HTTP_JSON,
    }
}

async fn post_metrics(
    State(state): State<IngestState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let enc = match encoding(&headers) {
        Ok(e) => e,
        Err(e) => {
            // No encoding to answer in: count under the spec's default
            // (protobuf) and answer in plain text, as /v1/traces does.
            count_rejection(&state, receiver::OTLP_METRICS_HTTP_PROTO, &e);
            return pipeline::text_error(&e);
        }
    };
    match receive(&state, enc, &headers, body).await {
        Ok(batch) => encode_ok(enc, &response(&batch)),
        Err(e) => {
            count_rejection(&state, receiver_name(enc), &e);
            error_response(enc, &e)
        }
    }
}

async fn receive(
    state: &IngestState,
    enc: Enc,
    headers: &HeaderMap,
    body: Body,
) -> Result<MetricsBatch, IngestError> {
    let bytes = body::read_body(headers, body, state.config.max_body_bytes).await?;
    let batch = match enc {
        Enc::Proto => pipeline::decode(bytes, decode_otlp_metrics_proto).await?,
        Enc::Json => pipeline::decode(bytes, decode_otlp_metrics_json).await?,
    };
    store_batch(state, receiver_name(enc), batch).await
}
