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
use meshlens_storage::model::{Event, Span, SpanKind, UnixNanos};
use serde::Deserialize;

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
    name: Option<String>,
    timestamp: Option<i64>,
    duration: Option<i64>,
    local_endpoint: Option<RawEndpoint>,
    remote_endpoint: Option<RawEndpoint>,
    annotations: Option<Vec<RawAnnotation>>,
    tags: Option<Tags>,
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
    for (i, r) in raw.into_iter().enumerate() {
        match convert(r) {
            Ok((span, tags)) => c.good(i, span, tags),
            Err(fp) => c.bad(i, fp),
        }
    }
    c.finish()
}

/// Zipkin's "0 means unset" for timestamps and durations.
pub(crate) fn micros_opt(v: Option<i64>, field: &str) -> Result<Option<i64>, FieldProblem> {
    match v {
        None | Some(0) => Ok(None),
        Some(us) => micros_to_nanos(us).map(Some).map_err(at(field)),
    }
}

pub(crate) fn annotation_event(i: usize, a: RawAnnotation) -> Result<Event, FieldProblem> {
    let (Some(ts), Some(value)) = (a.timestamp, a.value) else {
        return Err((
            Some(format!("annotations[{i}]")),
            Problem::Other("an annotation needs both timestamp and value".into()),
        ));
    };
    let time = micros_to_nanos(ts).map_err(|p| (Some(format!("annotations[{i}].timestamp")), p))?;
    Ok(Event {
        time: UnixNanos(time),
        name: value,
        attributes_json: None,
    })
}

fn convert(r: RawSpan<'_>) -> Result<(Span, usize), FieldProblem> {
    let trace = r
        .trace_id
        .ok_or((Some("traceId".into()), Problem::Missing))?;
    let (trace_id, trace_id_64) = trace_id_hex(&trace.0).map_err(at("traceId"))?;
    let id = r.id.ok_or((Some("id".into()), Problem::Missing))?;
    let span_id = span_id_hex("span id", &id.0).map_err(at("id"))?;
    let parent_span_id = match r.parent_id {
        Some(p) => parent_id_hex(&p.0).map_err(at("parentId"))?,
        None => None,
    };
    let kind = match r.kind {
        None => SpanKind::Unspecified,
        Some(k) => SpanKind::from_zipkin_name(&k.0)
            .ok_or_else(|| (Some("kind".to_string()), Problem::BadKind(k.0.into_owned())))?,
    };
    let events = r
        .annotations
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, a)| annotation_event(i, a))
        .collect::<Result<Vec<_>, _>>()?;
    let tags = r.tags.unwrap_or_default();
    let span = Span {
        trace_id,
        trace_id_64,
        span_id,
        parent_span_id,
        name: r.name.unwrap_or_default(),
        kind,
        start: micros_opt(r.timestamp, "timestamp")?.map(UnixNanos),
        duration_nanos: micros_opt(r.duration, "duration")?,
        local: endpoint_opt(r.local_endpoint, "localEndpoint")?.unwrap_or_default(),
        remote: endpoint_opt(r.remote_endpoint, "remoteEndpoint")?.unwrap_or_default(),
        shared: r.shared.unwrap_or(false),
        debug: r.debug.unwrap_or(false),
        attributes: tags.map,
        events,
        ..Default::default()
    };
    Ok((span, tags.count))
}
