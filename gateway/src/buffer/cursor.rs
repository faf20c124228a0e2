//! The durable marks kept beside the segments: the acknowledged cursor and
//! the sequence reservation, and their on-disk formats.
//!
//! The cursor lives in two slots, `cursor.a` and `cursor.b`, written
//! alternately (the generation chooses the slot), so that a torn write
//! leaves the other one intact; the slot with the highest generation and a
//! valid CRC wins:
//!
//! ```text
//! 0..8 magic b"SGWCUR\r\n" | 8..16 generation u64 | 16..24 acked summaries u64
//! 24..32 acked alarms u64 | 32..40 reserved seq u64 | 40..44 CRC-32 of 0..40   (all LE)
//! ```
//!
//! The reservation is also kept outside the buffer directory, in
//! `<state_dir>/seq.reserved`, so that deleting the buffer cannot make
//! sequence numbers repeat:
//!
//! ```text
//! 0..8 magic b"SGWSEQ1\n" | 8..16 reserved seq u64 | 16..20 CRC-32 of 0..16   (all LE)
//! ```

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::lane::Lanes;
use crate::model::Lane;

const CURSOR_MAGIC: [u8; 8] = *b"SGWCUR\r\n";
const CURSOR_LEN: usize = 44;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub generation: u64,
    pub acked_summaries: u64,
    pub acked_alarms: u64,
    pub reserved: u64,
}

impl Cursor {
    /// The acknowledged marks, per lane.
    pub fn acked(&self) -> Lanes<u64> {
        Lanes::from_fn(|lane| match lane {
            Lane::Summary => self.acked_summaries,
            Lane::Alarm => self.acked_alarms,
        })
    }
}

fn decode_cursor(b: &[u8]) -> Option<Cursor> {
    if b.len() != CURSOR_LEN || b[0..8] != CURSOR_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[40..44].try_into().ok()?);
    if crc != crc32fast::hash(&b[0..40]) {
        return None;
    }
    let u = |i: usize| b[i..i + 8].try_into().ok().map(u64::from_le_bytes);
    Some(Cursor {
        generation: u(8)?,
        acked_summaries: u(16)?,
        acked_alarms: u(24)?,
        reserved: u(32)?,
    })
}

/// The newest valid cursor slot, or a zero cursor (everything is resent;
/// upstream deduplicates).
pub fn read_cursor(root: &Path) -> Cursor {
    ["cursor.a", "cursor.b"]
        .iter()
        .filter_map(|n| std::fs::read(root.join(n)).ok())
        .filter_map(|b| decode_cursor(&b))
        .max_by_key(|c| c.generation)
        .unwrap_or_default()
}

/// Writes the slot the generation selects and fsyncs it. Returns the bytes
/// written.
pub fn write_cursor(root: &Path, c: &Cursor) -> std::io::Result<u64> {
    let mut b = [0u8; CURSOR_LEN];
    b[0..8].copy_from_slice(&CURSOR_MAGIC);
    b[8..16].copy_from_slice(&c.generation.to_le_bytes());
    b[16..24].copy_from_slice(&c.acked_summaries.to_le_bytes());
    b[24..32].copy_from_slice(&c.acked_alarms.to_le_bytes());
    b[32..40].copy_from_slice(&c.reserved.to_le_bytes());
    let crc = crc32fast::hash(&b[0..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    let name = if c.generation % 2 == 0 {
        "cursor.a"
    } else {
        "cursor.b"
    };
    let path = root.join(name);
    let created = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)?;
    f.write_all(&b)?;
    f.sync_data()?;
    if created {
        // A new slot's name survives a power cut only once the directory
        // is fsynced; without it the older slot (an older reservation)
        // would win after the cut.
        File::open(root)?.sync_all()?;
    }
    Ok(CURSOR_LEN as u64)
}

const SEQ_MAGIC: [u8; 8] = *b"SGWSEQ1\n";
const SEQ_LEN: usize = 20;
/// The sequence reservation outside the buffer directory, so that deleting
/// `<state_dir>/buffer` cannot make numbers repeat.
pub const SEQ_FILE: &str = "seq.reserved";

/// The reservation in `<state_dir>/seq.reserved`, if the file is there and
/// checks out.
pub fn read_seq_file(state_dir: &Path) -> Option<u64> {
    let path = state_dir.join(SEQ_FILE);
    let b = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "Cannot read the sequence reservation file; numbering continues from the buffer's cursor and contents.");
            return None;
        }
    };
    let valid = b.len() == SEQ_LEN
        && b[0..8] == SEQ_MAGIC
        && b[16..20].try_into().ok().map(u32::from_le_bytes) == Some(crc32fast::hash(&b[0..16]));
    if !valid {
        tracing::error!(file = %path.display(), "The sequence reservation file is damaged; numbering continues from the buffer's cursor and contents. It is rewritten at the next reservation.");
        return None;
    }
    b[8..16].try_into().ok().map(u64::from_le_bytes)
}

/// Replaces `<state_dir>/seq.reserved` atomically and durably (temporary
/// file, fsync, rename, fsync of the directory). Returns the bytes written.
pub fn write_seq_file(state_dir: &Path, reserved: u64) -> std::io::Result<u64> {
    let mut b = [0u8; SEQ_LEN];
    b[0..8].copy_from_slice(&SEQ_MAGIC);
    b[8..16].copy_from_slice(&reserved.to_le_bytes());
    let crc = crc32fast::hash(&b[0..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    let tmp = state_dir.join(format!("{SEQ_FILE}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, state_dir.join(SEQ_FILE))?;
    File::open(state_dir)?.sync_all()?;
    Ok(SEQ_LEN as u64)
}
