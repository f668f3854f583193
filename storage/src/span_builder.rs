//! Building `spans` record batches one span at a time, from borrowed parts.
//!
//! Receivers decode a request straight into a [`SpanBatchBuilder`]: each
//! span is described by a [`SpanRef`] whose strings borrow from the request
//! body (no owned [`Span`] in between, no attribute `BTreeMap`s).
//! [`crate::schema::spans_to_batch`] is the same builder fed from [`Span`]s,
//! so there is one definition of how a span becomes a row.
//!
//! Attributes keep the [`Span`] model's semantics: an [`AttrList`] is
//! sorted by key and the last of duplicate keys wins, exactly as a
//! `BTreeMap` built from the sender's list would be.

use crate::model::{AttrValue, Attributes, Endpoint, Span, SpanKind, StatusCode};
use crate::schema::{
    PROMOTED_TAGS, RESOURCE_SERVICE_KEY, UNIQUE_TAGS, event_fields, link_fields, promoted_index,
    spans_schema,
};
use arrow::array::builder::NullBufferBuilder;
use arrow::array::{
    Array, ArrayRef, BooleanBuilder, DictionaryArray, FixedSizeBinaryBuilder, Int32Array,
    Int32Builder, Int64Builder, ListBuilder, MapBuilder, MapFieldNames, StringArray, StringBuilder,
    StructBuilder, UInt8Builder, UInt32Builder,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::Int32Type;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use hashbrown::HashTable;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::Arc;

/// An attribute value borrowed from wherever it was decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrRef<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// OTLP JSON of an AnyValue that is not a scalar (see [`AttrValue::Json`]).
    Json(Cow<'a, str>),
}

impl<'a> AttrRef<'a> {
    pub fn from_value(v: &'a AttrValue) -> Self {
        match v {
            AttrValue::Str(s) => AttrRef::Str(s),
            AttrValue::Bool(b) => AttrRef::Bool(*b),
            AttrValue::Int(i) => AttrRef::Int(*i),
            AttrValue::Double(d) => AttrRef::Double(*d),
            AttrValue::Json(j) => AttrRef::Json(Cow::Borrowed(j)),
        }
    }
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            AttrRef::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The value as a Zipkin tag string ([`AttrValue::to_tag_string`]).
    pub fn to_tag_string(&self) -> String {
        match self {
            AttrRef::Str(s) => (*s).to_owned(),
            AttrRef::Bool(b) => b.to_string(),
            AttrRef::Int(i) => i.to_string(),
            AttrRef::Double(d) => d.to_string(),
            AttrRef::Json(j) => j.to_string(),
        }
    }
    pub fn to_owned_value(&self) -> AttrValue {
        match self {
            AttrRef::Str(s) => AttrValue::Str((*s).to_owned()),
            AttrRef::Bool(b) => AttrValue::Bool(*b),
            AttrRef::Int(i) => AttrValue::Int(*i),
            AttrRef::Double(d) => AttrValue::Double(*d),
            AttrRef::Json(j) => AttrValue::Json(j.clone().into_owned()),
        }
    }
}

/// Attributes sorted by key, the last of duplicate keys kept: the
/// `BTreeMap` of the [`Span`] model without a map. Fill with
/// [`AttrList::push`], then call [`AttrList::sort_dedup`] before use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttrList<'a> {
    items: Vec<(&'a str, AttrRef<'a>)>,
    /// How many were pushed (before duplicates were dropped).
    pushed: usize,
}

impl<'a> AttrList<'a> {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_capacity(n: usize) -> Self {
        AttrList {
            items: Vec::with_capacity(n),
            pushed: 0,
        }
    }
    /// The map's entries, already sorted.
    pub fn from_attributes(attrs: &'a Attributes) -> Self {
        AttrList {
            items: attrs
                .iter()
                .map(|(k, v)| (k.as_str(), AttrRef::from_value(v)))
                .collect(),
            pushed: attrs.len(),
        }
    }
    #[inline]
    pub fn clear(&mut self) {
        self.items.clear();
        self.pushed = 0;
    }
    // Inlined into the decoders (another crate): a call per attribute
    // was ~2 % of OTLP ingest's instructions.
    #[inline]
    pub fn push(&mut self, key: &'a str, value: AttrRef<'a>) {
        self.items.push((key, value));
        self.pushed += 1;
    }
    /// Sorts by key (stable) and keeps the last value of each key.
    pub fn sort_dedup(&mut self) {
        if self.items.is_sorted_by(|a, b| key_lt(a.0, b.0)) {
            return;
        }
        self.items.sort_by(|a, b| a.0.cmp(b.0));
        let mut w = 0;
        for r in 0..self.items.len() {
            if w > 0 && same_bytes(self.items[w - 1].0.as_bytes(), self.items[r].0.as_bytes()) {
                self.items.swap(w - 1, r);
            } else {
                self.items.swap(w, r);
                w += 1;
            }
        }
        self.items.truncate(w);
    }
    /// Entries after [`AttrList::sort_dedup`].
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// How many entries the sender sent, duplicates included.
    pub fn pushed(&self) -> usize {
        self.pushed
    }
    pub fn iter(&self) -> impl Iterator<Item = &(&'a str, AttrRef<'a>)> {
        self.items.iter()
    }
    /// The value of `key` (binary search: the list must be sorted).
    pub fn get(&self, key: &str) -> Option<&AttrRef<'a>> {
        self.items
            .binary_search_by(|(k, _)| (*k).cmp(key))
            .ok()
            .map(|i| &self.items[i].1)
    }
    pub fn get_str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(AttrRef::as_str)
    }
    pub fn to_attributes(&self) -> Attributes {
        self.items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_owned_value()))
            .collect()
    }
}

/// The first 8 bytes of `s` as a big-endian number, zero-padded: two
/// strings whose prefixes differ compare as their prefixes do (a string
/// ending early is a prefix of the other, hence the smaller).
#[inline(always)]
fn prefix8(s: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    if s.len() >= 8 {
        x.copy_from_slice(&s[..8]);
    } else {
        for (d, b) in x.iter_mut().zip(s) {
            *d = *b;
        }
    }
    u64::from_be_bytes(x)
}

/// `a < b` without a `memcmp` call when the first 8 bytes decide (keys
/// like `http.method` and `http.protocol` mostly differ there).
#[inline(always)]
fn key_lt(a: &str, b: &str) -> bool {
    let (pa, pb) = (prefix8(a.as_bytes()), prefix8(b.as_bytes()));
    if pa != pb { pa < pb } else { a < b }
}

#[inline(always)]
fn load8(s: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(x)
}

/// `a == b` without a `memcmp` call up to 32 bytes: two overlapping 4- or
/// 8-byte loads up to 16 bytes, four over 16 (keys, dictionary values and
/// promoted tag names are mostly that short).
#[inline(always)]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0..4 => a == b,
        4..8 => load4(a, 0) == load4(b, 0) && load4(a, n - 4) == load4(b, n - 4),
        8..=16 => load8(a, 0) == load8(b, 0) && load8(a, n - 8) == load8(b, n - 8),
        17..=32 => {
            load8(a, 0) == load8(b, 0)
                && load8(a, 8) == load8(b, 8)
                && load8(a, n - 16) == load8(b, n - 16)
                && load8(a, n - 8) == load8(b, n - 8)
        }
        _ => a == b,
    }
}

#[inline(always)]
fn load4(s: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&s[at..at + 4]);
    u32::from_le_bytes(x)
}

/// A Zipkin endpoint, borrowed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointRef<'a> {
    pub service_name: Option<&'a str>,
    pub ipv4: Option<Cow<'a, str>>,
    pub ipv6: Option<Cow<'a, str>>,
    pub port: Option<i32>,
}

impl<'a> EndpointRef<'a> {
    pub fn of(e: &'a Endpoint) -> Self {
        EndpointRef {
            service_name: e.service_name.as_deref(),
            ipv4: e.ipv4.as_deref().map(Cow::Borrowed),
            ipv6: e.ipv6.as_deref().map(Cow::Borrowed),
            port: e.port,
        }
    }
    pub fn to_endpoint(&self) -> Endpoint {
        Endpoint {
            service_name: self.service_name.map(str::to_owned),
            ipv4: self.ipv4.as_deref().map(str::to_owned),
            ipv6: self.ipv6.as_deref().map(str::to_owned),
            port: self.port,
        }
    }
}

/// A span event (Zipkin annotation), borrowed.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRef<'a> {
    pub time: i64,
    pub name: Cow<'a, str>,
    pub attributes_json: Option<Cow<'a, str>>,
}

/// A span link, borrowed.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkRef<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub trace_state: Option<&'a str>,
    pub attributes_json: Option<Cow<'a, str>>,
}

/// One span as the builder takes it: the fields of [`Span`], borrowed.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRef<'a> {
    pub trace_id: [u8; 16],
    pub trace_id_64: bool,
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: Cow<'a, str>,
    pub kind: SpanKind,
    pub start: Option<i64>,
    pub duration_nanos: Option<i64>,
    pub local: EndpointRef<'a>,
    pub remote: EndpointRef<'a>,
    pub shared: bool,
    pub debug: bool,
    pub status_code: StatusCode,
    pub status_message: Option<&'a str>,
    pub attributes: &'a AttrList<'a>,
    pub resource: &'a AttrList<'a>,
    pub events: &'a [EventRef<'a>],
    pub links: &'a [LinkRef<'a>],
    pub trace_state: Option<&'a str>,
    pub flags: Option<u32>,
    pub scope_name: Option<&'a str>,
    pub scope_version: Option<&'a str>,
    pub extra_json: Option<Cow<'a, str>>,
}

impl SpanRef<'_> {
    /// The owned [`Span`] (for callers that need one; the receivers append
    /// [`SpanRef`]s to a builder instead).
    pub fn to_span(&self) -> Span {
        Span {
            trace_id: crate::model::TraceId(self.trace_id),
            trace_id_64: self.trace_id_64,
            span_id: crate::model::SpanId(self.span_id),
            parent_span_id: self.parent_span_id.map(crate::model::SpanId),
            name: self.name.to_string(),
            kind: self.kind,
            start: self.start.map(crate::model::UnixNanos),
            duration_nanos: self.duration_nanos,
            local: self.local.to_endpoint(),
            remote: self.remote.to_endpoint(),
            shared: self.shared,
            debug: self.debug,
            status_code: self.status_code,
            status_message: self.status_message.map(str::to_owned),
            attributes: self.attributes.to_attributes(),
            resource: self.resource.to_attributes(),
            events: self
                .events
                .iter()
                .map(|e| crate::model::Event {
                    time: crate::model::UnixNanos(e.time),
                    name: e.name.to_string(),
                    attributes_json: e.attributes_json.as_deref().map(str::to_owned),
                })
                .collect(),
            links: self
                .links
                .iter()
                .map(|l| crate::model::Link {
                    trace_id: crate::model::TraceId(l.trace_id),
                    span_id: crate::model::SpanId(l.span_id),
                    trace_state: l.trace_state.map(str::to_owned),
                    attributes_json: l.attributes_json.as_deref().map(str::to_owned),
                })
                .collect(),
            trace_state: self.trace_state.map(str::to_owned),
            flags: self.flags,
            scope_name: self.scope_name.map(str::to_owned),
            scope_version: self.scope_version.map(str::to_owned),
            extra_json: self.extra_json.as_deref().map(str::to_owned),
        }
    }
}

/// The borrowed parts of a [`Span`] that need storage of their own.
#[derive(Default)]
pub struct SpanParts<'a> {
    attributes: AttrList<'a>,
    resource: AttrList<'a>,
    events: Vec<EventRef<'a>>,
    links: Vec<LinkRef<'a>>,
}

impl<'a> SpanParts<'a> {
    /// Fills `self` from `s` and gives the span as a [`SpanRef`].
    pub fn of(&mut self, s: &'a Span) -> SpanRef<'_> {
        self.attributes = AttrList::from_attributes(&s.attributes);
        self.resource = AttrList::from_attributes(&s.resource);
        self.events.clear();
        self.events.extend(s.events.iter().map(|e| EventRef {
            time: e.time.0,
            name: Cow::Borrowed(&e.name),
            attributes_json: e.attributes_json.as_deref().map(Cow::Borrowed),
        }));
        self.links.clear();
        self.links.extend(s.links.iter().map(|l| LinkRef {
            trace_id: l.trace_id.0,
            span_id: l.span_id.0,
            trace_state: l.trace_state.as_deref(),
            attributes_json: l.attributes_json.as_deref().map(Cow::Borrowed),
        }));
        SpanRef {
            trace_id: s.trace_id.0,
            trace_id_64: s.trace_id_64,
            span_id: s.span_id.0,
            parent_span_id: s.parent_span_id.map(|p| p.0),
            name: Cow::Borrowed(&s.name),
            kind: s.kind,
            start: s.start.map(|t| t.0),
            duration_nanos: s.duration_nanos,
            local: EndpointRef::of(&s.local),
            remote: EndpointRef::of(&s.remote),
            shared: s.shared,
            debug: s.debug,
            status_code: s.status_code,
            status_message: s.status_message.as_deref(),
            attributes: &self.attributes,
            resource: &self.resource,
            events: &self.events,
            links: &self.links,
            trace_state: s.trace_state.as_deref(),
            flags: s.flags,
            scope_name: s.scope_name.as_deref(),
            scope_version: s.scope_version.as_deref(),
            extra_json: s.extra_json.as_deref().map(Cow::Borrowed),
        }
    }
}

/// A dictionary-encoded string column, built as arrow's
/// `StringDictionaryBuilder` builds it (values in first-seen order, a null
/// row has key 0 and a null bit) with one shortcut: a value equal to the
/// previous row's takes its key without hashing. In span batches most
/// rows repeat their predecessor's component, protocol, flags, method,
/// scope; this was about half of the dictionary appends' time.
struct Dict {
    keys: Vec<i32>,
    nulls: NullBufferBuilder,
    offsets: Vec<i32>,
    bytes: Vec<u8>,
    table: HashTable<i32>,
    hasher: foldhash::fast::FixedState,
    last: Option<i32>,
}

fn dict_value<'v>(offsets: &[i32], bytes: &'v [u8], k: i32) -> &'v [u8] {
    let k = k as usize;
    &bytes[offsets[k] as usize..offsets[k + 1] as usize]
}

impl Dict {
    fn with_capacity(rows: usize, values: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(values + 1);
        offsets.push(0);
        Dict {
            keys: Vec::with_capacity(rows),
            nulls: NullBufferBuilder::new(rows),
            offsets,
            bytes: Vec::with_capacity(bytes),
            table: HashTable::with_capacity(values),
            hasher: foldhash::fast::FixedState::default(),
            last: None,
        }
    }

    #[inline(always)]
    fn append_value(&mut self, v: &str) {
        let b = v.as_bytes();
        if let Some(k) = self.last
            && same_bytes(dict_value(&self.offsets, &self.bytes, k), b)
        {
            self.keys.push(k);
            self.nulls.append_non_null();
            return;
        }
        self.append_hashed(b);
    }

    /// [`Dict::append_value`] of a value unlike the previous row's.
    #[inline(never)]
    fn append_hashed(&mut self, b: &[u8]) {
        let h = self.hasher.hash_one(b);
        let (offsets, bytes) = (&mut self.offsets, &mut self.bytes);
        let hasher = &self.hasher;
        let k = match self.table.entry(
            h,
            |&k| same_bytes(dict_value(offsets, bytes, k), b),
            |&k| hasher.hash_one(dict_value(offsets, bytes, k)),
        ) {
            hashbrown::hash_table::Entry::Occupied(e) => *e.get(),
            hashbrown::hash_table::Entry::Vacant(e) => {
                let k = (offsets.len() - 1) as i32;
                bytes.extend_from_slice(b);
                offsets.push(bytes.len() as i32);
                e.insert(k);
                k
            }
        };
        self.last = Some(k);
        self.keys.push(k);
        self.nulls.append_non_null();
    }

    #[inline(always)]
    fn append_option(&mut self, v: Option<&str>) {
        match v {
            Some(v) => self.append_value(v),
            None => {
                self.keys.push(0);
                self.nulls.append_null();
            }
        }
    }

    fn finish(&mut self) -> Result<DictionaryArray<Int32Type>, ArrowError> {
        let values = StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(std::mem::take(&mut self.offsets))),
            Buffer::from_vec(std::mem::take(&mut self.bytes)),
            None,
        )?;
        let keys = Int32Array::new(
            ScalarBuffer::from(std::mem::take(&mut self.keys)),
            self.nulls.finish(),
        );
        // SAFETY: every key was handed out by `append_hashed` as the index
        // of a value it had pushed, or is 0 on a null row.
        #[allow(unsafe_code)]
        unsafe {
            dictionary_unchecked(keys, Arc::new(values))
        }
    }
}

/// `DictionaryArray::try_new` without its pass over every key in release
/// builds (debug builds, and so the tests, still check them). Building the
/// batches' dictionaries and the flush's merged ones, that pass was ~1.5 %
/// of OTLP ingest's instructions.
///
/// # Safety
/// Every non-null key of `keys` is an index into `values`.
#[allow(unsafe_code)]
pub(crate) unsafe fn dictionary_unchecked(
    keys: Int32Array,
    values: ArrayRef,
) -> Result<DictionaryArray<Int32Type>, ArrowError> {
    if cfg!(debug_assertions) {
        return DictionaryArray::try_new(keys, values);
    }
    // SAFETY: the caller's promise.
    Ok(unsafe { DictionaryArray::new_unchecked(keys, values) })
}

enum TagBuilder {
    Dict(Dict),
    Plain(StringBuilder),
}

impl TagBuilder {
    fn append(&mut self, v: Option<&str>) {
        match self {
            TagBuilder::Dict(b) => b.append_option(v),
            TagBuilder::Plain(b) => b.append_option(v),
        }
    }
    fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        match self {
            TagBuilder::Dict(b) => Ok(Arc::new(b.finish()?)),
            TagBuilder::Plain(b) => Ok(Arc::new(b.finish())),
        }
    }
}

type StrMap = MapBuilder<StringBuilder, StringBuilder>;

fn new_map_builder(rows: usize, entries: usize, bytes: usize) -> StrMap {
    MapBuilder::with_capacity(
        Some(MapFieldNames {
            entry: "entries".into(),
            key: "keys".into(),
            value: "values".into(),
        }),
        StringBuilder::with_capacity(entries, bytes),
        StringBuilder::with_capacity(entries, bytes),
        rows,
    )
}

/// Typed attribute values are stored as text with a one-letter type prefix
/// (read back by `schema::decode_typed`).
fn write_typed(b: &mut StringBuilder, v: &AttrRef<'_>) {
    // Writing into a StringBuilder cannot fail.
    let _ = match v {
        AttrRef::Str(s) => write!(b, "s:{s}"),
        AttrRef::Bool(x) => write!(b, "b:{x}"),
        AttrRef::Int(i) => write!(b, "i:{i}"),
        AttrRef::Double(d) => write!(b, "d:{}", d.to_bits()),
        AttrRef::Json(j) => write!(b, "j:{j}"),
    };
    b.append_value("");
}

/// Rough sizes for a builder, so its buffers seldom grow while appending.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchSizeHint {
    pub rows: usize,
    /// Bytes of attribute keys and values expected per map column.
    pub attr_bytes: usize,
    pub attr_entries: usize,
}

impl BatchSizeHint {
    /// A guess from a request body of `body_len` bytes with spans of about
    /// `bytes_per_span` bytes each on the wire.
    pub fn from_body(body_len: usize, bytes_per_span: usize) -> Self {
        let rows = body_len / bytes_per_span.max(1) + 1;
        BatchSizeHint {
            rows,
            attr_bytes: body_len / 4,
            attr_entries: rows * 4,
        }
    }
}

/// Appends spans to the Arrow builders of the `spans` schema.
pub struct SpanBatchBuilder {
    rows: usize,
    trace_id: FixedSizeBinaryBuilder,
    trace_id_64: BooleanBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent: FixedSizeBinaryBuilder,
    name: Dict,
    kind: UInt8Builder,
    start: Int64Builder,
    duration: Int64Builder,
    service: Dict,
    local_ipv4: Dict,
    local_ipv6: Dict,
    local_port: Int32Builder,
    remote_service: Dict,
    remote_ipv4: Dict,
    remote_ipv6: Dict,
    remote_port: Int32Builder,
    shared: BooleanBuilder,
    debug: BooleanBuilder,
    status_code: UInt8Builder,
    status_message: StringBuilder,
    tags: Vec<TagBuilder>,
    attrs: StrMap,
    attrs_typed: StrMap,
    res: StrMap,
    res_typed: StrMap,
    events: ListBuilder<StructBuilder>,
    links: ListBuilder<StructBuilder>,
    trace_state: StringBuilder,
    flags: UInt32Builder,
    scope_name: Dict,
    scope_version: Dict,
    extra: StringBuilder,
    /// Per span: the promoted tags' values, by column.
    promoted: Vec<Option<usize>>,
}

impl Default for SpanBatchBuilder {
    fn default() -> Self {
        Self::new(BatchSizeHint::default())
    }
}

impl SpanBatchBuilder {
    pub fn new(hint: BatchSizeHint) -> Self {
        let n = hint.rows;
        // Hash tables sized for half the rows: growing them from 64
        // entries, in the columns with many distinct values per request
        // (addresses, sizes, node ids), was ~1 % of OTLP ingest's
        // instructions.
        let dict = || Dict::with_capacity(n, (n / 2).max(64), 1024);
        SpanBatchBuilder {
            rows: 0,
            trace_id: FixedSizeBinaryBuilder::with_capacity(n, 16),
            trace_id_64: BooleanBuilder::with_capacity(n),
            span_id: FixedSizeBinaryBuilder::with_capacity(n, 8),
            parent: FixedSizeBinaryBuilder::with_capacity(n, 8),
            name: dict(),
            kind: UInt8Builder::with_capacity(n),
            start: Int64Builder::with_capacity(n),
            duration: Int64Builder::with_capacity(n),
            service: dict(),
            local_ipv4: dict(),
            local_ipv6: dict(),
            local_port: Int32Builder::with_capacity(n),
            remote_service: dict(),
            remote_ipv4: dict(),
            remote_ipv6: dict(),
            remote_port: Int32Builder::with_capacity(n),
            shared: BooleanBuilder::with_capacity(n),
            debug: BooleanBuilder::with_capacity(n),
            status_code: UInt8Builder::with_capacity(n),
            status_message: StringBuilder::with_capacity(n, 0),
            tags: PROMOTED_TAGS
                .iter()
                .map(|(_, col)| {
                    if UNIQUE_TAGS.contains(col) {
                        TagBuilder::Plain(StringBuilder::with_capacity(n, n * 36))
                    } else {
                        TagBuilder::Dict(dict())
                    }
                })
                .collect(),
            attrs: new_map_builder(n, hint.attr_entries, hint.attr_bytes),
            attrs_typed: new_map_builder(n, 0, 0),
            res: new_map_builder(n, 0, 0),
            res_typed: new_map_builder(n, 0, 0),
            events: ListBuilder::new(StructBuilder::from_fields(event_fields(), 0)),
            links: ListBuilder::new(StructBuilder::from_fields(link_fields(), 0)),
            trace_state: StringBuilder::new(),
            flags: UInt32Builder::with_capacity(n),
            scope_name: dict(),
            scope_version: dict(),
            extra: StringBuilder::new(),
            promoted: vec![None; PROMOTED_TAGS.len()],
        }
    }

    /// Rows appended so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one span. Its attribute lists must be sorted
    /// ([`AttrList::sort_dedup`]).
    pub fn append(&mut self, s: &SpanRef<'_>) -> Result<(), ArrowError> {
        self.trace_id.append_value(s.trace_id)?;
        self.trace_id_64.append_value(s.trace_id_64);
        self.span_id.append_value(s.span_id)?;
        match s.parent_span_id {
            Some(p) => self.parent.append_value(p)?,
            None => self.parent.append_null(),
        }
        self.name.append_value(&s.name);
        self.kind.append_value(s.kind as u8);
        self.start.append_option(s.start);
        self.duration.append_option(s.duration_nanos);
        self.service.append_option(s.local.service_name);
        self.local_ipv4.append_option(s.local.ipv4.as_deref());
        self.local_ipv6.append_option(s.local.ipv6.as_deref());
        self.local_port.append_option(s.local.port);
        self.remote_service.append_option(s.remote.service_name);
        self.remote_ipv4.append_option(s.remote.ipv4.as_deref());
        self.remote_ipv6.append_option(s.remote.ipv6.as_deref());
        self.remote_port.append_option(s.remote.port);
        self.shared.append_value(s.shared);
        self.debug.append_value(s.debug);
        self.status_code.append_value(s.status_code as u8);
        self.status_message.append_option(s.status_message);

        // Span attributes: promoted string tags to their columns, other
        // strings to the plain map, the rest to the typed map.
        self.promoted.fill(None);
        for (i, (k, v)) in s.attributes.items.iter().enumerate() {
            match v {
                AttrRef::Str(val) => {
                    if let Some(c) = promoted_index(k) {
                        self.promoted[c] = Some(i);
                        continue;
                    }
                    self.attrs.keys().append_value(k);
                    self.attrs.values().append_value(val);
                }
                other => {
                    self.attrs_typed.keys().append_value(k);
                    write_typed(self.attrs_typed.values(), other);
                }
            }
        }
        for (slot, b) in self.promoted.iter().zip(self.tags.iter_mut()) {
            b.append(slot.and_then(|i| s.attributes.items[i].1.as_str()));
        }
        self.attrs.append(true)?;
        self.attrs_typed.append(true)?;
        // The resource. One whose only string attribute is `service.name`,
        // equal to the span's service (the resource of Envoy's and Istio's
        // OpenTelemetry tracer), is a null string map: read back as that
        // attribute (`schema::RESOURCE_SERVICE_KEY`).
        let service_only = service_alone(&s.resource.items, s.local.service_name);
        for (k, v) in s.resource.items.iter() {
            match v {
                AttrRef::Str(val) => {
                    if !service_only {
                        self.res.keys().append_value(k);
                        self.res.values().append_value(val);
                    }
                }
                other => {
                    self.res_typed.keys().append_value(k);
                    write_typed(self.res_typed.values(), other);
                }
            }
        }
        self.res.append(!service_only)?;
        self.res_typed.append(true)?;

        let missing = |c: &str| ArrowError::SchemaError(format!("spans builder lacks {c}"));
        for e in s.events {
            let sb = self.events.values();
            sb.field_builder::<Int64Builder>(0)
                .ok_or_else(|| missing("events.time"))?
                .append_value(e.time);
            sb.field_builder::<StringBuilder>(1)
                .ok_or_else(|| missing("events.name"))?
                .append_value(&e.name);
            sb.field_builder::<StringBuilder>(2)
                .ok_or_else(|| missing("events.attributes"))?
                .append_option(e.attributes_json.as_deref());
            sb.append(true);
        }
        self.events.append(true);
        for l in s.links {
            let sb = self.links.values();
            sb.field_builder::<FixedSizeBinaryBuilder>(0)
                .ok_or_else(|| missing("links.trace_id"))?
                .append_value(l.trace_id)?;
            sb.field_builder::<FixedSizeBinaryBuilder>(1)
                .ok_or_else(|| missing("links.span_id"))?
                .append_value(l.span_id)?;
            sb.field_builder::<StringBuilder>(2)
                .ok_or_else(|| missing("links.trace_state"))?
                .append_option(l.trace_state);
            sb.field_builder::<StringBuilder>(3)
                .ok_or_else(|| missing("links.attributes"))?
                .append_option(l.attributes_json.as_deref());
            sb.append(true);
        }
        self.links.append(true);
        self.trace_state.append_option(s.trace_state);
        self.flags.append_option(s.flags);
        self.scope_name.append_option(s.scope_name);
        self.scope_version.append_option(s.scope_version);
        self.extra.append_option(s.extra_json.as_deref());
        self.rows += 1;
        Ok(())
    }

    /// The batch, its buffers shrunk to what they hold (the buffer's
    /// memory is counted against its budget).
    pub fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.trace_id_64.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent.finish()),
            Arc::new(self.name.finish()?),
            Arc::new(self.kind.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.service.finish()?),
            Arc::new(self.local_ipv4.finish()?),
            Arc::new(self.local_ipv6.finish()?),
            Arc::new(self.local_port.finish()),
            Arc::new(self.remote_service.finish()?),
            Arc::new(self.remote_ipv4.finish()?),
            Arc::new(self.remote_ipv6.finish()?),
            Arc::new(self.remote_port.finish()),
            Arc::new(self.shared.finish()),
            Arc::new(self.debug.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
        ];
        for b in self.tags.iter_mut() {
            columns.push(b.finish()?);
        }
        columns.extend([
            Arc::new(self.attrs.finish()) as ArrayRef,
            Arc::new(self.attrs_typed.finish()),
            Arc::new(self.res.finish()),
            Arc::new(self.res_typed.finish()),
            Arc::new(self.events.finish()),
            Arc::new(self.links.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.flags.finish()),
            Arc::new(self.scope_name.finish()?),
            Arc::new(self.scope_version.finish()?),
            Arc::new(self.extra.finish()),
        ]);
        let schema = spans_schema();
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(mut c, f)| {
                if c.data_type() != f.data_type() {
                    // Builders that name list/map children differently.
                    c = arrow::compute::cast(&c, f.data_type())?;
                }
                c.shrink_to_fit();
                Ok(c)
            })
            .collect::<Result<Vec<_>, ArrowError>>()?;
        RecordBatch::try_new(schema, columns)
    }
}

/// Whether a resource's string attributes are exactly `service.name` =
/// `service` (then its row's `resource_attributes` map is null; readers
/// ask `schema::resource_service_only`).
fn service_alone(items: &[(&str, AttrRef<'_>)], service: Option<&str>) -> bool {
    let Some(service) = service else {
        return false;
    };
    let mut strings = items.iter().filter(|(_, v)| matches!(v, AttrRef::Str(_)));
    matches!(
        (strings.next(), strings.next()),
        (Some((RESOURCE_SERVICE_KEY, AttrRef::Str(v))), None) if *v == service
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn short_compares_agree_with_std(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), any::<u8>()], 0..40),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), any::<u8>()], 0..40),
            cut in 0usize..40,
        ) {
            // Also a pair sharing a prefix: b starts like a.
            let shared: Vec<u8> = a[..cut.min(a.len())].iter().chain(&b).copied().collect();
            for (x, y) in [(&a, &b), (&a, &shared), (&shared, &a), (&a, &a)] {
                prop_assert_eq!(same_bytes(x, y), x == y);
                let (xs, ys) = (String::from_utf8_lossy(x), String::from_utf8_lossy(y));
                prop_assert_eq!(key_lt(&xs, &ys), xs < ys, "{:?} < {:?}", xs, ys);
            }
        }
    }

    #[test]
    fn short_compares_at_the_edges() {
        let words: &[&str] = &[
            "",
            "a",
            "a\0",
            "a\0\0",
            "ab",
            "abcdefg",
            "abcdefgh",
            "abcdefgh\0",
            "abcdefghi",
            "abcdefgi",
            "abcdefghijklmnop",
            "abcdefghijklmnoq",
            "abcdefghijklmnopq",
            "abcdefghijklmnopqrstuvwxyz012345",
            "abcdefghijklmnopqrstuvwxyz012346",
            "bbcdefghijklmnopqrstuvwxyz012345",
            "abcdefghijklmnopqrstuvwxyz0123456",
            "abcd",
            "abce",
            "bbcd",
            "http.method",
            "http.protocol",
            "istio.canonical_revision",
            "istio.canonical_service",
        ];
        for a in words {
            for b in words {
                assert_eq!(
                    same_bytes(a.as_bytes(), b.as_bytes()),
                    a == b,
                    "{a:?} == {b:?}"
                );
                assert_eq!(key_lt(a, b), a < b, "{a:?} < {b:?}");
            }
        }
    }

    #[test]
    fn dict_builds_what_arrows_dictionary_builder_builds() {
        use arrow::array::StringDictionaryBuilder;
        // Repeats, nulls between repeats, values seen again later, "".
        let words = ["a", "b", "", "a", "ccc", "b", "a"];
        let mut rng = 7u64;
        let mut ours = Dict::with_capacity(0, 0, 0);
        let mut theirs = StringDictionaryBuilder::<Int32Type>::new();
        for _ in 0..500 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = match (rng >> 33) % 10 {
                0 => None,
                r if r < 5 => Some(words[0]),
                r => Some(words[(r as usize + (rng >> 50) as usize) % words.len()]),
            };
            ours.append_option(v);
            theirs.append_option(v);
        }
        let (a, b) = (ours.finish().unwrap(), theirs.finish());
        assert_eq!(a, b);
        assert_eq!(a.keys(), b.keys());
        assert_eq!(a.values(), b.values());
    }

    #[test]
    fn span_ref_to_span_round_trips() {
        let span = crate::schema::tests::sample_span(3);
        let mut parts = SpanParts::default();
        assert_eq!(parts.of(&span).to_span(), span);
    }

    #[test]
    fn attr_list_is_a_btreemap() {
        let pairs = [
            ("b", AttrRef::Int(1)),
            ("a", AttrRef::Str("x")),
            ("b", AttrRef::Str("last")),
            ("c", AttrRef::Bool(true)),
            ("a", AttrRef::Double(2.0)),
            ("a", AttrRef::Str("y")),
        ];
        let mut l = AttrList::new();
        for (k, v) in pairs.iter().cloned() {
            l.push(k, v);
        }
        l.sort_dedup();
        let want: Attributes = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.to_owned_value()))
            .collect();
        assert_eq!(l.to_attributes(), want);
        assert_eq!(l.pushed(), 6);
        assert_eq!(l.len(), 3);
        assert_eq!(l.get_str("b"), Some("last"));
        assert_eq!(l.get("c"), Some(&AttrRef::Bool(true)));
        assert_eq!(l.get("d"), None);
    }
}
