//! Segment files: the on-disk format, encoding, the scan of a whole file that
//! recovery and `buffer verify` share, and [`RecordReader`], the streaming
//! reader that delivery, `buffer status` and the record counts use. Both
//! check a record in one place ([`parse_record`]) and resynchronise after
//! damage with one search ([`find_record`]).
//!
//! ```text
//! segment file  {base_seq:020}.seg   (base_seq = seq of its first record)
//!
//!   header, 24 bytes
//!     0..8    magic           b"SGWLOG\r\n"
//!     8..10   format version  u16 LE = 1
//!     10      lane            u8: 0 summaries, 1 alarms
//!     11      reserved        0
//!     12..20  base_seq        u64 LE
//!     20..24  CRC-32          u32 LE of bytes 0..20
//!
//!   records, back to back until the end of the file
//!     0..2    marker          0xA5 0x5A
//!     2..6    body length     u32 LE, at most MAX_BODY
//!     6..10   CRC-32          u32 LE of the body
//!     10..    body            postcard: seq u64, ts_ms i64, topic str, payload bytes
//!                             (varints as postcard encodes them; do not reorder fields)
//! ```
//!
//! A record is valid when its marker, length and CRC are right and its body
//! decodes. The marker lets a scan find the next record after damage without
//! trusting the damaged length. CRC-32 is the IEEE polynomial (crc32fast).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 8] = *b"SGWLOG\r\n";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 24;
pub const RECORD_HEADER_LEN: usize = 10;
pub const MARKER: [u8; 2] = [0xA5, 0x5A];
/// Bodies larger than this are rejected (and treated as damage when read).
pub const MAX_BODY: usize = 1024 * 1024;

/// The body of a record as stored.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Body<'a> {
    pub seq: u64,
    /// Measurement time (a summary's window end, an alarm's event time), ms.
    pub ts_ms: i64,
    pub topic: &'a str,
    pub payload: &'a [u8],
}

pub fn encode_header(lane: u8, base_seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10] = lane;
    h[12..20].copy_from_slice(&base_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Header fields, or why the header is unusable.
pub fn decode_header(h: &[u8]) -> Result<(u8, u64), &'static str> {
    if h.len() < HEADER_LEN {
        return Err("the file is shorter than a segment header");
    }
    if h[0..8] != MAGIC {
        return Err("bad magic");
    }
    let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
    if crc != crc32fast::hash(&h[0..20]) {
        return Err("bad header CRC");
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != VERSION {
        return Err("unknown format version");
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[12..20]);
    Ok((h[10], u64::from_le_bytes(seq)))
}

/// Appends one encoded record to `out`.
pub fn encode_record(out: &mut Vec<u8>, body: &Body<'_>) -> Result<(), postcard::Error> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    let encoded = postcard::to_extend(body, std::mem::take(out))?;
    *out = encoded;
    let len = out.len() - start - RECORD_HEADER_LEN;
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_LEN..]);
    out[start..start + 2].copy_from_slice(&MARKER);
    out[start + 2..start + 6].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 6..start + 10].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The outcome of parsing at one position.
#[derive(Debug, PartialEq)]
pub enum Parsed<'a> {
    /// A valid record spanning `len` bytes.
    Record { body: Body<'a>, len: usize },
    /// Fewer bytes than a whole record: a torn tail if nothing follows.
    Incomplete,
    /// Not a valid record here.
    Invalid,
}

/// The body length announced by the record header at `head[0]` (at least
/// [`RECORD_HEADER_LEN`] bytes), or `None` when no record can start there
/// (wrong marker, length above [`MAX_BODY`]).
fn body_len(head: &[u8]) -> Option<usize> {
    if head[0..2] != MARKER {
        return None;
    }
    let len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) as usize;
    (len <= MAX_BODY).then_some(len)
}

/// Parses the record that starts at `buf[0]`.
pub fn parse_record(buf: &[u8]) -> Parsed<'_> {
    if buf.len() < RECORD_HEADER_LEN {
        return if buf.is_empty() || buf[0] == MARKER[0] {
            Parsed::Incomplete
        } else {
            Parsed::Invalid
        };
    }
    let Some(len) = body_len(buf) else {
        return Parsed::Invalid;
    };
    let total = RECORD_HEADER_LEN + len;
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    let body = &buf[RECORD_HEADER_LEN..total];
    let crc = u32::from_le_bytes([buf[6], buf[7], buf[8], buf[9]]);
    if crc != crc32fast::hash(body) {
        return Parsed::Invalid;
    }
    match postcard::from_bytes::<Body>(body) {
        Ok(b) => Parsed::Record {
            body: b,
            len: total,
        },
        Err(_) => Parsed::Invalid,
    }
}

/// What a scan of a segment's bytes found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scan {
    pub header: Option<(u8, u64)>,
    pub header_error: Option<&'static str>,
    /// Byte ranges of valid records, in file order.
    pub records: Vec<(usize, usize)>,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_ts_ms: Option<i64>,
    pub last_ts_ms: Option<i64>,
    /// Damaged ranges followed by a valid record (need salvage).
    pub middle_damage: Vec<(usize, usize)>,
    /// Where the valid data ends when the rest is a torn or damaged tail.
    pub tail_from: Option<usize>,
}

impl Scan {
    pub fn is_clean(&self) -> bool {
        self.header_error.is_none() && self.middle_damage.is_empty() && self.tail_from.is_none()
    }
}

/// Scans a whole segment. Never fails: damage is described, not raised.
pub fn scan(buf: &[u8]) -> Scan {
    let mut s = Scan::default();
    match decode_header(buf) {
        Ok(h) => s.header = Some(h),
        Err(e) => s.header_error = Some(e),
    }
    let mut pos = HEADER_LEN.min(buf.len());
    if s.header.is_none() {
        // Salvage: look for records anywhere after where a header would be.
        pos = 0;
    }
    while pos < buf.len() {
        match parse_record(&buf[pos..]) {
            Parsed::Record { body, len } => {
                s.first_seq.get_or_insert(body.seq);
                s.last_seq = Some(body.seq);
                s.first_ts_ms.get_or_insert(body.ts_ms);
                s.last_ts_ms = Some(body.ts_ms);
                s.records.push((pos, len));
                pos += len;
            }
            Parsed::Incomplete | Parsed::Invalid => match resync(buf, pos + 1) {
                Some(next) => {
                    if s.header.is_some() || !s.records.is_empty() {
                        s.middle_damage.push((pos, next));
                    }
                    pos = next;
                }
                None => {
                    s.tail_from = Some(pos);
                    break;
                }
            },
        }
    }
    s
}

/// Where the search for the next valid record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// A valid record starts here.
    Found(usize),
    /// A record may start here, but `buf` ends before it does: look again
    /// with more bytes from this position (never returned `at_eof`).
    NeedMore(usize),
    /// No record starts anywhere in `buf[from..]`.
    NotFound,
}

/// Finds the next position at or after `from` where a whole record parses
/// with a good CRC. This is the resynchronisation after damage, shared by
/// the start-up scan (the whole file in memory, `at_eof`) and the buffer's
/// reader (a window of the file that may continue past `buf`).
pub fn find_record(buf: &[u8], from: usize, at_eof: bool) -> Resync {
    let mut pos = from;
    while pos < buf.len() {
        let Some(rel) = buf[pos..].iter().position(|b| *b == MARKER[0]) else {
            return Resync::NotFound;
        };
        pos += rel;
        match parse_record(&buf[pos..]) {
            Parsed::Record { .. } => return Resync::Found(pos),
            Parsed::Incomplete if !at_eof => return Resync::NeedMore(pos),
            Parsed::Incomplete | Parsed::Invalid => pos += 1,
        }
    }
    Resync::NotFound
}

/// The next position at or after `from` where a valid record starts.
fn resync(buf: &[u8], from: usize) -> Option<usize> {
    match find_record(buf, from, true) {
        Resync::Found(pos) => Some(pos),
        Resync::NeedMore(_) | Resync::NotFound => None,
    }
}

/// A record read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub ts_ms: i64,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Why the record at a reader's position could not be read. Callers branch
/// on it: a torn record may still be completed (the segment being written),
/// a corrupt one is skipped with [`RecordReader::resync`], an I/O error is
/// worth trying again.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream ends inside a record.
    #[error("a record is cut short by the end of the segment")]
    Torn,
    /// The bytes at the position are not a valid record.
    #[error("{0}")]
    Corrupt(&'static str),
    /// The read itself failed (EIO, ...).
    #[error("cannot read the segment: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes read at a time while looking for the next valid record.
const RESYNC_CHUNK: usize = 64 * 1024;

/// Reads records one at a time from a stream positioned at a record
/// boundary, holding at most one record (and, while resynchronising, one
/// chunk) in memory.
#[derive(Debug)]
pub struct RecordReader<R> {
    inner: R,
    /// Offset of the next record in the stream.
    pos: u64,
    buf: Vec<u8>,
}

impl RecordReader<BufReader<File>> {
    /// Opens a segment file for reading from `pos`.
    pub fn open(path: &Path, pos: u64) -> std::io::Result<Self> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(pos))?;
        Ok(RecordReader::new(
            BufReader::with_capacity(64 * 1024, file),
            pos,
        ))
    }
}

impl<R: Read + Seek> RecordReader<R> {
    /// A reader of `inner`, which is positioned at offset `pos`.
    pub fn new(inner: R, pos: u64) -> Self {
        RecordReader {
            inner,
            pos,
            buf: Vec::new(),
        }
    }

    /// Offset of the next record.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Reads the record at the position and moves past it; `Ok(None)` at
    /// the clean end of the stream. After [`ReadError::Torn`] or
    /// [`ReadError::Corrupt`] the position is unchanged (the same read can
    /// be tried again once more bytes exist, or [`Self::resync`] skips
    /// the damage).
    pub fn next_record(&mut self) -> Result<Option<Stored>, ReadError> {
        let mut head = [0u8; RECORD_HEADER_LEN];
        match read_full(&mut self.inner, &mut head)? {
            0 => return Ok(None),
            n if n < RECORD_HEADER_LEN => return self.back(ReadError::Torn),
            _ => {}
        }
        let Some(len) = body_len(&head) else {
            return self.back(ReadError::Corrupt("a record header is damaged"));
        };
        self.buf.clear();
        self.buf.extend_from_slice(&head);
        self.buf.resize(RECORD_HEADER_LEN + len, 0);
        if read_full(&mut self.inner, &mut self.buf[RECORD_HEADER_LEN..])? < len {
            return self.back(ReadError::Torn);
        }
        match parse_record(&self.buf) {
            Parsed::Record { body, len } => {
                self.pos += len as u64;
                Ok(Some(Stored {
                    seq: body.seq,
                    ts_ms: body.ts_ms,
                    topic: body.topic.to_owned(),
                    payload: body.payload.to_vec(),
                }))
            }
            Parsed::Incomplete | Parsed::Invalid => {
                self.back(ReadError::Corrupt("a record failed its CRC check"))
            }
        }
    }

    /// Returns the stream to the position after a failed read.
    fn back(&mut self, e: ReadError) -> Result<Option<Stored>, ReadError> {
        self.inner.seek(SeekFrom::Start(self.pos))?;
        Err(e)
    }

    /// The record at the position is damaged: moves to the next position
    /// after it where a whole record parses with a good CRC, reading a
    /// bounded window at a time (at most a record's size plus a chunk).
    /// Returns whether one was found; if not, the position is the end of
    /// the stream.
    pub fn resync(&mut self) -> std::io::Result<bool> {
        let mut start = self.pos + 1;
        self.inner.seek(SeekFrom::Start(start))?;
        let window = &mut self.buf;
        window.clear();
        let mut eof = false;
        loop {
            if !eof {
                let old = window.len();
                window.resize(old + RESYNC_CHUNK, 0);
                let n = read_full(&mut self.inner, &mut window[old..])?;
                window.truncate(old + n);
                eof = n < RESYNC_CHUNK;
            }
            match find_record(window, 0, eof) {
                Resync::Found(p) => {
                    self.pos = start + p as u64;
                    self.inner.seek(SeekFrom::Start(self.pos))?;
                    return Ok(true);
                }
                Resync::NeedMore(p) => {
                    window.drain(..p);
                    start += p as u64;
                }
                Resync::NotFound if eof => {
                    self.pos = start + window.len() as u64;
                    return Ok(false);
                }
                Resync::NotFound => {
                    start += window.len() as u64;
                    window.clear();
                }
            }
        }
    }

    /// Hands every valid record from the position on to `f`, skipping
    /// damage as [`scan`] does for a file in memory.
    pub fn for_each_valid(&mut self, mut f: impl FnMut(Stored)) -> std::io::Result<()> {
        loop {
            match self.next_record() {
                Ok(Some(r)) => f(r),
                Ok(None) => return Ok(()),
                Err(ReadError::Io(e)) => return Err(e),
                Err(ReadError::Torn | ReadError::Corrupt(_)) => {
                    if !self.resync()? {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Hands every valid record of the segment file at `path` to `f`, damage
/// skipped; with a damaged header, records are looked for from the start of
/// the file (as [`scan`] does).
pub fn for_each_record(path: &Path, f: impl FnMut(Stored)) -> std::io::Result<()> {
    let mut head = [0u8; HEADER_LEN];
    let mut file = File::open(path)?;
    let n = read_full(&mut file, &mut head)?;
    let start = if decode_header(&head[..n]).is_ok() {
        HEADER_LEN as u64
    } else {
        0
    };
    file.seek(SeekFrom::Start(start))?;
    RecordReader::new(BufReader::with_capacity(64 * 1024, file), start).for_each_valid(f)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(n: u64) -> Vec<u8> {
        let mut buf = encode_header(0, 1).to_vec();
        for seq in 1..=n {
            let payload = format!("{{\"seq\":{seq}}}");
            encode_record(
                &mut buf,
                &Body {
                    seq,
                    ts_ms: 1000 + seq as i64,
                    topic: "t/x",
                    payload: payload.as_bytes(),
                },
            )
            .unwrap();
        }
        buf
    }

    /// Five records, the second with a damaged body; and the scan of the
    /// segment before the damage.
    fn second_record_damaged() -> (Vec<u8>, Scan) {
        let mut buf = segment(5);
        let clean = scan(&buf);
        let (off, _) = clean.records[1];
        buf[off + RECORD_HEADER_LEN + 1] ^= 0xFF;
        (buf, clean)
    }

    #[test]
    fn round_trip() {
        let buf = segment(5);
        let s = scan(&buf);
        assert!(s.is_clean());
        assert_eq!(s.header, Some((0, 1)));
        assert_eq!(s.records.len(), 5);
        assert_eq!((s.first_seq, s.last_seq), (Some(1), Some(5)));
        let (off, len) = s.records[2];
        match parse_record(&buf[off..off + len]) {
            Parsed::Record { body, .. } => {
                assert_eq!(body.seq, 3);
                assert_eq!(body.payload, b"{\"seq\":3}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn torn_tail_is_found() {
        let buf = segment(5);
        let cut = &buf[..buf.len() - 3];
        let s = scan(cut);
        assert_eq!(s.records.len(), 4);
        assert!(s.middle_damage.is_empty());
        assert_eq!(s.tail_from, Some(s.records[3].0 + s.records[3].1));
    }

    #[test]
    fn middle_damage_is_skipped_and_later_records_salvaged() {
        let (buf, _) = second_record_damaged();
        let s = scan(&buf);
        assert_eq!(s.records.len(), 4);
        assert_eq!(s.middle_damage.len(), 1);
        assert_eq!(s.tail_from, None);
    }

    #[test]
    fn bad_header_still_salvages_records() {
        let mut buf = segment(3);
        buf[0] = b'X';
        let s = scan(&buf);
        assert_eq!(s.header_error, Some("bad magic"));
        assert_eq!(s.records.len(), 3);
    }

    #[test]
    fn garbage_and_empty_input_never_panic() {
        for buf in [
            &[][..],
            &[0xA5][..],
            &[0xA5, 0x5A, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0][..],
            &[7u8; 100][..],
        ] {
            let s = scan(buf);
            assert!(s.records.is_empty());
        }
    }

    #[test]
    fn find_record_asks_for_more_bytes_instead_of_skipping_a_record_cut_by_its_window() {
        let buf = segment(5);
        let s = scan(&buf);
        let (off, len) = s.records[3];
        // Damage before record 3; the window ends inside record 3.
        let from = s.records[2].0 + 1;
        let cut = &buf[..off + len - 1];
        assert_eq!(find_record(cut, from, false), Resync::NeedMore(off));
        assert_eq!(find_record(&buf, from, false), Resync::Found(off));
        // At the end of the file the cut record is not a record.
        assert_eq!(find_record(cut, off, true), Resync::NotFound);
        assert_eq!(find_record(&buf[..off], from, true), Resync::NotFound);
    }

    #[test]
    fn the_reader_finds_what_the_scan_finds_and_says_why_it_stops() {
        let (buf, s0) = second_record_damaged();
        let off = s0.records[1].0;
        let at = |bytes: &[u8], pos: usize| {
            let mut c = std::io::Cursor::new(bytes.to_vec());
            c.set_position(pos as u64);
            RecordReader::new(c, pos as u64)
        };
        let mut r = at(&buf, HEADER_LEN);
        assert_eq!(r.next_record().unwrap().map(|s| s.seq), Some(1));
        assert!(matches!(r.next_record(), Err(ReadError::Corrupt(_))));
        assert_eq!(r.pos(), off as u64, "a failed read does not move");
        assert!(r.resync().unwrap());
        assert_eq!(r.pos(), s0.records[2].0 as u64);
        let mut seqs = Vec::new();
        r.for_each_valid(|s| seqs.push(s.seq)).unwrap();
        assert_eq!(seqs, vec![3, 4, 5]);
        let cut = &buf[..buf.len() - 3];
        let mut r = at(cut, s0.records[4].0);
        assert!(matches!(r.next_record(), Err(ReadError::Torn)));
    }
}
