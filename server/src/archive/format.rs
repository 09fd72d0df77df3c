//! The bytes of one archive object: a checked header, then the body compressed with zstd and,
//! when a key is configured, encrypted.
//!
//! ```text
//! magic "RLAR" | format u8 (=1) | kind u8 (1 snapshot, 2 segment) | flags u8 (bit 0: encrypted)
//! | reserved u8 (=0) | first_index u64 | last_index u64 | time_ms u64 | payload_len u64
//! | sha256(payload) [32]
//! payload = zstd(body)                       (not encrypted)
//!         = nonce [12] | AES-256-GCM(zstd(body), aad = header without the digest | object name)
//! ```
//! Integers are little-endian. The digest covers the payload exactly as stored, so a flipped
//! bit or a truncated upload is found before anything is decompressed or applied, and every
//! error names the object.
//!
//! The payload is one zstd frame whose header declares the body's size. A body is only ever
//! decompressed up to that size and to a limit by kind ([`BodyLimits`]): a valid object of a
//! few kilobytes can expand to gigabytes (a decompression bomb), and is refused at the limit,
//! never held in memory whole. A snapshot's image is decompressed straight into its file. With encryption the GCM tag also authenticates the header and the
//! object's name: an object copied under another name is refused.
//!
//! Encoding is deterministic: the nonce is derived from the key, the object name and the
//! body's digest (a synthetic IV), so the same body under the same name always gives the same
//! bytes and re-uploading a range is idempotent.
//!
//! A segment body is a run of consecutive log entries:
//! `count u32 | count × (index u64 | term u64 | time_ms u64 | kind u8 | len u32 | bytes)`
//! with kind 0 = no-op (blank or membership: nothing for the database), 1 = page delta.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"RLAR";
const FORMAT: u8 = 1;
const FLAG_ENCRYPTED: u8 = 1;
/// magic + format + kind + flags + reserved + first + last + time + payload_len
const FIXED_LEN: usize = 4 + 4 + 8 * 4;
const HEADER_LEN: usize = FIXED_LEN + 32;
const NONCE_LEN: usize = 12;
/// zstd level: fast enough to compress 100 MB in well under a second on one core.
const ZSTD_LEVEL: i32 = 1;
/// The largest zstd window a payload may use (2^23 = 8 MiB), which bounds the decoder's own
/// buffer. Level 1 uses at most 2^19; every level up to 19 stays within 2^23.
const WINDOW_LOG_MAX: u32 = 23;
/// Bytes decompressed at a time.
const CHUNK: usize = 256 << 10;
/// Bytes of a segment entry besides its delta: index, term, time, kind, length.
pub const SEGMENT_ENTRY_HEADER: u64 = 8 + 8 + 8 + 1 + 4;

/// Environment variable holding the archive encryption key (64 hex digits = 32 bytes).
pub const KEY_ENV: &str = "RAFTLITE_ARCHIVE_KEY";

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A full database image at `last_index` (`first_index == last_index`).
    Snapshot = 1,
    /// Log entries `first_index..=last_index`.
    Segment = 2,
}

impl ObjectKind {
    fn noun(self) -> &'static str {
        match self {
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Segment => "segment",
        }
    }
}

/// The checked header of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    pub kind: ObjectKind,
    pub first_index: u64,
    pub last_index: u64,
    /// Snapshot: when the image was taken; segment: commit time of its last entry (ms since
    /// the Unix epoch, as the uploading leader observed it).
    pub time_ms: u64,
    pub encrypted: bool,
}

/// Why an object could not be read. Every variant names the object.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("archive object {object} is corrupt: {message}")]
    Corrupt { object: String, message: String },
    #[error("archive object {object} is encrypted: set {KEY_ENV} to the archive's key")]
    NoKey { object: String },
    #[error("archive object {object} does not decrypt with the key in {KEY_ENV} (wrong key, or the object was tampered with or renamed)")]
    WrongKey { object: String },
    /// The body is larger than `limit`: refused before more than `limit` bytes of it exist.
    #[error("archive object {object} is refused: {message}")]
    TooLarge {
        object: String,
        limit: u64,
        message: String,
    },
    #[error("archive object {object}: writing its body failed: {source}")]
    Write {
        object: String,
        source: std::io::Error,
    },
}

fn corrupt(object: &str, message: impl Into<String>) -> FormatError {
    FormatError::Corrupt {
        object: object.to_owned(),
        message: message.into(),
    }
}

/// The most bytes a body may decompress to, by kind of object: the most the node could have
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// A snapshot's database image: the node's `max_snapshot_bytes`.
    pub snapshot: u64,
    /// A segment's entries: the largest segment the archiver writes.
    pub segment: u64,
}

impl BodyLimits {
    /// The most bytes an object of `kind` whose body is within its limit can take: its
    /// header, a nonce and tag, and the body compressed at worst (zstd adds at most about
    /// 1/256 of the input to data that does not compress; 1/128 and 128 KiB are kept here).
    /// A larger object is refused before it is downloaded.
    pub fn max_object_bytes(&self, kind: ObjectKind) -> u64 {
        let (limit, _) = self.of(kind);
        limit
            .saturating_add(limit / 128)
            .saturating_add((HEADER_LEN + NONCE_LEN + 16) as u64 + (128 << 10))
    }

    /// The limit for `kind`, and what it is (for errors).
    fn of(&self, kind: ObjectKind) -> (u64, &'static str) {
        match kind {
            ObjectKind::Snapshot => (
                self.snapshot,
                "a snapshot may hold (max_snapshot_bytes; RAFTLITE_MAX_SNAPSHOT_BYTES raises it)",
            ),
            ObjectKind::Segment => (self.segment, "the archiver puts in a segment"),
        }
    }
}

/// The client-side encryption key.
#[derive(Clone)]
pub struct ArchiveKey([u8; 32]);

impl std::fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArchiveKey(..)")
    }
}

impl ArchiveKey {
    /// Parses 64 hex digits (e.g. from `openssl rand -hex 32`).
    pub fn from_hex(text: &str) -> Result<ArchiveKey, String> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(format!(
                "{KEY_ENV} must be 64 hex digits (32 bytes), got {} characters",
                text.len()
            ));
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("{KEY_ENV} must be 64 hex digits (32 bytes)"))?;
        }
        Ok(ArchiveKey(key))
    }

    /// The key from [`KEY_ENV`], if set.
    pub fn from_env() -> Result<Option<ArchiveKey>, String> {
        match std::env::var(KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => ArchiveKey::from_hex(&v).map(Some),
            _ => Ok(None),
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }

    /// Synthetic IV: a keyed digest of the name and the plaintext's digest.
    fn nonce(&self, object: &str, plaintext: &[u8]) -> [u8; NONCE_LEN] {
        let body_digest = Sha256::digest(plaintext);
        let mut h = Sha256::new();
        h.update(b"raftlite archive nonce v1");
        h.update(self.0);
        h.update((object.len() as u64).to_le_bytes());
        h.update(object.as_bytes());
        h.update(body_digest);
        let digest = h.finalize();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&digest[..NONCE_LEN]);
        nonce
    }
}

fn aad(fixed: &[u8], object: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(fixed.len() + object.len());
    aad.extend_from_slice(fixed);
    aad.extend_from_slice(object.as_bytes());
    aad
}

/// Encodes `body` as the object `object` (its name, bound into encryption).
pub fn encode_object(
    object: &str,
    header: &ObjectHeader,
    body: &[u8],
    key: Option<&ArchiveKey>,
) -> Vec<u8> {
    // zstd of an in-memory buffer cannot fail except on allocation. The frame declares the
    // body's size (zstd's default for a one-shot compression), which decoding checks.
    let compressed = zstd::bulk::compress(body, ZSTD_LEVEL).unwrap_or_else(|e| {
        panic!("zstd compression of {} bytes failed: {e}", body.len());
    });
    seal(object, header, compressed, key)
}

/// The object holding `compressed` as its payload.
fn seal(
    object: &str,
    header: &ObjectHeader,
    compressed: Vec<u8>,
    key: Option<&ArchiveKey>,
) -> Vec<u8> {
    let mut fixed = Vec::with_capacity(FIXED_LEN);
    fixed.extend_from_slice(MAGIC);
    fixed.push(FORMAT);
    fixed.push(header.kind as u8);
    fixed.push(if key.is_some() { FLAG_ENCRYPTED } else { 0 });
    fixed.push(0);
    fixed.extend_from_slice(&header.first_index.to_le_bytes());
    fixed.extend_from_slice(&header.last_index.to_le_bytes());
    fixed.extend_from_slice(&header.time_ms.to_le_bytes());
    let payload = match key {
        None => compressed,
        Some(key) => {
            let nonce = key.nonce(object, &compressed);
            // payload_len is part of the AAD: fill it in before encrypting.
            let payload_len = (NONCE_LEN + compressed.len() + 16) as u64;
            let mut fixed_for_aad = fixed.clone();
            fixed_for_aad.extend_from_slice(&payload_len.to_le_bytes());
            let sealed = key
                .cipher()
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &compressed,
                        aad: &aad(&fixed_for_aad, object),
                    },
                )
                .unwrap_or_else(|e| panic!("AES-GCM encryption failed: {e}"));
            let mut p = Vec::with_capacity(NONCE_LEN + sealed.len());
            p.extend_from_slice(&nonce);
            p.extend_from_slice(&sealed);
            p
        }
    };
    fixed.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&fixed);
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    out
}

/// Reads only the header (after checking the digest of the payload).
pub fn decode_header(object: &str, bytes: &[u8]) -> Result<ObjectHeader, FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(
            object,
            format!("{} bytes is shorter than the header", bytes.len()),
        ));
    }
    if &bytes[..4] != MAGIC {
        return Err(corrupt(object, "not a raftlite archive object (bad magic)"));
    }
    if bytes[4] != FORMAT {
        return Err(corrupt(object, format!("unknown format {}", bytes[4])));
    }
    let kind = match bytes[5] {
        1 => ObjectKind::Snapshot,
        2 => ObjectKind::Segment,
        k => return Err(corrupt(object, format!("unknown object kind {k}"))),
    };
    let flags = bytes[6];
    if flags & !FLAG_ENCRYPTED != 0 || bytes[7] != 0 {
        return Err(corrupt(object, format!("unknown flags {flags:#x}")));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let header = ObjectHeader {
        kind,
        first_index: u64_at(8),
        last_index: u64_at(16),
        time_ms: u64_at(24),
        encrypted: flags & FLAG_ENCRYPTED != 0,
    };
    let payload_len = u64_at(32);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != payload_len {
        return Err(corrupt(
            object,
            format!(
                "payload is {} bytes, the header says {payload_len} (truncated upload?)",
                payload.len()
            ),
        ));
    }
    if Sha256::digest(payload).as_slice() != &bytes[FIXED_LEN..HEADER_LEN] {
        return Err(corrupt(object, "SHA-256 checksum mismatch"));
    }
    if header.first_index > header.last_index {
        return Err(corrupt(
            object,
            format!(
                "first index {} after last index {}",
                header.first_index, header.last_index
            ),
        ));
    }
    Ok(header)
}

/// Checks and decodes a whole object: its header and its body, which may be no larger than
/// `limits` allows for its kind.
pub fn decode_object(
    object: &str,
    bytes: &[u8],
    key: Option<&ArchiveKey>,
    limits: &BodyLimits,
) -> Result<(ObjectHeader, Vec<u8>), FormatError> {
    let (header, compressed) = open_payload(object, bytes, key)?;
    // Room for the declared size when it is within the limit (`decompress` refuses the others
    // before decompressing anything).
    let (limit, _) = limits.of(header.kind);
    let declared = declared_size(object, &compressed)?.filter(|n| *n <= limit);
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    decompress(object, header.kind, &compressed, limits, &mut body)?;
    Ok((header, body))
}

/// Checks an object of `kind` and decompresses its body into `out` as it goes, never holding
/// the whole body in memory. Returns the header and the body's size. Nothing is written when
/// the object is not of `kind`, is corrupt or declares a body over the limit; a body that
/// turns out larger than declared or than the limit fails with at most the limit written.
pub fn decode_object_into(
    object: &str,
    bytes: &[u8],
    key: Option<&ArchiveKey>,
    kind: ObjectKind,
    limits: &BodyLimits,
    out: &mut dyn std::io::Write,
) -> Result<(ObjectHeader, u64), FormatError> {
    let (header, compressed) = open_payload(object, bytes, key)?;
    if header.kind != kind {
        return Err(corrupt(
            object,
            format!("it is a {}, not a {}", header.kind.noun(), kind.noun()),
        ));
    }
    let len = decompress(object, header.kind, &compressed, limits, out)?;
    Ok((header, len))
}

/// The checked header and the compressed payload (decrypted).
fn open_payload<'a>(
    object: &str,
    bytes: &'a [u8],
    key: Option<&ArchiveKey>,
) -> Result<(ObjectHeader, std::borrow::Cow<'a, [u8]>), FormatError> {
    let header = decode_header(object, bytes)?;
    let payload = &bytes[HEADER_LEN..];
    if !header.encrypted {
        return Ok((header, payload.into()));
    }
    let key = key.ok_or_else(|| FormatError::NoKey {
        object: object.to_owned(),
    })?;
    if payload.len() < NONCE_LEN + 16 {
        return Err(corrupt(object, "encrypted payload too short"));
    }
    let (nonce, sealed) = payload.split_at(NONCE_LEN);
    let decrypted = key
        .cipher()
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad(&bytes[..FIXED_LEN], object),
            },
        )
        .map_err(|_| FormatError::WrongKey {
            object: object.to_owned(),
        })?;
    Ok((header, decrypted.into()))
}

/// The body size the payload's zstd frame declares (`None`: it declares none), after checking
/// that the payload is exactly one frame: a second one would decompress past the declared size.
fn declared_size(object: &str, compressed: &[u8]) -> Result<Option<u64>, FormatError> {
    use zstd::zstd_safe;
    let frame_len = zstd_safe::find_frame_compressed_size(compressed)
        .map_err(|code| corrupt(object, format!("zstd: {}", zstd_safe::get_error_name(code))))?;
    if frame_len != compressed.len() {
        return Err(corrupt(
            object,
            format!(
                "{} bytes after the zstd frame",
                compressed.len() - frame_len
            ),
        ));
    }
    zstd_safe::get_frame_content_size(compressed)
        .map_err(|_| corrupt(object, "zstd: unreadable frame header"))
}

/// Decompresses the payload of an object of `kind` into `out`, a chunk at a time, and returns
/// the body's size: exactly what the frame declares, and never more than the limit for `kind`
/// (a body over it fails before more than the limit was decompressed).
fn decompress(
    object: &str,
    kind: ObjectKind,
    compressed: &[u8],
    limits: &BodyLimits,
    out: &mut dyn std::io::Write,
) -> Result<u64, FormatError> {
    use std::io::Read;
    let (limit, what) = limits.of(kind);
    let too_large = |message: String| FormatError::TooLarge {
        object: object.to_owned(),
        limit,
        message,
    };
    let declared = declared_size(object, compressed)?;
    if let Some(declared) = declared.filter(|n| *n > limit) {
        return Err(too_large(format!(
            "it declares a body of {declared} bytes, more than the {limit} bytes {what}"
        )));
    }
    let zstd_error = |e: std::io::Error| corrupt(object, format!("zstd: {e}"));
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(zstd_error)?
        .single_frame();
    decoder.window_log_max(WINDOW_LOG_MAX).map_err(zstd_error)?;
    let most = declared.unwrap_or(limit);
    let mut chunk = vec![0u8; most.saturating_add(1).min(CHUNK as u64) as usize];
    let mut len = 0u64;
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(zstd_error(e)),
        };
        len += n as u64;
        if len > most {
            return Err(match declared {
                Some(declared) => corrupt(
                    object,
                    format!("its body is larger than the {declared} bytes its frame declares"),
                ),
                None => too_large(format!(
                    "its body decompresses to more than the {limit} bytes {what}"
                )),
            });
        }
        out.write_all(&chunk[..n])
            .map_err(|source| FormatError::Write {
                object: object.to_owned(),
                source,
            })?;
    }
    if let Some(declared) = declared.filter(|n| *n != len) {
        return Err(corrupt(
            object,
            format!("its body is {len} bytes, its frame declares {declared}"),
        ));
    }
    Ok(len)
}

/// What an archived log entry asks of the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryBody {
    /// Blank or membership entry.
    NoOp,
    /// An encoded `db::PageDelta`.
    Delta(bytes::Bytes),
}

/// One log entry in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEntry {
    pub index: u64,
    pub term: u64,
    /// When the uploading leader saw it committed (ms since the Unix epoch).
    pub time_ms: u64,
    pub body: EntryBody,
}

/// Encodes consecutive entries as a segment body.
pub fn encode_segment(entries: &[SegmentEntry]) -> Vec<u8> {
    let size: usize = entries
        .iter()
        .map(|e| {
            SEGMENT_ENTRY_HEADER as usize
                + match &e.body {
                    EntryBody::NoOp => 0,
                    EntryBody::Delta(b) => b.len(),
                }
        })
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.index.to_le_bytes());
        out.extend_from_slice(&e.term.to_le_bytes());
        out.extend_from_slice(&e.time_ms.to_le_bytes());
        match &e.body {
            EntryBody::NoOp => {
                out.push(0);
                out.extend_from_slice(&0u32.to_le_bytes());
            }
            EntryBody::Delta(b) => {
                out.push(1);
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    out
}

/// Decodes a segment body and checks that it holds exactly `header`'s index range, in order.
pub fn decode_segment(
    object: &str,
    header: &ObjectHeader,
    body: &[u8],
) -> Result<Vec<SegmentEntry>, FormatError> {
    let mut r = body;
    let mut take = |n: usize| -> Result<&[u8], FormatError> {
        if r.len() < n {
            return Err(corrupt(object, "segment body ends early"));
        }
        let (head, rest) = r.split_at(n);
        r = rest;
        Ok(head)
    };
    let read_u64 = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    };
    let read_u32 = |b: &[u8]| {
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        u32::from_le_bytes(a)
    };
    let count = read_u32(take(4)?) as u64;
    if header.kind != ObjectKind::Segment || count != header.last_index - header.first_index + 1 {
        return Err(corrupt(
            object,
            format!(
                "holds {count} entries, the header says {}..={}",
                header.first_index, header.last_index
            ),
        ));
    }
    let mut entries = Vec::with_capacity(count.min(1 << 20) as usize);
    for expected in header.first_index..=header.last_index {
        let index = read_u64(take(8)?);
        let term = read_u64(take(8)?);
        let time_ms = read_u64(take(8)?);
        let kind = take(1)?[0];
        let len = read_u32(take(4)?) as usize;
        let bytes = take(len)?;
        if index != expected {
            return Err(corrupt(
                object,
                format!("entry {index} where {expected} was expected"),
            ));
        }
        let body = match kind {
            0 => EntryBody::NoOp,
            1 => EntryBody::Delta(bytes::Bytes::copy_from_slice(bytes)),
            k => {
                return Err(corrupt(
                    object,
                    format!("entry {index} has unknown kind {k}"),
                ))
            }
        };
        entries.push(SegmentEntry {
            index,
            term,
            time_ms,
            body,
        });
    }
    if !r.is_empty() {
        return Err(corrupt(object, "trailing bytes after the last entry"));
    }
    Ok(entries)
}

/// An object `object` whose body is `len` zeros, compressed a chunk at a time (the body never
/// exists in memory): a decompression bomb of a few kilobytes per gigabyte. `declare`: whether
/// its frame declares the body's size.
#[cfg(test)]
pub(crate) fn zeros_object(
    object: &str,
    header: &ObjectHeader,
    len: u64,
    declare: bool,
) -> Vec<u8> {
    use std::io::Write;
    let mut encoder =
        zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).expect("zstd encoder");
    encoder
        .include_contentsize(declare)
        .expect("content size flag");
    if declare {
        encoder
            .set_pledged_src_size(Some(len))
            .expect("pledged size");
    }
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64);
        encoder
            .write_all(&chunk[..n as usize])
            .expect("compress zeros");
        left -= n;
    }
    let compressed = encoder.finish().expect("finish the frame");
    seal(object, header, compressed, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAPSHOT: &str = "c/generations/00000001/snapshots/00000000000000000042.db.zst";
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    /// Limits far below the bombs', so that the tests run fast.
    fn limits() -> BodyLimits {
        BodyLimits {
            snapshot: MIB,
            segment: 2 * MIB,
        }
    }

    fn snapshot_header() -> ObjectHeader {
        ObjectHeader {
            kind: ObjectKind::Snapshot,
            first_index: 42,
            last_index: 42,
            time_ms: 5,
            encrypted: false,
        }
    }

    /// The error of a decode that must fail (without printing a body of a gigabyte if not).
    fn refused<T>(decoded: Result<T, FormatError>) -> FormatError {
        match decoded {
            Ok(_) => panic!("a bomb was decoded"),
            Err(e) => e,
        }
    }

    /// A sink that counts what it is given, and keeps none of it.
    #[derive(Default)]
    struct Counted {
        bytes: u64,
        most: usize,
    }

    impl std::io::Write for Counted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.bytes += buf.len() as u64;
            self.most = self.most.max(buf.len());
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entries() -> Vec<SegmentEntry> {
        vec![
            SegmentEntry {
                index: 7,
                term: 2,
                time_ms: 1000,
                body: EntryBody::NoOp,
            },
            SegmentEntry {
                index: 8,
                term: 2,
                time_ms: 1001,
                body: EntryBody::Delta(bytes::Bytes::from(vec![9u8; 5000])),
            },
        ]
    }

    fn segment_header() -> ObjectHeader {
        ObjectHeader {
            kind: ObjectKind::Segment,
            first_index: 7,
            last_index: 8,
            time_ms: 1001,
            encrypted: false,
        }
    }

    fn key() -> ArchiveKey {
        ArchiveKey::from_hex(&"ab".repeat(32)).expect("valid key")
    }

    #[test]
    fn segment_round_trips_and_is_deterministic() -> Result<(), FormatError> {
        let name = "c/generations/00000001/segments/7-8.seg.zst";
        let body = encode_segment(&entries());
        let a = encode_object(name, &segment_header(), &body, None);
        let b = encode_object(name, &segment_header(), &body, None);
        assert_eq!(a, b, "same range, same bytes");
        assert!(a.len() < body.len(), "compressed");
        let (header, decoded) = decode_object(name, &a, None, &limits())?;
        assert_eq!(header, segment_header());
        assert_eq!(decode_segment(name, &header, &decoded)?, entries());
        Ok(())
    }

    #[test]
    fn encrypted_round_trip_is_deterministic_and_needs_the_key() -> Result<(), FormatError> {
        let name = "p/c/generations/00000001/snapshots/00000000000000000042.db.zst";
        let header = ObjectHeader {
            kind: ObjectKind::Snapshot,
            first_index: 42,
            last_index: 42,
            time_ms: 5,
            encrypted: true,
        };
        let body = b"SQLite format 3\0 and many pages".repeat(100);
        let a = encode_object(name, &header, &body, Some(&key()));
        assert_eq!(a, encode_object(name, &header, &body, Some(&key())));
        assert!(
            !a.windows(15).any(|w| w == b"SQLite format 3"),
            "plaintext must not appear"
        );
        let (h, decoded) = decode_object(name, &a, Some(&key()), &limits())?;
        assert_eq!((h, decoded), (header, body.clone()));
        let err = decode_object(name, &a, None, &limits()).expect_err("no key");
        assert!(matches!(err, FormatError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains(name));
        let other = ArchiveKey::from_hex(&"cd".repeat(32)).expect("valid key");
        let err = decode_object(name, &a, Some(&other), &limits()).expect_err("wrong key");
        assert!(matches!(err, FormatError::WrongKey { .. }), "{err}");
        let err =
            decode_object("p/c/other-name", &a, Some(&key()), &limits()).expect_err("renamed");
        assert!(matches!(err, FormatError::WrongKey { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn corruption_is_detected_and_names_the_object() {
        let name = "c/generations/00000001/segments/7-8.seg.zst";
        let good = encode_object(name, &segment_header(), &encode_segment(&entries()), None);
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let truncated = &good[..good.len() - 3];
        for (what, bytes) in [
            ("flipped", &flipped[..]),
            ("truncated", truncated),
            ("empty", &[][..]),
        ] {
            let err = decode_object(name, bytes, None, &limits()).expect_err(what);
            assert!(matches!(err, FormatError::Corrupt { .. }), "{what}: {err}");
            assert!(err.to_string().contains(name), "{what}: {err}");
        }
    }

    #[test]
    fn segment_range_must_match_header() -> Result<(), FormatError> {
        let name = "s";
        let body = encode_segment(&entries());
        let wrong = ObjectHeader {
            first_index: 6,
            ..segment_header()
        };
        assert!(decode_segment(name, &wrong, &body).is_err());
        let header = segment_header();
        assert!(decode_segment(name, &header, &body[..body.len() - 1]).is_err());
        Ok(())
    }

    /// A valid object of a few kilobytes whose body is 1 GiB of zeros (a decompression bomb)
    /// is refused by the size its frame declares, before anything is decompressed: the error
    /// names the object and the limit. Encrypted or not, into memory or into a file.
    #[test]
    fn a_decompression_bomb_is_refused_before_it_is_decompressed() {
        let bomb = zeros_object(SNAPSHOT, &snapshot_header(), GIB, true);
        assert!(bomb.len() < 256 << 10, "a bomb: {} bytes", bomb.len());
        let compressed = &bomb[HEADER_LEN..];
        assert_eq!(declared_size(SNAPSHOT, compressed).ok(), Some(Some(GIB)));
        let encrypted = ObjectHeader {
            encrypted: true,
            ..snapshot_header()
        };
        let sealed = seal(SNAPSHOT, &encrypted, compressed.to_vec(), Some(&key()));
        for (what, object, key) in [("plain", &bomb, None), ("encrypted", &sealed, Some(key()))] {
            let started = std::time::Instant::now();
            let err = refused(decode_object(SNAPSHOT, object, key.as_ref(), &limits()));
            let text = err.to_string();
            assert!(
                matches!(err, FormatError::TooLarge { limit: MIB, .. }),
                "{what}: {err}"
            );
            for part in [
                SNAPSHOT,
                "1073741824",
                "1048576 bytes",
                "max_snapshot_bytes",
            ] {
                assert!(
                    text.contains(part),
                    "{what}: {part:?} is missing from: {text}"
                );
            }
            let mut sink = Counted::default();
            let err = refused(decode_object_into(
                SNAPSHOT,
                object,
                key.as_ref(),
                ObjectKind::Snapshot,
                &limits(),
                &mut sink,
            ));
            assert!(matches!(err, FormatError::TooLarge { .. }), "{what}: {err}");
            assert_eq!(sink.bytes, 0, "{what}: nothing written");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{what}: refused without decompressing ({:?})",
                started.elapsed()
            );
        }
    }

    /// A bomb whose frame does not declare its size stops at the limit: at most the limit is
    /// decompressed, a chunk at a time, and the error names the object and the limit.
    #[test]
    fn a_bomb_that_hides_its_size_stops_at_the_limit() {
        let segment = "c/generations/00000001/segments/7-8.seg.zst";
        for (name, header, limit) in [
            (SNAPSHOT, snapshot_header(), limits().snapshot),
            (segment, segment_header(), limits().segment),
        ] {
            let bomb = zeros_object(name, &header, GIB, false);
            assert_eq!(declared_size(name, &bomb[HEADER_LEN..]).ok(), Some(None));
            let started = std::time::Instant::now();
            let mut sink = Counted::default();
            let err = refused(decode_object_into(
                name,
                &bomb,
                None,
                header.kind,
                &limits(),
                &mut sink,
            ));
            assert!(
                matches!(err, FormatError::TooLarge { limit: l, .. } if l == limit),
                "{err}"
            );
            assert!(err.to_string().contains(name), "{err}");
            assert!(err.to_string().contains(&format!("{limit} bytes")), "{err}");
            assert!(sink.bytes <= limit, "{} bytes written", sink.bytes);
            assert!(sink.most <= CHUNK, "a chunk at a time: {}", sink.most);
            let err = refused(decode_object(name, &bomb, None, &limits()));
            assert!(matches!(err, FormatError::TooLarge { .. }), "{err}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "stopped at the limit ({:?})",
                started.elapsed()
            );
        }
    }

    /// The payload is one frame: a second one (past what the first declares) is corrupt, and so
    /// is an object of the other kind.
    #[test]
    fn a_payload_is_one_frame_of_the_expected_kind() {
        let body = vec![7u8; 1000];
        let mut compressed = zstd::bulk::compress(&body, ZSTD_LEVEL).expect("compress");
        let single = seal(SNAPSHOT, &snapshot_header(), compressed.clone(), None);
        let mut sink = Vec::new();
        let (_, len) = decode_object_into(
            SNAPSHOT,
            &single,
            None,
            ObjectKind::Snapshot,
            &limits(),
            &mut sink,
        )
        .expect("one frame");
        assert_eq!((len, &sink), (1000, &body));
        let err = decode_object_into(
            SNAPSHOT,
            &single,
            None,
            ObjectKind::Segment,
            &limits(),
            &mut Vec::new(),
        )
        .expect_err("not a segment");
        assert!(
            err.to_string().contains("is a snapshot, not a segment"),
            "{err}"
        );

        compressed.extend(zstd::bulk::compress(&body, ZSTD_LEVEL).expect("compress"));
        let double = seal(SNAPSHOT, &snapshot_header(), compressed, None);
        let err = decode_object(SNAPSHOT, &double, None, &limits()).expect_err("two frames");
        assert!(matches!(err, FormatError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("after the zstd frame"), "{err}");
    }

    #[test]
    fn keys_are_64_hex_digits() {
        assert!(ArchiveKey::from_hex(&"0f".repeat(32)).is_ok());
        assert!(ArchiveKey::from_hex("abc").is_err());
        assert!(ArchiveKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
