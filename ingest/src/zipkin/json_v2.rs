//! Zipkin v2 JSON (`[{"traceId":...,"id":...}, ...]`) to [`Span`]s.
//!
//! Deserializes straight into borrowed structs (no `serde_json::Value`);
//! ids are parsed from the borrowed text, tags go straight into the final
//! map. Timestamps and durations are microseconds; 0 means absent, as in
//! Zipkin (which never writes a 0 back).

use super::json_common::{RawEndpoint, Str, Tags, endpoint_opt, parse_array};
use super::{Collector, at};
use crate::error::{DecodeError, Problem};
use crate::validate::{FieldProblem, micros_to_nanos, parent_id_hex, span_id_hex, trace_id_hex};
use crate::validate::{Format, check_span_ref};
use arrow::record_batch::RecordBatch;
use meshlens_storage::model::{Span, SpanKind, StatusCode, UnixNanos};
use meshlens_storage::span_builder::{
    AttrList, AttrRef, BatchSizeHint, EndpointRef, EventRef, SpanBatchBuilder, SpanRef,
};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpan<'a> {
    #[serde(borrow)]
    trace_id: Option<Str<'a>>,
    #[serde(borrow)]
    id: Option<Str<'a>>,
    #[serde(borrow)]
    parent_id: Option<Str<'a>>,
    #[serde(borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    name: Option<Str<'a>>,
    timestamp: Option<i64>,
    duration: Option<i64>,
    local_endpoint: Option<RawEndpoint>,
    remote_endpoint: Option<RawEndpoint>,
    annotations: Option<Vec<RawAnnotation>>,
    #[serde(borrow)]
    tags: Option<Tags<'a>>,
    debug: Option<bool>,
    shared: Option<bool>,
}

#[derive(Deserialize)]
pub(crate) struct RawAnnotation {
    timestamp: Option<i64>,
    value: Option<String>,
}

/// Decodes and validates a Zipkin v2 JSON list of spans. Any invalid span
/// fails the whole batch (Zipkin's behaviour).
pub fn decode_json_v2(bytes: &[u8]) -> Result<Vec<Span>, DecodeError> {
    let text = DecodeError::check_utf8(bytes)?;
    let raw: Vec<RawSpan> = parse_array(text)?;
    let mut c = Collector::new(raw.len());
    let mut spans = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        match with_span_ref(r, c.now, |s| s.to_span()) {
            Ok(span) => spans.push(span),
            Err(fp) => c.bad(i, fp),
        }
    }
    c.finish_with(spans)
}

/// [`decode_json_v2`] straight into a batch of the `spans` table: tags and
/// names borrowed from the body, no [`Span`] in between.
pub fn decode_json_v2_batch(bytes: &[u8]) -> Result<RecordBatch, DecodeError> {
    let text = DecodeError::check_utf8(bytes)?;
    let raw: Vec<RawSpan> = parse_array(text)?;
    let mut c = Collector::new(raw.len());
    let mut b = SpanBatchBuilder::new(BatchSizeHint::from_body(bytes.len(), 900));
    for (i, r) in raw.iter().enumerate() {
        match with_span_ref(r, c.now, |s| b.append(s)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(DecodeError::Batch(e.to_string())),
            Err(fp) => c.bad(i, fp),
        }
    }
    let batch = b.finish().map_err(|e| DecodeError::Batch(e.to_string()))?;
    c.finish_with(batch)
}

/// Zipkin's "0 means unset" for timestamps and durations.
pub(crate) fn micros_opt(v: Option<i64>, field: &str) -> Result<Option<i64>, FieldProblem> {
    match v {
        None | Some(0) => Ok(None),
        Some(us) => micros_to_nanos(us).map(Some).map_err(at(field)),
    }
}

fn annotation_parts(i: usize, a: &RawAnnotation) -> Result<(i64, &str), FieldProblem> {
    let (Some(ts), Some(value)) = (a.timestamp, a.value.as_deref()) else {
        return Err((
            Some(format!("annotations[{i}]")),
            Problem::Other("an annotation needs both timestamp and value".into()),
        ));
    };
    let time = micros_to_nanos(ts).map_err(|p| (Some(format!("annotations[{i}].timestamp")), p))?;
    Ok((time, value))
}

/// Converts and checks one span, then hands it to `f` as a [`SpanRef`].
fn with_span_ref<R>(
    r: &RawSpan<'_>,
    now: UnixNanos,
    f: impl FnOnce(&SpanRef<'_>) -> R,
) -> Result<R, FieldProblem> {
    let trace = r
        .trace_id
        .as_ref()
        .ok_or((Some("traceId".into()), Problem::Missing))?;
    let (trace_id, trace_id_64) = trace_id_hex(&trace.0).map_err(at("traceId"))?;
    let id = r.id.as_ref().ok_or((Some("id".into()), Problem::Missing))?;
    let span_id = span_id_hex("span id", &id.0).map_err(at("id"))?;
    let parent_span_id = match &r.parent_id {
        Some(p) => parent_id_hex(&p.0).map_err(at("parentId"))?,
        None => None,
    };
    let kind = match &r.kind {
        None => SpanKind::Unspecified,
        Some(k) => SpanKind::from_zipkin_name(&k.0)
            .ok_or_else(|| (Some("kind".to_string()), Problem::BadKind(k.0.to_string())))?,
    };
    let mut events = Vec::new();
    for (i, a) in r.annotations.iter().flatten().enumerate() {
        let (time, value) = annotation_parts(i, a)?;
        events.push(EventRef {
            time,
            name: Cow::Borrowed(value),
            attributes_json: None,
        });
    }
    let mut attributes = AttrList::with_capacity(r.tags.as_ref().map_or(0, |t| t.list.len()));
    let mut tag_count = 0;
    if let Some(t) = &r.tags {
        for (k, v) in &t.list {
            attributes.push(k, AttrRef::Str(v));
        }
        tag_count = t.count;
    }
    attributes.sort_dedup();
    let resource = AttrList::new();
    let start = micros_opt(r.timestamp, "timestamp")?;
    let duration_nanos = micros_opt(r.duration, "duration")?;
    let local = endpoint_opt(r.local_endpoint.as_ref(), "localEndpoint")?.unwrap_or_default();
    let remote = endpoint_opt(r.remote_endpoint.as_ref(), "remoteEndpoint")?.unwrap_or_default();
    let span = SpanRef {
        trace_id: trace_id.0,
        trace_id_64,
        span_id: span_id.0,
        parent_span_id: parent_span_id.map(|p| p.0),
        name: Cow::Borrowed(r.name.as_ref().map_or("", |n| &n.0)),
        kind,
        start,
        duration_nanos,
        local: EndpointRef::of(&local),
        remote: EndpointRef::of(&remote),
        shared: r.shared.unwrap_or(false),
        debug: r.debug.unwrap_or(false),
        status_code: StatusCode::Unset,
        status_message: None,
        attributes: &attributes,
        resource: &resource,
        events: &events,
        links: &[],
        trace_state: None,
        flags: None,
        scope_name: None,
        scope_version: None,
        extra_json: None,
    };
    check_span_ref(&span, tag_count, now, Format::Zipkin)?;
    Ok(f(&span))
}
