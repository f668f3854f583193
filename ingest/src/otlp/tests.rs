//! Tests of the OTLP conversion, HTTP router and gRPC service.

use super::grpc::{OtlpTraceService, to_status};
use super::*;
use crate::metrics::{self, receiver};
use crate::test_util::{now_us, state};
use crate::{IngestState, otlp_grpc_service};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use meshlens_storage::model::{AttrValue, SpanKind, StatusCode as SpanStatus, UnixNanos};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, span,
};
use prost::Message;
use tower::ServiceExt;

/// opentelemetry-proto's examples/trace.json, verbatim: upper-case hex ids,
/// int64 times as JSON numbers.
const SPEC_EXAMPLE: &str = r#"{
  "resourceSpans": [
    {
      "resource": {
        "attributes": [
          {
            "key": "service.name",
            "value": {
              "stringValue": "my.service"
            }
          }
        ]
      },
      "scopeSpans": [
        {
          "scope": {
            "name": "my.library",
            "version": "1.0.0",
            "attributes": [
              {
                "key": "my.scope.attribute",
                "value": {
                  "stringValue": "some scope attribute"
                }
              }
            ]
          },
          "spans": [
            {
              "traceId": "5B8EFFF798038103D269B633813FC60C",
              "spanId": "EEE19B7EC3C1B174",
              "parentSpanId": "EEE19B7EC3C1B173",
              "name": "I'm a server span",
              "startTimeUnixNano": 1544712660000000000,
              "endTimeUnixNano": 1544712661000000000,
              "kind": 2,
              "attributes": [
                {
                  "key": "my.span.attr",
                  "value": {
                    "stringValue": "some value"
                  }
                }
              ]
            }
          ]
        }
      ]
    }
  ]
}"#;

#[test]
fn spec_example_json_decodes() {
    let b = decode_otlp_json(SPEC_EXAMPLE.as_bytes()).unwrap();
    assert_eq!(b.rejected.count, 0, "{}", b.rejected.message());
    let s = &b.spans[0];
    assert_eq!(s.trace_id.to_hex(false), "5b8efff798038103d269b633813fc60c");
    assert!(!s.trace_id_64);
    assert_eq!(s.span_id.to_hex(), "eee19b7ec3c1b174");
    assert_eq!(
        s.parent_span_id.map(|p| p.to_hex()).as_deref(),
        Some("eee19b7ec3c1b173")
    );
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(s.start, Some(UnixNanos(1_544_712_660_000_000_000)));
    assert_eq!(s.duration_nanos, Some(1_000_000_000));
    assert_eq!(s.service_name(), "my.service");
    assert_eq!(
        s.resource.get("service.name"),
        Some(&AttrValue::Str("my.service".into()))
    );
    assert_eq!(s.attr_str("my.span.attr"), Some("some value"));
    assert_eq!(s.scope_name.as_deref(), Some("my.library"));
    assert_eq!(s.scope_version.as_deref(), Some("1.0.0"));
    let extra: serde_json::Value = serde_json::from_str(s.extra_json.as_deref().unwrap()).unwrap();
    assert_eq!(
        extra["scope"]["attributes"][0]["value"]["stringValue"],
        "some scope attribute"
    );
}

#[test]
fn json_string_int64s_typed_values_events_links_status() {
    let now = UnixNanos::now().0;
    let json = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"cart"}}}}]}},
        "schemaUrl":"https://opentelemetry.io/schemas/1.21.0",
        "scopeSpans":[{{"spans":[{{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331",
        "parentSpanId":"","traceState":"ot=th:8","flags":257,"name":"GET","kind":3,
        "startTimeUnixNano":"{now}","endTimeUnixNano":"{end}",
        "attributes":[{{"key":"i","value":{{"intValue":"42"}}}},{{"key":"d","value":{{"doubleValue":1.5}}}},
          {{"key":"b","value":{{"boolValue":true}}}},
          {{"key":"arr","value":{{"arrayValue":{{"values":[{{"stringValue":"x"}},{{"intValue":7}}]}}}}}},
          {{"key":"kv","value":{{"kvlistValue":{{"values":[{{"key":"a","value":{{"boolValue":false}}}}]}}}}}},
          {{"key":"bytes","value":{{"bytesValue":"AQID"}}}},
          {{"key":"peer.service","value":{{"stringValue":"payments"}}}},
          {{"key":"network.peer.address","value":{{"stringValue":"10.1.2.3"}}}},
          {{"key":"server.port","value":{{"intValue":"8443"}}}}],
        "droppedAttributesCount":2,
        "events":[{{"timeUnixNano":"{now}","name":"retry","attributes":[{{"key":"n","value":{{"intValue":"1"}}}}]}}],
        "links":[{{"traceId":"0af7651916cd43dd8448eb211c80319d","spanId":"b7ad6b7169203332","traceState":"x=1","flags":1}}],
        "status":{{"code":2,"message":"boom"}}}}]}}]}}]}}"#,
        end = now + 5_000
    );
    let b = decode_otlp_json(json.as_bytes()).unwrap();
    assert_eq!(b.rejected.count, 0, "{}", b.rejected.message());
    let s = &b.spans[0];
    assert_eq!(s.parent_span_id, None);
    assert_eq!(s.duration_nanos, Some(5_000));
    assert_eq!(s.kind, SpanKind::Client);
    assert_eq!(s.trace_state.as_deref(), Some("ot=th:8"));
    assert_eq!(s.flags, Some(257));
    assert_eq!(s.attributes["i"], AttrValue::Int(42));
    assert_eq!(s.attributes["d"], AttrValue::Double(1.5));
    assert_eq!(s.attributes["b"], AttrValue::Bool(true));
    assert_eq!(
        s.attributes["arr"],
        AttrValue::Json(
            r#"{"arrayValue":{"values":[{"stringValue":"x"},{"intValue":"7"}]}}"#.into()
        )
    );
    assert_eq!(
        s.attributes["kv"],
        AttrValue::Json(
            r#"{"kvlistValue":{"values":[{"key":"a","value":{"boolValue":false}}]}}"#.into()
        )
    );
    assert_eq!(
        s.attributes["bytes"],
        AttrValue::Json(r#"{"bytesValue":"AQID"}"#.into())
    );
    assert_eq!(
        (s.status_code, s.status_message.as_deref()),
        (SpanStatus::Error, Some("boom"))
    );
    assert_eq!(s.events[0].name, "retry");
    assert_eq!(
        s.events[0].attributes_json.as_deref(),
        Some(r#"[{"key":"n","value":{"intValue":"1"}}]"#)
    );
    assert_eq!(s.links[0].span_id.to_hex(), "b7ad6b7169203332");
    assert_eq!(s.links[0].trace_state.as_deref(), Some("x=1"));
    // The peer attributes become the remote endpoint (and stay attributes).
    assert_eq!(s.remote.service_name.as_deref(), Some("payments"));
    assert_eq!(s.remote.ipv4.as_deref(), Some("10.1.2.3"));
    assert_eq!(s.remote.port, Some(8443));
    assert!(s.attributes.contains_key("peer.service"));
    let extra: serde_json::Value = serde_json::from_str(s.extra_json.as_deref().unwrap()).unwrap();
    assert_eq!(extra["droppedAttributesCount"], 2);
    assert_eq!(extra["links"][0]["flags"], 1);
    assert_eq!(
        extra["resource"]["schemaUrl"],
        "https://opentelemetry.io/schemas/1.21.0"
    );
}

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn otlp_span(id: u8) -> OtlpSpan {
    let start = (now_us() * 1_000) as u64;
    OtlpSpan {
        trace_id: vec![7; 16],
        span_id: vec![id; 8],
        name: format!("span {id}"),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000,
        attributes: vec![kv(
            "list",
            any_value::Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(any_value::Value::DoubleValue(f64::NAN)),
                }],
            }),
        )],
        status: Some(Status {
            code: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn request(spans: Vec<OtlpSpan>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("api".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "lib".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn protobuf_partial_success_rejects_only_the_invalid_spans() {
    let mut short_trace = otlp_span(2);
    short_trace.trace_id = vec![1; 8];
    let mut backwards = otlp_span(3);
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 10;
    let mut no_start = otlp_span(4);
    no_start.start_time_unix_nano = 0;
    let mut future = otlp_span(5);
    future.start_time_unix_nano += 7_200 * 1_000_000_000;
    future.end_time_unix_nano = future.start_time_unix_nano;
    let mut many = otlp_span(6);
    many.attributes = (0..10_001)
        .map(|i| kv(&format!("k{i}"), any_value::Value::IntValue(i)))
        .collect();
    let req = request(vec![
        otlp_span(1),
        short_trace,
        backwards,
        no_start,
        future,
        many,
    ]);
    let b = decode_otlp_proto_prost(&req.encode_to_vec()).unwrap();
    assert_eq!(
        b.rejected,
        decode_otlp_proto(&req.encode_to_vec()).unwrap().rejected,
        "the in-place decoder rejects the same spans for the same reasons"
    );
    assert_eq!(b.spans.len(), 1);
    assert_eq!(b.spans[0].status_code, SpanStatus::Ok);
    assert_eq!(
        b.spans[0].attributes["list"],
        AttrValue::Json(r#"{"arrayValue":{"values":[{"doubleValue":"NaN"}]}}"#.into())
    );
    assert_eq!(b.rejected.count, 5);
    let msg = b.rejected.message();
    assert!(msg.starts_with("5 invalid spans rejected: "), "{msg}");
    for part in [
        "resourceSpans[0].scopeSpans[0].spans[1].traceId: trace id must be 16 bytes, got 8",
        "spans[2].endTimeUnixNano: must not be negative, got -10 ns",
        "spans[3].startTimeUnixNano: is required",
        "spans[4].startTimeUnixNano: ",
        "spans[5] has 10001 attributes; at most 10000 are accepted",
    ] {
        assert!(msg.contains(part), "{part:?} missing from {msg}");
    }
    let e = decode_otlp_proto(b"\xff\xff\xff").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("request body is not a valid protobuf ExportTraceServiceRequest")
    );
}

#[test]
fn json_errors_are_located() {
    let e =
        decode_otlp_json(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#)
            .unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
    let e = decode_otlp_json(br#"{"resourceSpans":["#).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    let e = decode_otlp_json(b"{\"resourceSpans\":[{\"schemaUrl\":\"\xc3\x28\"}]}").unwrap_err();
    assert_eq!(e, crate::DecodeError::InvalidUtf8 { offset: 32 });
    assert!(decode_otlp_json(b"{}").unwrap().spans.is_empty());
}

fn post(ct: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/v1/traces")
        .header(header::CONTENT_TYPE, ct)
        .body(body.into())
        .unwrap()
}

async fn bytes(resp: axum::response::Response) -> Vec<u8> {
    axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

fn received(st: &IngestState, r: &'static str) -> f64 {
    st.storage
        .telemetry()
        .counter(metrics::SPANS_RECEIVED, &[("receiver", r)])
}

#[tokio::test]
async fn http_protobuf_and_json_answer_in_kind() {
    let st = state().await;
    let app = http::router(st.clone());
    let mut bad = otlp_span(9);
    bad.span_id = vec![];
    let body = request(vec![otlp_span(1), bad]).encode_to_vec();
    let resp = app
        .clone()
        .oneshot(post("application/x-protobuf", body))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/x-protobuf"
    );
    let r = ExportTraceServiceResponse::decode(bytes(resp).await.as_slice()).unwrap();
    let ps = r.partial_success.unwrap();
    assert_eq!(ps.rejected_spans, 1);
    assert!(
        ps.error_message
            .contains("spans[1].spanId: span id must be 8 bytes, got 0"),
        "{}",
        ps.error_message
    );
    assert_eq!(received(&st, receiver::OTLP_HTTP_PROTO), 1.0);

    let json = SPEC_EXAMPLE
        .replace("1544712660000000000", &(now_us() * 1000).to_string())
        .replace("1544712661000000000", &(now_us() * 1000 + 10).to_string());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, json.as_bytes()).unwrap();
    let mut req = post("application/json; charset=utf-8", gz.finish().unwrap());
    req.headers_mut()
        .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert!(v.get("partialSuccess").is_none_or(|p| p.is_null()), "{v}");
    assert_eq!(received(&st, receiver::OTLP_HTTP_JSON), 1.0);
}

#[tokio::test]
async fn http_errors_are_rpc_status_and_415() {
    let st = state().await;
    let app = http::router(st.clone());
    let resp = app
        .clone()
        .oneshot(post("application/json", "{\"resourceSpans\":"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert_eq!(v["code"], 3);
    assert!(v["message"].as_str().unwrap().contains("truncated"), "{v}");

    let resp = app
        .clone()
        .oneshot(post("application/x-protobuf", vec![0xffu8, 0xff]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let s = RpcStatus::decode(bytes(resp).await.as_slice()).unwrap();
    assert_eq!(s.code, 3);
    assert!(s.message.contains("not a valid protobuf"), "{}", s.message);

    let resp = app.clone().oneshot(post("text/plain", "x")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let t = st.storage.telemetry();
    let n = t.counter(
        metrics::REQUESTS_REJECTED,
        &[
            ("receiver", receiver::OTLP_HTTP_PROTO),
            ("reason", "unsupported_media_type"),
        ],
    );
    assert_eq!(n, 1.0);
}

#[tokio::test]
async fn grpc_export_partial_success_and_retry_info() {
    let st = state().await;
    let _server = otlp_grpc_service(st.clone());
    let svc = OtlpTraceService::new(st.clone());
    let mut bad = otlp_span(2);
    bad.trace_id = vec![0; 16];
    let resp = svc
        .export(tonic::Request::new(request(vec![otlp_span(1), bad])))
        .await
        .unwrap()
        .into_inner();
    let ps = resp.partial_success.unwrap();
    assert_eq!(ps.rejected_spans, 1);
    assert!(
        ps.error_message
            .contains("traceId: trace id must not be all zeros"),
        "{}",
        ps.error_message
    );
    assert_eq!(received(&st, receiver::OTLP_GRPC), 1.0);
    let ok = svc
        .export(tonic::Request::new(request(vec![otlp_span(3)])))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().partial_success, None);

    let e = crate::IngestError::Storage(meshlens_storage::StorageError::Backpressure {
        what: "buffer",
        used: 2,
        limit: 1,
        retry_after: std::time::Duration::from_secs(3),
    });
    let status = to_status(&e);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let details = RpcStatus::decode(status.details()).unwrap();
    assert_eq!(
        details.details[0].type_url,
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    let ri = RetryInfo::decode(details.details[0].value.as_slice()).unwrap();
    assert_eq!(ri.retry_delay.unwrap().seconds, 3);
}
