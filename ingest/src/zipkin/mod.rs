//! Zipkin receivers: `POST /api/v2/spans` (JSON v2 or proto3 `ListOfSpans`)
//! and `POST /api/v1/spans` (JSON v1). 202 on success; a request with any
//! invalid span is rejected whole with 400, as Zipkin does.

pub mod json_v1;
pub mod json_v2;
pub mod proto3;

mod json_common;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_prop;
#[cfg(test)]
mod tests_router;

pub use json_v1::decode_json_v1;
pub use json_v2::decode_json_v2;
pub use proto3::decode_proto3;

use crate::error::{DecodeError, IngestError, InvalidSpan};
use crate::metrics::receiver;
use crate::validate::{FieldProblem, Format, check_span};
use crate::{IngestState, body, pipeline};
use arrow::record_batch::RecordBatch;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use meshlens_storage::model::{Span, UnixNanos};
use meshlens_storage::schema::spans_to_batch;

/// A Zipkin body decoder (JSON v2, JSON v1 or proto3) into a batch of the
/// `spans` table.
pub type DecodeFn = fn(&[u8]) -> Result<RecordBatch, DecodeError>;

/// Spans decoded the long way (JSON v1, proto3) as a batch.
fn to_batch(spans: Result<Vec<Span>, DecodeError>) -> Result<RecordBatch, DecodeError> {
    spans_to_batch(&spans?).map_err(|e| DecodeError::Batch(e.to_string()))
}

pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/api/v2/spans", post(post_v2))
        .route("/api/v1/spans", post(post_v1))
        .with_state(state)
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn post_v2(State(state): State<IngestState>, headers: HeaderMap, body: Body) -> Response {
    let mt = media_type(&headers);
    // Zipkin treats anything but protobuf as JSON; so do we.
    let proto = mt == "application/x-protobuf" || mt == "application/protobuf";
    let (name, decode): (_, DecodeFn) = if proto {
        (receiver::ZIPKIN_V2_PROTO, |b| to_batch(decode_proto3(b)))
    } else {
        (receiver::ZIPKIN_V2_JSON, json_v2::decode_json_v2_batch)
    };
    respond(
        &state,
        name,
        receive(&state, name, &headers, body, decode).await,
    )
}

async fn post_v1(State(state): State<IngestState>, headers: HeaderMap, body: Body) -> Response {
    let name = receiver::ZIPKIN_V1_JSON;
    let mt = media_type(&headers);
    let result = if mt == "application/x-thrift" {
        Err(IngestError::UnsupportedMediaType(
            "application/x-thrift (Zipkin v1 Thrift is not supported; send v1 JSON or use /api/v2/spans)"
                .into(),
        ))
    } else {
        receive(&state, name, &headers, body, |b| {
            to_batch(decode_json_v1(b))
        })
        .await
    };
    respond(&state, name, result)
}

async fn receive(
    state: &IngestState,
    name: &'static str,
    headers: &HeaderMap,
    body: Body,
    decode: DecodeFn,
) -> Result<(), IngestError> {
    let bytes = body::read_body(headers, body, state.config.max_body_bytes).await?;
    let batch = pipeline::decode(bytes, decode).await?;
    pipeline::store_batch(state, name, batch).await
}

fn respond(state: &IngestState, name: &'static str, result: Result<(), IngestError>) -> Response {
    match result {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            pipeline::count_rejection(state, name, &e);
            pipeline::text_error(&e)
        }
    }
}

/// Gathers decoded spans, validates them, and remembers the first problem.
pub(crate) struct Collector {
    pub now: UnixNanos,
    spans: Vec<Span>,
    first: Option<InvalidSpan>,
    invalid: usize,
    last_invalid_index: Option<usize>,
    total: usize,
}

impl Collector {
    /// `total` is the number of spans in the request (as sent).
    pub fn new(total: usize) -> Self {
        Collector {
            now: UnixNanos::now(),
            spans: Vec::with_capacity(total),
            first: None,
            invalid: 0,
            last_invalid_index: None,
            total,
        }
    }

    /// A span decoded from element `index` of the request, with the number
    /// of tags the sender sent; runs the shared checks.
    pub fn good(&mut self, index: usize, span: Span, tag_count: usize) {
        match check_span(&span, tag_count, self.now, Format::Zipkin) {
            Ok(()) => self.spans.push(span),
            Err(fp) => self.bad(index, fp),
        }
    }

    pub fn bad(&mut self, index: usize, (field, problem): FieldProblem) {
        // A v1 span may become two v2 spans; count the request element once.
        if self.last_invalid_index != Some(index) {
            self.invalid += 1;
            self.last_invalid_index = Some(index);
        }
        if self.first.is_none() {
            self.first = Some(InvalidSpan {
                location: format!("span[{index}]"),
                field,
                problem,
            });
        }
    }

    pub fn finish(mut self) -> Result<Vec<Span>, DecodeError> {
        let spans = std::mem::take(&mut self.spans);
        self.finish_with(spans)
    }

    /// `Ok(out)` when every span was valid, else the first problem.
    pub fn finish_with<T>(self, out: T) -> Result<T, DecodeError> {
        match self.first {
            None => Ok(out),
            Some(first) => Err(DecodeError::InvalidSpans {
                first: Box::new(first),
                invalid: self.invalid,
                total: self.total,
            }),
        }
    }
}

/// Wraps a field name for `map_err` on a [`crate::error::Problem`].
pub(crate) fn at(field: &str) -> impl FnOnce(crate::error::Problem) -> FieldProblem + '_ {
    move |p| (Some(field.to_string()), p)
}
