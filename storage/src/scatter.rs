//! Reordering rows spread over many record batches into one batch: the
//! flush and compaction put every buffered row in its place in the file's
//! sort order this way, copying it once.
//!
//! The order is given as where each input row goes (`pos[batch][row]` is
//! its index in the output), and the copy reads the inputs front to back
//! and writes each value at its place. The obvious way, gathering (for each
//! output row, read it from its input), is what `arrow::compute::interleave`
//! does; in a file sorted by trace id the next row comes from a random one
//! of a few thousand request batches, so every value read is a cache (and
//! TLB) miss the CPU waits for. A scattered write does not hold the CPU up
//! that way. For a flush of 1 M Envoy spans from 2,000 requests this took
//! the copy from ~4 s to ~0.6 s on one core (docs/BENCHMARKS.md, "Flush").
//!
//! Columns of a type not handled here (none of the `spans` schema) go
//! through `interleave` with the inverse order.

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, DictionaryArray, FixedSizeBinaryArray,
    GenericListArray, MapArray, PrimitiveArray, StringArray, StructArray, new_null_array,
};
use arrow::buffer::{BooleanBuffer, Buffer, MutableBuffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow::util::bit_util;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::Arc;

/// `pos[b][r]`: the output index of row `r` of input `b`.
pub type Positions = [Vec<u32>];

/// How many rows ahead a scattering loop asks for the cache line it will
/// write (8 and 16 measured best, 64 no better than none).
const AHEAD: usize = 16;

/// Asks for the cache line at `p` to be brought in (for writing, where the
/// CPU has such a prefetch). Positions in a trace-id order are random, so
/// nearly every scattered write misses the cache and the TLB; asking
/// [`AHEAD`] rows early overlaps those misses instead of queueing the
/// stores behind them (a 1 M-span flush's copy 10-15 % faster,
/// docs/BENCHMARKS.md).
#[inline(always)]
fn prefetch_write<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it does not fault on any address.
    #[allow(unsafe_code)]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_ET0 }>(p.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches `base[pos[r + AHEAD] * w]`.
#[inline(always)]
fn ahead<T>(base: &[T], pos: &[u32], r: usize, w: usize) {
    if let Some(&q) = pos.get(r + AHEAD) {
        prefetch_write(base.as_ptr().wrapping_add(q as usize * w));
    }
}

fn invalid(msg: String) -> ArrowError {
    ArrowError::InvalidArgumentError(msg)
}

/// The rows of `batches` (all of one schema) reordered: row `r` of batch
/// `b` becomes row `pos[b][r]`. `pos` must place every row, each in its own
/// slot of `0..total rows`; anything else is an error.
pub fn scatter_batch(batches: &[RecordBatch], pos: &Positions) -> Result<RecordBatch, ArrowError> {
    let Some(first) = batches.first() else {
        return Err(invalid("scatter_batch: no input batches".into()));
    };
    let n = check_positions(
        &batches
            .iter()
            .map(RecordBatch::num_rows)
            .collect::<Vec<_>>(),
        pos,
    )?;
    let schema = first.schema();
    // Batches of one schema (one `Arc`, as the span builder and the WAL
    // make them) need no comparison of every column's nested types, which
    // was ~5 % of the copy; others have their columns' types compared.
    let same_types = |b: &RecordBatch| {
        Arc::ptr_eq(b.schema_ref(), &schema)
            || (b.num_columns() == schema.fields().len()
                && b.columns()
                    .iter()
                    .zip(schema.fields())
                    .all(|(c, f)| c.data_type() == f.data_type()))
    };
    if let Some(b) = batches.iter().find(|b| !same_types(b)) {
        return Err(invalid(format!(
            "scatter_batch: batches of different schemas, {} and {}",
            schema,
            b.schema()
        )));
    }
    let columns = (0..schema.fields().len())
        .map(|c| {
            let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
            scatter_checked(&arrays, pos, n)
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        schema,
        columns,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )
}

/// [`scatter_batch`] for one column.
pub fn scatter(arrays: &[&dyn Array], pos: &Positions) -> Result<ArrayRef, ArrowError> {
    let n = check_positions(&arrays.iter().map(|a| a.len()).collect::<Vec<_>>(), pos)?;
    if let Some(first) = arrays.first()
        && let Some(a) = arrays.iter().find(|a| a.data_type() != first.data_type())
    {
        return Err(invalid(format!(
            "scatter: arrays of different types, {} and {}",
            first.data_type(),
            a.data_type()
        )));
    }
    scatter_checked(arrays, pos, n)
}

/// That `pos` is a permutation of `0..n` shaped like the inputs; returns n.
fn check_positions(lens: &[usize], pos: &Positions) -> Result<usize, ArrowError> {
    if lens.len() != pos.len() || lens.iter().zip(pos).any(|(l, p)| *l != p.len()) {
        return Err(invalid(
            "scatter: positions do not match the inputs' shape".into(),
        ));
    }
    let n: usize = lens.iter().sum();
    if u32::try_from(n).is_err() {
        return Err(invalid(format!("scatter: {n} rows are too many")));
    }
    let mut seen = vec![false; n];
    for &p in pos.iter().flatten() {
        match seen.get_mut(p as usize) {
            Some(s) if !*s => *s = true,
            _ => {
                return Err(invalid(format!(
                    "scatter: position {p} is outside 0..{n} or given twice"
                )));
            }
        }
    }
    Ok(n)
}

/// Reorders values whose positions and types were checked (or derived from
/// checked ones): every input has the same type (the children of inputs of
/// one type are of one type too).
fn scatter_checked(
    arrays: &[&dyn Array],
    pos: &Positions,
    n: usize,
) -> Result<ArrayRef, ArrowError> {
    let Some(first) = arrays.first() else {
        return Err(invalid("scatter: no input arrays".into()));
    };
    let dt = first.data_type();
    // Columns no span of the batch uses (events, links, IPv6, ...).
    if arrays.iter().all(|a| a.null_count() == a.len()) && !matches!(dt, DataType::Null) {
        return Ok(new_null_array(dt, n));
    }
    Ok(match dt {
        DataType::FixedSizeBinary(_) => fixed_size_binary(arrays, pos, n)?,
        DataType::Boolean => boolean(arrays, pos, n),
        DataType::Int8 => primitive::<Int8Type>(arrays, pos, n),
        DataType::Int16 => primitive::<Int16Type>(arrays, pos, n),
        DataType::Int32 => primitive::<Int32Type>(arrays, pos, n),
        DataType::Int64 => primitive::<Int64Type>(arrays, pos, n),
        DataType::UInt8 => primitive::<UInt8Type>(arrays, pos, n),
        DataType::UInt16 => primitive::<UInt16Type>(arrays, pos, n),
        DataType::UInt32 => primitive::<UInt32Type>(arrays, pos, n),
        DataType::UInt64 => primitive::<UInt64Type>(arrays, pos, n),
        DataType::Utf8 => utf8(arrays, pos, n)?,
        DataType::Dictionary(k, v)
            if k.as_ref() == &DataType::Int32 && v.as_ref() == &DataType::Utf8 =>
        {
            match string_dictionary(arrays, pos, n)? {
                Some(a) => a,
                None => by_interleave(arrays, pos, n)?,
            }
        }
        DataType::Struct(fields) if !fields.is_empty() => structs(arrays, pos, n)?,
        DataType::List(_) => list(arrays, pos, n)?,
        DataType::Map(_, _) => map(arrays, pos, n)?,
        _ => by_interleave(arrays, pos, n)?,
    })
}

/// The generic way: invert the positions and gather with arrow.
fn by_interleave(arrays: &[&dyn Array], pos: &Positions, n: usize) -> Result<ArrayRef, ArrowError> {
    let mut rows = vec![(0usize, 0usize); n];
    for (b, p) in pos.iter().enumerate() {
        for (r, &p) in p.iter().enumerate() {
            rows[p as usize] = (b, r);
        }
    }
    arrow::compute::interleave(arrays, &rows)
}

/// The validity of the output; `None` when no input has nulls.
fn nulls(arrays: &[&dyn Array], pos: &Positions, n: usize) -> Option<NullBuffer> {
    if arrays.iter().all(|a| a.nulls().is_none()) {
        return None;
    }
    let mut valid = MutableBuffer::new_null(n);
    let bits = valid.as_slice_mut();
    for (a, p) in arrays.iter().zip(pos) {
        match a.nulls() {
            None => p.iter().for_each(|&p| bit_util::set_bit(bits, p as usize)),
            Some(nb) => {
                for (r, &p) in p.iter().enumerate() {
                    if nb.is_valid(r) {
                        bit_util::set_bit(bits, p as usize);
                    }
                }
            }
        }
    }
    Some(NullBuffer::new(BooleanBuffer::new(valid.into(), 0, n))).filter(|b| b.null_count() > 0)
}

fn primitive<T: ArrowPrimitiveType>(arrays: &[&dyn Array], pos: &Positions, n: usize) -> ArrayRef {
    let mut out = vec![T::Native::default(); n];
    for (a, p) in arrays.iter().zip(pos) {
        let vals = a.as_primitive::<T>().values();
        for (r, (v, &q)) in vals.iter().zip(p).enumerate() {
            ahead(&out, p, r, 1);
            out[q as usize] = *v;
        }
    }
    Arc::new(
        PrimitiveArray::<T>::new(out.into(), nulls(arrays, pos, n))
            .with_data_type(arrays[0].data_type().clone()),
    )
}

fn boolean(arrays: &[&dyn Array], pos: &Positions, n: usize) -> ArrayRef {
    let mut out = MutableBuffer::new_null(n);
    let bits = out.as_slice_mut();
    for (a, p) in arrays.iter().zip(pos) {
        for (v, &p) in a.as_boolean().values().iter().zip(p) {
            if v {
                bit_util::set_bit(bits, p as usize);
            }
        }
    }
    Arc::new(BooleanArray::new(
        BooleanBuffer::new(out.into(), 0, n),
        nulls(arrays, pos, n),
    ))
}

fn fixed_size_binary(
    arrays: &[&dyn Array],
    pos: &Positions,
    n: usize,
) -> Result<ArrayRef, ArrowError> {
    let width = arrays[0].as_fixed_size_binary().value_length();
    let w = usize::try_from(width).unwrap_or(0);
    let mut out = vec![0u8; n * w];
    if w > 0 {
        for (a, p) in arrays.iter().zip(pos) {
            let data = a.as_fixed_size_binary().value_data();
            for (r, (v, &q)) in data.chunks_exact(w).zip(p).enumerate() {
                ahead(&out, p, r, w);
                let q = q as usize * w;
                out[q..q + w].copy_from_slice(v);
            }
        }
    }
    Ok(Arc::new(FixedSizeBinaryArray::try_new(
        width,
        out.into(),
        nulls(arrays, pos, n),
    )?))
}

/// Offsets of the output from each row's length (scattered to its place).
fn offsets_from_lengths<O: arrow::array::OffsetSizeTrait>(
    lens: Vec<usize>,
) -> Result<OffsetBuffer<O>, ArrowError> {
    let mut out = Vec::with_capacity(lens.len() + 1);
    let mut at = 0usize;
    out.push(O::usize_as(0));
    for l in lens {
        at += l;
        out.push(O::from_usize(at).ok_or_else(|| ArrowError::OffsetOverflowError(at))?);
    }
    Ok(OffsetBuffer::new(ScalarBuffer::from(out)))
}

fn utf8(arrays: &[&dyn Array], pos: &Positions, n: usize) -> Result<ArrayRef, ArrowError> {
    let mut lens = vec![0usize; n];
    for (a, p) in arrays.iter().zip(pos) {
        let o = a.as_string::<i32>().value_offsets();
        for (r, (w, &q)) in o.windows(2).zip(p).enumerate() {
            ahead(&lens, p, r, 1);
            lens[q as usize] = (w[1] - w[0]) as usize;
        }
    }
    let offsets = offsets_from_lengths::<i32>(lens)?;
    let total = offsets.last().copied().unwrap_or(0) as usize;
    let mut data = vec![0u8; total];
    for (a, p) in arrays.iter().zip(pos) {
        let s = a.as_string::<i32>();
        let (o, bytes) = (s.value_offsets(), s.value_data());
        for (r, (w, &q)) in o.windows(2).zip(p).enumerate() {
            // The offset two steps ahead, then the bytes it points at.
            ahead(&offsets, p, r + AHEAD, 1);
            if let Some(&next) = p.get(r + AHEAD) {
                prefetch_write(data.as_ptr().wrapping_add(offsets[next as usize] as usize));
            }
            let at = offsets[q as usize] as usize;
            let v = &bytes[w[0] as usize..w[1] as usize];
            data[at..at + v.len()].copy_from_slice(v);
        }
    }
    let nulls = nulls(arrays, pos, n);
    // SAFETY: the offsets grow from 0 to `data`'s length (a prefix sum of
    // the rows' lengths, overflow checked), and each row's bytes are a
    // whole value of a valid input string array, copied to its own range:
    // valid UTF-8 at valid boundaries. (Checking it again was ~7 % of the
    // copy.)
    #[allow(unsafe_code)]
    let strings = unsafe { StringArray::new_unchecked(offsets, Buffer::from(data), nulls) };
    Ok(Arc::new(strings))
}

/// Dictionaries of strings merged by value: each input dictionary's values
/// are looked up once in the merged one, then every row's key is mapped.
/// `None` (use arrow) when some dictionary has null values.
fn string_dictionary(
    arrays: &[&dyn Array],
    pos: &Positions,
    n: usize,
) -> Result<Option<ArrayRef>, ArrowError> {
    let dicts: Vec<&DictionaryArray<Int32Type>> = arrays
        .iter()
        .map(|a| a.as_dictionary::<Int32Type>())
        .collect();
    let mut values: Vec<&StringArray> = Vec::with_capacity(dicts.len());
    for d in &dicts {
        let Some(v) = d.values().as_any().downcast_ref::<StringArray>() else {
            return Ok(None);
        };
        if v.null_count() > 0 {
            return Ok(None);
        }
        values.push(v);
    }
    let hasher = foldhash::fast::FixedState::default();
    let mut table: HashTable<i32> = HashTable::new();
    let mut merged: Vec<&str> = Vec::new();
    let mut out = vec![0i32; n];
    let mut map: Vec<i32> = Vec::new();
    for ((d, v), p) in dicts.iter().zip(&values).zip(pos) {
        map.clear();
        for s in v.iter().flatten() {
            let h = hasher.hash_one(s);
            let key = match table.find(h, |&k| merged[k as usize] == s) {
                Some(&k) => k,
                None => {
                    let k = i32::try_from(merged.len())
                        .map_err(|_| ArrowError::DictionaryKeyOverflowError)?;
                    merged.push(s);
                    table.insert_unique(h, k, |&k| hasher.hash_one(merged[k as usize]));
                    k
                }
            };
            map.push(key);
        }
        for (r, (k, &q)) in d.keys().values().iter().zip(p).enumerate() {
            ahead(&out, p, r, 1);
            // A null row's key may point anywhere: only valid keys map.
            out[q as usize] = usize::try_from(*k)
                .ok()
                .and_then(|k| map.get(k))
                .copied()
                .unwrap_or(0);
        }
    }
    let keys: Vec<&dyn Array> = dicts.iter().map(|d| d.keys() as &dyn Array).collect();
    let keys = PrimitiveArray::<Int32Type>::new(out.into(), nulls(&keys, pos, n));
    let values: ArrayRef = Arc::new(StringArray::from(merged));
    // SAFETY: a key is an entry of `map`, an index `table` handed out into
    // `merged`, or 0 on a row whose input key was not a valid index, which
    // in a valid input is a null row.
    #[allow(unsafe_code)]
    let dict = unsafe { crate::span_builder::dictionary_unchecked(keys, values)? };
    Ok(Some(Arc::new(dict)))
}

fn structs(arrays: &[&dyn Array], pos: &Positions, n: usize) -> Result<ArrayRef, ArrowError> {
    let typed: Vec<&StructArray> = arrays.iter().map(|a| a.as_struct()).collect();
    let DataType::Struct(fields) = arrays[0].data_type() else {
        return Err(invalid("scatter: not a struct".into()));
    };
    let columns = (0..fields.len())
        .map(|c| {
            let children: Vec<&dyn Array> = typed.iter().map(|s| s.column(c).as_ref()).collect();
            scatter_checked(&children, pos, n)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(StructArray::try_new(
        fields.clone(),
        columns,
        nulls(arrays, pos, n),
    )?))
}

/// Output offsets, child arrays (each input's referenced entries), child positions.
type Children = (OffsetBuffer<i32>, Vec<ArrayRef>, Vec<Vec<u32>>);

/// The child entries of list-like inputs and their positions: each row's
/// entries go, in their order, where the row's entries start in the output.
fn child_positions(
    offsets: &[&[i32]],
    children: &[ArrayRef],
    pos: &Positions,
    n: usize,
) -> Result<Children, ArrowError> {
    let mut lens = vec![0usize; n];
    for (o, p) in offsets.iter().zip(pos) {
        for (r, (w, &q)) in o.windows(2).zip(p).enumerate() {
            ahead(&lens, p, r, 1);
            lens[q as usize] = (w[1] - w[0]) as usize;
        }
    }
    let out_offsets = offsets_from_lengths::<i32>(lens)?;
    let mut sliced = Vec::with_capacity(children.len());
    let mut child_pos = Vec::with_capacity(children.len());
    for ((o, child), p) in offsets.iter().zip(children).zip(pos) {
        let (first, last) = match (o.first(), o.last()) {
            (Some(&f), Some(&l)) => (f as usize, l as usize),
            _ => (0, 0),
        };
        sliced.push(child.slice(first, last - first));
        let mut cp = Vec::with_capacity(last - first);
        for (r, (w, &q)) in o.windows(2).zip(p).enumerate() {
            ahead(&out_offsets, p, r, 1);
            let at = out_offsets[q as usize] as u32;
            cp.extend((0..(w[1] - w[0]) as u32).map(|e| at + e));
        }
        child_pos.push(cp);
    }
    Ok((out_offsets, sliced, child_pos))
}

/// No input list holds a value (OTLP spans without events, links or typed
/// attributes): every output list is empty too, nothing to place.
fn all_empty(offsets: &[&[i32]]) -> bool {
    offsets.iter().all(|o| o.first() == o.last())
}

fn list(arrays: &[&dyn Array], pos: &Positions, n: usize) -> Result<ArrayRef, ArrowError> {
    let typed: Vec<&GenericListArray<i32>> = arrays.iter().map(|a| a.as_list::<i32>()).collect();
    let DataType::List(field) = arrays[0].data_type() else {
        return Err(invalid("scatter: not a list".into()));
    };
    let offsets: Vec<&[i32]> = typed.iter().map(|l| l.value_offsets()).collect();
    if all_empty(&offsets) {
        return Ok(Arc::new(GenericListArray::<i32>::try_new(
            field.clone(),
            OffsetBuffer::new_zeroed(n),
            arrow::array::new_empty_array(field.data_type()),
            nulls(arrays, pos, n),
        )?));
    }
    let children: Vec<ArrayRef> = typed.iter().map(|l| l.values().clone()).collect();
    let (out_offsets, sliced, child_pos) = child_positions(&offsets, &children, pos, n)?;
    let total = out_offsets.last().copied().unwrap_or(0) as usize;
    let refs: Vec<&dyn Array> = sliced.iter().map(|a| a.as_ref()).collect();
    let values = scatter_checked(&refs, &child_pos, total)?;
    Ok(Arc::new(GenericListArray::<i32>::try_new(
        field.clone(),
        out_offsets,
        values,
        nulls(arrays, pos, n),
    )?))
}

fn map(arrays: &[&dyn Array], pos: &Positions, n: usize) -> Result<ArrayRef, ArrowError> {
    let typed: Vec<&MapArray> = arrays.iter().map(|a| a.as_map()).collect();
    let DataType::Map(field, ordered) = arrays[0].data_type() else {
        return Err(invalid("scatter: not a map".into()));
    };
    let offsets: Vec<&[i32]> = typed.iter().map(|m| m.value_offsets()).collect();
    if all_empty(&offsets) {
        return Ok(Arc::new(MapArray::try_new(
            field.clone(),
            OffsetBuffer::new_zeroed(n),
            arrow::array::new_empty_array(field.data_type())
                .as_struct()
                .clone(),
            nulls(arrays, pos, n),
            *ordered,
        )?));
    }
    let children: Vec<ArrayRef> = typed
        .iter()
        .map(|m| Arc::new(m.entries().clone()) as ArrayRef)
        .collect();
    let (out_offsets, sliced, child_pos) = child_positions(&offsets, &children, pos, n)?;
    let total = out_offsets.last().copied().unwrap_or(0) as usize;
    let refs: Vec<&dyn Array> = sliced.iter().map(|a| a.as_ref()).collect();
    let entries = scatter_checked(&refs, &child_pos, total)?;
    Ok(Arc::new(MapArray::try_new(
        field.clone(),
        out_offsets,
        entries.as_struct().clone(),
        nulls(arrays, pos, n),
        *ordered,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, Link, Span, SpanId, TraceId, UnixNanos};
    use crate::schema::spans_to_batch;
    use arrow::array::{Int64Array, ListArray, StringDictionaryBuilder};
    use proptest::prelude::*;

    fn dict(values: &[Option<&str>]) -> ArrayRef {
        let mut b = StringDictionaryBuilder::<Int32Type>::new();
        for v in values {
            b.append_option(*v);
        }
        Arc::new(b.finish())
    }

    /// Positions from an output order given as (batch, row) per output row.
    fn positions(lens: &[usize], rows: &[(usize, usize)]) -> Vec<Vec<u32>> {
        let mut pos: Vec<Vec<u32>> = lens.iter().map(|&l| vec![0; l]).collect();
        for (i, &(b, r)) in rows.iter().enumerate() {
            pos[b][r] = i as u32;
        }
        pos
    }

    /// A random output order of all rows of inputs of these lengths.
    fn shuffled(lens: &[usize], seed: u64) -> Vec<(usize, usize)> {
        let mut rows: Vec<(usize, usize)> = lens
            .iter()
            .enumerate()
            .flat_map(|(b, &l)| (0..l).map(move |r| (b, r)))
            .collect();
        let mut s = seed | 1;
        for i in (1..rows.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            rows.swap(i, (s % (i as u64 + 1)) as usize);
        }
        rows
    }

    /// Our scatter equals arrow's interleave of the same order.
    fn check(arrays: &[ArrayRef], seed: u64) {
        let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
        let lens: Vec<usize> = arrays.iter().map(|a| a.len()).collect();
        let rows = shuffled(&lens, seed);
        let ours = scatter(&refs, &positions(&lens, &rows)).unwrap();
        let theirs = arrow::compute::interleave(&refs, &rows).unwrap();
        assert_eq!(ours.len(), rows.len());
        // Dictionaries may differ in their values: compare decoded.
        let plain = |a: &ArrayRef| match a.data_type() {
            DataType::Dictionary(_, v) => arrow::compute::cast(a, v).unwrap(),
            _ => a.clone(),
        };
        assert_eq!(&plain(&ours), &plain(&theirs));
    }

    proptest! {
        #[test]
        fn equals_arrow_interleave(
            inputs in proptest::collection::vec(
                proptest::collection::vec((any::<Option<i64>>(), any::<Option<bool>>(), any::<Option<[u8; 4]>>(), proptest::option::of(0u8..5)), 0..20),
                1..6,
            ),
            seed in any::<u64>(),
        ) {
            let names = ["a", "bb", "", "ccc", "a"];
            let ints: Vec<ArrayRef> = inputs.iter().map(|v| Arc::new(v.iter().map(|x| x.0).collect::<Int64Array>()) as ArrayRef).collect();
            let bools: Vec<ArrayRef> = inputs.iter().map(|v| Arc::new(v.iter().map(|x| x.1).collect::<BooleanArray>()) as ArrayRef).collect();
            let fsb: Vec<ArrayRef> = inputs.iter().map(|v| Arc::new(FixedSizeBinaryArray::try_from_sparse_iter_with_size(v.iter().map(|x| x.2), 4).unwrap()) as ArrayRef).collect();
            let dicts: Vec<ArrayRef> = inputs.iter().map(|v| dict(&v.iter().map(|x| x.3.map(|i| names[i as usize])).collect::<Vec<_>>())).collect();
            let strings: Vec<ArrayRef> = inputs.iter().map(|v| Arc::new(v.iter().map(|x| x.0.map(|i| i.to_string())).collect::<StringArray>()) as ArrayRef).collect();
            let lists: Vec<ArrayRef> = inputs.iter().map(|v| Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(v.iter().map(|x| x.3.map(|k| (0..k as i64).map(|i| x.0.map(|y| y ^ i)).collect::<Vec<_>>())))) as ArrayRef).collect();
            for set in [&ints, &bools, &fsb, &dicts, &strings, &lists] {
                check(set, seed);
            }
        }

        /// Whole span batches, with maps, events and links, sliced or not.
        #[test]
        fn span_batches_equal_arrow_interleave(
            sizes in proptest::collection::vec(0usize..12, 1..5),
            seed in any::<u64>(),
            slice in any::<bool>(),
        ) {
            let mut k = seed;
            let batches: Vec<RecordBatch> = sizes.iter().map(|&len| {
                let spans: Vec<Span> = (0..len).map(|_| {
                    k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let x = k >> 33;
                    let mut s = Span {
                        trace_id: TraceId::from_u64s(0, x % 7 + 1),
                        span_id: SpanId((x | 1).to_be_bytes()),
                        name: format!("op{}", x % 3),
                        start: (x % 5 != 0).then_some(UnixNanos(x as i64)),
                        ..Default::default()
                    };
                    for i in 0..(x % 4) {
                        s.attributes.insert(format!("k{i}"), crate::model::AttrValue::Str(format!("v{}", x % (i + 2))));
                    }
                    if x % 5 < 2 {
                        // The span's service alone: a null resource map.
                        s.local.service_name = Some(format!("svc{}", x % 2));
                        s.resource.insert("service.name".into(), crate::model::AttrValue::Str(format!("svc{}", x % 2)));
                    }
                    if x % 3 == 0 {
                        s.resource.insert("host".into(), crate::model::AttrValue::Int(x as i64));
                        s.events.push(Event { time: UnixNanos(5), name: "e".into(), ..Default::default() });
                    }
                    if x % 4 == 1 {
                        s.links.push(Link { trace_id: TraceId::from_u64s(1, 2), span_id: SpanId([3; 8]), ..Default::default() });
                    }
                    s
                }).collect();
                let b = spans_to_batch(&spans).unwrap();
                if slice && b.num_rows() > 2 { b.slice(1, b.num_rows() - 2) } else { b }
            }).collect();
            let lens: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
            let rows = shuffled(&lens, seed);
            let ours = scatter_batch(&batches, &positions(&lens, &rows)).unwrap();
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            let theirs = arrow::compute::interleave_record_batch(&refs, &rows).unwrap();
            prop_assert_eq!(
                crate::schema::batch_to_spans(&ours).unwrap(),
                crate::schema::batch_to_spans(&theirs).unwrap()
            );
        }
    }

    #[test]
    fn sliced_inputs_and_null_columns() {
        let ids = FixedSizeBinaryArray::try_from_iter((0u8..10).map(|i| [i; 8])).unwrap();
        let a: ArrayRef = Arc::new(ids.slice(2, 5));
        let b: ArrayRef = Arc::new(ids.slice(7, 3));
        check(&[a, b], 7);

        let d = dict(&[Some("x"), None, Some("y"), Some("x"), Some("z")]);
        check(&[d.slice(1, 3), d.slice(2, 3)], 3);

        let s: ArrayRef = Arc::new(StringArray::from(vec![Some("ab"), None, Some("cde")]));
        check(&[s.slice(1, 2), s.clone()], 5);

        let none: ArrayRef = new_null_array(&DataType::Utf8, 3);
        check(&[none.clone(), none], 9);
    }

    /// Spans without events, links or typed attributes: empty (not null)
    /// lists and maps in every input, also sliced past their values, and
    /// beside inputs with nulls.
    #[test]
    fn all_empty_lists_and_maps() {
        let empty: Vec<Span> = (0..6u8)
            .map(|i| Span {
                span_id: SpanId([i + 1; 8]),
                ..Default::default()
            })
            .collect();
        let full: Vec<Span> = (0..4u8)
            .map(|i| Span {
                span_id: SpanId([i + 9; 8]),
                events: vec![Event {
                    time: UnixNanos(i64::from(i)),
                    name: "e".into(),
                    attributes_json: None,
                }],
                ..Default::default()
            })
            .collect();
        let (a, b) = (
            spans_to_batch(&empty).unwrap(),
            spans_to_batch(&full).unwrap(),
        );
        for name in ["events", "links", "attributes_typed", "resource_attributes"] {
            let (ca, cb) = (
                a.column_by_name(name).unwrap(),
                b.column_by_name(name).unwrap(),
            );
            check(&[ca.clone(), ca.slice(2, 3)], 4);
            // b's lists past its last event are empty too.
            check(&[ca.clone(), cb.slice(4, 0), ca.slice(5, 1)], 6);
            check(&[ca.clone(), cb.clone()], 8);
            let nulls = new_null_array(ca.data_type(), 2);
            check(&[ca.clone(), nulls], 10);
            let out = scatter(&[ca.as_ref()], &[(0..6).rev().collect()]).unwrap();
            assert_eq!(out.len(), 6);
            assert_eq!(out.null_count(), 0, "{name}: empty, not null");
        }
    }

    #[test]
    fn bad_positions_are_errors() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let r = [a.as_ref()];
        assert!(scatter(&r, &[vec![0, 2]]).is_err(), "outside");
        assert!(scatter(&r, &[vec![1, 1]]).is_err(), "twice");
        assert!(scatter(&r, &[vec![0]]).is_err(), "shape");
        let s: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
        assert!(
            scatter(&[a.as_ref(), s.as_ref()], &[vec![0, 1], vec![2]]).is_err(),
            "types"
        );
        assert_eq!(
            scatter(&r, &[vec![1, 0]])
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .as_ref(),
            &[2, 1]
        );
        // Batches of different schemas (the same column name, another
        // type; and a list of another item type).
        let batch = |c: ArrayRef| RecordBatch::try_from_iter([("c", c)]).unwrap();
        let ints = batch(a.clone());
        let strings = batch(Arc::new(StringArray::from(vec!["x", "y"])));
        let err = scatter_batch(&[ints.clone(), strings], &[vec![0, 1], vec![2, 3]]).unwrap_err();
        assert!(err.to_string().contains("different schemas"), "{err}");
        let list = |l: ListArray| batch(Arc::new(l));
        let l64 = list(ListArray::from_iter_primitive::<Int64Type, _, _>([Some(
            vec![Some(1)],
        )]));
        let l32 = list(ListArray::from_iter_primitive::<Int32Type, _, _>([Some(
            vec![Some(1)],
        )]));
        assert!(scatter_batch(&[l64.clone(), l32], &[vec![0], vec![1]]).is_err());
        // The same schema in another Arc is fine.
        let again = batch(a.clone());
        assert_eq!(
            scatter_batch(&[ints, again], &[vec![3, 1], vec![2, 0]])
                .unwrap()
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .as_ref(),
            &[2, 2, 1, 1]
        );
        assert!(scatter_batch(&[l64.clone(), l64], &[vec![0], vec![1]]).is_ok());
    }
}
