//! Reading the protobuf wire format in place, the way prost reads it:
//! the same acceptance (unknown fields of any wire type, groups, a
//! recursion limit of 100) with errors that say which byte is wrong.
//! Shared by the remote-write and OTLP trace decoders.

/// prost's default recursion limit.
pub(crate) const RECURSION_LIMIT: u32 = 100;

pub(crate) type WireResult<T> = Result<T, String>;

/// A bounded view of the body: `[pos, end)`. Offsets are in the whole body,
/// so errors name the byte where the problem is.
#[derive(Clone, Copy)]
pub(crate) struct Cursor<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
    pub(crate) end: usize,
}

pub(crate) const WT_VARINT: u8 = 0;
pub(crate) const WT_I64: u8 = 1;
pub(crate) const WT_LEN: u8 = 2;
pub(crate) const WT_START_GROUP: u8 = 3;
pub(crate) const WT_END_GROUP: u8 = 4;
pub(crate) const WT_I32: u8 = 5;

pub(crate) fn wire_type_name(wt: u8) -> &'static str {
    match wt {
        WT_VARINT => "varint",
        WT_I64 => "64-bit",
        WT_LEN => "length-delimited",
        WT_START_GROUP => "start group",
        WT_END_GROUP => "end group",
        _ => "32-bit",
    }
}

/// Whether every byte of `b` is ASCII: the high bits of all its 8-byte
/// words ORed together (the last word overlapping the one before), of two
/// overlapping 4-byte words under 8 bytes. Called ~20 times per OTLP span;
/// inlined, it costs fewer instructions than std's `is_ascii` call did.
#[inline(always)]
pub(crate) fn ascii(b: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let n = b.len();
    if n >= 8 {
        let mut words = b.chunks_exact(8);
        let mut acc = 0u64;
        for w in &mut words {
            acc |= u64::from_le_bytes(w.try_into().expect("8 bytes"));
        }
        if !words.remainder().is_empty() {
            acc |= u64::from_le_bytes(b[n - 8..].try_into().expect("8 bytes"));
        }
        acc & HIGH == 0
    } else if n >= 4 {
        let head = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let tail = u32::from_le_bytes(b[n - 4..].try_into().expect("4 bytes"));
        (head | tail) & HIGH as u32 == 0
    } else {
        b.iter().fold(0u8, |a, &c| a | c) < 0x80
    }
}

/// Two ranges of `all` as `&str`s when both are UTF-8, checked with one
/// pass over `all` when it is ASCII (the bytes around them usually are:
/// a key and a value with their one-byte tags and lengths between them).
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn utf8_within(
    all: &[u8],
    x: std::ops::Range<usize>,
    y: std::ops::Range<usize>,
) -> Option<(&str, &str)> {
    let (xs, ys) = (all.get(x)?, all.get(y)?);
    if ascii(all) {
        // SAFETY: both are parts of `all`, which is ASCII, hence UTF-8.
        Some(unsafe {
            (
                std::str::from_utf8_unchecked(xs),
                std::str::from_utf8_unchecked(ys),
            )
        })
    } else {
        Some((utf8(xs)?, utf8(ys)?))
    }
}

/// `b` as `&str` when it is UTF-8. Nearly every key and value is short
/// ASCII, which [`ascii`] checks 8 bytes at a time; simdutf8 hands strings
/// under 64 bytes to std, whose check goes a byte at a time on them (it
/// was 12 % of decoding an OTLP request).
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn utf8(b: &[u8]) -> Option<&str> {
    if ascii(b) {
        // SAFETY: every ASCII byte sequence is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(b) })
    } else {
        simdutf8::basic::from_utf8(b).ok()
    }
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    #[inline]
    pub(crate) fn more(&self) -> bool {
        self.pos < self.end
    }

    /// One-byte varints (most keys and lengths) inline, the rest out of line.
    #[inline(always)]
    pub(crate) fn varint(&mut self) -> WireResult<u64> {
        if self.pos < self.end {
            let b = self.buf[self.pos];
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> WireResult<u64> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf[..self.end].get(self.pos) else {
                return Err(format!(
                    "truncated varint at byte {start} (the message ends at byte {})",
                    self.end
                ));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(format!("invalid varint at byte {start} (over 64 bits)"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(format!("invalid varint at byte {start} (over 10 bytes)"))
    }

    /// A field key: one-byte keys (field numbers up to 15) inline.
    #[inline(always)]
    pub(crate) fn key(&mut self) -> WireResult<(u32, u8)> {
        if self.pos < self.end {
            let b = self.buf[self.pos];
            if (8..0x80).contains(&b) && (b & 7) <= WT_I32 {
                self.pos += 1;
                return Ok((u32::from(b >> 3), b & 7));
            }
        }
        self.key_slow()
    }

    #[inline(never)]
    fn key_slow(&mut self) -> WireResult<(u32, u8)> {
        let at = self.pos;
        let k = self.varint()?;
        if k > u64::from(u32::MAX) {
            return Err(format!("invalid field key {k} at byte {at}"));
        }
        let wt = (k & 7) as u8;
        if wt > WT_I32 {
            return Err(format!("invalid wire type {wt} at byte {at}"));
        }
        let tag = (k >> 3) as u32;
        if tag == 0 {
            return Err(format!("invalid field number 0 at byte {at}"));
        }
        Ok((tag, wt))
    }

    #[inline(always)]
    pub(crate) fn take(&mut self, n: u64, what: &'static str) -> WireResult<&'a [u8]> {
        let left = (self.end - self.pos) as u64;
        if n > left {
            return Err(self.past_end(n, what));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    #[cold]
    #[inline(never)]
    fn past_end(&self, n: u64, what: &str) -> String {
        format!(
            "{what} of {n} bytes at byte {} runs past the end of its message ({} bytes left)",
            self.pos,
            self.end - self.pos
        )
    }

    /// A length-delimited field's contents.
    #[inline(always)]
    pub(crate) fn bytes(&mut self) -> WireResult<&'a [u8]> {
        let n = self.varint()?;
        self.take(n, "a length-delimited field")
    }

    /// A `string` field: its bytes, which must be UTF-8 (as prost checks).
    #[inline(always)]
    pub(crate) fn string(&mut self, field: &'static str) -> WireResult<&'a str> {
        let at = self.pos;
        let b = self.bytes()?;
        if let Some(s) = utf8(b) {
            return Ok(s);
        }
        // std says where the bad byte is.
        std::str::from_utf8(b).map_err(|e| {
            format!(
                "field {field} at byte {at} is not valid UTF-8 (invalid byte at offset {} of the string)",
                e.valid_up_to()
            )
        })
    }

    #[inline(always)]
    pub(crate) fn fixed32(&mut self) -> WireResult<u32> {
        let b = self.take(4, "a 32-bit field")?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// A nested message as its own cursor.
    #[inline(always)]
    pub(crate) fn message(&mut self) -> WireResult<Cursor<'a>> {
        let n = self.varint()?;
        let start = self.pos;
        self.take(n, "an embedded message")?;
        Ok(Cursor {
            buf: self.buf,
            pos: start,
            end: self.pos,
        })
    }

    #[inline(always)]
    pub(crate) fn fixed64(&mut self) -> WireResult<u64> {
        let b = self.take(8, "a 64-bit field")?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Skips an unknown field as prost does, groups included.
    pub(crate) fn skip(&mut self, tag: u32, wt: u8, budget: u32) -> WireResult<()> {
        if budget == 0 {
            return Err("recursion limit reached (over 100 nested messages or groups)".into());
        }
        match wt {
            WT_VARINT => {
                self.varint()?;
            }
            WT_I64 => {
                self.take(8, "a 64-bit field")?;
            }
            WT_LEN => {
                self.bytes()?;
            }
            WT_I32 => {
                self.take(4, "a 32-bit field")?;
            }
            WT_START_GROUP => loop {
                let at = self.pos;
                let (t, w) = self.key()?;
                if w == WT_END_GROUP {
                    if t != tag {
                        return Err(format!(
                            "end of group {t} at byte {at} does not close group {tag}"
                        ));
                    }
                    break;
                }
                self.skip(t, w, budget - 1)?;
            },
            _ => {
                return Err(format!(
                    "unexpected end of group {tag} before byte {}",
                    self.pos
                ));
            }
        }
        Ok(())
    }
}

/// A known field sent with another wire type.
#[inline(always)]
pub(crate) fn expect_wt(field: &'static str, got: u8, want: u8) -> WireResult<()> {
    if got == want {
        Ok(())
    } else {
        Err(wrong_wire_type(field, got, want))
    }
}

#[cold]
#[inline(never)]
pub(crate) fn wrong_wire_type(field: &str, got: u8, want: u8) -> String {
    format!(
        "field {field} has wire type {} ({got}), expected {} ({want})",
        wire_type_name(got),
        wire_type_name(want)
    )
}

#[cfg(test)]
mod tests {
    use super::{ascii, utf8, utf8_within};
    use proptest::prelude::*;

    /// Every length from 0 to 40, a non-ASCII byte at every position (the
    /// word loop, the overlapping last word and both short paths).
    #[test]
    fn ascii_finds_a_high_byte_anywhere() {
        for n in 0..=40usize {
            let clean = vec![b'a'; n];
            assert!(ascii(&clean), "len {n}");
            for at in 0..n {
                for high in [0x80u8, 0xc3, 0xff] {
                    let mut b = clean.clone();
                    b[at] = high;
                    assert!(!ascii(&b), "len {n}, {high:#x} at {at}");
                }
            }
        }
    }

    #[test]
    fn utf8_agrees_with_std_on_edge_cases() {
        let cases: &[&[u8]] = &[
            b"",
            b"http.method",
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0",
            "caf\u{e9}".as_bytes(),
            "\u{1f600} smile".as_bytes(),
            b"\x80",
            b"abc\xff",
            b"\xc0\xaf",         // overlong '/'
            b"\xed\xa0\x80",     // a surrogate
            b"\xf4\x90\x80\x80", // past U+10FFFF
            b"abcdefgh\xe2\x82", // truncated at the end
        ];
        for b in cases {
            assert_eq!(utf8(b), std::str::from_utf8(b).ok(), "{b:?}");
        }
    }

    proptest! {
        /// Two ranges of a buffer read as two `from_utf8`s would, whatever
        /// the bytes around them (a non-ASCII byte outside both included).
        #[test]
        fn utf8_within_agrees_with_std(b in proptest::collection::vec(
                                           prop_oneof![4 => 0u8..0x80, 1 => any::<u8>()], 0..60),
                                       cuts in proptest::collection::vec(0usize..70, 4)) {
            let mut c = cuts.clone();
            c.sort_unstable();
            let (x, y) = (c[0]..c[1], c[2]..c[3]);
            let want = match (b.get(x.clone()), b.get(y.clone())) {
                (Some(xs), Some(ys)) => std::str::from_utf8(xs).ok().zip(std::str::from_utf8(ys).ok()),
                _ => None,
            };
            prop_assert_eq!(utf8_within(&b, x, y), want);
        }

        #[test]
        fn utf8_agrees_with_std(b in proptest::collection::vec(any::<u8>(), 0..80),
                                ascii in proptest::collection::vec(0u8..0x80, 0..80)) {
            prop_assert_eq!(utf8(&b), std::str::from_utf8(&b).ok());
            prop_assert_eq!(utf8(&ascii), std::str::from_utf8(&ascii).ok());
            prop_assert_eq!(super::ascii(&b), b.is_ascii());
        }
    }
}
