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
//! error names the object. With encryption the GCM tag also authenticates the header and the
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
}

fn corrupt(object: &str, message: impl Into<String>) -> FormatError {
    FormatError::Corrupt {
        object: object.to_owned(),
        message: message.into(),
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
    // zstd of an in-memory buffer cannot fail except on allocation.
    let compressed = zstd::bulk::compress(body, ZSTD_LEVEL).unwrap_or_else(|e| {
        panic!("zstd compression of {} bytes failed: {e}", body.len());
    });
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

/// Checks and decodes a whole object: its header and its body.
pub fn decode_object(
    object: &str,
    bytes: &[u8],
    key: Option<&ArchiveKey>,
) -> Result<(ObjectHeader, Vec<u8>), FormatError> {
    let header = decode_header(object, bytes)?;
    let payload = &bytes[HEADER_LEN..];
    let decrypted;
    let compressed: &[u8] = if header.encrypted {
        let key = key.ok_or_else(|| FormatError::NoKey {
            object: object.to_owned(),
        })?;
        if payload.len() < NONCE_LEN + 16 {
            return Err(corrupt(object, "encrypted payload too short"));
        }
        let (nonce, sealed) = payload.split_at(NONCE_LEN);
        decrypted = key
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
        &decrypted
    } else {
        payload
    };
    let body =
        zstd::stream::decode_all(compressed).map_err(|e| corrupt(object, format!("zstd: {e}")))?;
    Ok((header, body))
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
            29 + match &e.body {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let (header, decoded) = decode_object(name, &a, None)?;
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
        let (h, decoded) = decode_object(name, &a, Some(&key()))?;
        assert_eq!((h, decoded), (header, body.clone()));
        let err = decode_object(name, &a, None).expect_err("no key");
        assert!(matches!(err, FormatError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains(name));
        let other = ArchiveKey::from_hex(&"cd".repeat(32)).expect("valid key");
        let err = decode_object(name, &a, Some(&other)).expect_err("wrong key");
        assert!(matches!(err, FormatError::WrongKey { .. }), "{err}");
        let err = decode_object("p/c/other-name", &a, Some(&key())).expect_err("renamed");
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
            let err = decode_object(name, bytes, None).expect_err(what);
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

    #[test]
    fn keys_are_64_hex_digits() {
        assert!(ArchiveKey::from_hex(&"0f".repeat(32)).is_ok());
        assert!(ArchiveKey::from_hex("abc").is_err());
        assert!(ArchiveKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
