//! Spans as Zipkin v2 JSON.
//!
//! A span that arrived through Zipkin is written back exactly as it was
//! sent. A span that arrived through OTLP is rendered the way the
//! OpenTelemetry Zipkin exporter renders it: attributes as string tags,
//! status as `otel.status_code` / `error`, the scope as `otel.scope.*`,
//! resource attributes (but `service.name`, the local endpoint) as tags when
//! the span's own attributes do not use the key (as the Collector's
//! zipkin exporter does).

use meshlens_storage::model::{Endpoint, Span, StatusCode};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZEndpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    service_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv4: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<i32>,
}

#[derive(Serialize)]
pub struct ZAnnotation<'a> {
    timestamp: i64,
    value: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZSpan<'a> {
    trace_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_endpoint: Option<ZEndpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_endpoint: Option<ZEndpoint<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    annotations: Vec<ZAnnotation<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    debug: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    shared: bool,
}

fn endpoint(e: &Endpoint) -> Option<ZEndpoint<'_>> {
    (!e.is_empty()).then_some(ZEndpoint {
        service_name: e.service_name.as_deref(),
        ipv4: e.ipv4.as_deref(),
        ipv6: e.ipv6.as_deref(),
        port: e.port,
    })
}

/// Zipkin durations are whole microseconds, at least 1 when present.
fn micros_duration(nanos: i64) -> i64 {
    if nanos % 1_000 == 0 {
        nanos / 1_000
    } else {
        (nanos / 1_000).max(1)
    }
}

pub fn to_zipkin(span: &Span) -> ZSpan<'_> {
    let mut tags: BTreeMap<&str, String> = span
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_tag_string()))
        .collect();
    match span.status_code {
        StatusCode::Unset => {}
        StatusCode::Ok => {
            tags.entry("otel.status_code")
                .or_insert_with(|| "OK".into());
        }
        StatusCode::Error => {
            tags.entry("otel.status_code")
                .or_insert_with(|| "ERROR".into());
            tags.entry("error")
                .or_insert_with(|| span.status_message.clone().unwrap_or_default());
        }
    }
    for (k, v) in span
        .resource
        .iter()
        .filter(|(k, _)| k.as_str() != "service.name")
    {
        tags.entry(k.as_str()).or_insert_with(|| v.to_tag_string());
    }
    if let Some(s) = &span.scope_name {
        tags.entry("otel.scope.name").or_insert_with(|| s.clone());
    }
    if let Some(s) = &span.scope_version {
        tags.entry("otel.scope.version")
            .or_insert_with(|| s.clone());
    }
    ZSpan {
        trace_id: span.trace_id.to_hex(span.trace_id_64),
        parent_id: span.parent_span_id.map(|p| p.to_hex()),
        id: span.span_id.to_hex(),
        kind: span.kind.zipkin_name(),
        name: &span.name,
        timestamp: span.start.map(|t| t.as_micros()),
        duration: span.duration_nanos.map(micros_duration),
        local_endpoint: endpoint(&span.local),
        remote_endpoint: endpoint(&span.remote),
        annotations: span
            .events
            .iter()
            .map(|e| ZAnnotation {
                timestamp: e.time.as_micros(),
                value: &e.name,
            })
            .collect(),
        tags,
        debug: span.debug,
        shared: span.shared,
    }
}

/// A trace as a JSON array of Zipkin v2 spans.
pub fn trace_json(spans: &[Span]) -> Vec<ZSpan<'_>> {
    spans.iter().map(to_zipkin).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlens_storage::model::{AttrValue, SpanId, SpanKind, TraceId, UnixNanos};

    #[test]
    fn zipkin_fields_at_the_width_sent() {
        let mut s = Span {
            trace_id: TraceId::from_u64s(0, 0xabc),
            trace_id_64: true,
            span_id: SpanId([0, 0, 0, 0, 0, 0, 0, 1]),
            kind: SpanKind::Server,
            name: "get".into(),
            start: Some(UnixNanos::from_micros(10)),
            duration_nanos: Some(5_000),
            shared: true,
            ..Default::default()
        };
        s.attributes
            .insert("http.status_code".into(), AttrValue::Str("200".into()));
        let v = serde_json::to_value(to_zipkin(&s)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "traceId": "0000000000000abc", "id": "0000000000000001", "kind": "SERVER",
                "name": "get", "timestamp": 10, "duration": 5, "shared": true,
                "tags": {"http.status_code": "200"}
            })
        );
        s.trace_id_64 = false;
        let v = serde_json::to_value(to_zipkin(&s)).expect("json");
        assert_eq!(v["traceId"], "00000000000000000000000000000abc");
    }

    #[test]
    fn otlp_resource_attributes_become_tags_unless_the_span_has_the_key() {
        let mut s = Span::default();
        for (k, v) in [
            ("service.name", "ratings"),
            ("k8s.pod.name", "ratings-1"),
            ("host.name", "node-a"),
        ] {
            s.resource.insert(k.into(), AttrValue::Str(v.into()));
        }
        s.attributes
            .insert("host.name".into(), AttrValue::Str("from-span".into()));
        let v = serde_json::to_value(to_zipkin(&s)).expect("json");
        assert_eq!(v["tags"]["k8s.pod.name"], "ratings-1");
        assert_eq!(v["tags"]["host.name"], "from-span");
        assert!(v["tags"].get("service.name").is_none());
    }

    #[test]
    fn otlp_status_becomes_tags() {
        let s = Span {
            status_code: StatusCode::Error,
            status_message: Some("boom".into()),
            duration_nanos: Some(10),
            ..Default::default()
        };
        let v = serde_json::to_value(to_zipkin(&s)).expect("json");
        assert_eq!(v["tags"]["error"], "boom");
        assert_eq!(v["tags"]["otel.status_code"], "ERROR");
        assert_eq!(v["duration"], 1);
    }
}
