//! The write-ahead log: numbered segment files of framed, checksummed records.
//!
//! Frame: magic `MLW1` | payload length (u32 LE) | CRC32C (u32 LE) of seq + payload
//! | sequence number (u64 LE) | payload. A record is acknowledged only after
//! the fsync that covers it. On open, a torn frame at the tail of the newest
//! segment (a crash mid-write) is cut off; damage anywhere else is reported
//! and the rest of that segment skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};

use crate::walbatch::EncodedBatch;

const MAGIC: &[u8; 4] = b"MLW1";
const HEADER: usize = 4 + 4 + 4 + 8;
/// Payloads larger than this are refused (and never expected when reading).
pub const MAX_RECORD: usize = 1 << 30;

pub struct WalRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// What replay found.
#[derive(Default, Debug)]
pub struct ReplayReport {
    pub records: usize,
    pub segments: usize,
    pub torn_tail_bytes: u64,
    pub corrupt_segments: Vec<String>,
}

pub struct Wal {
    dir: PathBuf,
    current: File,
    current_id: u64,
    current_bytes: u64,
    /// Sealed segments not yet removed: (id, bytes).
    sealed: Vec<(u64, u64)>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.wal"))
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(id) = stem.parse::<u64>()
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// A record's bytes: one vector, or a span batch written from its own
/// buffers ([`EncodedBatch`]).
pub enum Payload {
    Bytes(Vec<u8>),
    Batch(EncodedBatch),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Payload::Bytes(b) => b.len(),
            Payload::Batch(b) => b.len(),
        }
    }

    fn for_each_slice<'a>(&'a self, mut f: impl FnMut(&'a [u8])) {
        match self {
            Payload::Bytes(b) => f(b),
            Payload::Batch(b) => b.for_each_slice(f),
        }
    }
}

/// The header of the frame of record `seq` holding `payload`.
fn frame_header(seq: u64, payload: &Payload) -> [u8; HEADER] {
    let mut crc = crc32c::crc32c(&seq.to_le_bytes());
    payload.for_each_slice(|s| crc = crc32c::crc32c_append(crc, s));
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..12].copy_from_slice(&crc.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h
}

/// One frame as bytes, as [`Wal::write_frames_synced`] writes it (tests).
#[cfg(test)]
fn encode_frame(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&frame_header(seq, &Payload::Bytes(payload.to_vec())));
    out.extend_from_slice(payload);
}

/// Records waiting for one grouped write: each payload stays where its
/// producer put it (a batch's payload is its Arrow buffers) and goes to the
/// file by `writev`, not copied into one buffer first.
#[derive(Default)]
pub struct Frames(Vec<([u8; HEADER], Payload)>);

impl Frames {
    /// Frames `payload` as record `seq`.
    pub fn push(&mut self, seq: u64, payload: Payload) {
        self.0.push((frame_header(seq, &payload), payload));
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
    /// Bytes the frames take on disk.
    pub fn len_bytes(&self) -> usize {
        self.0.iter().map(|(_, p)| HEADER + p.len()).sum()
    }
}

/// Parses frames from `buf`; returns the records and the offset of the first
/// byte that is not part of a valid frame (== buf.len() when all is well).
pub fn decode_frames(buf: &[u8]) -> (Vec<WalRecord>, usize) {
    let mut records = Vec::new();
    let mut off = 0;
    while buf.len() - off >= HEADER {
        let h = &buf[off..off + HEADER];
        if &h[0..4] != MAGIC {
            break;
        }
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        let seq_bytes = &h[12..20];
        if len > MAX_RECORD || buf.len() - off - HEADER < len {
            break;
        }
        let payload = &buf[off + HEADER..off + HEADER + len];
        let actual = crc32c::crc32c_append(crc32c::crc32c(seq_bytes), payload);
        if actual != crc {
            break;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(seq_bytes);
        records.push(WalRecord {
            seq: u64::from_le_bytes(seq),
            payload: payload.to_vec(),
        });
        off += HEADER + len;
    }
    (records, off)
}

impl Wal {
    /// Opens the WAL in `dir`, returning every intact record in order.
    /// Appends go to a fresh segment after the existing ones.
    pub fn open(dir: &Path) -> io::Result<(Wal, Vec<WalRecord>, ReplayReport)> {
        fs::create_dir_all(dir)?;
        let ids = list_segments(dir)?;
        let mut records = Vec::new();
        let mut report = ReplayReport::default();
        let mut sealed = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let path = segment_path(dir, id);
            let mut buf = Vec::new();
            File::open(&path)?.read_to_end(&mut buf)?;
            let (recs, good) = decode_frames(&buf);
            report.segments += 1;
            report.records += recs.len();
            records.extend(recs);
            if good < buf.len() {
                let bad = (buf.len() - good) as u64;
                if i + 1 == ids.len() {
                    // A torn write at the very end: cut it off so later appends
                    // after restart do not sit behind garbage.
                    tracing::warn!(segment = %path.display(), bytes = bad, "WAL: cutting off a torn record at the tail");
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.set_len(good as u64)?;
                    f.sync_all()?;
                    report.torn_tail_bytes = bad;
                } else {
                    tracing::error!(segment = %path.display(), offset = good, bytes = bad, "WAL: corrupt record; the rest of this segment is skipped");
                    report.corrupt_segments.push(path.display().to_string());
                }
            }
            sealed.push((id, good as u64));
        }
        let current_id = ids.last().map_or(1, |l| l + 1);
        let current = create_segment(dir, current_id)?;
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                current,
                current_id,
                current_bytes: 0,
                sealed,
            },
            records,
            report,
        ))
    }

    /// Appends `frames` (one `writev` per up to IOV_MAX slices) and fsyncs.
    pub fn write_frames_synced(&mut self, frames: &Frames) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * frames.0.len());
        for (h, p) in &frames.0 {
            slices.push(IoSlice::new(h));
            p.for_each_slice(|s| slices.push(IoSlice::new(s)));
        }
        let mut left = &mut slices[..];
        while !left.is_empty() {
            match self.current.write_vectored(left) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the WAL segment took no bytes",
                    ));
                }
                Ok(n) => IoSlice::advance_slices(&mut left, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.current.sync_data()?;
        self.current_bytes += frames.len_bytes() as u64;
        Ok(())
    }

    /// Appends raw bytes and fsyncs (tests: torn and hand-made frames).
    #[cfg(test)]
    fn write_synced(&mut self, frames: &[u8]) -> io::Result<()> {
        self.current.write_all(frames)?;
        self.current.sync_data()?;
        self.current_bytes += frames.len() as u64;
        Ok(())
    }

    /// Seals the current segment and starts a new one; returns the sealed id.
    pub fn rotate(&mut self) -> io::Result<u64> {
        let next = create_segment(&self.dir, self.current_id + 1)?;
        let old = std::mem::replace(&mut self.current, next);
        old.sync_all()?;
        self.sealed.push((self.current_id, self.current_bytes));
        let sealed = self.current_id;
        self.current_id += 1;
        self.current_bytes = 0;
        Ok(sealed)
    }

    /// Deletes sealed segments with id <= `through` (their data is in Parquet).
    pub fn remove_through(&mut self, through: u64) -> io::Result<()> {
        let mut keep = Vec::new();
        for (id, bytes) in self.sealed.drain(..) {
            if id <= through {
                match fs::remove_file(segment_path(&self.dir, id)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            } else {
                keep.push((id, bytes));
            }
        }
        self.sealed = keep;
        Ok(())
    }

    /// The id of the newest sealed segment, if any.
    pub fn last_sealed(&self) -> Option<u64> {
        self.sealed.last().map(|(id, _)| *id)
    }

    pub fn total_bytes(&self) -> u64 {
        self.current_bytes + self.sealed.iter().map(|(_, b)| b).sum::<u64>()
    }
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, id))?;
    // Make the new directory entry itself durable.
    File::open(dir)?.sync_all()?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("meshlens-wal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn records_survive_reopen_and_torn_tail_is_cut() {
        let dir = tmp("torn");
        {
            let (mut wal, recs, _) = Wal::open(&dir).expect("open");
            assert!(recs.is_empty());
            let mut buf = Vec::new();
            encode_frame(1, b"one", &mut buf);
            encode_frame(2, b"two", &mut buf);
            wal.write_synced(&buf).expect("write");
            // A torn frame: header promises more than is there.
            let mut torn = Vec::new();
            encode_frame(3, b"three-three", &mut torn);
            wal.write_synced(&torn[..torn.len() - 4]).expect("write");
        }
        let (mut wal, recs, report) = Wal::open(&dir).expect("reopen");
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(recs[1].payload, b"two");
        assert!(report.torn_tail_bytes > 0);
        let mut buf = Vec::new();
        encode_frame(3, b"after", &mut buf);
        wal.write_synced(&buf).expect("write");
        drop(wal);
        let (_, recs, _) = Wal::open(&dir).expect("reopen 2");
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn grouped_frames_are_written_as_encode_frame_writes_them() {
        // More slices than one writev takes (IOV_MAX is 1024): the loop
        // must carry on where the kernel stopped.
        let dir = tmp("frames");
        let payloads: Vec<Vec<u8>> = (0..1500u32)
            .map(|i| (0..(i % 300)).map(|b| (b ^ i) as u8).collect())
            .collect();
        let mut want = Vec::new();
        {
            let (mut wal, _, _) = Wal::open(&dir).expect("open");
            let mut frames = Frames::default();
            for (i, p) in payloads.iter().enumerate() {
                frames.push(i as u64 + 1, Payload::Bytes(p.clone()));
                encode_frame(i as u64 + 1, p, &mut want);
            }
            assert_eq!(frames.len_bytes(), want.len());
            wal.write_frames_synced(&frames).expect("write");
            assert_eq!(wal.total_bytes(), want.len() as u64);
            frames.clear();
            assert_eq!(frames.len_bytes(), 0);
        }
        let on_disk = fs::read(segment_path(&dir, 1)).expect("segment");
        assert_eq!(on_disk, want);
        let (_, recs, report) = Wal::open(&dir).expect("reopen");
        assert_eq!(report.torn_tail_bytes, 0);
        assert_eq!(recs.len(), payloads.len());
        for (i, (r, p)) in recs.iter().zip(&payloads).enumerate() {
            assert_eq!((r.seq, &r.payload), (i as u64 + 1, p));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotate_and_remove() {
        let dir = tmp("rotate");
        let (mut wal, _, _) = Wal::open(&dir).expect("open");
        let mut buf = Vec::new();
        encode_frame(1, b"a", &mut buf);
        wal.write_synced(&buf).expect("w");
        let sealed = wal.rotate().expect("rotate");
        buf.clear();
        encode_frame(2, b"b", &mut buf);
        wal.write_synced(&buf).expect("w");
        wal.remove_through(sealed).expect("remove");
        drop(wal);
        let (_, recs, _) = Wal::open(&dir).expect("reopen");
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_frame(7, b"payload", &mut buf);
        let last = buf.len() - 1;
        buf[last] ^= 1;
        let (recs, good) = decode_frames(&buf);
        assert!(recs.is_empty());
        assert_eq!(good, 0);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (recs, good) = decode_frames(&bytes);
            prop_assert!(good <= bytes.len());
            prop_assert!(recs.len() <= bytes.len() / HEADER + 1);
        }

        #[test]
        fn frames_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut buf = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                encode_frame(i as u64, p, &mut buf);
            }
            let (recs, good) = decode_frames(&buf);
            prop_assert_eq!(good, buf.len());
            prop_assert_eq!(recs.len(), payloads.len());
            for (r, p) in recs.iter().zip(&payloads) {
                prop_assert_eq!(&r.payload, p);
            }
        }
    }
}
