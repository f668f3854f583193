//! OTLP/HTTP: `POST /v1/traces` with `application/x-protobuf` or
//! `application/json`, optionally gzip. The answer uses the request's
//! encoding; errors are a `google.rpc.Status` in that encoding.

use super::RpcStatus;
use super::convert::Rejections;
use super::grpc::response;
use super::{decode_otlp_json, decode_otlp_proto};
use crate::error::IngestError;
use crate::metrics::{self, receiver};
use crate::{IngestState, body, pipeline};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/traces", post(post_traces))
        .with_state(state)
}

/// The request's (and answer's) encoding; shared with `/v1/metrics`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Enc {
    Proto,
    Json,
}

impl Enc {
    pub(super) fn content_type(self) -> &'static str {
        match self {
            Enc::Proto => "application/x-protobuf",
            Enc::Json => "application/json",
        }
    }
    fn receiver(self) -> &'static str {
        match self {
            Enc::Proto => receiver::OTLP_HTTP_PROTO,
            Enc::Json => receiver::OTLP_HTTP_JSON,
        }
    }
}

pub(super) fn encoding(headers: &HeaderMap) -> Result<Enc, IngestError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let mt = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mt.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Enc::Proto),
        "application/json" => Ok(Enc::Json),
        _ => Err(IngestError::UnsupportedMediaType(raw)),
    }
}

async fn post_traces(State(state): State<IngestState>, headers: HeaderMap, body: Body) -> Response {
    let enc = match encoding(&headers) {
        Ok(e) => e,
        Err(e) => {
            // No encoding to answer in: count under the spec's default
            // (protobuf) and answer in plain text.
            pipeline::count_rejection(&state, receiver::OTLP_HTTP_PROTO, &e);
            return pipeline::text_error(&e);
        }
    };
    match receive(&state, enc, &headers, body).await {
        Ok(batch) => ok_response(enc, &batch),
        Err(e) => {
            pipeline::count_rejection(&state, enc.receiver(), &e);
            error_response(enc, &e)
        }
    }
}

async fn receive(
    state: &IngestState,
    enc: Enc,
    headers: &HeaderMap,
    body: Body,
) -> Result<Rejections, IngestError> {
    let bytes = body::read_body(headers, body, state.config.max_body_bytes).await?;
    let batch = match enc {
        Enc::Proto => pipeline::decode(bytes, decode_otlp_proto).await?,
        Enc::Json => pipeline::decode(bytes, |b| decode_otlp_json(b)?.into_span_batch()).await?,
    };
    metrics::spans_rejected(
        state.storage.telemetry(),
        enc.receiver(),
        "invalid_span",
        batch.rejected.count,
    );
    pipeline::store_batch(state, enc.receiver(), batch.batch).await?;
    Ok(batch.rejected)
}

fn ok_response(enc: Enc, rejected: &Rejections) -> Response {
    encode_ok(enc, &response(rejected))
}

/// A 200 answer carrying `resp` in the request's encoding.
pub(super) fn encode_ok<M: prost::Message + serde::Serialize>(enc: Enc, resp: &M) -> Response {
    let body = match enc {
        Enc::Proto => prost::Message::encode_to_vec(resp),
        // Serializing these plain structs cannot fail; fall back to `{}`.
        Enc::Json => serde_json::to_vec(resp).unwrap_or_else(|_| b"{}".to_vec()),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, enc.content_type())],
        body,
    )
        .into_response()
}

pub(super) fn error_response(enc: Enc, err: &IngestError) -> Response {
    let status = RpcStatus::with_retry(err.grpc_code() as i32, err.to_string(), None);
    let body = match enc {
        Enc::Proto => prost::Message::encode_to_vec(&status),
        Enc::Json => serde_json::json!({ "code": status.code, "message": status.message })
            .to_string()
            .into_bytes(),
    };
    let resp = (
        err.status(),
        [(header::CONTENT_TYPE, enc.content_type())],
        body,
    )
        .into_response();
    pipeline::with_retry_after(resp, err)
}
