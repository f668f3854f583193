//! A decoder of OTLP `ExportTraceServiceRequest` protobuf that reads the
//! wire format in place and appends each valid span straight to a
//! [`SpanBatchBuilder`]: strings are borrowed from the body, attributes go
//! to an [`AttrList`] (no `String` per key or value, no `BTreeMap`, no
//! [`Span`](meshlens_storage::model::Span) in between).
//!
//! It gives what `prost` decoding followed by [`super::convert_request`]
//! and `spans_to_batch` gives, and accepts exactly what prost accepts:
//! unknown fields of any wire type, groups, repeated singular fields (the
//! last scalar wins; a message field seen twice is merged, as prost merges
//! it), strings checked for UTF-8, the recursion limit of 100 counted the
//! way prost counts it. `tests.rs` checks this against the prost path on
//! generated, mutated and random bodies; so does the `otlp_traces` fuzz
//! target.
//!
//! Rare parts (non-scalar attribute values; event, link and scope
//! attributes, kept as OTLP JSON) are turned into prost's types after they
//! are read, so that their JSON is written by the one function that writes
//! it for every path ([`super::convert::value_json`]).

use super::convert::{
    SpanContext, dropped_counts, event_dropped, event_time, kvs_json, link_ids, link_rare,
    nanos_field, non_empty_str, remote_endpoint, span_extra, value_json,
};
use super::{OtlpSpanBatch, Rejections};
use crate::error::{DecodeError, Problem};
use crate::protowire::{
    Cursor, RECURSION_LIMIT, WT_I32, WT_I64, WT_LEN, WT_VARINT, WireResult, expect_wt,
};
use crate::validate::{
    FieldProblem, Format, MAX_ATTRIBUTES, check_span_ref, parent_id_bytes, span_id_bytes,
    trace_id_bytes,
};
use meshlens_storage::model::{SpanKind, StatusCode, UnixNanos};
use meshlens_storage::span_builder::{
    AttrList, AttrRef, BatchSizeHint, EndpointRef, EventRef, LinkRef, SpanBatchBuilder, SpanRef,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value::Value,
};
use serde_json::Map;
use std::borrow::Cow;

/// Bytes of one span on the wire, roughly, for sizing the builders.
const BYTES_PER_SPAN_GUESS: usize = 600;

#[cold]
fn recursion() -> String {
    "recursion limit reached (over 100 nested messages or groups)".into()
}

/// An `AnyValue` as read; messages seen twice merged as prost merges them.
#[derive(Clone, Debug, Default)]
enum Any<'a> {
    #[default]
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(Vec<Any<'a>>),
    Kvlist(Vec<(&'a str, Any<'a>)>),
    Bytes(&'a [u8]),
    Strindex(i32),
}

impl<'a> Any<'a> {
    /// prost's `Value`, for the JSON of non-scalar values.
    fn to_prost(&self) -> Option<Value> {
        Some(match self {
            Any::Empty => return None,
            Any::Str(s) => Value::StringValue((*s).to_owned()),
            Any::Bool(b) => Value::BoolValue(*b),
            Any::Int(i) => Value::IntValue(*i),
            Any::Double(d) => Value::DoubleValue(*d),
            Any::Array(v) => Value::ArrayValue(ArrayValue {
                values: v
                    .iter()
                    .map(|a| AnyValue {
                        value: a.to_prost(),
                    })
                    .collect(),
            }),
            Any::Kvlist(v) => Value::KvlistValue(KeyValueList {
                values: v.iter().map(|(k, a)| to_prost_kv(k, a)).collect(),
            }),
            Any::Bytes(b) => Value::BytesValue(b.to_vec()),
            Any::Strindex(i) => Value::StringValueStrindex(*i),
        })
    }

    /// The attribute value, as `convert::attr_value` makes it.
    fn to_attr(&self) -> AttrRef<'a> {
        match self {
            Any::Str(s) => AttrRef::Str(s),
            Any::Bool(b) => AttrRef::Bool(*b),
            Any::Int(i) => AttrRef::Int(*i),
            Any::Double(d) => AttrRef::Double(*d),
            Any::Empty => AttrRef::Json(Cow::Borrowed("{}")),
            other => AttrRef::Json(Cow::Owned(match other.to_prost() {
                Some(v) => value_json(&v).to_string(),
                None => "{}".to_owned(),
            })),
        }
    }
}

fn to_prost_kv(k: &str, a: &Any<'_>) -> KeyValue {
    KeyValue {
        key: k.to_owned(),
        value: Some(AnyValue {
            value: a.to_prost(),
        }),
        key_strindex: 0,
    }
}

/// `AnyValue` fields merged into `acc`; `budget` is prost's recursion
/// count for this message's fields.
fn any_merge<'a>(acc: &mut Any<'a>, mut c: Cursor<'a>, budget: u32) -> WireResult<()> {
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("string_value", wt, WT_LEN)?;
                *acc = Any::Str(c.string("string_value")?);
            }
            2 => {
                expect_wt("bool_value", wt, WT_VARINT)?;
                *acc = Any::Bool(c.varint()? != 0);
            }
            3 => {
                expect_wt("int_value", wt, WT_VARINT)?;
                *acc = Any::Int(c.varint()? as i64);
            }
            4 => {
                expect_wt("double_value", wt, WT_I64)?;
                *acc = Any::Double(f64::from_bits(c.fixed64()?));
            }
            5 => {
                expect_wt("array_value", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                let mut m = c.message()?;
                if !matches!(acc, Any::Array(_)) {
                    *acc = Any::Array(Vec::new());
                }
                let Any::Array(values) = acc else {
                    unreachable!()
                };
                while m.more() {
                    let (t, w) = m.key()?;
                    if t == 1 {
                        expect_wt("values", w, WT_LEN)?;
                        if budget == 1 {
                            return Err(recursion());
                        }
                        let mut v = Any::Empty;
                        any_merge(&mut v, m.message()?, budget - 2)?;
                        values.push(v);
                    } else {
                        m.skip(t, w, budget - 1)?;
                    }
                }
            }
            6 => {
                expect_wt("kvlist_value", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                let mut m = c.message()?;
                if !matches!(acc, Any::Kvlist(_)) {
                    *acc = Any::Kvlist(Vec::new());
                }
                let Any::Kvlist(values) = acc else {
                    unreachable!()
                };
                while m.more() {
                    let (t, w) = m.key()?;
                    if t == 1 {
                        expect_wt("values", w, WT_LEN)?;
                        if budget == 1 {
                            return Err(recursion());
                        }
                        values.push(key_value(m.message()?, budget - 2)?);
                    } else {
                        m.skip(t, w, budget - 1)?;
                    }
                }
            }
            7 => {
                expect_wt("bytes_value", wt, WT_LEN)?;
                *acc = Any::Bytes(c.bytes()?);
            }
            8 => {
                expect_wt("string_value_strindex", wt, WT_VARINT)?;
                *acc = Any::Strindex(c.varint()? as i32);
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(())
}

/// A `KeyValue`: key (last wins) and value (merged).
#[inline]
fn key_value<'a>(mut c: Cursor<'a>, budget: u32) -> WireResult<(&'a str, Any<'a>)> {
    let mut key = "";
    let mut value = Any::Empty;
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("key", wt, WT_LEN)?;
                key = c.string("key")?;
            }
            2 => {
                expect_wt("value", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                let m = c.message()?;
                // The common case, a string value alone, without the loop.
                if let Some(s) = lone_string(m) {
                    value = Any::Str(s);
                } else {
                    any_merge(&mut value, m, budget - 1)?;
                }
            }
            3 => {
                expect_wt("key_strindex", wt, WT_VARINT)?;
                c.varint()?;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok((key, value))
}

/// An `AnyValue` holding exactly one short `string_value`, the shape of
/// nearly every attribute; `None` for anything else (read in full then).
#[inline(always)]
fn lone_string(m: Cursor<'_>) -> Option<&str> {
    let b = &m.buf[m.pos..m.end];
    if b.len() >= 2 && b[0] == 0x0a && usize::from(b[1]) == b.len() - 2 && b[1] < 0x80 {
        crate::protowire::utf8(&b[2..])
    } else {
        None
    }
}

/// A `KeyValue` of the shape nearly every attribute has: `key` then a
/// `value` holding only a `string_value`, in that order, each length in one
/// byte (`0a kl key 12 al 0a sl str`). Its key and string, or `None` for
/// any other shape (read in full by [`key_value`] then, errors included).
/// Skipping the field loop and the [`Any`] for these was ~5 % of OTLP
/// ingest's instructions.
#[inline(always)]
fn string_kv<'a>(m: &Cursor<'a>) -> Option<(&'a str, &'a str)> {
    let b = &m.buf[m.pos..m.end];
    let (key_end, str_start) = string_kv_shape(b)?;
    // Every byte of `b` outside the key and the string is one of the
    // tags and lengths `string_kv_shape` checked, all under 0x80.
    crate::protowire::utf8_within(b, 2..key_end, str_start..b.len())
}

/// How many attributes [`string_kv_run`] reads at most at a time.
const RUN: usize = 32;

/// Where a [`string_kv`]-shaped `KeyValue` (`b`, its bytes) has its key and
/// its string: `(key_end, string_start)`, the key starting at 2 and the
/// string running to the end of `b`.
#[inline(always)]
fn string_kv_shape(b: &[u8]) -> Option<(usize, usize)> {
    let (&t, &kl) = (b.first()?, b.get(1)?);
    if t != 0x0a || kl >= 0x80 {
        return None;
    }
    let key_end = 2 + usize::from(kl);
    let rest = b.get(key_end..)?;
    let (&t, &al) = (rest.first()?, rest.get(1)?);
    if t != 0x12 || al >= 0x80 || rest.len() != 2 + usize::from(al) {
        return None;
    }
    let any = &rest[2..];
    let (&t, &sl) = (any.first()?, any.get(1)?);
    if t != 0x0a || sl >= 0x80 || any.len() != 2 + usize::from(sl) {
        return None;
    }
    Some((key_end, key_end + 4))
}

/// A run of consecutive `attributes` fields of [`string_kv`]'s shape, each
/// length in one byte, read from `c` just after the first one's key byte:
/// one ASCII check over the whole run (its tags and lengths are all under
/// 0x80) instead of one per attribute, ~20 of them per Envoy span. Pushes
/// the attributes read and returns how many; 0 when the first is of
/// another shape or not UTF-8, for the caller to read it field by field
/// (errors included). A non-ASCII run is checked attribute by attribute,
/// up to the first that is not UTF-8.
#[inline(always)]
#[allow(unsafe_code)]
fn string_kv_run<'a>(c: &mut Cursor<'a>, attrs: &mut AttrList<'a>, count: &mut usize) -> usize {
    let (buf, end) = (c.buf, c.end);
    // Per attribute: where its KeyValue starts and ends, and where its key
    // ends and its string starts within it.
    let mut found = [(0usize, 0usize, 0usize, 0usize); RUN];
    let mut n = 0;
    let mut at = c.pos;
    while n < RUN {
        let Some(&len) = buf.get(at) else { break };
        let (start, stop) = (at + 1, at + 1 + usize::from(len));
        if len >= 0x80 || stop > end {
            break;
        }
        let Some((key_end, str_start)) = string_kv_shape(&buf[start..stop]) else {
            break;
        };
        found[n] = (start, stop, key_end, str_start);
        n += 1;
        // The next field must be another attribute with a one-byte length.
        if stop + 1 >= end || buf[stop] != 0x4a {
            break;
        }
        at = stop + 1;
    }
    if n == 0 {
        return 0;
    }
    let run = &buf[c.pos..found[n - 1].1];
    let all_ascii = crate::protowire::ascii(run);
    let mut done = 0;
    for &(start, stop, key_end, str_start) in &found[..n] {
        let kv = &buf[start..stop];
        let (k, v) = if all_ascii {
            // SAFETY: `kv` is part of `run`, which is ASCII, hence UTF-8.
            unsafe {
                (
                    std::str::from_utf8_unchecked(&kv[2..key_end]),
                    std::str::from_utf8_unchecked(&kv[str_start..]),
                )
            }
        } else {
            match crate::protowire::utf8_within(kv, 2..key_end, str_start..kv.len()) {
                Some(kv) => kv,
                None => break,
            }
        };
        if *count <= MAX_ATTRIBUTES {
            attrs.push(k, AttrRef::Str(v));
        }
        *count += 1;
        done += 1;
        // At the next field's key byte (the next attribute's, or the
        // field after the run).
        c.pos = stop;
    }
    done
}

/// Repeated `KeyValue`s as prost's types (for JSON), from `field` of `c`.
fn prost_kv(c: &mut Cursor<'_>, budget: u32, out: &mut Vec<KeyValue>) -> WireResult<()> {
    if budget == 0 {
        return Err(recursion());
    }
    let (k, v) = key_value(c.message()?, budget - 1)?;
    out.push(to_prost_kv(k, &v));
    Ok(())
}

/// `Resource`, merged over every occurrence.
#[derive(Default)]
struct RawResource<'a> {
    attributes: AttrList<'a>,
    dropped: u32,
}

fn resource_merge<'a>(r: &mut RawResource<'a>, mut c: Cursor<'a>, budget: u32) -> WireResult<()> {
    let mut i = 0usize;
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("attributes", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                let m = c.message()?;
                // (A value within the budget: key_value's check.)
                if budget >= 2
                    && let Some((k, v)) = string_kv(&m)
                {
                    r.attributes.push(k, AttrRef::Str(v));
                } else {
                    let (k, v) =
                        key_value(m, budget - 1).map_err(|e| format!("attributes[{i}]: {e}"))?;
                    r.attributes.push(k, v.to_attr());
                }
                i += 1;
            }
            2 => {
                expect_wt("dropped_attributes_count", wt, WT_VARINT)?;
                r.dropped = c.varint()? as u32;
            }
            3 => {
                expect_wt("entity_refs", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                entity_ref(c.message()?, budget - 1)?;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(())
}

/// `EntityRef`: checked as prost checks it, not kept (nor is it by the
/// prost path).
fn entity_ref(mut c: Cursor<'_>, budget: u32) -> WireResult<()> {
    while c.more() {
        let (tag, wt) = c.key()?;
        let name = match tag {
            1 => "schema_url",
            2 => "type",
            3 => "id_keys",
            4 => "description_keys",
            _ => {
                c.skip(tag, wt, budget)?;
                continue;
            }
        };
        expect_wt(name, wt, WT_LEN)?;
        c.string(name)?;
    }
    Ok(())
}

/// `InstrumentationScope`, merged over every occurrence.
#[derive(Default)]
struct RawScope<'a> {
    name: &'a str,
    version: &'a str,
    attributes: Vec<KeyValue>,
    dropped: u32,
}

fn scope_merge<'a>(s: &mut RawScope<'a>, mut c: Cursor<'a>, budget: u32) -> WireResult<()> {
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("name", wt, WT_LEN)?;
                s.name = c.string("name")?;
            }
            2 => {
                expect_wt("version", wt, WT_LEN)?;
                s.version = c.string("version")?;
            }
            3 => {
                expect_wt("attributes", wt, WT_LEN)?;
                prost_kv(&mut c, budget, &mut s.attributes)?;
            }
            4 => {
                expect_wt("dropped_attributes_count", wt, WT_VARINT)?;
                s.dropped = c.varint()? as u32;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(())
}

/// `Span.Event` as read.
#[derive(Default)]
struct RawEvent<'a> {
    time: u64,
    name: &'a str,
    attributes: Vec<KeyValue>,
    dropped: u32,
}

fn event<'a>(mut c: Cursor<'a>, budget: u32) -> WireResult<RawEvent<'a>> {
    let mut e = RawEvent::default();
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("time_unix_nano", wt, WT_I64)?;
                e.time = c.fixed64()?;
            }
            2 => {
                expect_wt("name", wt, WT_LEN)?;
                e.name = c.string("name")?;
            }
            3 => {
                expect_wt("attributes", wt, WT_LEN)?;
                prost_kv(&mut c, budget, &mut e.attributes)?;
            }
            4 => {
                expect_wt("dropped_attributes_count", wt, WT_VARINT)?;
                e.dropped = c.varint()? as u32;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(e)
}

/// `Span.Link` as read.
#[derive(Default)]
struct RawLink<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a str,
    attributes: Vec<KeyValue>,
    dropped: u32,
    flags: u32,
}

fn link<'a>(mut c: Cursor<'a>, budget: u32) -> WireResult<RawLink<'a>> {
    let mut l = RawLink::default();
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("trace_id", wt, WT_LEN)?;
                l.trace_id = c.bytes()?;
            }
            2 => {
                expect_wt("span_id", wt, WT_LEN)?;
                l.span_id = c.bytes()?;
            }
            3 => {
                expect_wt("trace_state", wt, WT_LEN)?;
                l.trace_state = c.string("trace_state")?;
            }
            4 => {
                expect_wt("attributes", wt, WT_LEN)?;
                prost_kv(&mut c, budget, &mut l.attributes)?;
            }
            5 => {
                expect_wt("dropped_attributes_count", wt, WT_VARINT)?;
                l.dropped = c.varint()? as u32;
            }
            6 => {
                expect_wt("flags", wt, WT_I32)?;
                l.flags = c.fixed32()?;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(l)
}

/// `Span` as read. Attributes go straight to `attrs` (at most
/// [`MAX_ATTRIBUTES`] + 1 kept; `attr_count` counts them all).
#[derive(Default)]
struct RawSpan<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a str,
    parent_span_id: &'a [u8],
    flags: u32,
    name: &'a str,
    kind: i32,
    start: u64,
    end: u64,
    attr_count: usize,
    dropped_attributes: u32,
    events: Vec<RawEvent<'a>>,
    dropped_events: u32,
    links: Vec<RawLink<'a>>,
    dropped_links: u32,
    status_message: &'a str,
    status_code: i32,
}

fn span<'a>(
    s: &mut RawSpan<'a>,
    attrs: &mut AttrList<'a>,
    mut c: Cursor<'a>,
    budget: u32,
) -> WireResult<()> {
    while c.more() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                expect_wt("trace_id", wt, WT_LEN)?;
                s.trace_id = c.bytes()?;
            }
            2 => {
                expect_wt("span_id", wt, WT_LEN)?;
                s.span_id = c.bytes()?;
            }
            3 => {
                expect_wt("trace_state", wt, WT_LEN)?;
                s.trace_state = c.string("trace_state")?;
            }
            4 => {
                expect_wt("parent_span_id", wt, WT_LEN)?;
                s.parent_span_id = c.bytes()?;
            }
            5 => {
                expect_wt("name", wt, WT_LEN)?;
                s.name = c.string("name")?;
            }
            6 => {
                expect_wt("kind", wt, WT_VARINT)?;
                s.kind = c.varint()? as i32;
            }
            7 => {
                expect_wt("start_time_unix_nano", wt, WT_I64)?;
                s.start = c.fixed64()?;
            }
            8 => {
                expect_wt("end_time_unix_nano", wt, WT_I64)?;
                s.end = c.fixed64()?;
            }
            9 => {
                expect_wt("attributes", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                if budget >= 2 && string_kv_run(&mut c, attrs, &mut s.attr_count) > 0 {
                    continue;
                }
                let i = s.attr_count;
                let m = c.message()?;
                if budget >= 2
                    && let Some((k, v)) = string_kv(&m)
                {
                    if i <= MAX_ATTRIBUTES {
                        attrs.push(k, AttrRef::Str(v));
                    }
                } else {
                    let (k, v) =
                        key_value(m, budget - 1).map_err(|e| format!("attributes[{i}]: {e}"))?;
                    if i <= MAX_ATTRIBUTES {
                        attrs.push(k, v.to_attr());
                    }
                }
                s.attr_count += 1;
            }
            10 => {
                expect_wt("dropped_attributes_count", wt, WT_VARINT)?;
                s.dropped_attributes = c.varint()? as u32;
            }
            11 => {
                expect_wt("events", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                let i = s.events.len();
                let e = event(c.message()?, budget - 1).map_err(|e| format!("events[{i}]: {e}"))?;
                s.events.push(e);
            }
            12 => {
                expect_wt("dropped_events_count", wt, WT_VARINT)?;
                s.dropped_events = c.varint()? as u32;
            }
            13 => {
                expect_wt("links", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                let i = s.links.len();
                let l = link(c.message()?, budget - 1).map_err(|e| format!("links[{i}]: {e}"))?;
                s.links.push(l);
            }
            14 => {
                expect_wt("dropped_links_count", wt, WT_VARINT)?;
                s.dropped_links = c.varint()? as u32;
            }
            15 => {
                expect_wt("status", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                let mut m = c.message()?;
                while m.more() {
                    let (t, w) = m.key()?;
                    match t {
                        2 => {
                            expect_wt("status.message", w, WT_LEN)?;
                            s.status_message = m.string("status.message")?;
                        }
                        3 => {
                            expect_wt("status.code", w, WT_VARINT)?;
                            s.status_code = m.varint()? as i32;
                        }
                        _ => m.skip(t, w, budget - 1)?,
                    }
                }
            }
            16 => {
                expect_wt("flags", wt, WT_I32)?;
                s.flags = c.fixed32()?;
            }
            _ => c.skip(tag, wt, budget)?,
        }
    }
    Ok(())
}

/// Reusable space for one request's spans.
#[derive(Default)]
struct Scratch<'a> {
    attrs: AttrList<'a>,
    events: Vec<EventRef<'a>>,
    links: Vec<LinkRef<'a>>,
    spans: Vec<Cursor<'a>>,
    scopes: Vec<Cursor<'a>>,
}

/// What the decoder carries through a request.
struct Out {
    builder: SpanBatchBuilder,
    rejected: Rejections,
    now: UnixNanos,
}

/// Validates and converts one span as `convert::convert_span` does, then
/// appends it. The outer error is the builder's, the inner one the span's.
fn finish_span<'a>(
    raw: &RawSpan<'a>,
    scratch: &mut Scratch<'a>,
    ctx: &SpanContext<'_>,
    resource: &AttrList<'_>,
    out: &mut Out,
) -> WireResult<Result<(), FieldProblem>> {
    let span = match prepare(raw, scratch, ctx, resource, out.now) {
        Ok(s) => s,
        Err(fp) => return Ok(Err(fp)),
    };
    out.builder
        .append(&span)
        .map_err(|e| format!("building the batch failed: {e}"))?;
    Ok(Ok(()))
}

/// The span as the builder takes it, checked. (Inlined into its one
/// caller: returned by value, the span was copied out and in again.)
#[inline(always)]
fn prepare<'a: 's, 's>(
    raw: &'s RawSpan<'a>,
    scratch: &'s mut Scratch<'a>,
    ctx: &'s SpanContext<'s>,
    resource: &'s AttrList<'s>,
    now: UnixNanos,
) -> Result<SpanRef<'s>, FieldProblem> {
    let field = |name: &'static str| move |p: Problem| (Some(name.to_string()), p);
    let (trace_id, _) = trace_id_bytes(raw.trace_id, false).map_err(field("traceId"))?;
    let span_id = span_id_bytes("span id", raw.span_id).map_err(field("spanId"))?;
    let parent = parent_id_bytes(raw.parent_span_id).map_err(field("parentSpanId"))?;
    let start = nanos_field(raw.start, "startTimeUnixNano")?;
    let end = nanos_field(raw.end, "endTimeUnixNano")?;
    let kind = u8::try_from(raw.kind)
        .map(SpanKind::from_u8)
        .unwrap_or_default();

    let extra = dropped_counts(
        raw.dropped_attributes,
        raw.dropped_events,
        raw.dropped_links,
    );
    scratch.events.clear();
    let mut event_extra = Vec::new();
    for (i, e) in raw.events.iter().enumerate() {
        let time = event_time(i, e.time)?;
        event_extra.extend(event_dropped(i, e.dropped));
        scratch.events.push(EventRef {
            time,
            name: Cow::Borrowed(e.name),
            attributes_json: (!e.attributes.is_empty())
                .then(|| Cow::Owned(kvs_json(&e.attributes).to_string())),
        });
    }
    scratch.links.clear();
    let mut link_extra = Vec::new();
    for (i, l) in raw.links.iter().enumerate() {
        let (tid, sid) = link_ids(i, l.trace_id, l.span_id)?;
        link_extra.extend(link_rare(i, l.dropped, l.flags));
        scratch.links.push(LinkRef {
            trace_id: tid.0,
            span_id: sid.0,
            trace_state: non_empty_str(l.trace_state),
            attributes_json: (!l.attributes.is_empty())
                .then(|| Cow::Owned(kvs_json(&l.attributes).to_string())),
        });
    }
    let extra = span_extra(extra, event_extra, link_extra, ctx);
    scratch.attrs.sort_dedup();
    let remote = if matches!(kind, SpanKind::Client | SpanKind::Producer) {
        remote_endpoint(&scratch.attrs)
    } else {
        EndpointRef::default()
    };
    let span = SpanRef {
        trace_id: trace_id.0,
        trace_id_64: false,
        span_id: span_id.0,
        parent_span_id: parent.map(|p| p.0),
        name: Cow::Borrowed(raw.name),
        kind,
        start: Some(start),
        duration_nanos: Some(end - start),
        local: EndpointRef {
            service_name: ctx.service,
            ..Default::default()
        },
        remote,
        shared: false,
        debug: false,
        status_code: u8::try_from(raw.status_code)
            .map(StatusCode::from_u8)
            .unwrap_or_default(),
        status_message: non_empty_str(raw.status_message),
        attributes: &scratch.attrs,
        resource,
        events: &scratch.events,
        links: &scratch.links,
        trace_state: non_empty_str(raw.trace_state),
        flags: (raw.flags != 0).then_some(raw.flags),
        scope_name: ctx.scope_name,
        scope_version: ctx.scope_version,
        extra_json: extra.map(Cow::Owned),
    };
    check_span_ref(&span, raw.attr_count, now, Format::Otlp)?;
    Ok(span)
}

fn scope_spans<'a>(
    c: Cursor<'a>,
    (ri, si): (usize, usize),
    resource: &AttrList<'_>,
    parent: &SpanContext<'_>,
    scratch: &mut Scratch<'a>,
    out: &mut Out,
    budget: u32,
) -> WireResult<()> {
    // Spans may come before the scope on the wire: find both first.
    let mut scope = RawScope::default();
    let mut schema_url = "";
    scratch.spans.clear();
    let mut m = c;
    while m.more() {
        let (tag, wt) = m.key()?;
        match tag {
            1 => {
                expect_wt("scope", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                scope_merge(&mut scope, m.message()?, budget - 1)
                    .map_err(|e| format!("scope: {e}"))?;
            }
            2 => {
                expect_wt("spans", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                let sc = m.message()?;
                scratch.spans.push(sc);
            }
            3 => {
                expect_wt("schema_url", wt, WT_LEN)?;
                schema_url = m.string("schema_url")?;
            }
            _ => m.skip(tag, wt, budget)?,
        }
    }
    let mut scope_extra = Map::new();
    if !scope.attributes.is_empty() {
        scope_extra.insert("attributes".into(), kvs_json(&scope.attributes));
    }
    if scope.dropped > 0 {
        scope_extra.insert("droppedAttributesCount".into(), scope.dropped.into());
    }
    if !schema_url.is_empty() {
        scope_extra.insert("schemaUrl".into(), schema_url.into());
    }
    let ctx = SpanContext {
        resource_extra: parent.resource_extra,
        scope_extra: &scope_extra,
        service: parent.service,
        scope_name: non_empty_str(scope.name),
        scope_version: non_empty_str(scope.version),
    };
    let spans = std::mem::take(&mut scratch.spans);
    let mut raw = RawSpan::default();
    for (i, sc) in spans.iter().enumerate() {
        raw.clear();
        scratch.attrs.clear();
        span(&mut raw, &mut scratch.attrs, *sc, budget - 1)
            .map_err(|e| format!("spans[{i}]: {e}"))?;
        if let Err(fp) = finish_span(&raw, scratch, &ctx, resource, out)? {
            out.rejected.add(
                || format!("resourceSpans[{ri}].scopeSpans[{si}].spans[{i}]"),
                fp,
            );
        }
    }
    scratch.spans = spans;
    Ok(())
}

impl RawSpan<'_> {
    /// Back to the default, field by field (keeping the vectors' space):
    /// assigning a new `RawSpan` built it aside, copied it in and dropped
    /// the old one, ~1 % of OTLP ingest's instructions. The pattern names
    /// every field, so a new one cannot be left out.
    #[inline]
    fn clear(&mut self) {
        let RawSpan {
            trace_id,
            span_id,
            trace_state,
            parent_span_id,
            flags,
            name,
            kind,
            start,
            end,
            attr_count,
            dropped_attributes,
            events,
            dropped_events,
            links,
            dropped_links,
            status_message,
            status_code,
        } = self;
        (*trace_id, *span_id, *parent_span_id) = (&[], &[], &[]);
        (*trace_state, *name, *status_message) = ("", "", "");
        (*flags, *dropped_attributes, *dropped_events, *dropped_links) = (0, 0, 0, 0);
        (*kind, *status_code, *attr_count) = (0, 0, 0);
        (*start, *end) = (0, 0);
        events.clear();
        links.clear();
    }
}

fn resource_spans<'a>(
    c: Cursor<'a>,
    ri: usize,
    scratch: &mut Scratch<'a>,
    out: &mut Out,
    budget: u32,
) -> WireResult<()> {
    // The resource may come after its spans on the wire: find it first.
    let mut resource = RawResource::default();
    let mut seen_resource = false;
    let mut schema_url = "";
    let mut scopes = std::mem::take(&mut scratch.scopes);
    scopes.clear();
    let mut m = c;
    while m.more() {
        let (tag, wt) = m.key()?;
        match tag {
            1 => {
                expect_wt("resource", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                seen_resource = true;
                resource_merge(&mut resource, m.message()?, budget - 1)
                    .map_err(|e| format!("resource: {e}"))?;
            }
            2 => {
                expect_wt("scope_spans", wt, WT_LEN)?;
                if budget == 0 {
                    return Err(recursion());
                }
                let sc = m.message()?;
                scopes.push(sc);
            }
            3 => {
                expect_wt("schema_url", wt, WT_LEN)?;
                schema_url = m.string("schema_url")?;
            }
            _ => m.skip(tag, wt, budget)?,
        }
    }
    let mut resource_extra = Map::new();
    if seen_resource && resource.dropped > 0 {
        resource_extra.insert("droppedAttributesCount".into(), resource.dropped.into());
    }
    if !schema_url.is_empty() {
        resource_extra.insert("schemaUrl".into(), schema_url.into());
    }
    let attrs = &mut resource.attributes;
    attrs.sort_dedup();
    let empty = Map::new();
    let ctx = SpanContext {
        resource_extra: &resource_extra,
        scope_extra: &empty,
        service: attrs.get_str("service.name"),
        scope_name: None,
        scope_version: None,
    };
    for (si, sc) in scopes.iter().enumerate() {
        scope_spans(*sc, (ri, si), attrs, &ctx, scratch, out, budget - 1)
            .map_err(|e| format!("scope_spans[{si}]: {e}"))?;
    }
    scratch.scopes = scopes;
    Ok(())
}

/// Decodes an OTLP protobuf `ExportTraceServiceRequest` into a batch of
/// its valid spans, validated against the current time.
pub fn decode_traces(body: &[u8]) -> Result<OtlpSpanBatch, DecodeError> {
    decode_traces_at(body, UnixNanos::now())
}

/// [`decode_traces`] against a given time (tests).
pub fn decode_traces_at(body: &[u8], now: UnixNanos) -> Result<OtlpSpanBatch, DecodeError> {
    let mut out = Out {
        builder: SpanBatchBuilder::new(BatchSizeHint::from_body(body.len(), BYTES_PER_SPAN_GUESS)),
        rejected: Rejections::default(),
        now,
    };
    let mut scratch = Scratch::default();
    let mut c = Cursor::new(body);
    let mut ri = 0usize;
    let walk = (|| -> WireResult<()> {
        while c.more() {
            let (tag, wt) = c.key()?;
            if tag == 1 {
                expect_wt("resource_spans", wt, WT_LEN)?;
                let m = c.message()?;
                resource_spans(m, ri, &mut scratch, &mut out, RECURSION_LIMIT - 1)
                    .map_err(|e| format!("resource_spans[{ri}]: {e}"))?;
                ri += 1;
            } else {
                c.skip(tag, wt, RECURSION_LIMIT)?;
            }
        }
        Ok(())
    })();
    walk.map_err(|detail| DecodeError::Protobuf {
        message_name: "ExportTraceServiceRequest",
        detail,
    })?;
    let batch = out
        .builder
        .finish()
        .map_err(|e| DecodeError::Batch(e.to_string()))?;
    Ok(OtlpSpanBatch {
        batch,
        rejected: out.rejected,
    })
}

/// Runs this decoder and the prost path (prost, `convert_request`,
/// `spans_to_batch`) on `body` against the same clock: `Err` says how they
/// disagree (different batches or rejections, or one refusing the body).
/// The property tests and the `otlp_proto` fuzz target call this.
#[doc(hidden)]
pub fn compare_with_prost(body: &[u8], now: UnixNanos) -> Result<(), String> {
    use prost::Message as _;
    let fast = decode_traces_at(body, now);
    let reference =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body)
            .map(|r| super::convert::convert_request_at(r, now));
    match (fast, reference) {
        (Ok(f), Ok(r)) => {
            if f.rejected != r.rejected {
                return Err(format!(
                    "rejections differ: in place {:?}, prost {:?}",
                    f.rejected, r.rejected
                ));
            }
            let want = meshlens_storage::schema::spans_to_batch(&r.spans)
                .map_err(|e| format!("prost path: {e}"))?;
            if f.batch != want {
                let got = meshlens_storage::schema::batch_to_spans(&f.batch)
                    .map_err(|e| format!("reading the batch: {e}"))?;
                return Err(format!(
                    "batches differ:\nin place: {got:?}\nprost:    {:?}",
                    r.spans
                ));
            }
            Ok(())
        }
        (Err(_), Err(_)) => Ok(()),
        (Ok(f), Err(e)) => Err(format!(
            "in place accepted ({} spans) what prost refused: {e}",
            f.batch.num_rows()
        )),
        (Err(e), Ok(r)) => Err(format!(
            "in place refused what prost accepted ({} spans): {e}",
            r.spans.len()
        )),
    }
}

#[cfg(test)]
mod string_kv_tests {
    use super::*;

    fn kv(bytes: &[u8]) -> Option<(&str, &str)> {
        string_kv(&Cursor::new(bytes))
    }

    #[test]
    fn the_common_shape_is_read_and_every_other_is_left_to_key_value() {
        // key "ab", value { string_value: "xyz" }
        let ok = [0x0a, 2, b'a', b'b', 0x12, 5, 0x0a, 3, b'x', b'y', b'z'];
        assert_eq!(kv(&ok), Some(("ab", "xyz")));
        assert_eq!(
            kv(&[0x0a, 0, 0x12, 2, 0x0a, 0]),
            Some(("", "")),
            "empty key and string"
        );
        // Not ASCII but UTF-8: each part checked on its own.
        let utf = [0x0a, 2, 0xc3, 0xa9, 0x12, 4, 0x0a, 2, 0xc3, 0xbc];
        assert_eq!(kv(&utf), Some(("\u{e9}", "\u{fc}")));
        let not: &[&[u8]] = &[
            &[],
            &[0x0a],
            &ok[..10], // cut short
            &[
                0x0a, 2, b'a', b'b', 0x12, 5, 0x0a, 3, b'x', b'y', b'z', 0x18, 1,
            ], // key_strindex after
            &[0x12, 5, 0x0a, 3, b'x', b'y', b'z', 0x0a, 2, b'a', b'b'], // value first
            &[0x0a, 2, b'a', b'b', 0x12, 0], // empty AnyValue
            &[0x0a, 2, b'a', b'b', 0x12, 2, 0x18, 1], // bool value
            &[0x0a, 2, b'a', 0xff, 0x12, 2, 0x0a, 0], // key not UTF-8
            &[0x0a, 1, b'a', 0x12, 3, 0x0a, 1, 0xc3], // value not UTF-8
            &[0x0a, 1, b'a', 0x12, 5, 0x0a, 1, b'x', 0x0a, 0], // string twice
            &[0x0a, 1, b'a', 0x0a, 1, b'b', 0x12, 2, 0x0a, 0], // key twice
        ];
        for b in not {
            assert_eq!(kv(b), None, "{b:02x?}");
        }
        // Lengths of two varint bytes go the long way.
        let mut long = vec![0x0a, 1, b'k', 0x12, 0x83, 0x01, 0x0a, 0x80, 0x01];
        long.extend(std::iter::repeat_n(b'v', 128));
        assert_eq!(kv(&long), None);
    }
}
