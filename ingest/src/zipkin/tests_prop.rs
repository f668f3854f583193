//! Property tests: no decoder panics on any input, and a generated valid
//! Zipkin v2 span survives JSON encode -> decode unchanged.

use super::*;
use crate::otlp::{decode_otlp_json, decode_otlp_proto};
use meshlens_storage::model::{AttrValue, Endpoint, Event, SpanId, SpanKind, TraceId, UnixNanos};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn all_decoders(bytes: &[u8]) {
    v2_paths_agree(bytes);
    let _ = decode_json_v1(bytes);
    let _ = decode_proto3(bytes);
    let _ = decode_otlp_proto(bytes);
    let _ = decode_otlp_json(bytes);
}

/// The batch path of the v2 JSON decoder gives the batch of the spans the
/// `Span` path gives, and the same errors.
fn v2_paths_agree(bytes: &[u8]) {
    let spans = decode_json_v2(bytes);
    let batch = json_v2::decode_json_v2_batch(bytes);
    match (spans, batch) {
        (Ok(s), Ok(b)) => assert_eq!(b, spans_to_batch(&s).unwrap()),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("paths disagree: {a:?} vs {b:?}"),
    }
}

const SAMPLE_V2: &str = r#"[{"traceId":"5b8efff798038103d269b633813fc60c","id":"eee19b7ec3c1b174","parentId":"eee19b7ec3c1b173","kind":"SERVER","name":"get","timestamp":1600000000000000,"duration":5,"localEndpoint":{"serviceName":"a","ipv4":"1.2.3.4","port":80},"annotations":[{"timestamp":1600000000000001,"value":"x"}],"tags":{"k":"v"},"shared":true}]"#;
const SAMPLE_V1: &str = r#"[{"traceId":"000000000000000a","id":"000000000000000b","annotations":[{"timestamp":1600000000000000,"value":"cs","endpoint":{"serviceName":"a"}},{"timestamp":1600000000000001,"value":"sr","endpoint":{"serviceName":"b"}}],"binaryAnnotations":[{"key":"sa","value":true,"endpoint":{"serviceName":"b"}}]}]"#;
const SAMPLE_OTLP: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"s"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"n","kind":3,"startTimeUnixNano":"1600000000000000000","endTimeUnixNano":"1600000000000000100","attributes":[{"key":"a","value":{"arrayValue":{"values":[{"intValue":"1"}]}}}]}]}]}]}"#;

fn trace_hex() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9a-f]{16}", "[0-9a-f]{32}"]
        .prop_filter("not all zeros", |s| s.chars().any(|c| c != '0'))
}

fn span_hex() -> impl Strategy<Value = String> {
    "[0-9a-fA-F]{16}".prop_filter("not all zeros", |s| s.chars().any(|c| c != '0'))
}

/// A valid span as Zipkin v2 JSON plus the `Span` it must decode to.
fn zipkin_span() -> impl Strategy<Value = (Value, Span)> {
    let min = 631_152_000_000_001i64; // just after 1990-01-01, µs
    let max = UnixNanos::now().as_micros();
    (
        (trace_hex(), span_hex(), proptest::option::of(span_hex())),
        proptest::option::of(prop_oneof![
            Just("CLIENT"),
            Just("SERVER"),
            Just("PRODUCER"),
            Just("CONSUMER")
        ]),
        "\\PC{0,12}",
        (
            proptest::option::of(min..max),
            proptest::option::of(1i64..10_000_000_000),
        ),
        (
            proptest::option::of("\\PC{1,8}"),
            proptest::option::of("[0-9.]{1,15}"),
            proptest::option::of(1i32..=65535),
        ),
        proptest::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..5),
        proptest::collection::vec((min..max, "\\PC{0,8}"), 0..3),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (tid, sid, pid),
                kind,
                name,
                (ts, dur),
                (svc, ip, port),
                tags,
                anns,
                (shared, debug),
            )| {
                let mut o = Map::new();
                o.insert("traceId".into(), tid.clone().into());
                o.insert("id".into(), sid.clone().into());
                if let Some(p) = &pid {
                    o.insert("parentId".into(), p.clone().into());
                }
                if let Some(k) = kind {
                    o.insert("kind".into(), k.into());
                }
                o.insert("name".into(), name.clone().into());
                if let Some(t) = ts {
                    o.insert("timestamp".into(), t.into());
                }
                if let Some(d) = dur {
                    o.insert("duration".into(), d.into());
                }
                let mut ep = Map::new();
                if let Some(s) = &svc {
                    ep.insert("serviceName".into(), s.clone().into());
                }
                if let Some(i) = &ip {
                    ep.insert("ipv4".into(), i.clone().into());
                }
                if let Some(p) = port {
                    ep.insert("port".into(), p.into());
                }
                o.insert("localEndpoint".into(), Value::Object(ep));
                o.insert("tags".into(), json!(tags));
                let a: Vec<Value> = anns
                    .iter()
                    .map(|(t, v)| json!({"timestamp": t, "value": v}))
                    .collect();
                o.insert("annotations".into(), a.into());
                o.insert("shared".into(), shared.into());
                o.insert("debug".into(), debug.into());

                let (trace_id, trace_id_64) = TraceId::parse_hex(&tid).expect("generated id");
                let expected = Span {
                    trace_id,
                    trace_id_64,
                    span_id: SpanId::parse_hex("id", &sid).expect("generated id"),
                    parent_span_id: pid.map(|p| SpanId::parse_hex("id", &p).expect("generated id")),
                    name,
                    kind: kind
                        .and_then(SpanKind::from_zipkin_name)
                        .unwrap_or_default(),
                    start: ts.map(UnixNanos::from_micros),
                    duration_nanos: dur.map(|d| d * 1_000),
                    local: Endpoint {
                        service_name: svc,
                        ipv4: ip,
                        ipv6: None,
                        port,
                    },
                    shared,
                    debug,
                    attributes: tags
                        .into_iter()
                        .map(|(k, v)| (k, AttrValue::Str(v)))
                        .collect(),
                    events: anns
                        .into_iter()
                        .map(|(t, v)| Event {
                            time: UnixNanos::from_micros(t),
                            name: v,
                            attributes_json: None,
                        })
                        .collect(),
                    ..Default::default()
                };
                (Value::Object(o), expected)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        all_decoders(&bytes);
    }

    #[test]
    fn mutated_samples_never_panic(
        which in 0usize..3,
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut b = [SAMPLE_V2, SAMPLE_V1, SAMPLE_OTLP][which].as_bytes().to_vec();
        for (i, v) in flips {
            let i = i.index(b.len());
            b[i] = v;
        }
        let n = cut.index(b.len() + 1);
        all_decoders(&b[..n]);
        all_decoders(&b);
    }

    #[test]
    fn generated_v2_span_round_trips(spans in proptest::collection::vec(zipkin_span(), 0..4)) {
        let (json, expected): (Vec<Value>, Vec<Span>) = spans.into_iter().unzip();
        let body = serde_json::to_vec(&json).expect("serializable");
        let decoded = decode_json_v2(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &expected);
        let batch = json_v2::decode_json_v2_batch(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(batch, spans_to_batch(&expected).unwrap());
    }
}

#[test]
fn samples_are_valid() {
    assert_eq!(decode_json_v2(SAMPLE_V2.as_bytes()).unwrap().len(), 1);
    assert_eq!(decode_json_v1(SAMPLE_V1.as_bytes()).unwrap().len(), 2);
    assert_eq!(
        decode_otlp_json(SAMPLE_OTLP.as_bytes())
            .unwrap()
            .spans
            .len(),
        1
    );
}
