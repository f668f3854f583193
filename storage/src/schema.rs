//! The `spans` table: its Arrow schema and the conversions between
//! [`Span`]s and record batches.
//!
//! Frequently used string tags (Envoy/Istio) get columns of their own so that
//! they compress well and can be filtered without touching the map; they are
//! moved out of the attribute map on write and put back on read, so a span
//! reads back exactly as it was sent.

use crate::model::{
    AttrValue, Attributes, Endpoint, Event, Link, Span, SpanId, SpanKind, StatusCode, TraceId,
    UnixNanos,
};
use crate::span_builder::{AttrRef, BatchSizeHint, SpanBatchBuilder, SpanParts};
use arrow::array::{
    Array, AsArray, BooleanArray, FixedSizeBinaryArray, Int32Array, Int64Array, MapArray,
    StringArray, StructArray, UInt8Array, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use std::sync::{Arc, LazyLock};

/// String tags stored in columns of their own: (tag key, column name).
pub const PROMOTED_TAGS: &[(&str, &str)] = &[
    ("component", "tag_component"),
    ("http.method", "tag_http_method"),
    ("http.status_code", "tag_http_status_code"),
    ("http.url", "tag_http_url"),
    ("http.protocol", "tag_http_protocol"),
    ("response_flags", "tag_response_flags"),
    ("upstream_cluster", "tag_upstream_cluster"),
    ("downstream_cluster", "tag_downstream_cluster"),
    ("node_id", "tag_node_id"),
    ("user_agent", "tag_user_agent"),
    ("request_size", "tag_request_size"),
    ("response_size", "tag_response_size"),
    ("peer.address", "tag_peer_address"),
    ("istio.canonical_service", "tag_istio_canonical_service"),
    ("istio.canonical_revision", "tag_istio_canonical_revision"),
    ("istio.namespace", "tag_istio_namespace"),
    ("guid:x-request-id", "tag_request_id"),
];

/// Promoted tags whose values are nearly unique per span (or per trace):
/// plain strings, not dictionaries, in Arrow and in Parquet.
pub(crate) const UNIQUE_TAGS: &[&str] = &["tag_request_id", "tag_http_url"];

/// The resource attribute naming a span's service. A row whose resource has
/// no other string attribute, and whose `service_name` is its value, stores
/// a null `resource_attributes` map: that is the resource of every span
/// Envoy's (and Istio's) OpenTelemetry tracer sends, and the map would
/// repeat the service on every row (~10 % of OTLP ingest's CPU time for
/// Envoy-shaped spans: docs/BENCHMARKS.md). Readers put the attribute back
/// ([`resource_service_only`]); the map was never null before, so older
/// files and WAL records read as they did.
pub const RESOURCE_SERVICE_KEY: &str = "service.name";

pub const TRACE_ID: &str = "trace_id";
pub const START: &str = "start_time_unix_nano";
pub const SERVICE: &str = "service_name";

fn dict() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

fn map_type() -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", DataType::Utf8, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

pub(crate) fn event_fields() -> Fields {
    Fields::from(vec![
        Field::new("time_unix_nano", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("attributes", DataType::Utf8, true),
    ])
}

pub(crate) fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), true),
        Field::new("span_id", DataType::FixedSizeBinary(8), true),
        Field::new("trace_state", DataType::Utf8, true),
        Field::new("attributes", DataType::Utf8, true),
    ])
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new(TRACE_ID, DataType::FixedSizeBinary(16), false),
        Field::new("trace_id_64", DataType::Boolean, false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
        Field::new("name", dict(), true),
        Field::new("kind", DataType::UInt8, false),
        Field::new(START, DataType::Int64, true),
        Field::new("duration_nano", DataType::Int64, true),
        Field::new(SERVICE, dict(), true),
        Field::new("local_ipv4", dict(), true),
        Field::new("local_ipv6", dict(), true),
        Field::new("local_port", DataType::Int32, true),
        Field::new("remote_service_name", dict(), true),
        Field::new("remote_ipv4", dict(), true),
        Field::new("remote_ipv6", dict(), true),
        Field::new("remote_port", DataType::Int32, true),
        Field::new("shared", DataType::Boolean, false),
        Field::new("debug", DataType::Boolean, false),
        Field::new("status_code", DataType::UInt8, false),
        Field::new("status_message", DataType::Utf8, true),
    ];
    for (_, col) in PROMOTED_TAGS {
        let ty = if UNIQUE_TAGS.contains(col) {
            DataType::Utf8
        } else {
            dict()
        };
        fields.push(Field::new(*col, ty, true));
    }
    fields.extend([
        Field::new("attributes", map_type(), true),
        Field::new("attributes_typed", map_type(), true),
        Field::new("resource_attributes", map_type(), true),
        Field::new("resource_attributes_typed", map_type(), true),
        Field::new(
            "events",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(event_fields()),
                true,
            ))),
            true,
        ),
        Field::new(
            "links",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(link_fields()),
                true,
            ))),
            true,
        ),
        Field::new("trace_state", DataType::Utf8, true),
        Field::new("flags", DataType::UInt32, true),
        Field::new("scope_name", dict(), true),
        Field::new("scope_version", dict(), true),
        Field::new("extra", DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
});

/// The schema of the `spans` table.
pub fn spans_schema() -> SchemaRef {
    SCHEMA.clone()
}

fn decode_typed(s: &str) -> AttrValue {
    decode_typed_ref(s).to_owned_value()
}

/// [`decode_typed`], borrowing.
pub(crate) fn decode_typed_ref(s: &str) -> AttrRef<'_> {
    let (tag, rest) = s.split_at(s.len().min(2));
    match tag {
        "b:" => AttrRef::Bool(rest == "true"),
        "i:" => rest.parse().map(AttrRef::Int).unwrap_or(AttrRef::Str(rest)),
        "d:" => rest
            .parse::<u64>()
            .map(|b| AttrRef::Double(f64::from_bits(b)))
            .unwrap_or(AttrRef::Str(rest)),
        "j:" => AttrRef::Json(std::borrow::Cow::Borrowed(rest)),
        "s:" => AttrRef::Str(rest),
        _ => AttrRef::Str(s),
    }
}

/// The position of a promoted tag in [`PROMOTED_TAGS`] (its column among
/// the tag columns). Comparing `&str`s checks their lengths first, and the
/// keys' lengths mostly differ: cheaper than hashing the key, and (by
/// callgrind) than a table of candidates by length compared a word at a
/// time, or than this scan comparing by word loads (eleventh session).
#[inline]
pub fn promoted_index(key: &str) -> Option<usize> {
    PROMOTED_TAGS.iter().position(|(k, _)| *k == key)
}

/// Converts spans into one record batch of the `spans` schema.
pub fn spans_to_batch(spans: &[Span]) -> Result<RecordBatch, ArrowError> {
    let mut b = SpanBatchBuilder::new(BatchSizeHint {
        rows: spans.len(),
        ..Default::default()
    });
    let mut parts = SpanParts::default();
    for s in spans {
        b.append(&parts.of(s))?;
    }
    b.finish()
}

/// Reads a batch column by name as strings, whatever its string encoding.
fn strings(batch: &RecordBatch, name: &str) -> Result<Option<StringArray>, ArrowError> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let cast = arrow::compute::cast(col, &DataType::Utf8)?;
    Ok(Some(cast.as_string::<i32>().clone()))
}

fn opt_str(a: &Option<StringArray>, i: usize) -> Option<String> {
    a.as_ref()
        .and_then(|a| (!a.is_null(i)).then(|| a.value(i).to_string()))
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Option<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
}

fn read_map(map: Option<&MapArray>, i: usize, typed: bool, out: &mut Attributes) {
    let Some(map) = map else { return };
    if map.is_null(i) {
        return;
    }
    let entries: StructArray = map.value(i);
    let keys = entries.column(0).as_string::<i32>();
    let values = entries.column(1).as_string::<i32>();
    for j in 0..entries.len() {
        let v = values.value(j);
        let v = if typed {
            decode_typed(v)
        } else {
            AttrValue::Str(v.to_string())
        };
        out.insert(keys.value(j).to_string(), v);
    }
}

/// Whether row `i`'s resource is `service.name` = its service alone (its
/// `resource_attributes` map is null; see [`RESOURCE_SERVICE_KEY`]).
pub fn resource_service_only(res: Option<&MapArray>, i: usize) -> bool {
    res.is_some_and(|m| m.is_null(i))
}

fn ids16(a: &FixedSizeBinaryArray, i: usize) -> [u8; 16] {
    a.value(i).try_into().unwrap_or_default()
}
fn ids8(a: &FixedSizeBinaryArray, i: usize) -> [u8; 8] {
    a.value(i).try_into().unwrap_or_default()
}

/// Converts a batch of the `spans` schema (or any projection of it that
/// keeps the id columns) back into spans.
pub fn batch_to_spans(batch: &RecordBatch) -> Result<Vec<Span>, ArrowError> {
    let missing = |c: &str| ArrowError::SchemaError(format!("spans batch lacks column {c}"));
    let trace_id = col::<FixedSizeBinaryArray>(batch, TRACE_ID).ok_or_else(|| missing(TRACE_ID))?;
    let span_id =
        col::<FixedSizeBinaryArray>(batch, "span_id").ok_or_else(|| missing("span_id"))?;
    let trace_id_64 = col::<BooleanArray>(batch, "trace_id_64");
    let parent = col::<FixedSizeBinaryArray>(batch, "parent_span_id");
    let kind = col::<UInt8Array>(batch, "kind");
    let start = col::<Int64Array>(batch, START);
    let duration = col::<Int64Array>(batch, "duration_nano");
    let local_port = col::<Int32Array>(batch, "local_port");
    let remote_port = col::<Int32Array>(batch, "remote_port");
    let shared = col::<BooleanArray>(batch, "shared");
    let debug = col::<BooleanArray>(batch, "debug");
    let status_code = col::<UInt8Array>(batch, "status_code");
    let flags = col::<UInt32Array>(batch, "flags");
    let name = strings(batch, "name")?;
    let service = strings(batch, SERVICE)?;
    let local_ipv4 = strings(batch, "local_ipv4")?;
    let local_ipv6 = strings(batch, "local_ipv6")?;
    let remote_service = strings(batch, "remote_service_name")?;
    let remote_ipv4 = strings(batch, "remote_ipv4")?;
    let remote_ipv6 = strings(batch, "remote_ipv6")?;
    let status_message = strings(batch, "status_message")?;
    let trace_state = strings(batch, "trace_state")?;
    let scope_name = strings(batch, "scope_name")?;
    let scope_version = strings(batch, "scope_version")?;
    let extra = strings(batch, "extra")?;
    let tags = PROMOTED_TAGS
        .iter()
        .map(|(k, c)| Ok((*k, strings(batch, c)?)))
        .collect::<Result<Vec<_>, ArrowError>>()?;
    let attrs = col::<MapArray>(batch, "attributes");
    let attrs_typed = col::<MapArray>(batch, "attributes_typed");
    let res = col::<MapArray>(batch, "resource_attributes");
    let res_typed = col::<MapArray>(batch, "resource_attributes_typed");
    let events = batch.column_by_name("events").map(|c| c.as_list::<i32>());
    let links = batch.column_by_name("links").map(|c| c.as_list::<i32>());

    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut attributes = Attributes::new();
        for (k, a) in &tags {
            if let Some(v) = opt_str(a, i) {
                attributes.insert((*k).to_string(), AttrValue::Str(v));
            }
        }
        read_map(attrs, i, false, &mut attributes);
        read_map(attrs_typed, i, true, &mut attributes);
        let mut resource = Attributes::new();
        read_map(res, i, false, &mut resource);
        read_map(res_typed, i, true, &mut resource);
        if resource_service_only(res, i)
            && let Some(v) = opt_str(&service, i)
        {
            resource.insert(RESOURCE_SERVICE_KEY.into(), AttrValue::Str(v));
        }

        let mut span_events = Vec::new();
        if let Some(list) = events.filter(|l| !l.is_null(i)) {
            let items = list.value(i);
            let items = items.as_struct();
            let t = items
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>();
            let n = items.column(1).as_string::<i32>();
            let a = items.column(2).as_string::<i32>();
            for j in 0..items.len() {
                span_events.push(Event {
                    time: UnixNanos(t.value(j)),
                    name: n.value(j).to_string(),
                    attributes_json: (!a.is_null(j)).then(|| a.value(j).to_string()),
                });
            }
        }
        let mut span_links = Vec::new();
        if let Some(list) = links.filter(|l| !l.is_null(i)) {
            let items = list.value(i);
            let items = items.as_struct();
            let t = items.column(0).as_fixed_size_binary();
            let s = items.column(1).as_fixed_size_binary();
            let ts = items.column(2).as_string::<i32>();
            let a = items.column(3).as_string::<i32>();
            for j in 0..items.len() {
                span_links.push(Link {
                    trace_id: TraceId(ids16(t, j)),
                    span_id: SpanId(ids8(s, j)),
                    trace_state: (!ts.is_null(j)).then(|| ts.value(j).to_string()),
                    attributes_json: (!a.is_null(j)).then(|| a.value(j).to_string()),
                });
            }
        }

        out.push(Span {
            trace_id: TraceId(ids16(trace_id, i)),
            trace_id_64: trace_id_64.is_some_and(|a| a.value(i)),
            span_id: SpanId(ids8(span_id, i)),
            parent_span_id: parent.and_then(|p| (!p.is_null(i)).then(|| SpanId(ids8(p, i)))),
            name: opt_str(&name, i).unwrap_or_default(),
            kind: SpanKind::from_u8(kind.map_or(0, |k| k.value(i))),
            start: start.and_then(|a| (!a.is_null(i)).then(|| UnixNanos(a.value(i)))),
            duration_nanos: duration.and_then(|a| (!a.is_null(i)).then(|| a.value(i))),
            local: Endpoint {
                service_name: opt_str(&service, i),
                ipv4: opt_str(&local_ipv4, i),
                ipv6: opt_str(&local_ipv6, i),
                port: local_port.and_then(|a| (!a.is_null(i)).then(|| a.value(i))),
            },
            remote: Endpoint {
                service_name: opt_str(&remote_service, i),
                ipv4: opt_str(&remote_ipv4, i),
                ipv6: opt_str(&remote_ipv6, i),
                port: remote_port.and_then(|a| (!a.is_null(i)).then(|| a.value(i))),
            },
            shared: shared.is_some_and(|a| a.value(i)),
            debug: debug.is_some_and(|a| a.value(i)),
            status_code: StatusCode::from_u8(status_code.map_or(0, |a| a.value(i))),
            status_message: opt_str(&status_message, i),
            attributes,
            resource,
            events: span_events,
            links: span_links,
            trace_state: opt_str(&trace_state, i),
            flags: flags.and_then(|a| (!a.is_null(i)).then(|| a.value(i))),
            scope_name: opt_str(&scope_name, i),
            scope_version: opt_str(&scope_version, i),
            extra_json: opt_str(&extra, i),
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_span(i: u64) -> Span {
        let mut attributes = Attributes::new();
        attributes.insert("http.method".into(), AttrValue::Str("GET".into()));
        attributes.insert("custom".into(), AttrValue::Str(format!("v{i}")));
        attributes.insert("retries".into(), AttrValue::Int(3));
        attributes.insert("ratio".into(), AttrValue::Double(0.1));
        attributes.insert("ok".into(), AttrValue::Bool(true));
        let mut resource = Attributes::new();
        resource.insert("service.name".into(), AttrValue::Str("svc".into()));
        Span {
            trace_id: TraceId::from_u64s(0, i + 1),
            trace_id_64: true,
            span_id: SpanId((i + 7).to_be_bytes()),
            parent_span_id: i.is_multiple_of(2).then(|| SpanId(9u64.to_be_bytes())),
            name: "get /".into(),
            kind: SpanKind::Server,
            start: Some(UnixNanos::from_micros(1_700_000_000_000_000 + i as i64)),
            duration_nanos: Some(1500),
            local: Endpoint {
                service_name: Some("frontend".into()),
                ipv4: Some("10.0.0.1".into()),
                ipv6: None,
                port: Some(8080),
            },
            remote: Endpoint::default(),
            shared: true,
            debug: false,
            status_code: StatusCode::Error,
            status_message: Some("boom".into()),
            attributes,
            resource,
            events: vec![Event {
                time: UnixNanos(5),
                name: "wr".into(),
                attributes_json: None,
            }],
            links: vec![Link {
                trace_id: TraceId::from_u64s(1, 2),
                span_id: SpanId([1; 8]),
                trace_state: Some("a=b".into()),
                attributes_json: None,
            }],
            trace_state: None,
            flags: Some(1),
            scope_name: Some("lib".into()),
            scope_version: None,
            extra_json: None,
        }
    }

    /// A resource of `service.name` = the span's service alone is a null
    /// string map and reads back (whole spans and one attribute) as sent;
    /// any other resource keeps its map.
    #[test]
    fn a_resource_of_the_service_alone_is_a_null_map() {
        use crate::span_view::{SpanColumns, SpanView};
        let res = |kv: &[(&str, AttrValue)]| -> Attributes {
            kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
        };
        let s = |v: &str| AttrValue::Str(v.into());
        let cases: Vec<(Option<&str>, Attributes, bool)> = vec![
            // (span's service, resource, null map?)
            (Some("cart"), res(&[("service.name", s("cart"))]), true),
            // Typed attributes live in the other map.
            (
                Some("cart"),
                res(&[("service.name", s("cart")), ("pid", AttrValue::Int(7))]),
                true,
            ),
            (Some(""), res(&[("service.name", s(""))]), true),
            (Some("cart"), res(&[("service.name", s("carts"))]), false),
            (None, res(&[("service.name", s("cart"))]), false),
            (
                Some("cart"),
                res(&[("host.name", s("h1")), ("service.name", s("cart"))]),
                false,
            ),
            (
                Some("cart"),
                res(&[("service.name", AttrValue::Int(1))]),
                false,
            ),
            (Some("cart"), res(&[("service.names", s("cart"))]), false),
            (Some("cart"), Attributes::new(), false),
        ];
        let spans: Vec<Span> = cases
            .iter()
            .enumerate()
            .map(|(i, (svc, resource, _))| {
                let mut sp = sample_span(i as u64);
                sp.local.service_name = svc.map(str::to_owned);
                sp.resource = resource.clone();
                sp
            })
            .collect();
        let batch = spans_to_batch(&spans).unwrap();
        let map = batch
            .column_by_name("resource_attributes")
            .unwrap()
            .as_map();
        for (i, (_, _, null)) in cases.iter().enumerate() {
            assert_eq!(map.is_null(i), *null, "case {i}");
        }
        assert_eq!(batch_to_spans(&batch).unwrap(), spans);
        let cols = SpanColumns::new(&batch).unwrap();
        for (sp, row) in spans.iter().zip(cols.rows()) {
            for k in ["service.name", "pid", "host.name", "service.names", "x"] {
                assert_eq!(row.resource_attr(k), sp.resource_attr(k), "{k}");
            }
        }
    }

    #[test]
    fn promoted_index_is_the_column() {
        for (i, (k, _)) in PROMOTED_TAGS.iter().enumerate() {
            assert_eq!(promoted_index(k), Some(i));
        }
        assert_eq!(promoted_index("http.methods"), None);
        assert_eq!(promoted_index(""), None);
        assert_eq!(promoted_index(&"x".repeat(40)), None);
        // A key one byte off anywhere, or one byte shorter or longer, is
        // not promoted.
        for (k, _) in PROMOTED_TAGS {
            for at in 0..k.len() {
                let mut b = k.as_bytes().to_vec();
                b[at] ^= 0x01;
                let off = String::from_utf8(b).expect("ASCII");
                assert_eq!(promoted_index(&off), None, "{off}");
            }
            assert_eq!(promoted_index(&k[1..]), None);
            assert_eq!(promoted_index(&format!("{k}x")), None);
        }
    }

    #[test]
    fn batch_round_trip_keeps_every_field() {
        let spans: Vec<Span> = (0..5).map(sample_span).chain([Span::default()]).collect();
        let batch = spans_to_batch(&spans).expect("batch");
        assert_eq!(batch.num_rows(), 6);
        let back = batch_to_spans(&batch).expect("spans");
        assert_eq!(back, spans);
    }
}
