//! Parquet's delta encodings and PLAIN booleans, for the data pages
//! [`crate::dictchunk`] writes by hand.
//!
//! - `DELTA_BINARY_PACKED`: blocks of 128 values in 4 miniblocks of 32;
//!   each block holds its smallest delta (zigzag varint), the miniblocks'
//!   bit widths, and each delta less the smallest, bit-packed LSB first.
//!   The last miniblock in use is padded to 32 values; the widths of
//!   miniblocks past the last value are written as 0, their bodies not at
//!   all (the format's rules, and what parquet-rs writes).
//! - `DELTA_BYTE_ARRAY`: each value's prefix shared with the previous value
//!   (lengths, delta-packed as 32-bit integers), then the suffixes' lengths
//!   (the same) and the suffixes' bytes one after another.
//! - PLAIN booleans: one bit per value, LSB first.
//!
//! parquet-rs's encoders take their values one `put` at a time through
//! trait objects, and its fixed-width binary path copies every value into
//! an allocation of its own first: the trace id column alone had been
//! ~140 ms of a million-span flush.

const BLOCK: usize = 128;
const MINIBLOCKS: usize = 4;
const MINI: usize = BLOCK / MINIBLOCKS;

pub(crate) fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The width of the integers a column stores: deltas wrap at it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Width {
    I32,
    I64,
}

/// `DELTA_BINARY_PACKED` encoding of `values`, appended to `out`. With
/// [`Width::I32`] the values must fit 32 bits; deltas then wrap at 32
/// bits, as a reader of an INT32 column computes them.
pub(crate) fn delta_packed(values: &[i64], width: Width, out: &mut Vec<u8>) {
    varint(BLOCK as u64, out);
    varint(MINIBLOCKS as u64, out);
    varint(values.len() as u64, out);
    let Some(&first) = values.first() else {
        varint(0, out);
        return;
    };
    varint(zigzag(first), out);
    let sub = |a: i64, b: i64| -> i64 {
        match width {
            Width::I64 => a.wrapping_sub(b),
            Width::I32 => i64::from((a as i32).wrapping_sub(b as i32)),
        }
    };
    // `packed` is what each delta stores: (delta - min) at the width.
    let packed = |d: i64, min: i64| -> u64 {
        match width {
            Width::I64 => d.wrapping_sub(min) as u64,
            Width::I32 => u64::from((d as i32).wrapping_sub(min as i32) as u32),
        }
    };
    let mut deltas = [0i64; BLOCK];
    let mut prev = first;
    let mut rest = &values[1..];
    while !rest.is_empty() {
        let n = rest.len().min(BLOCK);
        for (d, &v) in deltas.iter_mut().zip(&rest[..n]) {
            *d = sub(v, prev);
            prev = v;
        }
        rest = &rest[n..];
        let block = &deltas[..n];
        let min = block.iter().copied().min().unwrap_or(0);
        varint(zigzag(min), out);
        let widths_at = out.len();
        out.extend_from_slice(&[0; MINIBLOCKS]);
        for (m, mini) in block.chunks(MINI).enumerate() {
            let mut vals = [0u64; MINI];
            let mut or = 0u64;
            for (p, &d) in vals.iter_mut().zip(mini) {
                *p = packed(d, min);
                or |= *p;
            }
            let bits = 64 - or.leading_zeros();
            out[widths_at + m] = bits as u8;
            pack32(&vals, bits, out);
        }
    }
}

/// 32 values of `bits` bits each, LSB first: `4 * bits` bytes.
fn pack32(vals: &[u64; MINI], bits: u32, out: &mut Vec<u8>) {
    if bits == 0 {
        return;
    }
    let (mut acc, mut held) = (0u128, 0u32);
    for &v in vals {
        acc |= u128::from(v) << held;
        held += bits;
        if held >= 64 {
            out.extend_from_slice(&(acc as u64).to_le_bytes());
            acc >>= 64;
            held -= 64;
        }
    }
    // 32 * bits is a multiple of 32: what is left is 0 or 4 bytes.
    out.extend_from_slice(&(acc as u64).to_le_bytes()[..(held / 8) as usize]);
}

/// `DELTA_BYTE_ARRAY` encoding of `values` (the page's defined values, in
/// order), appended to `out`. `prefixes` and `suffixes` are scratch space.
pub(crate) fn delta_bytes<'a>(
    values: impl Iterator<Item = &'a [u8]> + Clone,
    prefixes: &mut Vec<i64>,
    suffixes: &mut Vec<i64>,
    out: &mut Vec<u8>,
) {
    prefixes.clear();
    suffixes.clear();
    let mut prev: &[u8] = &[];
    for v in values.clone() {
        let p = shared_prefix(prev, v);
        prefixes.push(p as i64);
        suffixes.push((v.len() - p) as i64);
        prev = v;
    }
    delta_packed(prefixes, Width::I32, out);
    delta_packed(suffixes, Width::I32, out);
    for (v, &p) in values.zip(prefixes.iter()) {
        out.extend_from_slice(&v[p as usize..]);
    }
}

fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or_default())
            ^ u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        if x != 0 {
            return i + (x.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// PLAIN booleans: one bit each, LSB first, the last byte zero-padded.
pub(crate) fn plain_bools(values: impl Iterator<Item = bool>, out: &mut Vec<u8>) {
    let (mut byte, mut n) = (0u8, 0u32);
    for v in values {
        byte |= u8::from(v) << n;
        n += 1;
        if n == 8 {
            out.push(byte);
            (byte, n) = (0, 0);
        }
    }
    if n > 0 {
        out.push(byte);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader of `DELTA_BINARY_PACKED`, written from the format's
    /// description, to check the encoder on its own (parquet-rs reads the
    /// files in `files`' tests).
    fn undelta(data: &mut &[u8], width: Width) -> Vec<i64> {
        let uvarint = |data: &mut &[u8]| {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let b = data[0];
                *data = &data[1..];
                v |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b < 0x80 {
                    return v;
                }
            }
        };
        let unzig = |v: u64| ((v >> 1) as i64) ^ -((v & 1) as i64);
        let (block, minis, total) = (
            uvarint(data) as usize,
            uvarint(data) as usize,
            uvarint(data) as usize,
        );
        assert_eq!((block, minis), (BLOCK, MINIBLOCKS));
        let mut v = unzig(uvarint(data));
        let mut out = Vec::new();
        if total > 0 {
            out.push(v);
        }
        while out.len() < total {
            let min = unzig(uvarint(data));
            let widths: Vec<u32> = data[..minis].iter().map(|&w| u32::from(w)).collect();
            *data = &data[minis..];
            for w in widths {
                if out.len() >= total {
                    break;
                }
                let (mut acc, mut held) = (0u128, 0u32);
                let mut bytes = &data[..4 * w as usize];
                *data = &data[4 * w as usize..];
                for _ in 0..MINI {
                    while held < w {
                        acc |= u128::from(bytes[0]) << held;
                        bytes = &bytes[1..];
                        held += 8;
                    }
                    let p = (acc & ((1u128 << w) - 1)) as u64;
                    acc >>= w;
                    held -= w;
                    if out.len() < total {
                        v = match width {
                            Width::I64 => v.wrapping_add(min).wrapping_add(p as i64),
                            Width::I32 => i64::from(
                                (v as i32).wrapping_add(min as i32).wrapping_add(p as i32),
                            ),
                        };
                        out.push(v);
                    }
                }
            }
        }
        out
    }

    fn unbytes(mut data: &[u8]) -> Vec<Vec<u8>> {
        let prefixes = undelta(&mut data, Width::I32);
        let suffixes = undelta(&mut data, Width::I32);
        let mut prev: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for (p, s) in prefixes.into_iter().zip(suffixes) {
            let mut v = prev[..p as usize].to_vec();
            v.extend_from_slice(&data[..s as usize]);
            data = &data[s as usize..];
            prev = v.clone();
            out.push(v);
        }
        assert!(data.is_empty(), "{} bytes left over", data.len());
        out
    }

    #[test]
    fn delta_packed_edges() {
        let cases: Vec<Vec<i64>> = vec![
            vec![],
            vec![7],
            vec![-3, -3],
            (0..129).collect(),
            (0..300).map(|i| i * i - 40_000).collect(),
            vec![i64::MIN, i64::MAX, 0, i64::MIN, -1, i64::MAX],
            (0..1000)
                .map(|i| if i % 2 == 0 { i64::MAX } else { i64::MIN })
                .collect(),
            (0..33)
                .map(|i| 1_795_640_400_000_000_000 + i * 1_000)
                .collect(),
        ];
        for values in cases {
            let mut buf = Vec::new();
            delta_packed(&values, Width::I64, &mut buf);
            let mut data = &buf[..];
            assert_eq!(undelta(&mut data, Width::I64), values);
            assert!(data.is_empty(), "{} bytes left over", data.len());
        }
        for values in [
            vec![i64::from(i32::MIN), i64::from(i32::MAX), 0, 5],
            vec![0, 16, 16, 3, 0, 1 << 30],
        ] {
            let mut buf = Vec::new();
            delta_packed(&values, Width::I32, &mut buf);
            let mut data = &buf[..];
            assert_eq!(undelta(&mut data, Width::I32), values);
            assert!(data.is_empty());
        }
    }

    #[test]
    fn shared_prefix_at_every_position() {
        let a: Vec<u8> = (0..40).collect();
        for i in 0..=40 {
            let mut b = a.clone();
            if i < 40 {
                b[i] ^= 0x10;
            }
            assert_eq!(shared_prefix(&a, &b), i);
            assert_eq!(shared_prefix(&a[..i], &b), i);
        }
        assert_eq!(shared_prefix(b"", b"abc"), 0);
    }

    #[test]
    fn plain_bools_pack_lsb_first() {
        let mut out = Vec::new();
        plain_bools(
            [true, false, true, true, false, false, false, false, true].into_iter(),
            &mut out,
        );
        assert_eq!(out, [0b0000_1101, 0b1]);
    }

    proptest::proptest! {
        #[test]
        fn delta_packed_round_trips(
            values in proptest::collection::vec(proptest::prelude::any::<i64>(), 0..700),
            spread in 0u32..64,
        ) {
            let values: Vec<i64> = values.iter().map(|v| v >> spread).collect();
            let mut buf = Vec::new();
            delta_packed(&values, Width::I64, &mut buf);
            let mut data = &buf[..];
            proptest::prop_assert_eq!(undelta(&mut data, Width::I64), values);
            proptest::prop_assert!(data.is_empty());
        }

        #[test]
        fn delta_bytes_round_trips(
            values in proptest::collection::vec(
                proptest::collection::vec(0u8..3, 0..20), 0..400),
        ) {
            let mut buf = Vec::new();
            let (mut p, mut s) = (Vec::new(), Vec::new());
            delta_bytes(values.iter().map(Vec::as_slice), &mut p, &mut s, &mut buf);
            proptest::prop_assert_eq!(unbytes(&buf), values);
        }
    }
}
