//! Zipkin proto3 (`zipkin.proto3.ListOfSpans`, see
//! ../shared/specs/zipkin.proto) to [`Span`]s. The messages are written by
//! hand with `prost` derives; no protoc needed.

use super::{Collector, at};
use crate::error::{DecodeError, Problem};
use crate::validate::{FieldProblem, parent_id_bytes, span_id_bytes, trace_id_bytes};
use meshlens_storage::model::{AttrValue, Endpoint, Event, Span, SpanKind, UnixNanos};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOfSpans {
    #[prost(message, repeated, tag = "1")]
    pub spans: Vec<ProtoSpan>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoSpan {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub parent_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub id: Vec<u8>,
    /// 0 unspecified, 1 CLIENT, 2 SERVER, 3 PRODUCER, 4 CONSUMER.
    #[prost(int32, tag = "4")]
    pub kind: i32,
    #[prost(string, tag = "5")]
    pub name: String,
    /// Microseconds since the epoch; 0 means absent.
    #[prost(fixed64, tag = "6")]
    pub timestamp: u64,
    /// Microseconds; 0 means absent.
    #[prost(uint64, tag = "7")]
    pub duration: u64,
    #[prost(message, optional, tag = "8")]
    pub local_endpoint: Option<ProtoEndpoint>,
    #[prost(message, optional, tag = "9")]
    pub remote_endpoint: Option<ProtoEndpoint>,
    #[prost(message, repeated, tag = "10")]
    pub annotations: Vec<ProtoAnnotation>,
    #[prost(btree_map = "string, string", tag = "11")]
    pub tags: BTreeMap<String, String>,
    #[prost(bool, tag = "12")]
    pub debug: bool,
    #[prost(bool, tag = "13")]
    pub shared: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoEndpoint {
    #[prost(string, tag = "1")]
    pub service_name: String,
    /// 4 bytes, network order.
    #[prost(bytes = "vec", tag = "2")]
    pub ipv4: Vec<u8>,
    /// 16 bytes, network order.
    #[prost(bytes = "vec", tag = "3")]
    pub ipv6: Vec<u8>,
    #[prost(int32, tag = "4")]
    pub port: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoAnnotation {
    #[prost(fixed64, tag = "1")]
    pub timestamp: u64,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// Decodes and validates a proto3 `ListOfSpans`. Any invalid span fails the
/// whole batch. An empty body is an empty list (valid in proto3).
pub fn decode_proto3(bytes: &[u8]) -> Result<Vec<Span>, DecodeError> {
    let list =
        <ListOfSpans as prost::Message>::decode(bytes).map_err(|e| DecodeError::Protobuf {
            message_name: "zipkin.proto3.ListOfSpans",
            detail: e.to_string(),
        })?;
    let mut c = Collector::new(list.spans.len());
    for (i, s) in list.spans.into_iter().enumerate() {
        match convert(s) {
            Ok((span, tags)) => c.good(i, span, tags),
            Err(fp) => c.bad(i, fp),
        }
    }
    c.finish()
}

fn micros(v: u64, field: &str) -> Result<Option<i64>, FieldProblem> {
    if v == 0 {
        return Ok(None);
    }
    i64::try_from(v)
        .ok()
        .and_then(|us| us.checked_mul(1_000))
        .map(Some)
        .ok_or_else(|| {
            (
                Some(field.to_string()),
                Problem::OutOfRange {
                    value: v as i128,
                    unit: "µs",
                },
            )
        })
}

fn endpoint(e: Option<ProtoEndpoint>, field: &str) -> Result<Endpoint, FieldProblem> {
    let Some(e) = e else {
        return Ok(Endpoint::default());
    };
    let ipv4 = match e.ipv4.len() {
        0 => None,
        4 => Some(Ipv4Addr::new(e.ipv4[0], e.ipv4[1], e.ipv4[2], e.ipv4[3]).to_string()),
        n => return Err(bytes_problem(field, "ipv4", "4", n)),
    };
    let ipv6 = match <[u8; 16]>::try_from(e.ipv6.as_slice()) {
        Ok(b) => Some(Ipv6Addr::from(b).to_string()),
        Err(_) if e.ipv6.is_empty() => None,
        Err(_) => return Err(bytes_problem(field, "ipv6", "16", e.ipv6.len())),
    };
    let port = match e.port {
        0 => None,
        p @ 1..=65535 => Some(p),
        p => return Err((Some(format!("{field}.port")), Problem::BadPort(p.into()))),
    };
    Ok(Endpoint {
        service_name: (!e.service_name.is_empty()).then_some(e.service_name),
        ipv4,
        ipv6,
        port,
    })
}

fn bytes_problem(
    field: &str,
    sub: &'static str,
    expected: &'static str,
    got: usize,
) -> FieldProblem {
    (
        Some(format!("{field}.{sub}")),
        Problem::IdBytes {
            what: sub,
            expected,
            got,
        },
    )
}

fn convert(s: ProtoSpan) -> Result<(Span, usize), FieldProblem> {
    let (trace_id, trace_id_64) = trace_id_bytes(&s.trace_id, true).map_err(at("trace_id"))?;
    let span_id = span_id_bytes("span id", &s.id).map_err(at("id"))?;
    let parent_span_id = parent_id_bytes(&s.parent_id).map_err(at("parent_id"))?;
    let kind = match s.kind {
        1 => SpanKind::Client,
        2 => SpanKind::Server,
        3 => SpanKind::Producer,
        4 => SpanKind::Consumer,
        _ => SpanKind::Unspecified,
    };
    let mut events = Vec::with_capacity(s.annotations.len());
    for (i, a) in s.annotations.into_iter().enumerate() {
        let field = format!("annotations[{i}].timestamp");
        let time = micros(a.timestamp, &field)?.unwrap_or(0);
        events.push(Event {
            time: UnixNanos(time),
            name: a.value,
            attributes_json: None,
        });
    }
    let count = s.tags.len();
    let span = Span {
        trace_id,
        trace_id_64,
        span_id,
        parent_span_id,
        name: s.name,
        kind,
        start: micros(s.timestamp, "timestamp")?.map(UnixNanos),
        duration_nanos: micros(s.duration, "duration")?,
        local: endpoint(s.local_endpoint, "local_endpoint")?,
        remote: endpoint(s.remote_endpoint, "remote_endpoint")?,
        shared: s.shared,
        debug: s.debug,
        attributes: s
            .tags
            .into_iter()
            .map(|(k, v)| (k, AttrValue::Str(v)))
            .collect(),
        events,
        ..Default::default()
    };
    Ok((span, count))
}
