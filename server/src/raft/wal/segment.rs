//! The on-disk format of one WAL segment file: a fixed header, then records back to back.
//!
//! ```text
//! header (32 bytes): magic "RLTWAL\0\0" | version u32 | reserved u32 (0) | seq u64
//!                    | crc32 of the 24 bytes before it, u32 | reserved u32 (0)
//! record:            payload length u32 | crc32 u32 | index u64 | payload
//! ```
//! All integers little-endian. A record's CRC covers its length, its index and its payload,
//! so a torn length is caught as surely as a torn payload. A record header of 16 zero bytes
//! marks the end of the records (the rest of the file is preallocated zeros). Nothing here
//! panics on bad input:
//! every way a file can be short or wrong is a [`Defect`].

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

pub const MAGIC: [u8; 8] = *b"RLTWAL\0\0";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 32;
pub const RECORD_HEADER_LEN: u64 = 16;
/// Larger than any entry raftlite writes (the codec's own limit); a bigger length is damage.
pub const MAX_PAYLOAD: u64 = crate::raft::codec::MAX_MESSAGE_BYTES;

pub fn encode_header(seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a header or record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defect {
    /// The file ends inside the header or the record.
    Short,
    /// The bytes are there but wrong (magic, version or checksum), in a way a torn write can
    /// leave: zeros where some of the record should be (see [`could_be_torn`]).
    Corrupt(String),
    /// A record is wrong although every sector of it was written: damage to bytes already on
    /// disk (bit rot, a bad sector, another program), never a torn write.
    Damaged(String),
}

impl std::fmt::Display for Defect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Defect::Short => f.write_str("the file ends inside it"),
            Defect::Corrupt(why) => f.write_str(why),
            Defect::Damaged(why) => write!(
                f,
                "{why}, although every sector of the record was written: the bytes were \
                 damaged on disk, this is not a torn write"
            ),
        }
    }
}

/// The unit a disk writes whole: after a crash each sector of a write holds either its old
/// or its new bytes. 512 is the smallest in use, and a larger unit is whole 512-byte sectors.
const SECTOR: u64 = 512;

/// Whether a record whose `frame` (its header and as much of its payload as was read) starts
/// at file offset `offset` and fails its checks could be a torn write. Records are only ever
/// written after the end of the records before them, over zeros (preallocated, or the end
/// of a file that was trimmed), so what a torn write did not put on the disk still reads as
/// zeros: a sector that did not land (power loss), or the end of a write the process died
/// in the middle of (a page-cache write can stop at any byte). If the frame's last byte and
/// every sector it touches hold something other than zeros, all of it was written, and it
/// is what was written: bad bytes in it were damaged afterwards.
fn could_be_torn(offset: u64, frame: &[u8]) -> bool {
    if frame.last().is_none_or(|b| *b == 0) {
        return true;
    }
    let mut at = 0usize;
    while at < frame.len() {
        let sector_end = ((offset + at as u64) / SECTOR + 1) * SECTOR;
        let end = (sector_end - offset).min(frame.len() as u64) as usize;
        if frame[at..end].iter().all(|b| *b == 0) {
            return true;
        }
        at = end;
    }
    false
}

/// A record that fails its checks: [`Defect::Corrupt`] if a torn write could have left it,
/// else [`Defect::Damaged`].
fn bad_record(offset: u64, frame: &[u8], why: String) -> Defect {
    if could_be_torn(offset, frame) {
        Defect::Corrupt(why)
    } else {
        Defect::Damaged(why)
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Reads and checks the header; returns the segment's sequence number.
pub fn read_header(file: &File, file_len: u64) -> io::Result<Result<u64, Defect>> {
    if file_len < HEADER_LEN {
        return Ok(Err(Defect::Short));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut h, 0)?;
    if h[0..8] != MAGIC {
        return Ok(Err(Defect::Corrupt(
            "not a raftlite WAL segment (magic)".into(),
        )));
    }
    if crc32fast::hash(&h[0..24]) != le_u32(&h[24..28]) {
        return Ok(Err(Defect::Corrupt("header checksum mismatch".into())));
    }
    let version = le_u32(&h[8..12]);
    if version != VERSION {
        return Ok(Err(Defect::Corrupt(format!(
            "segment format version {version}, this build reads {VERSION}"
        ))));
    }
    Ok(Ok(le_u64(&h[16..24])))
}

fn record_crc(len: u32, index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one framed record to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, index: u64, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| u64::from(*l) <= MAX_PAYLOAD)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("log entry {index} of {} bytes is too large", payload.len()),
            )
        })?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&record_crc(len, index, payload).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// A record found by [`scan`]: its index, where its frame starts, and its payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub index: u64,
    pub offset: u64,
    pub len: u32,
}

/// What [`scan`] read from one segment.
#[derive(Debug)]
pub struct Scan {
    pub records: Vec<Found>,
    /// End of the last good record: where the next one goes. Less than the file's length
    /// when zeros (preallocated space) or a defect follow.
    pub end: u64,
    /// The first unusable record, if the file does not end cleanly after the last good one.
    pub defect: Option<Defect>,
}

/// Reads every record of a segment from just after its header, checking each checksum, and
/// stops at the first one that is short or corrupt.
pub fn scan(file: &File, file_len: u64) -> io::Result<Scan> {
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut skip = [0u8; HEADER_LEN as usize];
    reader.read_exact(&mut skip)?;
    let mut records = Vec::new();
    let mut offset = HEADER_LEN;
    let mut payload = Vec::new();
    let defect = loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            break None;
        }
        if remaining < RECORD_HEADER_LEN {
            break Some(Defect::Short);
        }
        let mut h = [0u8; RECORD_HEADER_LEN as usize];
        reader.read_exact(&mut h)?;
        if h == [0u8; RECORD_HEADER_LEN as usize] {
            // The zeros of preallocated space: the records end here.
            break None;
        }
        let len = le_u32(&h[0..4]);
        let crc = le_u32(&h[4..8]);
        let index = le_u64(&h[8..16]);
        if u64::from(len) > MAX_PAYLOAD {
            // A torn write leaves a length that is right or has zeros for some of its bytes
            // (smaller), never one larger than any record written.
            let why = format!("record length {len} is impossible");
            break Some(Defect::Damaged(why));
        }
        if remaining - RECORD_HEADER_LEN < u64::from(len) {
            break Some(Defect::Short);
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload)?;
        if record_crc(len, index, &payload) != crc {
            let why = format!("checksum mismatch in the record of index {index}");
            let frame = [&h[..], &payload[..]].concat();
            break Some(bad_record(offset, &frame, why));
        }
        records.push(Found { index, offset, len });
        offset += RECORD_HEADER_LEN + u64::from(len);
    };
    Ok(Scan {
        records,
        end: offset,
        defect,
    })
}

/// Reads one record's payload at `offset` and checks it is the intact record of `index`.
pub fn read_record(file: &File, offset: u64, index: u64, len: u32) -> io::Result<Vec<u8>> {
    let mut frame = vec![0u8; (RECORD_HEADER_LEN + u64::from(len)) as usize];
    file.read_exact_at(&mut frame, offset)?;
    let payload = frame.split_off(RECORD_HEADER_LEN as usize);
    let intact = le_u32(&frame[0..4]) == len
        && le_u64(&frame[8..16]) == index
        && record_crc(len, index, &payload) == le_u32(&frame[4..8]);
    if !intact {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the record of log index {index} at offset {offset} is damaged"),
        ));
    }
    Ok(payload)
}
