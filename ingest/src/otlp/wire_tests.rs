//! The in-place OTLP trace decoder against prost + `convert_request` +
//! `spans_to_batch`: the same batch, the same rejections, and an error
//! exactly when prost errs, on generated, mutated, hand-built and random
//! bodies.

use super::wire::{compare_with_prost, decode_traces_at};
use meshlens_storage::model::UnixNanos;
use meshlens_storage::schema::batch_to_spans;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use prost::Message;

const NOW: UnixNanos = UnixNanos(1_764_000_000_000_000_000);

/// Both decoders on `bytes`: equal results, or both refuse.
fn same_as_prost(bytes: &[u8]) -> Result<(), TestCaseError> {
    compare_with_prost(bytes, NOW).map_err(TestCaseError::fail)
}

fn kv(k: &str, v: Option<Value>) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: v }),
        key_strindex: 0,
    }
}

fn arb_scalar() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        4 => "[a-c]{0,3}".prop_map(|s| Some(Value::StringValue(s))),
        1 => any::<bool>().prop_map(|b| Some(Value::BoolValue(b))),
        1 => any::<i64>().prop_map(|i| Some(Value::IntValue(i))),
        1 => prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY)]
            .prop_map(|d| Some(Value::DoubleValue(d))),
        1 => proptest::collection::vec(any::<u8>(), 0..5).prop_map(|b| Some(Value::BytesValue(b))),
        1 => any::<i32>().prop_map(|i| Some(Value::StringValueStrindex(i))),
        1 => Just(None),
    ]
}

fn arb_value() -> impl Strategy<Value = Option<Value>> {
    arb_scalar().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(|v| Some(Value::ArrayValue(
                ArrayValue {
                    values: v.into_iter().map(|value| AnyValue { value }).collect(),
                }
            ))),
            proptest::collection::vec(("[a-c]{0,2}", inner), 0..3).prop_map(|v| Some(
                Value::KvlistValue(KeyValueList {
                    values: v.into_iter().map(|(k, v)| kv(&k, v)).collect(),
                })
            )),
        ]
    })
}

/// Keys that collide, promoted tags, the keys a remote endpoint is read from.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]{0,2}".prop_map(String::from),
        Just("service.name".to_string()),
        Just("http.method".to_string()),
        Just("guid:x-request-id".to_string()),
        Just("peer.service".to_string()),
        Just("net.peer.ip".to_string()),
        Just("server.port".to_string()),
    ]
}

fn arb_kvs(n: usize) -> impl Strategy<Value = Vec<KeyValue>> {
    proptest::collection::vec(
        (
            arb_key(),
            prop_oneof![
                3 => arb_scalar(),
                1 => arb_value(),
                1 => Just(Some(Value::StringValue("10.0.0.1".into()))),
                1 => Just(Some(Value::StringValue("8080".into()))),
            ],
        ),
        0..n,
    )
    .prop_map(|v| v.into_iter().map(|(k, v)| kv(&k, v)).collect())
}

fn arb_id(n: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), n),
        1 => Just(vec![0; n]),
        1 => Just(vec![]),
        1 => proptest::collection::vec(any::<u8>(), 0..20),
    ]
}

fn arb_time() -> impl Strategy<Value = u64> {
    let now = NOW.0 as u64;
    prop_oneof![
        6 => (0..3_600_000_000_000u64).prop_map(move |d| now - d),
        1 => Just(0),
        1 => Just(u64::MAX),
        1 => Just(now + 7_200_000_000_000),
        1 => Just(1_000),
    ]
}

prop_compose! {
    fn arb_span()(
        trace_id in arb_id(16),
        span_id in arb_id(8),
        parent in prop_oneof![Just(vec![]), arb_id(8)],
        trace_state in "[a-c=]{0,3}",
        flags in prop_oneof![Just(0u32), any::<u32>()],
        name in "[a-c ]{0,4}",
        kind in prop_oneof![0..6i32, any::<i32>()],
        start in arb_time(),
        dur in prop_oneof![0..1_000_000u64, Just(u64::MAX / 2)],
        backwards in prop::bool::weighted(0.1),
        attributes in arb_kvs(6),
        dropped in prop_oneof![Just(0u32), 1..3u32],
        events in proptest::collection::vec((arb_time(), "[a-c]{0,2}", arb_kvs(2), 0..2u32), 0..3),
        links in proptest::collection::vec((arb_id(16), arb_id(8), "[a-c]{0,2}", arb_kvs(2), 0..2u32, 0..2u32), 0..2),
        status in proptest::option::of((prop_oneof![0..3i32, any::<i32>()], "[a-c]{0,3}")),
    ) -> Span {
        let end = if backwards { start.saturating_sub(dur) } else { start.saturating_add(dur) };
        Span {
            trace_id,
            span_id,
            trace_state,
            parent_span_id: parent,
            flags,
            name,
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            dropped_attributes_count: dropped,
            events: events
                .into_iter()
                .map(|(t, name, attributes, d)| Event {
                    time_unix_nano: t,
                    name,
                    attributes,
                    dropped_attributes_count: d,
                })
                .collect(),
            dropped_events_count: dropped,
            links: links
                .into_iter()
                .map(|(trace_id, span_id, trace_state, attributes, d, flags)| Link {
                    trace_id,
                    span_id,
                    trace_state,
                    attributes,
                    dropped_attributes_count: d,
                    flags,
                })
                .collect(),
            dropped_links_count: 0,
            status: status.map(|(code, message)| Status { code, message }),
        }
    }
}

prop_compose! {
    fn arb_request()(
        resources in proptest::collection::vec(
            (
                proptest::option::of((arb_kvs(4), 0..2u32)),
                "[a-c]{0,2}",
                proptest::collection::vec(
                    (
                        proptest::option::of(("[a-c]{0,2}", "[0-9.]{0,3}", arb_kvs(2), 0..2u32)),
                        "[a-c]{0,2}",
                        proptest::collection::vec(arb_span(), 0..4),
                    ),
                    0..3,
                ),
            ),
            0..3,
        ),
    ) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: resources
                .into_iter()
                .map(|(resource, schema_url, scopes)| ResourceSpans {
                    resource: resource.map(|(attributes, d)| Resource {
                        attributes,
                        dropped_attributes_count: d,
                        entity_refs: vec![],
                    }),
                    schema_url,
                    scope_spans: scopes
                        .into_iter()
                        .map(|(scope, schema_url, spans)| ScopeSpans {
                            scope: scope.map(|(name, version, attributes, d)| InstrumentationScope {
                                name,
                                version,
                                attributes,
                                dropped_attributes_count: d,
                            }),
                            spans,
                            schema_url,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn in_place_decoder_equals_prost_on_requests(req in arb_request()) {
        same_as_prost(&req.encode_to_vec())?;
    }

    #[test]
    fn in_place_decoder_equals_prost_on_mutated_requests(
        req in arb_request(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = req.encode_to_vec();
        if bytes.is_empty() {
            return Ok(());
        }
        for (i, b) in &flips {
            let n = bytes.len();
            bytes[i % n] ^= b;
        }
        same_as_prost(&bytes)?;
        let n = bytes.len();
        same_as_prost(&bytes[..cut % n])?;
    }

    /// Whole messages repeated, reordered or spliced: prost merges a
    /// singular message field seen twice.
    #[test]
    fn in_place_decoder_equals_prost_on_spliced_requests(
        a in arb_request(),
        b in arb_request(),
        cut in any::<usize>(),
    ) {
        let (a, b) = (a.encode_to_vec(), b.encode_to_vec());
        let mut both = a.clone();
        both.extend_from_slice(&b);
        same_as_prost(&both)?;
        if !a.is_empty() {
            let mut spliced = a[..cut % a.len()].to_vec();
            spliced.extend_from_slice(&b);
            same_as_prost(&spliced)?;
        }
    }

    #[test]
    fn in_place_decoder_equals_prost_on_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..256)
    ) {
        same_as_prost(&bytes)?;
    }
}

/// A length-delimited field.
fn ld(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

fn valid_span(i: u8) -> Span {
    Span {
        trace_id: vec![i; 16],
        span_id: vec![i; 8],
        name: "op".into(),
        kind: 2,
        start_time_unix_nano: NOW.0 as u64 - 1_000,
        end_time_unix_nano: NOW.0 as u64,
        attributes: vec![kv("a", Some(Value::StringValue("x".into())))],
        ..Default::default()
    }
}

#[test]
fn merged_messages_and_out_of_order_fields_equal_prost() {
    // Resource twice (merged: attributes appended, the later service.name
    // wins), scope after its spans, spans before the resource.
    let res1 = Resource {
        attributes: vec![kv("service.name", Some(Value::StringValue("a".into())))],
        ..Default::default()
    };
    let res2 = Resource {
        attributes: vec![
            kv("service.name", Some(Value::StringValue("b".into()))),
            kv("k", Some(Value::IntValue(3))),
        ],
        dropped_attributes_count: 4,
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: "lib".into(),
        ..Default::default()
    };
    let mut scope_spans = ld(2, &valid_span(1).encode_to_vec());
    scope_spans.extend(ld(1, &scope.encode_to_vec()));
    // The same span's status twice: merged, message from the first, code
    // from the second.
    let mut span2 = valid_span(2).encode_to_vec();
    span2.extend(ld(
        15,
        &Status {
            code: 0,
            message: "first".into(),
        }
        .encode_to_vec(),
    ));
    span2.extend(ld(
        15,
        &Status {
            code: 2,
            message: String::new(),
        }
        .encode_to_vec(),
    ));
    scope_spans.extend(ld(2, &span2));
    let mut rs = ld(2, &scope_spans);
    rs.extend(ld(1, &res1.encode_to_vec()));
    rs.extend(ld(1, &res2.encode_to_vec()));
    let body = ld(1, &rs);
    same_as_prost(&body).unwrap();
    let b = decode_traces_at(&body, NOW).unwrap();
    let spans = batch_to_spans(&b.batch).unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].service_name(), "b");
    assert_eq!(spans[0].scope_name.as_deref(), Some("lib"));
    assert_eq!(spans[1].status_message.as_deref(), Some("first"));
    assert_eq!(
        spans[1].status_code,
        meshlens_storage::model::StatusCode::Error
    );
}

/// An attribute value of `depth` nested arrays, the innermost a string.
fn nested_array(depth: usize) -> Vec<u8> {
    let mut any = ld(1, b"x"); // AnyValue.string_value
    for _ in 0..depth {
        let array = ld(1, &any); // ArrayValue.values
        any = ld(5, &array); // AnyValue.array_value
    }
    any
}

#[test]
fn recursion_limit_is_counted_as_prost_counts_it() {
    // Request > ResourceSpans > ScopeSpans > Span > KeyValue > AnyValue >
    // (ArrayValue > AnyValue)*: find where prost stops and check that the
    // in-place decoder stops at the same depth.
    let body_at = |depth: usize| {
        let mut kvb = ld(1, b"k");
        kvb.extend(ld(2, &nested_array(depth)));
        let mut span = valid_span(1).encode_to_vec();
        span.extend(ld(9, &kvb));
        ld(1, &ld(2, &ld(2, &span)))
    };
    let limit = (0..60)
        .find(|&d| ExportTraceServiceRequest::decode(body_at(d).as_slice()).is_err())
        .expect("prost refuses deep nesting");
    assert!(limit > 40, "prost stopped at depth {limit}");
    for d in [limit - 1, limit] {
        same_as_prost(&body_at(d)).unwrap();
    }
    let e = decode_traces_at(&body_at(limit), NOW).unwrap_err();
    assert!(e.to_string().contains("recursion limit"), "{e}");
    // The same through groups in an unknown field of the span.
    let group_at = |depth: usize| {
        let mut g = Vec::new();
        for _ in 0..depth {
            g.push((20 << 3) | 3);
        }
        for _ in 0..depth {
            g.push((20 << 3) | 4);
        }
        let mut span = valid_span(1).encode_to_vec();
        span.extend(g);
        ld(1, &ld(2, &ld(2, &span)))
    };
    let glimit = (90..110)
        .find(|&d| ExportTraceServiceRequest::decode(group_at(d).as_slice()).is_err())
        .expect("prost refuses deep groups");
    for d in [glimit - 1, glimit] {
        same_as_prost(&group_at(d)).unwrap();
    }
}

#[test]
fn errors_say_where() {
    let mut span = valid_span(1).encode_to_vec();
    span.extend(ld(5, b"\xc3\x28"));
    let body = ld(1, &ld(2, &ld(2, &span)));
    let e = decode_traces_at(&body, NOW).unwrap_err().to_string();
    assert!(
        e.contains("resource_spans[0]: scope_spans[0]: spans[0]: field name at byte"),
        "{e}"
    );
    assert!(e.contains("not valid UTF-8"), "{e}");
    let mut span = valid_span(1).encode_to_vec();
    span.extend([(7 << 3), 1]); // start time as a varint
    let body = ld(1, &ld(2, &ld(2, &span)));
    let e = decode_traces_at(&body, NOW).unwrap_err().to_string();
    assert!(
        e.contains("field start_time_unix_nano has wire type varint (0), expected 64-bit (1)"),
        "{e}"
    );
}

/// Runs of attributes read with one ASCII check ([`super::wire`]'s
/// `string_kv_run`): longer than a run, broken by another field or by an
/// attribute of another shape, with a non-ASCII string anywhere, and with a
/// string that is not UTF-8 anywhere (prost's error, naming the attribute).
#[test]
fn attribute_runs_equal_prost() {
    let attr = |i: usize| {
        kv(
            &format!("key.{i}"),
            Some(Value::StringValue(format!("value {i}"))),
        )
    };
    let request = |attrs: Vec<KeyValue>, tail: &[u8]| {
        let mut span = Span {
            attributes: attrs,
            ..valid_span(1)
        }
        .encode_to_vec();
        span.extend_from_slice(tail);
        ld(1, &ld(2, &ld(2, &span)))
    };
    let decoded_tags = |body: &[u8]| {
        let batch = decode_traces_at(body, NOW).expect("decode").batch;
        batch_to_spans(&batch).expect("spans")[0].attributes.len()
    };
    for n in [1, 2, 31, 32, 33, 70] {
        let body = request((0..n).map(attr).collect(), &[]);
        same_as_prost(&body).unwrap();
        assert_eq!(decoded_tags(&body), n);
        // Another attribute after the span's other fields: a second run.
        let tail = kv("late", Some(Value::StringValue("z".into()))).encode_to_vec();
        let body = request((0..n).map(attr).collect(), &ld(9, &tail));
        same_as_prost(&body).unwrap();
        assert_eq!(decoded_tags(&body), n + 1);
        for at in [0, n / 2, n - 1] {
            // Not ASCII, still UTF-8.
            let mut attrs: Vec<KeyValue> = (0..n).map(attr).collect();
            attrs[at] = kv("caf\u{e9}", Some(Value::StringValue("\u{fc}ber".into())));
            let body = request(attrs.clone(), &[]);
            same_as_prost(&body).unwrap();
            assert_eq!(decoded_tags(&body), n);
            // Another shape: an integer.
            attrs[at] = kv("int", Some(Value::IntValue(7)));
            same_as_prost(&request(attrs.clone(), &[])).unwrap();
            // Not UTF-8: the string's bytes replaced by a lone 0xff.
            attrs[at] = kv("bad", Some(Value::StringValue("\u{1}".into())));
            let mut body = request(attrs, &[]);
            let k = body
                .windows(6)
                .position(|w| w == [b'b', b'a', b'd', 0x12, 3, 0x0a])
                .expect("the bad attribute");
            assert_eq!(body[k + 7], 1);
            body[k + 7] = 0xff;
            same_as_prost(&body).unwrap();
            let e = decode_traces_at(&body, NOW).unwrap_err().to_string();
            assert!(e.contains(&format!("spans[0]: attributes[{at}]")), "{e}");
        }
    }
}
