//! The WAL record of a span batch: its Arrow buffers as they are in memory,
//! after a short head that says how they fit together.
//!
//! Arrow IPC (what records were before) copies every buffer into one
//! message and describes each array, and each dictionary in a message of
//! its own, with flatbuffers; for a batch of Envoy spans with some twenty
//! dictionary columns that was ~5 % of OTLP ingest's instructions (~7 % of
//! its time), against ~0.7 % for this record. Here the head is a few
//! bytes per array and the buffers go to the file by `writev` straight from
//! the batch ([`crate::wal::Frames`]), so nothing is copied.
//!
//! Layout (integers little-endian):
//! `MLB1` | head length (u32, a multiple of 8) | rows (u32) | columns (u32)
//! | one node per column, children after their parent | zero padding to
//! the head length | the data: each node's null bitmap (if any) and then
//! its buffers, in node order, each padded with zeros to a multiple of 8.
//!
//! Node: type code (u8) | length (u32) | offset (u32) | has nulls (u8)
//! [ null bit offset (u32) | null bitmap bytes (u32) ] | buffer count (u8)
//! | bytes of each buffer (u32 each) | child count (u8) | children.
//!
//! A record names no schema: it is read with the `spans` schema of the
//! binary that replays it, and every node's type code must match that
//! schema's, so a record from a binary with another schema is refused with
//! an error rather than misread. Reading checks every array in full (offsets,
//! UTF-8, dictionary keys), as the IPC reader did.

use arrow::array::{ArrayData, ArrayDataBuilder, ArrayRef, BufferSpec, layout, make_array};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

/// The first bytes of such a record. An Arrow IPC stream (the older
/// records) starts with `0xFFFFFFFF` instead.
pub const MAGIC: &[u8; 4] = b"MLB1";
const ALIGN: usize = 8;
static PAD: [u8; ALIGN] = [0; ALIGN];

fn padded(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn err(msg: impl Into<String>) -> ArrowError {
    ArrowError::ParseError(format!("WAL batch record: {}", msg.into()))
}

/// A code per data type, so a record is never read with a schema other
/// than the one it was written with. Parameters (list item types, struct
/// fields, dictionary values) are checked through the children.
fn type_code(dt: &DataType) -> u8 {
    match dt {
        DataType::Null => 1,
        DataType::Boolean => 2,
        DataType::Int8 => 3,
        DataType::Int16 => 4,
        DataType::Int32 => 5,
        DataType::Int64 => 6,
        DataType::UInt8 => 7,
        DataType::UInt16 => 8,
        DataType::UInt32 => 9,
        DataType::UInt64 => 10,
        DataType::Float32 => 11,
        DataType::Float64 => 12,
        DataType::Utf8 => 13,
        DataType::LargeUtf8 => 14,
        DataType::Binary => 15,
        DataType::FixedSizeBinary(n) if *n <= 64 => 16 + *n as u8,
        DataType::List(_) => 90,
        DataType::LargeList(_) => 91,
        DataType::Struct(_) => 92,
        DataType::Map(_, _) => 93,
        DataType::Dictionary(k, _) => 100 + type_code(k),
        _ => 255,
    }
}

/// The types of the children [`ArrayData`] holds for an array of `dt`.
fn child_types(dt: &DataType) -> Vec<&DataType> {
    match dt {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::Map(f, _)
        | DataType::FixedSizeList(f, _) => vec![f.data_type()],
        DataType::Struct(fields) => fields.iter().map(|f| f.data_type()).collect(),
        DataType::Dictionary(_, v) => vec![v.as_ref()],
        _ => Vec::new(),
    }
}

/// A batch as a WAL record: [`EncodedBatch::for_each_slice`] gives its
/// bytes in order without copying the buffers.
pub struct EncodedBatch {
    head: Vec<u8>,
    bufs: Vec<Buffer>,
    len: usize,
}

fn put_u32(out: &mut Vec<u8>, v: usize, what: &str) -> Result<(), ArrowError> {
    let v = u32::try_from(v).map_err(|_| err(format!("{what} {v} does not fit in 32 bits")))?;
    out.extend_from_slice(&v.to_le_bytes());
    Ok(())
}

fn put_u8(out: &mut Vec<u8>, v: usize, what: &str) -> Result<(), ArrowError> {
    out.push(u8::try_from(v).map_err(|_| err(format!("{v} {what} are too many")))?);
    Ok(())
}

fn push_node(d: &ArrayData, head: &mut Vec<u8>, bufs: &mut Vec<Buffer>) -> Result<(), ArrowError> {
    head.push(type_code(d.data_type()));
    put_u32(head, d.len(), "length")?;
    put_u32(head, d.offset(), "offset")?;
    match d.nulls() {
        Some(n) => {
            head.push(1);
            put_u32(head, n.offset(), "null bit offset")?;
            put_u32(head, n.buffer().len(), "null bitmap size")?;
            bufs.push(n.buffer().clone());
        }
        None => head.push(0),
    }
    put_u8(head, d.buffers().len(), "buffers")?;
    for b in d.buffers() {
        put_u32(head, b.len(), "buffer size")?;
        bufs.push(b.clone());
    }
    put_u8(head, d.child_data().len(), "children")?;
    for c in d.child_data() {
        push_node(c, head, bufs)?;
    }
    Ok(())
}

impl EncodedBatch {
    pub fn new(batch: &RecordBatch) -> Result<Self, ArrowError> {
        let mut head = Vec::with_capacity(1024);
        let mut bufs = Vec::with_capacity(4 * batch.num_columns());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&[0; 4]); // the head's length, below
        put_u32(&mut head, batch.num_rows(), "row count")?;
        put_u32(&mut head, batch.num_columns(), "column count")?;
        for c in batch.columns() {
            push_node(&c.to_data(), &mut head, &mut bufs)?;
        }
        head.resize(padded(head.len()), 0);
        let head_len = head.len();
        let h = u32::try_from(head_len).map_err(|_| err("head over 4 GiB"))?;
        head[4..8].copy_from_slice(&h.to_le_bytes());
        let len = head_len + bufs.iter().map(|b| padded(b.len())).sum::<usize>();
        Ok(EncodedBatch { head, bufs, len })
    }

    /// Bytes of the record.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The record's bytes, in order, as slices of the head, the batch's
    /// buffers and padding.
    pub fn for_each_slice<'a>(&'a self, mut f: impl FnMut(&'a [u8])) {
        f(&self.head);
        for b in &self.bufs {
            f(b.as_slice());
            let pad = padded(b.len()) - b.len();
            if pad > 0 {
                f(&PAD[..pad]);
            }
        }
    }

    /// The record as one vector (tests).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        self.for_each_slice(|s| out.extend_from_slice(s));
        out
    }
}

struct Reader<'a> {
    head: &'a [u8],
    pos: usize,
    data: &'a Buffer,
    data_pos: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, ArrowError> {
        let b = *self
            .head
            .get(self.pos)
            .ok_or_else(|| err("head cut short"))?;
        self.pos += 1;
        Ok(b)
    }

    fn u32(&mut self) -> Result<usize, ArrowError> {
        let b = self
            .head
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| err("head cut short"))?;
        self.pos += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// The next `n` bytes of the data, shared with the record's buffer.
    fn take(&mut self, n: usize) -> Result<Buffer, ArrowError> {
        if self
            .data_pos
            .checked_add(n)
            .is_none_or(|end| end > self.data.len())
        {
            return Err(err(format!(
                "a buffer of {n} bytes at data offset {} runs past the record's {} bytes",
                self.data_pos,
                self.data.len()
            )));
        }
        let b = self.data.slice_with_length(self.data_pos, n);
        self.data_pos = (self.data_pos + padded(n)).min(self.data.len());
        Ok(b)
    }

    fn node(&mut self, dt: &DataType, depth: usize) -> Result<ArrayData, ArrowError> {
        if depth > 16 {
            return Err(err("arrays nested too deep"));
        }
        let code = self.u8()?;
        if code != type_code(dt) {
            return Err(err(format!(
                "an array of type code {code} where the schema has {dt} (code {}): \
                 the record was written by a binary with another spans schema",
                type_code(dt)
            )));
        }
        let len = self.u32()?;
        let offset = self.u32()?;
        let nulls = match self.u8()? {
            0 => None,
            1 => {
                let bit_offset = self.u32()?;
                let bytes = self.u32()?;
                let buf = self.take(bytes)?;
                if bit_offset.saturating_add(len) > bytes.saturating_mul(8) {
                    return Err(err(format!(
                        "a null bitmap of {bytes} bytes cannot hold {len} rows from bit {bit_offset}"
                    )));
                }
                Some(NullBuffer::new(BooleanBuffer::new(buf, bit_offset, len)))
            }
            f => return Err(err(format!("null flag {f}"))),
        };
        let nbufs = self.u8()?;
        let specs = layout(dt).buffers;
        if usize::from(nbufs) != specs.len() {
            return Err(err(format!(
                "{nbufs} buffers for {dt}, which has {}",
                specs.len()
            )));
        }
        let mut buffers = Vec::with_capacity(specs.len());
        for spec in &specs {
            let n = self.u32()?;
            // Arrow's checks take whole values for granted.
            if let BufferSpec::FixedWidth { byte_width, .. } = spec
                && !n.is_multiple_of(*byte_width)
            {
                return Err(err(format!(
                    "a buffer of {n} bytes for {dt}, not whole values of {byte_width} bytes"
                )));
            }
            buffers.push(self.take(n)?);
        }
        let types = child_types(dt);
        let nchildren = usize::from(self.u8()?);
        if nchildren != types.len() {
            return Err(err(format!(
                "{nchildren} child arrays for {dt}, which has {}",
                types.len()
            )));
        }
        let children = types
            .into_iter()
            .map(|t| self.node(t, depth + 1))
            .collect::<Result<Vec<_>, _>>()?;
        // Arrow's checks leave this to the struct's readers, which slice
        // each child to the struct's range (and panic if it is short).
        if let DataType::Struct(_) = dt
            && children
                .iter()
                .any(|c| c.len() < offset.saturating_add(len))
        {
            return Err(err(format!(
                "a struct of {len} rows from {offset} with a shorter child"
            )));
        }
        ArrayDataBuilder::new(dt.clone())
            .len(len)
            .offset(offset)
            .nulls(nulls)
            .buffers(buffers)
            .child_data(children)
            .align_buffers(true)
            .build()
            .map_err(|e| err(format!("an array of {dt}: {e}")))
    }
}

/// The batch in `record` (which starts with [`MAGIC`]), read with `schema`.
pub fn decode(record: Buffer, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let bytes = record.as_slice();
    if bytes.len() < 16 || &bytes[..4] != MAGIC {
        return Err(err("no MLB1 head"));
    }
    let head_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if head_len < 16 || head_len > bytes.len() || !head_len.is_multiple_of(ALIGN) {
        return Err(err(format!(
            "head length {head_len} in a record of {} bytes",
            bytes.len()
        )));
    }
    let data = record.slice(head_len);
    let mut r = Reader {
        head: &bytes[8..head_len],
        pos: 0,
        data: &data,
        data_pos: 0,
    };
    let rows = r.u32()?;
    let columns = r.u32()?;
    if columns != schema.fields().len() {
        return Err(err(format!(
            "{columns} columns where the schema has {}",
            schema.fields().len()
        )));
    }
    let arrays = schema
        .fields()
        .iter()
        .map(|f| {
            let d = r.node(f.data_type(), 0)?;
            Ok(make_array(d))
        })
        .collect::<Result<Vec<ArrayRef>, ArrowError>>()?;
    if r.data_pos != data.len() {
        return Err(err(format!(
            "{} bytes after the last buffer",
            data.len() - r.data_pos
        )));
    }
    RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrValue, Endpoint, Span};
    use crate::schema::tests::sample_span;
    use crate::schema::{batch_to_spans, spans_schema, spans_to_batch};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn spans() -> Vec<Span> {
        let mut out: Vec<Span> = (0..40).map(sample_span).collect();
        // Nulls in the dictionary and promoted-tag columns, other values.
        for (i, s) in out.iter_mut().enumerate() {
            if i % 3 == 0 {
                s.local = Endpoint::default();
                s.events.clear();
                s.links.clear();
            }
            if i % 4 == 1 {
                s.attributes
                    .insert("http.url".into(), AttrValue::Str(format!("/p/{i}")));
                s.attributes
                    .insert("component".into(), AttrValue::Str("proxy".into()));
                s.name = format!("op {}", i % 5);
            }
        }
        out.push(Span::default());
        out
    }

    fn round_trip(batch: &RecordBatch) -> RecordBatch {
        let enc = EncodedBatch::new(batch).expect("encode");
        let bytes = enc.to_vec();
        assert_eq!(bytes.len(), enc.len());
        assert_eq!(bytes.len() % ALIGN, 0);
        decode(Buffer::from_vec(bytes), &spans_schema()).expect("decode")
    }

    #[test]
    fn a_batch_reads_back_equal() {
        let spans = spans();
        let batch = spans_to_batch(&spans).expect("batch");
        let back = round_trip(&batch);
        assert_eq!(back, batch);
        assert_eq!(batch_to_spans(&back).expect("spans"), spans);
    }

    #[test]
    fn a_sliced_batch_reads_back_equal() {
        // Arrays with an offset, null bitmaps starting mid-byte.
        let spans = spans();
        let batch = spans_to_batch(&spans).expect("batch");
        for (off, len) in [(0, 1), (3, 17), (7, 30), (40, 1), (41, 0)] {
            let slice = batch.slice(off, len);
            let back = round_trip(&slice);
            assert_eq!(back, slice, "slice {off}+{len}");
            assert_eq!(
                batch_to_spans(&back).expect("spans"),
                spans[off..off + len].to_vec()
            );
        }
    }

    #[test]
    fn damaged_records_are_refused_without_panicking() {
        let batch = spans_to_batch(&spans()).expect("batch");
        let bytes = EncodedBatch::new(&batch).expect("encode").to_vec();
        let schema = spans_schema();
        // Every truncation fails: the data must end where the head says.
        for cut in (0..bytes.len()).step_by(7) {
            let r = decode(Buffer::from_vec(bytes[..cut].to_vec()), &schema);
            assert!(r.is_err(), "cut at {cut} of {}", bytes.len());
        }
        // Flipped bytes may decode to other valid values (the WAL's CRC is
        // what catches those) but must never panic.
        let head_len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        let mut refused = 0;
        for i in (0..head_len).chain((head_len..bytes.len()).step_by(61)) {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                refused += usize::from(decode(Buffer::from_vec(b), &schema).is_err());
            }
        }
        assert!(refused > head_len, "most damaged heads are refused");
    }

    #[test]
    fn a_record_is_not_read_with_another_schema() {
        let batch = spans_to_batch(&spans()).expect("batch");
        let bytes = EncodedBatch::new(&batch).expect("encode").to_vec();
        let mut fields: Vec<Field> = spans_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[5] = Field::new("kind", DataType::Int32, false);
        let other = Arc::new(Schema::new(fields));
        let e = decode(Buffer::from_vec(bytes.clone()), &other).unwrap_err();
        assert!(e.to_string().contains("another spans schema"), "{e}");
        let fewer = Arc::new(Schema::new(
            spans_schema().fields()[..10]
                .iter()
                .map(|f| f.as_ref().clone())
                .collect::<Vec<_>>(),
        ));
        let e = decode(Buffer::from_vec(bytes), &fewer).unwrap_err();
        assert!(
            e.to_string().contains("columns where the schema has"),
            "{e}"
        );
    }
}
