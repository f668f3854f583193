//! Spans as an OTLP `ExportTraceServiceRequest` (what an SDK would send).

use meshlens_storage::model::{AttrValue, Span};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OSpan};
use std::collections::BTreeMap;

fn kv(k: &str, v: &AttrValue) -> KeyValue {
    let value = match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
        AttrValue::Json(j) => any_value::Value::StringValue(j.clone()),
    };
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn request(spans: &[Span]) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<String, Vec<OSpan>> = BTreeMap::new();
    for s in spans {
        let start = s.start.map_or(0, |t| t.0) as u64;
        by_service
            .entry(s.service_name().to_string())
            .or_default()
            .push(OSpan {
                trace_id: s.trace_id.0.to_vec(),
                span_id: s.span_id.0.to_vec(),
                parent_span_id: s.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
                name: s.name.clone(),
                kind: s.kind as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + s.duration_nanos.unwrap_or(0) as u64,
                attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                ..Default::default()
            });
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(svc, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", &AttrValue::Str(svc))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}
