//! Reading spans field by field without building a [`Span`]: the
//! [`SpanView`] trait, implemented by [`Span`] and by a row of a `spans`
//! record batch ([`SpanRow`]). Span derivation reads batches this way, as
//! they are appended, at the cost of a few lookups per span rather than a
//! `Span` with its attribute maps.

use crate::model::{Span, SpanId, SpanKind, StatusCode, TraceId, UnixNanos};
use crate::schema::{
    PROMOTED_TAGS, RESOURCE_SERVICE_KEY, SERVICE, START, TRACE_ID, decode_typed_ref,
    resource_service_only,
};
use crate::span_builder::AttrRef;
use arrow::array::{
    Array, AsArray, BooleanArray, DictionaryArray, FixedSizeBinaryArray, Int64Array, MapArray,
    StringArray, UInt8Array,
};
use arrow::datatypes::Int32Type;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// The fields of a span that derivation reads.
pub trait SpanView {
    fn trace_id(&self) -> TraceId;
    fn trace_id_64(&self) -> bool;
    fn span_id(&self) -> SpanId;
    fn parent_span_id(&self) -> Option<SpanId>;
    fn name(&self) -> &str;
    fn kind(&self) -> SpanKind;
    fn start(&self) -> Option<UnixNanos>;
    fn duration_nanos(&self) -> Option<i64>;
    /// The local endpoint's service, "" when none.
    fn service_name(&self) -> &str;
    fn remote_service_name(&self) -> Option<&str>;
    fn shared(&self) -> bool;
    fn status_code(&self) -> StatusCode;
    fn trace_state(&self) -> Option<&str>;
    /// A span attribute (Zipkin tag).
    fn attr(&self, key: &str) -> Option<AttrRef<'_>>;
    /// A resource attribute.
    fn resource_attr(&self, key: &str) -> Option<AttrRef<'_>>;

    /// The end of the span, or its start when it has no duration.
    fn end(&self) -> Option<UnixNanos> {
        self.start()
            .map(|s| UnixNanos(s.0.saturating_add(self.duration_nanos().unwrap_or(0))))
    }
}

impl<T: SpanView> SpanView for &T {
    fn trace_id(&self) -> TraceId {
        (**self).trace_id()
    }
    fn trace_id_64(&self) -> bool {
        (**self).trace_id_64()
    }
    fn span_id(&self) -> SpanId {
        (**self).span_id()
    }
    fn parent_span_id(&self) -> Option<SpanId> {
        (**self).parent_span_id()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn kind(&self) -> SpanKind {
        (**self).kind()
    }
    fn start(&self) -> Option<UnixNanos> {
        (**self).start()
    }
    fn duration_nanos(&self) -> Option<i64> {
        (**self).duration_nanos()
    }
    fn service_name(&self) -> &str {
        (**self).service_name()
    }
    fn remote_service_name(&self) -> Option<&str> {
        (**self).remote_service_name()
    }
    fn shared(&self) -> bool {
        (**self).shared()
    }
    fn status_code(&self) -> StatusCode {
        (**self).status_code()
    }
    fn trace_state(&self) -> Option<&str> {
        (**self).trace_state()
    }
    fn attr(&self, key: &str) -> Option<AttrRef<'_>> {
        (**self).attr(key)
    }
    fn resource_attr(&self, key: &str) -> Option<AttrRef<'_>> {
        (**self).resource_attr(key)
    }
}

impl SpanView for Span {
    fn trace_id(&self) -> TraceId {
        self.trace_id
    }
    fn trace_id_64(&self) -> bool {
        self.trace_id_64
    }
    fn span_id(&self) -> SpanId {
        self.span_id
    }
    fn parent_span_id(&self) -> Option<SpanId> {
        self.parent_span_id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> SpanKind {
        self.kind
    }
    fn start(&self) -> Option<UnixNanos> {
        self.start
    }
    fn duration_nanos(&self) -> Option<i64> {
        self.duration_nanos
    }
    fn service_name(&self) -> &str {
        self.local.service_name.as_deref().unwrap_or("")
    }
    fn remote_service_name(&self) -> Option<&str> {
        self.remote.service_name.as_deref()
    }
    fn shared(&self) -> bool {
        self.shared
    }
    fn status_code(&self) -> StatusCode {
        self.status_code
    }
    fn trace_state(&self) -> Option<&str> {
        self.trace_state.as_deref()
    }
    fn attr(&self, key: &str) -> Option<AttrRef<'_>> {
        self.attributes.get(key).map(AttrRef::from_value)
    }
    fn resource_attr(&self, key: &str) -> Option<AttrRef<'_>> {
        self.resource.get(key).map(AttrRef::from_value)
    }
}

/// A dictionary-encoded string column.
struct DictCol<'a> {
    keys: &'a arrow::array::Int32Array,
    values: &'a StringArray,
}

impl<'a> DictCol<'a> {
    fn of(batch: &'a RecordBatch, name: &str) -> Result<Self, ArrowError> {
        let d = batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<DictionaryArray<Int32Type>>())
            .ok_or_else(|| missing(name))?;
        let values = d
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| missing(name))?;
        Ok(DictCol {
            keys: d.keys(),
            values,
        })
    }
    #[inline]
    fn get(&self, i: usize) -> Option<&'a str> {
        if self.keys.is_null(i) {
            return None;
        }
        Some(self.values.value(self.keys.value(i) as usize))
    }
}

/// A promoted tag column: a dictionary or plain strings.
enum TagCol<'a> {
    Dict(DictCol<'a>),
    Plain(&'a StringArray),
}

impl<'a> TagCol<'a> {
    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            TagCol::Dict(d) => d.get(i),
            TagCol::Plain(p) => (!p.is_null(i)).then(|| p.value(i)),
        }
    }
}

/// A string -> string map column whose entries are sorted by key in each row.
struct MapCol<'a> {
    map: &'a MapArray,
    keys: &'a StringArray,
    values: &'a StringArray,
}

impl<'a> MapCol<'a> {
    fn of(batch: &'a RecordBatch, name: &str) -> Result<Self, ArrowError> {
        let map = batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<MapArray>())
            .ok_or_else(|| missing(name))?;
        let keys = map
            .keys()
            .as_string_opt::<i32>()
            .ok_or_else(|| missing(name))?;
        let values = map
            .values()
            .as_string_opt::<i32>()
            .ok_or_else(|| missing(name))?;
        Ok(MapCol { map, keys, values })
    }
    /// Binary search of row `i`'s entries (written sorted by the builder).
    fn get(&self, i: usize, key: &str) -> Option<&'a str> {
        if self.map.is_null(i) {
            return None;
        }
        let offsets = self.map.value_offsets();
        let (mut lo, mut hi) = (offsets[i] as usize, offsets[i + 1] as usize);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.keys.value(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.values.value(mid)),
            }
        }
        None
    }
}

fn missing(name: &str) -> ArrowError {
    ArrowError::SchemaError(format!(
        "spans batch lacks column {name} (or it has another type)"
    ))
}

/// The columns of a `spans` batch that [`SpanRow`] reads.
pub struct SpanColumns<'a> {
    rows: usize,
    trace_id: &'a FixedSizeBinaryArray,
    trace_id_64: &'a BooleanArray,
    span_id: &'a FixedSizeBinaryArray,
    parent: &'a FixedSizeBinaryArray,
    name: DictCol<'a>,
    kind: &'a UInt8Array,
    start: &'a Int64Array,
    duration: &'a Int64Array,
    service: DictCol<'a>,
    remote_service: DictCol<'a>,
    shared: &'a BooleanArray,
    status_code: &'a UInt8Array,
    trace_state: &'a StringArray,
    tags: Vec<TagCol<'a>>,
    attrs: MapCol<'a>,
    attrs_typed: MapCol<'a>,
    res: MapCol<'a>,
    res_typed: MapCol<'a>,
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| missing(name))
}

impl<'a> SpanColumns<'a> {
    /// The columns of a batch of the `spans` schema.
    pub fn new(batch: &'a RecordBatch) -> Result<Self, ArrowError> {
        let tags = PROMOTED_TAGS
            .iter()
            .map(|(_, c)| match batch.column_by_name(c) {
                Some(a) if a.as_any().is::<StringArray>() => Ok(TagCol::Plain(col(batch, c)?)),
                _ => Ok(TagCol::Dict(DictCol::of(batch, c)?)),
            })
            .collect::<Result<Vec<_>, ArrowError>>()?;
        Ok(SpanColumns {
            rows: batch.num_rows(),
            trace_id: col(batch, TRACE_ID)?,
            trace_id_64: col(batch, "trace_id_64")?,
            span_id: col(batch, "span_id")?,
            parent: col(batch, "parent_span_id")?,
            name: DictCol::of(batch, "name")?,
            kind: col(batch, "kind")?,
            start: col(batch, START)?,
            duration: col(batch, "duration_nano")?,
            service: DictCol::of(batch, SERVICE)?,
            remote_service: DictCol::of(batch, "remote_service_name")?,
            shared: col(batch, "shared")?,
            status_code: col(batch, "status_code")?,
            trace_state: col(batch, "trace_state")?,
            tags,
            attrs: MapCol::of(batch, "attributes")?,
            attrs_typed: MapCol::of(batch, "attributes_typed")?,
            res: MapCol::of(batch, "resource_attributes")?,
            res_typed: MapCol::of(batch, "resource_attributes_typed")?,
        })
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn row(&self, i: usize) -> SpanRow<'_> {
        SpanRow { cols: self, i }
    }

    pub fn rows(&self) -> impl Iterator<Item = SpanRow<'_>> {
        (0..self.rows).map(|i| self.row(i))
    }
}

/// One row of a `spans` batch, read as a span.
#[derive(Clone, Copy)]
pub struct SpanRow<'a> {
    cols: &'a SpanColumns<'a>,
    i: usize,
}

fn id8(a: &FixedSizeBinaryArray, i: usize) -> [u8; 8] {
    a.value(i).try_into().unwrap_or_default()
}

impl SpanView for SpanRow<'_> {
    fn trace_id(&self) -> TraceId {
        TraceId(
            self.cols
                .trace_id
                .value(self.i)
                .try_into()
                .unwrap_or_default(),
        )
    }
    fn trace_id_64(&self) -> bool {
        self.cols.trace_id_64.value(self.i)
    }
    fn span_id(&self) -> SpanId {
        SpanId(id8(self.cols.span_id, self.i))
    }
    fn parent_span_id(&self) -> Option<SpanId> {
        let p = self.cols.parent;
        (!p.is_null(self.i)).then(|| SpanId(id8(p, self.i)))
    }
    fn name(&self) -> &str {
        self.cols.name.get(self.i).unwrap_or("")
    }
    fn kind(&self) -> SpanKind {
        SpanKind::from_u8(self.cols.kind.value(self.i))
    }
    fn start(&self) -> Option<UnixNanos> {
        let a = self.cols.start;
        (!a.is_null(self.i)).then(|| UnixNanos(a.value(self.i)))
    }
    fn duration_nanos(&self) -> Option<i64> {
        let a = self.cols.duration;
        (!a.is_null(self.i)).then(|| a.value(self.i))
    }
    fn service_name(&self) -> &str {
        self.cols.service.get(self.i).unwrap_or("")
    }
    fn remote_service_name(&self) -> Option<&str> {
        self.cols.remote_service.get(self.i)
    }
    fn shared(&self) -> bool {
        self.cols.shared.value(self.i)
    }
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u8(self.cols.status_code.value(self.i))
    }
    fn trace_state(&self) -> Option<&str> {
        let a = self.cols.trace_state;
        (!a.is_null(self.i)).then(|| a.value(self.i))
    }
    fn attr(&self, key: &str) -> Option<AttrRef<'_>> {
        if let Some(c) = crate::schema::promoted_index(key)
            && let Some(v) = self.cols.tags[c].get(self.i)
        {
            return Some(AttrRef::Str(v));
        }
        if let Some(v) = self.cols.attrs.get(self.i, key) {
            return Some(AttrRef::Str(v));
        }
        self.cols.attrs_typed.get(self.i, key).map(decode_typed_ref)
    }
    fn resource_attr(&self, key: &str) -> Option<AttrRef<'_>> {
        if let Some(v) = self.cols.res.get(self.i, key) {
            return Some(AttrRef::Str(v));
        }
        if key == RESOURCE_SERVICE_KEY
            && resource_service_only(Some(self.cols.res.map), self.i)
            && let Some(v) = self.cols.service.get(self.i)
        {
            return Some(AttrRef::Str(v));
        }
        self.cols.res_typed.get(self.i, key).map(decode_typed_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttrValue;
    use crate::schema::spans_to_batch;

    #[test]
    fn a_batch_row_reads_as_its_span() {
        let mut spans: Vec<Span> = (0..4).map(crate::schema::tests::sample_span).collect();
        spans.push(Span::default());
        spans[1]
            .attributes
            .insert("error".into(), AttrValue::Str(String::new()));
        spans[2].remote.service_name = Some("db".into());
        spans[3].trace_state = Some("ot=th:8".into());
        spans[3]
            .resource
            .insert("k8s.namespace.name".into(), AttrValue::Int(7));
        let batch = spans_to_batch(&spans).unwrap();
        let cols = SpanColumns::new(&batch).unwrap();
        assert_eq!(cols.len(), spans.len());
        for (s, r) in spans.iter().zip(cols.rows()) {
            assert_eq!(r.trace_id(), s.trace_id());
            assert_eq!(r.trace_id_64(), s.trace_id_64());
            assert_eq!(r.span_id(), s.span_id());
            assert_eq!(r.parent_span_id(), s.parent_span_id());
            assert_eq!(r.name(), SpanView::name(s));
            assert_eq!(r.kind(), s.kind());
            assert_eq!(r.start(), SpanView::start(s));
            assert_eq!(r.end(), SpanView::end(s));
            assert_eq!(r.duration_nanos(), s.duration_nanos());
            assert_eq!(r.service_name(), SpanView::service_name(s));
            assert_eq!(r.remote_service_name(), s.remote_service_name());
            assert_eq!(r.shared(), s.shared());
            assert_eq!(r.status_code(), s.status_code());
            assert_eq!(r.trace_state(), s.trace_state());
            for k in s
                .attributes
                .keys()
                .map(String::as_str)
                .chain(["nope", "http.url"])
            {
                assert_eq!(r.attr(k), SpanView::attr(s, k), "attribute {k}");
            }
            for k in s.resource.keys().map(String::as_str).chain(["nope"]) {
                assert_eq!(
                    r.resource_attr(k),
                    s.resource_attr(k),
                    "resource attribute {k}"
                );
            }
        }
    }
}
