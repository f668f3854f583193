//! Tests of the Zipkin decoders. Router tests are in `tests_router.rs`,
//! property tests in `tests_prop.rs`.

use super::*;
use crate::error::{JsonErrorKind, Problem};
use crate::test_util::now_us;
use meshlens_storage::model::{AttrValue, Endpoint, Event, SpanId, SpanKind, TraceId, UnixNanos};

const T: i64 = 1_600_000_000_000_000; // 2020-09-13, in µs

fn one(json: &str) -> Span {
    let mut v = decode_json_v2(json.as_bytes()).expect("decodes");
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn err_v2(json: &str) -> String {
    decode_json_v2(json.as_bytes())
        .expect_err("must fail")
        .to_string()
}

#[test]
fn v2_full_span_decodes_field_by_field() {
    let json = format!(
        r#"[{{"traceId":"5B8EFFF798038103D269B633813FC60C","id":"EEE19B7EC3C1B174",
        "parentId":"eee19b7ec3c1b173","kind":"CLIENT","name":"GET /api","timestamp":{T},
        "duration":207000,"localEndpoint":{{"serviceName":"frontend","ipv4":"172.17.0.13","port":8080}},
        "remoteEndpoint":{{"serviceName":"backend","ipv6":"::1","port":0}},
        "annotations":[{{"timestamp":{},"value":"ws"}}],
        "tags":{{"http.path":"/api","n":42,"b":true,"f":1.5}},"debug":true,"shared":false,
        "unknownField":[1,2,{{"x":null}}]}}]"#,
        T + 1
    );
    let s = one(&json);
    let expected = Span {
        trace_id: TraceId::parse_hex("5b8efff798038103d269b633813fc60c")
            .unwrap()
            .0,
        trace_id_64: false,
        span_id: SpanId::parse_hex("id", "eee19b7ec3c1b174").unwrap(),
        parent_span_id: Some(SpanId::parse_hex("id", "eee19b7ec3c1b173").unwrap()),
        name: "GET /api".into(),
        kind: SpanKind::Client,
        start: Some(UnixNanos::from_micros(T)),
        duration_nanos: Some(207_000_000),
        local: Endpoint {
            service_name: Some("frontend".into()),
            ipv4: Some("172.17.0.13".into()),
            ipv6: None,
            port: Some(8080),
        },
        remote: Endpoint {
            service_name: Some("backend".into()),
            ipv6: Some("::1".into()),
            ..Default::default()
        },
        debug: true,
        events: vec![Event {
            time: UnixNanos::from_micros(T + 1),
            name: "ws".into(),
            attributes_json: None,
        }],
        attributes: [
            ("http.path", "/api"),
            ("n", "42"),
            ("b", "true"),
            ("f", "1.5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), AttrValue::Str(v.to_string())))
        .collect(),
        ..Default::default()
    };
    assert_eq!(s, expected);
    // Ids come back lower-case at the width they were sent.
    assert_eq!(
        s.trace_id.to_hex(s.trace_id_64),
        "5b8efff798038103d269b633813fc60c"
    );
}

#[test]
fn v2_minimal_span_and_empty_list() {
    assert!(decode_json_v2(b"[]").unwrap().is_empty());
    assert!(decode_json_v2(b" [ ] \n").unwrap().is_empty());
    let s = one(
        r#"[{"traceId":"000000000000000a","id":"000000000000000b","timestamp":0,"duration":0}]"#,
    );
    assert!(s.trace_id_64);
    assert_eq!(s.trace_id.to_hex(true), "000000000000000a");
    assert_eq!(
        (s.start, s.duration_nanos, s.kind),
        (None, None, SpanKind::Unspecified)
    );
    assert!(s.local.is_empty() && s.attributes.is_empty());
    // null fields are absent fields; empty endpoint strings are absent too.
    let s = one(
        r#"[{"traceId":"000000000000000a","id":"000000000000000b","parentId":null,"name":null,
        "localEndpoint":{"serviceName":"","port":0}}]"#,
    );
    assert_eq!(s.parent_span_id, None);
    assert!(s.local.is_empty());
}

#[test]
fn malformed_truncated_and_wrong_types() {
    let e = decode_json_v2(b"[{\"traceId\": }]").unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Json {
                kind: JsonErrorKind::Syntax,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("malformed JSON at line 1 column 14 (in span[0]): expected value"),
        "{e}"
    );

    let e = decode_json_v2(br#"[{"traceId":"000000000000000a","id":"0000"#).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Json {
                kind: JsonErrorKind::Truncated,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");

    let m = err_v2(r#"[{"traceId":"000000000000000a","id":"000000000000000b"},{"traceId":5}]"#);
    assert!(
        m.contains("(in span[1])") && m.contains("expected a string"),
        "{m}"
    );
    let m = err_v2(r#"{"traceId":"000000000000000a"}"#);
    assert!(m.contains("expected a JSON array of spans"), "{m}");
    let m = err_v2(r#"[{"traceId":"000000000000000a","id":"000000000000000b","timestamp":"x"}]"#);
    assert!(m.contains("invalid type: string"), "{m}");
    let m = err_v2(r#"[{"traceId":"000000000000000a","id":"000000000000000b","tags":{"a":null}}]"#);
    assert!(m.contains("a tag value must be a string, got null"), "{m}");
    let m = err_v2(r#"[{"traceId":"000000000000000a","id":"000000000000000b","tags":{"a":[1]}}]"#);
    assert!(m.contains("expected a string"), "{m}");
    assert!(err_v2("[] x").contains("trailing characters"));
}

#[test]
fn bad_ids_name_the_span_and_field() {
    let m = err_v2(
        r#"[{"traceId":"000000000000000a","id":"000000000000000b"},{"traceId":"abcdef1","id":"000000000000000b"}]"#,
    );
    assert_eq!(
        m,
        "span[1].traceId: trace id must be 16 or 32 hex characters, got 7"
    );
    let m = err_v2(r#"[{"traceId":"00000000000000zz","id":"000000000000000b"}]"#);
    assert_eq!(
        m,
        "span[0].traceId: trace id must be hex, found 'z' at position 14"
    );
    let m = err_v2(r#"[{"traceId":"00000000000000000000000000000000","id":"000000000000000b"}]"#);
    assert_eq!(m, "span[0].traceId: trace id must not be all zeros");
    let m = err_v2(r#"[{"traceId":"000000000000000a","id":"0000000000000000"}]"#);
    assert_eq!(m, "span[0].id: span id must not be all zeros");
    let m = err_v2(r#"[{"traceId":"000000000000000a"}]"#);
    assert_eq!(m, "span[0].id: is required");
    let m = err_v2(r#"[{"traceId":"000000000000000a","id":"000000000000000b","parentId":"12"}]"#);
    assert_eq!(
        m,
        "span[0].parentId: parent id must be 16 hex characters, got 2"
    );
    let m = err_v2(r#"[{"traceId":"000000000000000a","id":"000000000000000b","kind":"client"}]"#);
    assert!(m.starts_with("span[0].kind: must be one of CLIENT"), "{m}");
    // Two bad spans: the first is described, the count is given.
    let m = err_v2(r#"[{"traceId":"1"},{"traceId":"2"}]"#);
    assert!(m.contains("(and 1 more invalid spans; all 2 spans"), "{m}");
}

#[test]
fn negative_duration_future_and_ancient_timestamps() {
    let now = now_us();
    let span = |extra: &str| {
        format!(r#"[{{"traceId":"000000000000000a","id":"000000000000000b",{extra}}}]"#)
    };
    let m = err_v2(&span(&format!(r#""timestamp":{now},"duration":-5"#)));
    assert_eq!(m, "span[0].duration: must not be negative, got -5 µs");
    let m = err_v2(&span(&format!(
        r#""timestamp":{}"#,
        now + 86_400_000_000 * 3
    )));
    assert!(
        m.starts_with("span[0].timestamp: ") && m.contains("3 days ahead"),
        "{m}"
    );
    // Milliseconds where microseconds belong look like January 1970.
    let m = err_v2(&span(&format!(r#""timestamp":{}"#, now / 1000)));
    assert!(
        m.contains("before 1990") && m.contains("microseconds"),
        "{m}"
    );
    let m = err_v2(&span(&format!(
        r#""annotations":[{{"timestamp":{},"value":"x"}}]"#,
        now * 1000
    )));
    assert!(m.starts_with("span[0].annotations[0].timestamp:"), "{m}");
    let m = err_v2(&span(r#""annotations":[{"value":"x"}]"#));
    assert!(m.contains("needs both timestamp and value"), "{m}");
    let m = err_v2(&span(r#""timestamp":9223372036854775807"#));
    assert!(m.contains("does not fit"), "{m}");
    // One hour of clock skew is fine.
    one(&span(&format!(r#""timestamp":{}"#, now + 1_800_000_000)));
}

#[test]
fn million_tags_and_long_strings() {
    let mut json =
        String::from(r#"[{"traceId":"000000000000000a","id":"000000000000000b","tags":{"#);
    for i in 0..1_000_000 {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!("\"k{i}\":\"v\""));
    }
    json.push_str("}}]");
    assert_eq!(
        err_v2(&json),
        "span[0] has 1000000 tags; at most 10000 are accepted"
    );
    let at_limit: Vec<String> = (0..10_000).map(|i| format!("\"k{i}\":\"v\"")).collect();
    let json = format!(
        r#"[{{"traceId":"000000000000000a","id":"000000000000000b","tags":{{{}}}}}]"#,
        at_limit.join(",")
    );
    assert_eq!(one(&json).attributes.len(), 10_000);

    let long = "x".repeat(64 * 1024 + 1);
    let m = err_v2(&format!(
        r#"[{{"traceId":"000000000000000a","id":"000000000000000b","name":"{long}"}}]"#
    ));
    assert_eq!(
        m,
        "span[0].name: is 65537 bytes long; at most 65536 are accepted"
    );
    let m = err_v2(&format!(
        r#"[{{"traceId":"000000000000000a","id":"000000000000000b","tags":{{"k":"{long}"}}}}]"#
    ));
    assert!(m.starts_with(r#"span[0].tags["k"]: is 65537"#), "{m}");
}

#[test]
fn invalid_utf8_names_the_byte_offset() {
    let mut body = br#"[{"traceId":"000000000000000a","id":"000000000000000b","name":""#.to_vec();
    let offset = body.len();
    body.extend_from_slice(b"\xff\xfe\"}]");
    let e = decode_json_v2(&body).unwrap_err();
    assert_eq!(e, DecodeError::InvalidUtf8 { offset });
    assert_eq!(
        e.to_string(),
        format!("request body is not valid UTF-8: invalid byte sequence at byte offset {offset}")
    );
    assert!(decode_json_v1(&body).is_err());
    // Escaped non-ASCII is fine.
    let s = one(
        r#"[{"traceId":"000000000000000a","id":"000000000000000b","name":"\u00e9t\u00e9 🌞"}]"#,
    );
    assert_eq!(s.name, "été 🌞");
}

#[test]
fn conformance_traces_decode() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/zipkin/traces");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipping: {} not found", dir.display());
        return;
    };
    let mut files = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        // The benchmark files hold one span object; the POST body is a list.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            bytes = [b"[".as_slice(), &bytes, b"]"].concat();
        }
        let spans = decode_json_v2(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!spans.is_empty(), "{}", path.display());
        files += 1;
    }
    assert!(files >= 10, "found only {files} files");
}

#[test]
fn v1_client_and_server_halves_split_with_shared() {
    let json = format!(
        r#"[{{"traceId":"000000000000000a","id":"000000000000000b","parentId":"000000000000000c",
        "name":"get","timestamp":{T},"duration":100,
        "annotations":[
          {{"timestamp":{T},"value":"cs","endpoint":{{"serviceName":"frontend","ipv4":"127.0.0.1"}}}},
          {{"timestamp":{t1},"value":"sr","endpoint":{{"serviceName":"backend","ipv4":"127.0.0.2","port":9000}}}},
          {{"timestamp":{t2},"value":"ss","endpoint":{{"serviceName":"backend","ipv4":"127.0.0.2","port":9000}}}},
          {{"timestamp":{t3},"value":"cr","endpoint":{{"serviceName":"frontend","ipv4":"127.0.0.1"}}}},
          {{"timestamp":{t1},"value":"custom","endpoint":{{"serviceName":"backend"}}}}],
        "binaryAnnotations":[
          {{"key":"http.path","value":"/x","endpoint":{{"serviceName":"frontend"}}}},
          {{"key":"sa","value":true,"endpoint":{{"serviceName":"backend","ipv4":"127.0.0.2","port":9000}}}},
          {{"key":"lc","value":"","endpoint":{{"serviceName":"frontend"}}}},
          {{"key":"count","value":3}}]}}]"#,
        t1 = T + 10,
        t2 = T + 90,
        t3 = T + 100
    );
    let spans = decode_json_v1(json.as_bytes()).unwrap();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (client, server) = (&spans[0], &spans[1]);
    assert_eq!(client.kind, SpanKind::Client);
    assert_eq!(client.local.service_name.as_deref(), Some("frontend"));
    assert_eq!(client.start, Some(UnixNanos::from_micros(T)));
    assert_eq!(client.duration_nanos, Some(100_000));
    assert!(!client.shared);
    assert_eq!(client.remote.service_name.as_deref(), Some("backend"));
    assert_eq!(client.remote.port, Some(9000));
    assert_eq!(client.attr_str("http.path"), Some("/x"));
    assert_eq!(client.attr_str("count"), Some("3"));
    assert!(!client.attributes.contains_key("lc"));
    assert_eq!(server.kind, SpanKind::Server);
    assert!(server.shared);
    assert_eq!(server.local.service_name.as_deref(), Some("backend"));
    assert_eq!(server.start, Some(UnixNanos::from_micros(T + 10)));
    assert_eq!(server.duration_nanos, Some(80_000));
    assert_eq!(server.events.len(), 1);
    assert_eq!(server.events[0].name, "custom");
    assert_eq!(server.span_id, client.span_id);
}

#[test]
fn v1_server_only_client_address_and_loopback() {
    // Server side only, no span timestamp: shared, remote = "ca".
    let json = format!(
        r#"[{{"traceId":"000000000000000a","id":"000000000000000b","name":"get",
        "annotations":[{{"timestamp":{T},"value":"sr","endpoint":{{"serviceName":"backend"}}}},
                       {{"timestamp":{t},"value":"ss","endpoint":{{"serviceName":"backend"}}}}],
        "binaryAnnotations":[{{"key":"ca","value":true,"endpoint":{{"serviceName":"frontend","ipv4":"10.0.0.1"}}}}]}}]"#,
        t = T + 50
    );
    let s = decode_json_v1(json.as_bytes()).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].kind, s[0].shared), (SpanKind::Server, true));
    assert_eq!(s[0].duration_nanos, Some(50_000));
    assert_eq!(s[0].remote.ipv4.as_deref(), Some("10.0.0.1"));

    // Loopback: cs and sr from the same service still make two spans.
    let ep = r#"{"serviceName":"svc"}"#;
    let json = format!(
        r#"[{{"traceId":"000000000000000a","id":"000000000000000b","annotations":[
        {{"timestamp":{T},"value":"cs","endpoint":{ep}}},{{"timestamp":{a},"value":"sr","endpoint":{ep}}},
        {{"timestamp":{b},"value":"ss","endpoint":{ep}}},{{"timestamp":{c},"value":"cr","endpoint":{ep}}}]}}]"#,
        a = T + 1,
        b = T + 2,
        c = T + 3
    );
    let s = decode_json_v1(json.as_bytes()).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0].kind, s[0].shared, s[0].duration_nanos),
        (SpanKind::Client, false, Some(3_000))
    );
    assert_eq!(
        (s[1].kind, s[1].shared, s[1].duration_nanos),
        (SpanKind::Server, true, Some(1_000))
    );

    // Only "sa", no core annotations: a remote address, not a client span.
    let json = format!(
        r#"[{{"traceId":"000000000000000a","id":"000000000000000b","timestamp":{T},"duration":7,
        "binaryAnnotations":[{{"key":"sa","value":true,"endpoint":{{"serviceName":"db"}}}}]}}]"#
    );
    let s = decode_json_v1(json.as_bytes()).unwrap();
    assert_eq!(
        (s[0].kind, s[0].remote.service_name.as_deref()),
        (SpanKind::Unspecified, Some("db"))
    );
    assert_eq!(s[0].duration_nanos, Some(7_000));
}

#[test]
fn v1_messaging_and_errors() {
    let json = format!(
        r#"[{{"traceId":"000000000000000a","id":"000000000000000b","annotations":[
        {{"timestamp":{T},"value":"ms","endpoint":{{"serviceName":"producer"}}}}],
        "binaryAnnotations":[{{"key":"ma","value":true,"endpoint":{{"serviceName":"kafka"}}}}]}}]"#
    );
    let s = decode_json_v1(json.as_bytes()).unwrap();
    assert_eq!(s[0].kind, SpanKind::Producer);
    assert_eq!(s[0].start, Some(UnixNanos::from_micros(T)));
    assert_eq!(s[0].remote.service_name.as_deref(), Some("kafka"));
    assert!(decode_json_v1(b"[]").unwrap().is_empty());
    let m = decode_json_v1(br#"[{"traceId":"a","id":"000000000000000b"}]"#)
        .unwrap_err()
        .to_string();
    assert_eq!(
        m,
        "span[0].traceId: trace id must be 16 or 32 hex characters, got 1"
    );
    let m = decode_json_v1(br#"[{"traceId":"000000000000000a","id":"000000000000000b","binaryAnnotations":[{"value":"x"}]}]"#)
        .unwrap_err()
        .to_string();
    assert_eq!(m, "span[0].binaryAnnotations[0].key: is required");
}

pub(super) fn proto_span() -> proto3::ProtoSpan {
    proto3::ProtoSpan {
        trace_id: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
        id: vec![0, 0, 0, 0, 0, 0, 0, 11],
        kind: 2,
        name: "get".into(),
        timestamp: T as u64,
        duration: 5,
        local_endpoint: Some(proto3::ProtoEndpoint {
            service_name: "backend".into(),
            ipv4: vec![10, 0, 0, 1],
            ipv6: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            port: 80,
        }),
        annotations: vec![proto3::ProtoAnnotation {
            timestamp: T as u64 + 1,
            value: "x".into(),
        }],
        tags: [("k".to_string(), "v".to_string())].into(),
        shared: true,
        ..Default::default()
    }
}

#[test]
fn proto3_decodes_and_validates() {
    use prost::Message;
    let body = proto3::ListOfSpans {
        spans: vec![proto_span()],
    }
    .encode_to_vec();
    let s = decode_proto3(&body).unwrap();
    assert_eq!(s.len(), 1);
    let s = &s[0];
    assert_eq!(
        s.trace_id.to_hex(s.trace_id_64),
        "0000000000000000000000000000000a"
    );
    assert_eq!(
        (s.kind, s.shared, s.duration_nanos),
        (SpanKind::Server, true, Some(5_000))
    );
    assert_eq!(s.local.ipv4.as_deref(), Some("10.0.0.1"));
    assert_eq!(s.local.ipv6.as_deref(), Some("::1"));
    assert_eq!(s.local.port, Some(80));
    assert_eq!(s.attr_str("k"), Some("v"));
    assert_eq!(s.events[0].time, UnixNanos::from_micros(T + 1));
    assert!(decode_proto3(b"").unwrap().is_empty());

    let mut bad = proto_span();
    bad.trace_id = vec![1; 5];
    let m = decode_proto3(
        &proto3::ListOfSpans {
            spans: vec![proto_span(), bad],
        }
        .encode_to_vec(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(m, "span[1].trace_id: trace id must be 8 or 16 bytes, got 5");
    let m = decode_proto3(b"\x0a\xff\xff\xff").unwrap_err().to_string();
    assert!(
        m.starts_with("request body is not a valid protobuf zipkin.proto3.ListOfSpans"),
        "{m}"
    );
    let mut bad = proto_span();
    bad.name = "ok".into();
    let mut raw = proto3::ListOfSpans { spans: vec![bad] }.encode_to_vec();
    let pos = raw.windows(2).position(|w| w == b"ok").unwrap();
    raw[pos] = 0xff;
    let m = decode_proto3(&raw).unwrap_err().to_string();
    assert!(m.contains("UTF-8"), "{m}");
    let e = decode_proto3(
        &proto3::ListOfSpans {
            spans: vec![proto3::ProtoSpan {
                duration: u64::MAX,
                ..proto_span()
            }],
        }
        .encode_to_vec(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, DecodeError::InvalidSpans { first, .. } if matches!(first.problem, Problem::OutOfRange { .. })),
        "{e}"
    );
}
