//! Parquet column chunks written by hand: Arrow string dictionaries from
//! the dictionary itself, and the flat columns whose encoding parquet-rs
//! spends most on.
//!
//! parquet-rs writes a `Dictionary<Int32, Utf8>` column by hashing every
//! row's string into a dictionary of its own (arrow-rs #10465): at ingest
//! that was ~13 % of all the instructions spent per OTLP span. The Arrow
//! array already is a dictionary, so here each row's key is only renumbered
//! (first use first, unused values dropped) and the chunk is laid out as
//! parquet-rs lays it out:
//! - one dictionary page, PLAIN, compressed with the file's codec;
//! - version 1 data pages of `data_page_row_count_limit` rows: definition
//!   levels (RLE, 4-byte length first) and the keys (bit width, then the
//!   RLE / bit-packed hybrid), compressed together;
//! - column chunk statistics (min, max, null count) where the properties
//!   ask for chunk statistics, a bloom filter where they ask for one, and an
//!   offset index (page locations) always.
//!
//! Integer columns stored as INT32 without statistics (the span kind,
//! status code, ports, flags) are dictionary-encoded the same way, their
//! dictionary built with a hash table that skips repeats of the previous
//! value.
//!
//! Fixed-width binary columns without dictionary, statistics or bloom
//! filter (the span and parent span ids) are written PLAIN in the same
//! data pages: parquet-rs copies every such value into an allocation of
//! its own first, which had made the two id columns 7 % of a flush.
//!
//! Columns the properties give a delta encoding without dictionary (the
//! trace id, start time and duration, the URL and request id) are written
//! with it by [`crate::delta`], and boolean columns without statistics
//! PLAIN. Their statistics are kept as parquet-rs keeps them: chunk
//! minimum, maximum and null count, and with page statistics a column
//! index (each page's bounds, all-null pages marked, the boundary order);
//! so is the trace id's bloom filter, each run of a repeated id hashed
//! once. Pages of strings also end at the page size limit in bytes. These
//! five columns and the three flags had been ~340 ms of a million-span
//! flush in parquet-rs, ~130 ms here.
//!
//! Maps from strings to strings (span and resource attributes, typed or
//! not) are written leaf by leaf ([`encode_map`]): repetition and
//! definition levels from the map's offsets and nulls, keys and values
//! each in a dictionary numbered by first use, pages of whole rows.
//!
//! Where this layout does not apply (page statistics on other columns,
//! statistics that would need truncating, a codec other than LZ4_RAW or
//! none, a dictionary over the page size limit, null or non-UTF-8
//! dictionary values, nested columns) [`encode`] answers `None` and the
//! caller uses parquet-rs's writer.

use crate::delta::{self, Width, varint};
use arrow::array::{Array, AsArray, DictionaryArray, StringArray};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{DataType, Int32Type, Int64Type, UInt8Type, UInt32Type};
use bytes::Bytes;
use foldhash::fast::FixedState;
use hashbrown::{HashMap, HashTable};
use parquet::basic::BoundaryOrder;
use parquet::basic::{Compression, Encoding, PageType};
use parquet::bloom_filter::Sbbf;
use parquet::column::page::{CompressedPage, Page, PageWriteSpec, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::data_type::{ByteArray, FixedLenByteArray};
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ColumnChunkMetaData, ColumnIndexBuilder, PageEncodingStats};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::file::statistics::Statistics;
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;
use std::hash::BuildHasher;

/// An encoded column chunk: its bytes (offsets in `close` are relative to
/// them) and what the row group writer needs to splice it in.
pub(crate) struct DictChunk {
    pub bytes: Bytes,
    pub close: ColumnCloseResult,
}

/// Encodes `col` as the column chunk `descr`, or `None` when this layout
/// does not apply (see the module documentation).
pub(crate) fn encode(
    col: &dyn Array,
    descr: &ColumnDescPtr,
    props: &WriterProperties,
) -> Result<Option<DictChunk>> {
    let path = descr.path();
    let codec = props.compression(path);
    let stats = props.statistics_enabled(path);
    if descr.max_rep_level() > 0
        || descr.max_def_level() > 1
        || (descr.max_def_level() == 0 && col.null_count() > 0)
        || !matches!(codec, Compression::LZ4_RAW | Compression::UNCOMPRESSED)
        || props.writer_version() != WriterVersion::PARQUET_1_0
    {
        return Ok(None);
    }
    if let Some(payload) = delta_payload(col, descr, props) {
        return write_chunk(payload, col.len(), col.logical_nulls(), descr, props).map(Some);
    }
    if stats == EnabledStatistics::Page {
        return Ok(None);
    }
    if let Some(fixed) = col.as_fixed_size_binary_opt() {
        let width = usize::try_from(fixed.value_length()).unwrap_or(0);
        let page_rows = props.data_page_row_count_limit().max(1);
        if stats != EnabledStatistics::None
            || props.dictionary_enabled(path)
            || props.bloom_filter_properties(path).is_some()
            || props.encoding(path).is_some_and(|e| e != Encoding::PLAIN)
            || descr.physical_type() != parquet::basic::Type::FIXED_LEN_BYTE_ARRAY
            || usize::try_from(descr.type_length()).ok() != Some(width)
            || width == 0
            || page_rows.saturating_mul(width) > props.data_page_size_limit()
        {
            return Ok(None);
        }
        let payload = Payload::Fixed {
            data: fixed.value_data(),
            width,
        };
        return write_chunk(payload, col.len(), col.logical_nulls(), descr, props).map(Some);
    }
    if !props.dictionary_enabled(path) {
        return Ok(None);
    }
    let limit = props.dictionary_page_size_limit();
    let nulls = col.logical_nulls();
    let keyed = if let Some(dict) = col.as_dictionary_opt::<Int32Type>() {
        let Some(values) = dict.values().as_string_opt::<i32>() else {
            return Ok(None);
        };
        if values.null_count() > 0 {
            return Ok(None);
        }
        let Some(ids) = Renumbered::new(dict, limit) else {
            return Ok(None);
        };
        Some(ids.into_keyed(values, dict.null_count(), stats, props, descr)?)
    } else {
        // Integers stored as INT32 (UInt8, Int32, UInt32 by their bits):
        // only without statistics or bloom filter, which would have to
        // order and hash them as parquet-rs does for each logical type.
        if stats != EnabledStatistics::None
            || props.bloom_filter_properties(path).is_some()
            || descr.physical_type() != parquet::basic::Type::INT32
        {
            return Ok(None);
        }
        match col.data_type() {
            DataType::UInt8 => ints(
                col.as_primitive::<UInt8Type>().values(),
                nulls.as_ref(),
                limit,
                i32::from,
            ),
            DataType::Int32 => ints(
                col.as_primitive::<Int32Type>().values(),
                nulls.as_ref(),
                limit,
                |v| v,
            ),
            DataType::UInt32 => ints(
                col.as_primitive::<UInt32Type>().values(),
                nulls.as_ref(),
                limit,
                |v| v as i32,
            ),
            _ => None,
        }
    };
    let Some(keyed) = keyed else {
        return Ok(None);
    };
    write_chunk(Payload::Keyed(keyed), col.len(), nulls, descr, props).map(Some)
}

/// Both leaves of a map from strings to strings (keys, then values), each
/// dictionary-encoded (first use first, as parquet-rs numbers them) with
/// repetition and definition levels; `None` where this layout does not
/// apply (statistics, a bloom filter, no dictionary, another codec, a
/// dictionary over the page size limit).
///
/// parquet-rs computes the levels of every nested leaf generically and
/// hashes every value twice over (its interner, then its dictionary): the
/// span and resource attribute maps had been ~130 ms of a million-span
/// flush, the largest column cost left to it.
pub(crate) fn encode_map(
    col: &dyn Array,
    leaves: [&ColumnDescPtr; 2],
    props: &WriterProperties,
) -> Result<Option<[DictChunk; 2]>> {
    let Some(map) = col.as_map_opt() else {
        return Ok(None);
    };
    let (Some(keys), Some(values)) = (
        map.keys().as_string_opt::<i32>(),
        map.values().as_string_opt::<i32>(),
    ) else {
        return Ok(None);
    };
    for (d, max_def) in leaves.iter().zip([2, 3]) {
        let path = d.path();
        if d.max_rep_level() != 1
            || d.max_def_level() != max_def
            || d.physical_type() != parquet::basic::Type::BYTE_ARRAY
            || !matches!(
                props.compression(path),
                Compression::LZ4_RAW | Compression::UNCOMPRESSED
            )
            || props.statistics_enabled(path) != EnabledStatistics::None
            || props.bloom_filter_properties(path).is_some()
            || !props.dictionary_enabled(path)
            || props.encoding(path).is_some()
            || props.writer_version() != WriterVersion::PARQUET_1_0
        {
            return Ok(None);
        }
    }
    if keys.null_count() > 0 {
        return Ok(None);
    }
    let rows = map.len();
    let offsets = map.value_offsets();
    let nulls = map.logical_nulls().filter(|n| n.null_count() > 0);
    let value_nulls = values.logical_nulls().filter(|n| n.null_count() > 0);
    let (key_offsets, key_bytes) = (keys.value_offsets(), keys.value_data());
    let (value_offsets, value_bytes) = (values.value_offsets(), values.value_data());
    let bytes_of = |offsets: &[i32], data: &'_ [u8], e: usize| -> Option<(usize, usize)> {
        let (a, b) = (*offsets.get(e)? as usize, *offsets.get(e + 1)? as usize);
        (a <= b && b <= data.len()).then_some((a, b))
    };
    let limit = props.dictionary_page_size_limit();
    let entries = offsets[rows] as usize - offsets[0] as usize;
    let levels = rows + entries;
    let (mut rep, mut key_def, mut value_def) = (
        Vec::with_capacity(levels),
        Vec::with_capacity(levels),
        Vec::with_capacity(levels),
    );
    let mut starts = Vec::with_capacity(rows + 1);
    let (mut key_dict, mut value_dict) = (Interned::new(entries), Interned::new(entries));
    for r in 0..rows {
        starts.push(rep.len());
        let (a, b) = (offsets[r] as usize, offsets[r + 1] as usize);
        let valid = nulls.as_ref().is_none_or(|n| n.is_valid(r));
        if !valid || a == b {
            // A null map (level 0) or an empty one (1): no entry.
            let d = u32::from(valid);
            rep.push(0);
            key_def.push(d);
            value_def.push(d);
            continue;
        }
        for e in a..b {
            rep.push(u32::from(e > a));
            key_def.push(2);
            let Some((ka, kb)) = bytes_of(key_offsets, key_bytes, e) else {
                return Ok(None);
            };
            if !key_dict.add(&key_bytes[ka..kb], limit) {
                return Ok(None);
            }
            if value_nulls.as_ref().is_none_or(|n| n.is_valid(e)) {
                value_def.push(3);
                let Some((va, vb)) = bytes_of(value_offsets, value_bytes, e) else {
                    return Ok(None);
                };
                if !value_dict.add(&value_bytes[va..vb], limit) {
                    return Ok(None);
                }
            } else {
                value_def.push(2);
            }
        }
    }
    starts.push(rep.len());
    let [kd, vd] = leaves;
    Ok(Some([
        write_nested(key_dict, &rep, &key_def, 2, &starts, kd, props)?,
        write_nested(value_dict, &rep, &value_def, 3, &starts, vd, props)?,
    ]))
}

/// Strings numbered by first use, with their PLAIN dictionary page.
struct Interned {
    plain: Vec<u8>,
    /// Where each value's bytes are in `plain`.
    at: Vec<(u32, u32)>,
    table: HashTable<u32>,
    hasher: FixedState,
    /// Each value added, by number.
    ids: Vec<u32>,
    last: Option<u32>,
}

impl Interned {
    fn new(capacity: usize) -> Self {
        Interned {
            plain: Vec::new(),
            at: Vec::new(),
            table: HashTable::new(),
            hasher: FixedState::default(),
            ids: Vec::with_capacity(capacity),
            last: None,
        }
    }

    fn value(plain: &[u8], at: (u32, u32)) -> &[u8] {
        &plain[at.0 as usize..(at.0 + at.1) as usize]
    }

    /// Adds `v`; `false` once the dictionary page passes `limit` bytes.
    fn add(&mut self, v: &[u8], limit: usize) -> bool {
        if let Some(l) = self.last
            && Self::value(&self.plain, self.at[l as usize]) == v
        {
            self.ids.push(l);
            return true;
        }
        let h = self.hasher.hash_one(v);
        let (plain, at, hasher) = (&mut self.plain, &mut self.at, &self.hasher);
        let id = match self.table.entry(
            h,
            |&k| Self::value(plain, at[k as usize]) == v,
            |&k| hasher.hash_one(Self::value(plain, at[k as usize])),
        ) {
            hashbrown::hash_table::Entry::Occupied(e) => *e.get(),
            hashbrown::hash_table::Entry::Vacant(e) => {
                let (Ok(len), Ok(id)) = (u32::try_from(v.len()), u32::try_from(at.len())) else {
                    return false;
                };
                plain.extend_from_slice(&len.to_le_bytes());
                at.push((plain.len() as u32, len));
                plain.extend_from_slice(v);
                if plain.len() > limit {
                    return false;
                }
                e.insert(id);
                id
            }
        };
        self.last = Some(id);
        self.ids.push(id);
        true
    }
}

/// A chunk's codec, whether its pages are compressed (LZ4_RAW, the one
/// codec these writers take) and the rows per data page.
fn page_settings(descr: &ColumnDescPtr, props: &WriterProperties) -> (Compression, bool, usize) {
    let codec = props.compression(descr.path());
    (
        codec,
        codec == Compression::LZ4_RAW,
        props.data_page_row_count_limit().max(1),
    )
}

/// A data page's dictionary keys: the `defined` keys from `*next` on,
/// bit-packed after their width byte; `*next` moves past them.
fn next_keys(
    ids: &[u32],
    next: &mut usize,
    defined: usize,
    bit_width: u8,
    buf: &mut Vec<u8>,
) -> Result<()> {
    let keys = ids
        .get(*next..*next + defined)
        .ok_or_else(|| ParquetError::General("fewer dictionary keys than defined values".into()))?;
    buf.push(bit_width);
    hybrid(keys, bit_width, buf);
    *next += defined;
    Ok(())
}

/// One leaf of a nested column: the dictionary page, then data pages of
/// `data_page_row_count_limit` rows (records), each holding its
/// repetition levels, definition levels and the keys of the values
/// defined (level `max_def`). `starts` holds each row's first level, and
/// the level count last.
fn write_nested(
    dict: Interned,
    rep: &[u32],
    def: &[u32],
    max_def: u32,
    starts: &[usize],
    descr: &ColumnDescPtr,
    props: &WriterProperties,
) -> Result<DictChunk> {
    let (codec, compress, page_rows) = page_settings(descr, props);
    let rows = starts.len() - 1;
    let mut sink = TrackedWrite::new(Vec::with_capacity(dict.plain.len() + rep.len() / 2 + 1024));
    let mut specs: Vec<(PageWriteSpec, usize)> = Vec::with_capacity(rows / page_rows + 2);
    let dictionary_page;
    {
        let mut pages = SerializedPageWriter::new(&mut sink);
        let entries = dict.at.len();
        dictionary_page = Some(plain_dictionary_page(
            &mut pages, dict.plain, entries, compress,
        )?);
        let bit_width = bits_for(entries.saturating_sub(1) as u32);
        let def_width = bits_for(max_def);
        let (mut first, mut next_id) = (0usize, 0usize);
        let mut buf: Vec<u8> = Vec::new();
        while first < rows {
            let end = (first + page_rows).min(rows);
            let (a, b) = (starts[first], starts[end]);
            buf.clear();
            for (levels, width) in [(&rep[a..b], 1), (&def[a..b], def_width)] {
                length_prefixed(&mut buf, |buf| hybrid(levels, width, buf));
            }
            let defined = def[a..b].iter().filter(|&&d| d == max_def).count();
            next_keys(&dict.ids, &mut next_id, defined, bit_width, &mut buf)?;
            let values = b - a;
            let spec = data_page(
                &mut pages,
                &mut buf,
                values,
                Encoding::RLE_DICTIONARY,
                compress,
            )?;
            specs.push((spec, first));
            first = end;
        }
        pages.close()?;
    }
    close_chunk(
        sink,
        Pages {
            dictionary: dictionary_page,
            data: specs,
            encoding: Encoding::RLE_DICTIONARY,
        },
        rows,
        rep.len(),
        None,
        None,
        None,
        descr,
        codec,
    )
}

/// What the data pages hold besides the definition levels.
enum Payload<'a> {
    /// Dictionary keys (after a dictionary page).
    Keyed(Keyed),
    /// PLAIN values of `width` bytes, every row's (null rows' too) in `data`.
    Fixed { data: &'a [u8], width: usize },
    /// `DELTA_BINARY_PACKED` 64-bit integers, every row's in `values`.
    Ints {
        values: &'a [i64],
        stats: EnabledStatistics,
    },
    /// `DELTA_BYTE_ARRAY` byte strings.
    Bytes {
        values: Strings<'a>,
        stats: EnabledStatistics,
        bloom: Option<(Sbbf, f64)>,
    },
    /// PLAIN booleans.
    Bools(BooleanBuffer),
}

/// Every row's byte string (null rows' empty, or whatever the array holds).
#[derive(Clone, Copy)]
enum Strings<'a> {
    Fixed { data: &'a [u8], width: usize },
    Var { offsets: &'a [i32], data: &'a [u8] },
}

impl<'a> Strings<'a> {
    /// Row `i`'s bytes; `i` below the row count checked in
    /// [`delta_payload`].
    #[inline]
    fn get(self, i: usize) -> &'a [u8] {
        match self {
            Strings::Fixed { data, width } => &data[i * width..(i + 1) * width],
            Strings::Var { offsets, data } => &data[offsets[i] as usize..offsets[i + 1] as usize],
        }
    }

    /// Where a page starting at row `first` ends: at `end`, or sooner once
    /// its values pass `limit` bytes (the row that passes it included).
    fn page_end(self, first: usize, end: usize, limit: usize) -> usize {
        match self {
            Strings::Fixed { .. } => end,
            Strings::Var { offsets, .. } => {
                let base = offsets[first] as usize;
                let under =
                    offsets[first + 1..end].partition_point(|&o| (o as usize) - base < limit);
                first + 1 + under
            }
        }
    }
}

/// The payload of a column written with the delta encoding its properties
/// ask for (without dictionary), or of a boolean column without
/// statistics; `None` for any other column.
///
/// Statistics are kept where they need no truncation: 64-bit integers, and
/// fixed-width binary no wider than the truncation lengths (the trace id).
fn delta_payload<'a>(
    col: &'a dyn Array,
    descr: &ColumnDescPtr,
    props: &WriterProperties,
) -> Option<Payload<'a>> {
    use parquet::basic::Type as Physical;
    let path = descr.path();
    let stats = props.statistics_enabled(path);
    let bloom = props.bloom_filter_properties(path);
    let dictionary = props.dictionary_enabled(path);
    let rows = col.len();
    match (col.data_type(), descr.physical_type(), props.encoding(path)) {
        (DataType::Int64, Physical::INT64, Some(Encoding::DELTA_BINARY_PACKED))
            if !dictionary && bloom.is_none() =>
        {
            let values = col.as_primitive_opt::<Int64Type>()?.values();
            (values.len() == rows).then_some(Payload::Ints { values, stats })
        }
        (
            DataType::FixedSizeBinary(w),
            Physical::FIXED_LEN_BYTE_ARRAY,
            Some(Encoding::DELTA_BYTE_ARRAY),
        ) if !dictionary && *w > 0 && descr.type_length() == *w => {
            let width = usize::try_from(*w).ok()?;
            let untruncated = |l: Option<usize>| l.is_none_or(|l| l >= width);
            if stats != EnabledStatistics::None
                && !(untruncated(props.statistics_truncate_length())
                    && untruncated(props.column_index_truncate_length()))
            {
                return None;
            }
            let data = col.as_fixed_size_binary_opt()?.value_data();
            if data.len() < rows.checked_mul(width)? {
                return None;
            }
            Some(Payload::Bytes {
                values: Strings::Fixed { data, width },
                stats,
                bloom: new_bloom(bloom)?,
            })
        }
        (DataType::Utf8, Physical::BYTE_ARRAY, Some(Encoding::DELTA_BYTE_ARRAY))
            if !dictionary && stats == EnabledStatistics::None =>
        {
            let s = col.as_string_opt::<i32>()?;
            let (offsets, data) = (s.value_offsets(), s.value_data());
            if offsets.len() != rows + 1 || offsets.last().is_some_and(|&o| o as usize > data.len())
            {
                return None;
            }
            Some(Payload::Bytes {
                values: Strings::Var { offsets, data },
                stats,
                bloom: new_bloom(bloom)?,
            })
        }
        (DataType::Boolean, Physical::BOOLEAN, None | Some(Encoding::PLAIN))
            if stats == EnabledStatistics::None && bloom.is_none() =>
        {
            Some(Payload::Bools(col.as_boolean_opt()?.values().clone()))
        }
        _ => None,
    }
}

/// The empty bloom filter the properties ask for, with its target false
/// positive rate: `Some(None)` where they ask for none, `None` where the
/// filter cannot be made (the caller then leaves the column to
/// parquet-rs, which reports why).
#[allow(clippy::option_option)]
fn new_bloom(
    props: Option<&parquet::file::properties::BloomFilterProperties>,
) -> Option<Option<(Sbbf, f64)>> {
    match props {
        None => Some(None),
        Some(bf) => Sbbf::new_with_ndv_fpp(bf.ndv(), bf.fpp())
            .ok()
            .map(|s| Some((s, bf.fpp()))),
    }
}

/// A column's values as a dictionary: the PLAIN dictionary page, and each
/// defined row's index into it, in row order.
struct Keyed {
    plain: Vec<u8>,
    entries: usize,
    ids: Vec<u32>,
    statistics: Option<Statistics>,
    bloom_filter: Option<Sbbf>,
}

/// Integer values renumbered by first use (parquet-rs's order), `None`
/// when the dictionary would pass `limit` bytes.
fn ints<T: Copy>(
    values: &[T],
    nulls: Option<&NullBuffer>,
    limit: usize,
    to_i32: impl Fn(T) -> i32,
) -> Option<Keyed> {
    let mut seen: HashMap<i32, u32, FixedState> = HashMap::with_hasher(FixedState::default());
    let mut plain = Vec::new();
    let mut ids = Vec::with_capacity(values.len());
    let mut last: Option<(i32, u32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if nulls.is_some_and(|n| n.is_null(i)) {
            continue;
        }
        let v = to_i32(v);
        let id = match last {
            Some((lv, id)) if lv == v => id,
            _ => {
                let next = seen.len() as u32;
                let id = *seen.entry(v).or_insert_with(|| {
                    plain.extend_from_slice(&v.to_le_bytes());
                    next
                });
                if plain.len() > limit {
                    return None;
                }
                last = Some((v, id));
                id
            }
        };
        ids.push(id);
    }
    Some(Keyed {
        entries: seen.len(),
        plain,
        ids,
        statistics: None,
        bloom_filter: None,
    })
}

/// Writes the chunk: the dictionary page (keyed payloads), then data
/// pages of `data_page_row_count_limit` rows.
fn write_chunk(
    mut payload: Payload<'_>,
    rows: usize,
    nulls: Option<NullBuffer>,
    descr: &ColumnDescPtr,
    props: &WriterProperties,
) -> Result<DictChunk> {
    let (codec, compress, page_rows) = page_settings(descr, props);
    let (capacity, data_encoding) = match &payload {
        Payload::Keyed(k) => (k.plain.len() + rows / 2, Encoding::RLE_DICTIONARY),
        Payload::Fixed { width, .. } => (rows * width / 2, Encoding::PLAIN),
        Payload::Ints { .. } => (rows * 2, Encoding::DELTA_BINARY_PACKED),
        Payload::Bytes { .. } => (rows * 8, Encoding::DELTA_BYTE_ARRAY),
        Payload::Bools(_) => (rows / 8, Encoding::PLAIN),
    };
    let mut bounds = match &payload {
        Payload::Ints { stats, .. } | Payload::Bytes { stats, .. } => {
            Bounds::new(*stats, descr.physical_type())
        }
        _ => None,
    };
    let mut sink = TrackedWrite::new(Vec::with_capacity(capacity + 1024));
    let mut specs: Vec<(PageWriteSpec, usize)> = Vec::with_capacity(rows / page_rows + 2);
    let mut dictionary_page = None;
    {
        let mut pages = SerializedPageWriter::new(&mut sink);
        let mut bit_width = 0;
        if let Payload::Keyed(k) = &mut payload {
            let plain = std::mem::take(&mut k.plain);
            dictionary_page = Some(plain_dictionary_page(
                &mut pages, plain, k.entries, compress,
            )?);
            bit_width = bits_for(k.entries.saturating_sub(1) as u32);
        }
        let mut levels: Vec<u32> = Vec::with_capacity(page_rows.min(rows));
        let mut buf: Vec<u8> = Vec::new();
        let (mut ints, mut prefixes, mut suffixes) = (Vec::new(), Vec::new(), Vec::new());
        let mut next_id = 0usize;
        let mut first = 0usize;
        let valid = |i: &usize| nulls.as_ref().is_none_or(|n| n.is_valid(*i));
        while first < rows {
            let mut end = (first + page_rows).min(rows);
            if let Payload::Bytes { values, .. } = &payload {
                end = values.page_end(first, end, props.data_page_size_limit());
            }
            buf.clear();
            let defined = if descr.max_def_level() == 0 {
                end - first
            } else {
                length_prefixed(&mut buf, |buf| match &nulls {
                    None => {
                        rle_run(1, end - first, 1, buf);
                        end - first
                    }
                    Some(n) => {
                        levels.clear();
                        levels.extend((first..end).map(|i| u32::from(n.is_valid(i))));
                        hybrid(&levels, 1, buf);
                        levels.iter().filter(|&&l| l == 1).count()
                    }
                })
            };
            match &mut payload {
                Payload::Keyed(k) => {
                    next_keys(&k.ids, &mut next_id, defined, bit_width, &mut buf)?;
                }
                Payload::Fixed { data, width } => {
                    let (data, width) = (*data, *width);
                    let rows_of = |from: usize, to: usize| {
                        data.get(from * width..to * width).ok_or_else(|| {
                            ParquetError::General("fixed-width values shorter than the rows".into())
                        })
                    };
                    match &nulls {
                        None => buf.extend_from_slice(rows_of(first, end)?),
                        Some(n) => {
                            for i in (first..end).filter(|&i| n.is_valid(i)) {
                                buf.extend_from_slice(rows_of(i, i + 1)?);
                            }
                        }
                    }
                }
                Payload::Ints { values, .. } => {
                    ints.clear();
                    ints.extend((first..end).filter(valid).map(|i| values[i]));
                    delta::delta_packed(&ints, Width::I64, &mut buf);
                    if let Some(b) = &mut bounds {
                        let range = ints.iter().min().zip(ints.iter().max());
                        b.page(
                            range.map(|(lo, hi)| (Bound::Int(*lo), Bound::Int(*hi))),
                            end - first - defined,
                        );
                    }
                }
                Payload::Bytes { values, bloom, .. } => {
                    let values = *values;
                    let page = (first..end).filter(valid).map(|i| values.get(i));
                    delta::delta_bytes(page.clone(), &mut prefixes, &mut suffixes, &mut buf);
                    if bloom.is_some() || bounds.is_some() {
                        // Each value against the one before, from the prefix
                        // they share: a repeat is hashed once (rows are
                        // sorted by trace), and a page whose values never
                        // go down has its first and last for bounds.
                        let (mut prev, mut sorted) = (None::<&[u8]>, true);
                        for (v, &p) in page.clone().zip(prefixes.iter()) {
                            let order = prev.map(|prev| {
                                let p = p as usize;
                                match (v.get(p), prev.get(p)) {
                                    (Some(a), Some(b)) => a.cmp(b),
                                    _ => v.len().cmp(&prev.len()),
                                }
                            });
                            if order != Some(std::cmp::Ordering::Equal)
                                && let Some((sbbf, _)) = bloom
                            {
                                sbbf.insert(v);
                            }
                            sorted &= order != Some(std::cmp::Ordering::Less);
                            prev = Some(v);
                        }
                        if let Some(b) = &mut bounds {
                            let range = if sorted {
                                page.clone().next().zip(prev)
                            } else {
                                page.fold(None, |r: Option<(&[u8], &[u8])>, v| {
                                    Some(r.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
                                })
                            };
                            b.page(
                                range.map(|(lo, hi)| {
                                    (Bound::Bytes(lo.to_vec()), Bound::Bytes(hi.to_vec()))
                                }),
                                end - first - defined,
                            );
                        }
                    }
                }
                Payload::Bools(b) => {
                    delta::plain_bools((first..end).filter(valid).map(|i| b.value(i)), &mut buf);
                }
            }
            let spec = data_page(&mut pages, &mut buf, end - first, data_encoding, compress)?;
            specs.push((spec, first));
            first = end;
        }
        pages.close()?;
    }
    let nulls_total = nulls.as_ref().map_or(0, |n| n.null_count());
    let (statistics, column_index) = match bounds {
        Some(b) => b.finish(nulls_total as u64)?,
        None => (None, None),
    };
    let (statistics, bloom_filter) = match payload {
        Payload::Keyed(k) => (k.statistics, k.bloom_filter),
        Payload::Bytes {
            bloom: Some((mut sbbf, fpp)),
            ..
        } => {
            sbbf.fold_to_target_fpp(fpp);
            (statistics, Some(sbbf))
        }
        _ => (statistics, None),
    };
    close_chunk(
        sink,
        Pages {
            dictionary: dictionary_page,
            data: specs,
            encoding: data_encoding,
        },
        rows,
        rows,
        statistics,
        bloom_filter,
        column_index,
        descr,
        codec,
    )
}

/// Appends what `write` writes, after its length (4 bytes, little-endian),
/// as a version 1 data page holds its levels.
fn length_prefixed<T>(buf: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let out = write(buf);
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out
}

/// Writes `buf` (taken) as a version 1 data page holding `values` levels.
fn data_page(
    pages: &mut impl PageWriter,
    buf: &mut Vec<u8>,
    values: usize,
    encoding: Encoding,
    lz4: bool,
) -> Result<PageWriteSpec> {
    let uncompressed = buf.len();
    let page = Page::DataPage {
        buf: compressed(std::mem::take(buf), lz4)?,
        num_values: values as u32,
        encoding,
        def_level_encoding: Encoding::RLE,
        rep_level_encoding: Encoding::RLE,
        statistics: None,
    };
    pages.write_page(CompressedPage::new(page, uncompressed))
}

/// Writes a PLAIN dictionary page of `entries` values.
fn plain_dictionary_page(
    pages: &mut impl PageWriter,
    plain: Vec<u8>,
    entries: usize,
    lz4: bool,
) -> Result<PageWriteSpec> {
    let uncompressed = plain.len();
    let page = Page::DictionaryPage {
        buf: compressed(plain, lz4)?,
        num_values: entries as u32,
        encoding: Encoding::PLAIN,
        is_sorted: false,
    };
    pages.write_page(CompressedPage::new(page, uncompressed))
}

/// Where a chunk's pages went: the dictionary page, each data page with
/// its first row, the data pages' encoding.
struct Pages {
    dictionary: Option<PageWriteSpec>,
    data: Vec<(PageWriteSpec, usize)>,
    encoding: Encoding,
}

/// The chunk's bytes and what the row group writer needs to splice them
/// in: metadata, offset index, and the statistics, bloom filter and column
/// index given. `values` counts levels (rows for a flat column).
#[allow(clippy::too_many_arguments)]
fn close_chunk(
    sink: TrackedWrite<Vec<u8>>,
    pages: Pages,
    rows: usize,
    values: usize,
    statistics: Option<Statistics>,
    bloom_filter: Option<Sbbf>,
    column_index: Option<ColumnIndexMetaData>,
    descr: &ColumnDescPtr,
    codec: Compression,
) -> Result<DictChunk> {
    let Pages {
        dictionary: dictionary_page,
        data: specs,
        encoding: data_encoding,
    } = pages;
    let bytes = Bytes::from(sink.into_inner()?);

    let mut page_stats = Vec::with_capacity(2);
    // The data pages' encoding, RLE for levels, PLAIN for a dictionary.
    let mut encodings = vec![data_encoding, Encoding::RLE];
    if dictionary_page.is_some() {
        encodings.push(Encoding::PLAIN);
        page_stats.push(PageEncodingStats {
            page_type: PageType::DICTIONARY_PAGE,
            encoding: Encoding::PLAIN,
            count: 1,
        });
    }
    page_stats.push(PageEncodingStats {
        page_type: PageType::DATA_PAGE,
        encoding: data_encoding,
        count: specs.len() as i32,
    });
    let all_pages = dictionary_page.iter().chain(specs.iter().map(|(s, _)| s));
    let mut meta = ColumnChunkMetaData::builder(descr.clone())
        .set_compression(codec)
        .set_encodings(encodings)
        .set_page_encoding_stats(page_stats)
        .set_total_compressed_size(all_pages.clone().map(|s| s.compressed_size as i64).sum())
        .set_total_uncompressed_size(all_pages.map(|s| s.uncompressed_size as i64).sum())
        .set_num_values(values as i64)
        .set_dictionary_page_offset(dictionary_page.as_ref().map(|s| s.offset as i64))
        .set_data_page_offset(
            specs
                .first()
                .map_or(bytes.len() as i64, |(s, _)| s.offset as i64),
        );
    if let Some(s) = statistics {
        meta = meta.set_statistics(s);
    }
    let offset_index = OffsetIndexMetaData {
        page_locations: specs
            .iter()
            .map(|(s, first)| {
                Ok(PageLocation {
                    offset: s.offset as i64,
                    compressed_page_size: i32::try_from(s.compressed_size)
                        .map_err(|_| ParquetError::General("page over 2 GiB".into()))?,
                    first_row_index: *first as i64,
                })
            })
            .collect::<Result<_>>()?,
        unencoded_byte_array_data_bytes: None,
    };
    Ok(DictChunk {
        close: ColumnCloseResult {
            bytes_written: bytes.len() as u64,
            rows_written: rows as u64,
            metadata: meta.build()?,
            bloom_filter,
            column_index,
            offset_index: Some(offset_index),
        },
        bytes,
    })
}

/// The rows' keys renumbered into the dictionary the chunk stores: values
/// in order of first use, unused ones left out.
struct Renumbered {
    /// The Arrow dictionary index of each stored value.
    order: Vec<u32>,
    /// Each defined row's stored index, in row order.
    ids: Vec<u32>,
    /// Size of the PLAIN dictionary page.
    dict_bytes: usize,
}

impl Renumbered {
    /// `None` when the stored dictionary would pass `limit` bytes
    /// (parquet-rs then falls back to plain values) or a key is out of range.
    fn new(dict: &DictionaryArray<Int32Type>, limit: usize) -> Option<Self> {
        let values = dict.values().as_string::<i32>();
        let offsets = values.value_offsets();
        let mut slot = vec![u32::MAX; values.len()];
        let mut order = Vec::new();
        let mut ids = Vec::with_capacity(dict.len() - dict.null_count());
        let mut dict_bytes = 0usize;
        let keys = dict.keys();
        let mut add = |k: i32| -> Option<()> {
            let k = usize::try_from(k).ok()?;
            let s = slot.get_mut(k)?;
            if *s == u32::MAX {
                *s = order.len() as u32;
                order.push(k as u32);
                dict_bytes += 4 + (offsets[k + 1] - offsets[k]) as usize;
                if dict_bytes > limit {
                    return None;
                }
            }
            ids.push(*s);
            Some(())
        };
        match keys.nulls() {
            None => keys.values().iter().try_for_each(|&k| add(k))?,
            Some(n) => keys
                .values()
                .iter()
                .zip(n.iter())
                .filter(|(_, valid)| *valid)
                .try_for_each(|(&k, _)| add(k))?,
        }
        Some(Self {
            order,
            ids,
            dict_bytes,
        })
    }

    /// The dictionary page, statistics (where `stats` asks for them) and
    /// bloom filter (where the properties ask for one).
    fn into_keyed(
        self,
        values: &StringArray,
        null_count: usize,
        stats: EnabledStatistics,
        props: &WriterProperties,
        descr: &ColumnDescPtr,
    ) -> Result<Keyed> {
        let mut plain = Vec::with_capacity(self.dict_bytes);
        for &k in &self.order {
            let v = values.value(k as usize).as_bytes();
            plain.extend_from_slice(&(v.len() as u32).to_le_bytes());
            plain.extend_from_slice(v);
        }
        let statistics = (stats == EnabledStatistics::Chunk).then(|| {
            let (min, max) = self.min_max(values);
            let bytes = |s: Option<&str>| s.map(|s| ByteArray::from(s.as_bytes().to_vec()));
            Statistics::byte_array(bytes(min), bytes(max), None, Some(null_count as u64), false)
        });
        let bloom_filter = match props.bloom_filter_properties(descr.path()) {
            Some(bf) => {
                let mut sbbf = Sbbf::new_with_ndv_fpp(bf.ndv(), bf.fpp())?;
                for &k in &self.order {
                    sbbf.insert(values.value(k as usize).as_bytes());
                }
                sbbf.fold_to_target_fpp(bf.fpp());
                Some(sbbf)
            }
            None => None,
        };
        Ok(Keyed {
            plain,
            entries: self.order.len(),
            ids: self.ids,
            statistics,
            bloom_filter,
        })
    }

    /// The smallest and largest stored value, byte-wise (UTF-8 columns sort
    /// unsigned).
    fn min_max<'a>(&self, values: &'a StringArray) -> (Option<&'a str>, Option<&'a str>) {
        let mut it = self.order.iter().map(|&k| values.value(k as usize));
        let Some(first) = it.next() else {
            return (None, None);
        };
        let (min, max) = it.fold((first, first), |(lo, hi), v| {
            (
                if v.as_bytes() < lo.as_bytes() { v } else { lo },
                if v.as_bytes() > hi.as_bytes() { v } else { hi },
            )
        });
        (Some(min), Some(max))
    }
}

/// A page's or chunk's smallest or largest value.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Bound {
    Int(i64),
    Bytes(Vec<u8>),
}

impl Bound {
    /// As the column index stores it (PLAIN, little-endian integers).
    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Bound::Int(v) => v.to_le_bytes().to_vec(),
            Bound::Bytes(b) => b.clone(),
        }
    }
}

/// Chunk statistics, and a column index where page statistics are asked
/// for, kept as parquet-rs keeps them: all-null pages marked null with
/// empty bounds, the boundary order ascending or descending while each
/// non-null page's bounds are.
struct Bounds {
    index: Option<ColumnIndexBuilder>,
    ascending: bool,
    descending: bool,
    last: Option<(Bound, Bound)>,
    chunk: Option<(Bound, Bound)>,
    physical: parquet::basic::Type,
}

impl Bounds {
    fn new(stats: EnabledStatistics, physical: parquet::basic::Type) -> Option<Self> {
        (stats != EnabledStatistics::None).then(|| Bounds {
            index: (stats == EnabledStatistics::Page).then(|| ColumnIndexBuilder::new(physical)),
            ascending: true,
            descending: true,
            last: None,
            chunk: None,
            physical,
        })
    }

    fn page(&mut self, range: Option<(Bound, Bound)>, nulls: usize) {
        let Some((lo, hi)) = range else {
            if let Some(index) = &mut self.index {
                index.append(true, Vec::new(), Vec::new(), nulls as i64);
            }
            return;
        };
        if let Some(index) = &mut self.index {
            index.append(false, lo.to_bytes(), hi.to_bytes(), nulls as i64);
        }
        if let Some((last_lo, last_hi)) = &self.last {
            if *last_lo > lo || *last_hi > hi {
                self.ascending = false;
            }
            if lo > *last_lo || hi > *last_hi {
                self.descending = false;
            }
        }
        self.chunk = Some(match self.chunk.take() {
            None => (lo.clone(), hi.clone()),
            Some((clo, chi)) => (clo.min(lo.clone()), chi.max(hi.clone())),
        });
        self.last = Some((lo, hi));
    }

    fn finish(self, nulls: u64) -> Result<(Option<Statistics>, Option<ColumnIndexMetaData>)> {
        let (lo, hi) = self.chunk.unzip();
        let statistics = match self.physical {
            parquet::basic::Type::INT64 => {
                let int = |b: Option<Bound>| match b {
                    Some(Bound::Int(v)) => Some(v),
                    _ => None,
                };
                Statistics::int64(int(lo), int(hi), None, Some(nulls), false)
            }
            _ => {
                let bytes = |b: Option<Bound>| match b {
                    Some(Bound::Bytes(v)) => Some(FixedLenByteArray::from(v)),
                    _ => None,
                };
                Statistics::fixed_len_byte_array(bytes(lo), bytes(hi), None, Some(nulls), false)
            }
        };
        let index = match self.index {
            Some(mut index) => {
                index.set_boundary_order(match (self.ascending, self.descending) {
                    (true, _) => BoundaryOrder::ASCENDING,
                    (false, true) => BoundaryOrder::DESCENDING,
                    (false, false) => BoundaryOrder::UNORDERED,
                });
                Some(index.build()?)
            }
            None => None,
        };
        Ok((Some(statistics), index))
    }
}

fn compressed(buf: Vec<u8>, lz4: bool) -> Result<Bytes> {
    if !lz4 {
        return Ok(buf.into());
    }
    let mut out = vec![0; lz4_flex::block::get_maximum_output_size(buf.len())];
    let n = lz4_flex::block::compress_into(&buf, &mut out)
        .map_err(|e| ParquetError::External(Box::new(e)))?;
    out.truncate(n);
    Ok(out.into())
}

/// Bits needed for `max` (0 for 0, as parquet-rs writes a one-value
/// dictionary's keys).
fn bits_for(max: u32) -> u8 {
    (32 - max.leading_zeros()) as u8
}

/// One RLE run: `count` times `value`, the value in whole bytes.
fn rle_run(value: u32, count: usize, bit_width: u8, out: &mut Vec<u8>) {
    varint((count as u64) << 1, out);
    out.extend_from_slice(&value.to_le_bytes()[..bit_width.div_ceil(8) as usize]);
}

/// One bit-packed run of `values`, the last group of 8 padded with zeros
/// (only the last run of a page may need that).
fn bit_packed(values: &[u32], bit_width: u8, out: &mut Vec<u8>) {
    let groups = values.len().div_ceil(8);
    varint(((groups as u64) << 1) | 1, out);
    let (mut acc, mut bits) = (0u64, 0u32);
    for i in 0..groups * 8 {
        acc |= u64::from(values.get(i).copied().unwrap_or(0)) << bits;
        bits += u32::from(bit_width);
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
}

/// Parquet's RLE / bit-packing hybrid encoding of `values` (each below
/// 2^`bit_width`): runs of 8 or more equal values as RLE runs, the rest
/// bit-packed. A bit-packed run holds whole groups of 8, so before an RLE
/// run the values pending since the last one are topped up to a multiple
/// of 8 from the run itself.
fn hybrid(values: &[u32], bit_width: u8, out: &mut Vec<u8>) {
    let n = values.len();
    let (mut pending, mut i) = (0usize, 0usize);
    while i < n {
        let v = values[i];
        let mut j = i + 1;
        while j < n && values[j] == v {
            j += 1;
        }
        let fill = (8 - (i - pending) % 8) % 8;
        if j - i >= fill + 8 {
            if i + fill > pending {
                bit_packed(&values[pending..i + fill], bit_width, out);
            }
            rle_run(v, j - i - fill, bit_width, out);
            pending = j;
        }
        i = j;
    }
    if n > pending {
        bit_packed(&values[pending..], bit_width, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader of the hybrid encoding, written from the format's
    /// description, to check the encoder on its own.
    fn decode(mut data: &[u8], bit_width: u8, n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        while out.len() < n {
            let mut header = 0u64;
            let mut shift = 0;
            loop {
                let b = data[0];
                data = &data[1..];
                header |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b < 0x80 {
                    break;
                }
            }
            if header & 1 == 0 {
                let w = bit_width.div_ceil(8) as usize;
                let mut v = [0u8; 4];
                v[..w].copy_from_slice(&data[..w]);
                data = &data[w..];
                out.extend(std::iter::repeat_n(
                    u32::from_le_bytes(v),
                    (header >> 1) as usize,
                ));
            } else {
                let count = (header >> 1) as usize * 8;
                let (mut acc, mut bits) = (0u64, 0u32);
                for _ in 0..count {
                    while bits < u32::from(bit_width) {
                        acc |= u64::from(data[0]) << bits;
                        data = &data[1..];
                        bits += 8;
                    }
                    out.push((acc & ((1u64 << bit_width) - 1)) as u32);
                    acc >>= bit_width;
                    bits -= u32::from(bit_width);
                }
            }
        }
        assert!(data.is_empty(), "{} bytes left over", data.len());
        out
    }

    #[test]
    fn hybrid_edges() {
        for (values, width) in [
            (vec![], 1),
            (vec![0], 0),
            (vec![0; 100], 0),
            (vec![1; 7], 1),
            (vec![1; 8], 1),
            (vec![1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], 1),
            ((0..20).collect(), 5),
            ([vec![3; 5], vec![7; 20], vec![1, 2, 3]].concat(), 3),
            (vec![u32::MAX >> 1; 9], 31),
            (vec![u32::MAX; 17], 32),
        ] {
            let mut buf = Vec::new();
            hybrid(&values, width, &mut buf);
            let mut got = decode(&buf, width, values.len());
            got.truncate(values.len());
            assert_eq!(got, values, "width {width}");
        }
    }

    proptest::proptest! {
        #[test]
        fn hybrid_round_trips(
            runs in proptest::collection::vec((0u32..1000, 1usize..40), 0..60),
            width in 10u8..=12,
        ) {
            let values: Vec<u32> = runs
                .iter()
                .flat_map(|&(v, n)| std::iter::repeat_n(v, n))
                .collect();
            let mut buf = Vec::new();
            hybrid(&values, width, &mut buf);
            let mut got = decode(&buf, width, values.len());
            got.truncate(values.len());
            proptest::prop_assert_eq!(got, values);
        }
    }
}
