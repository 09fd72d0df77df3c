//! Appends to the last segment with direct I/O (`O_DIRECT | O_DSYNC`): one `pwrite` that
//! returns once the bytes are on disk, instead of a `pwrite` into the page cache and an
//! `fdatasync` that writes the page back.
//!
//! Direct I/O moves whole aligned blocks, so an append rewrites the block it starts in: the
//! bytes of that block before the append (records already on disk, kept here from the last
//! append), then the new records, then zeros up to the block's end. Rewriting those earlier
//! bytes with the same values is safe even if the write is torn: each sector holds either
//! its old or its new contents, and for the bytes before the append both are the same. The
//! zeros after the records were zeros already (see `PREALLOCATE`), so the file's format does
//! not change: records, then zeros.
//!
//! Measured here (BENCHMARKS.md, "Session 27"): one log alone appends small entries as fast
//! either way, 16 appenders of 64 KiB entries make 1.8× the appends; with the three logs of a
//! local cluster flushing on one disk at once, each follower's group of one append took 35–45
//! µs less. A file system that refuses direct I/O (`EINVAL`, at open or at the first write:
//! tmpfs before Linux 6.6, some network file systems) gets the page cache path instead, for
//! the rest of the process; whatever part of that write did reach the file holds the same
//! bytes the page cache path then writes and syncs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of offsets, lengths and buffers: a multiple of every logical block size in use.
pub(super) const BLOCK: u64 = 4096;
/// Largest aligned buffer kept between appends: a group of small appends with its 1 MiB of
/// preallocated zeros fits. A larger group gets a buffer of its own, so a node that once wrote
/// a large transaction does not hold a second copy of the batch buffer's size.
pub(super) const RETAINED_STAGING_BYTES: usize = 2 << 20;

/// The last segment opened for direct writes, and its partial last block.
pub(super) struct Tail {
    seq: u64,
    file: File,
    /// Where the segment's records end, as of the last direct append.
    end: u64,
    /// The segment's bytes from the start of `end`'s block to `end`.
    partial: Vec<u8>,
}

/// A buffer whose usable part starts on a [`BLOCK`] boundary, kept between appends.
#[derive(Default)]
pub(super) struct Staging {
    buf: Vec<u8>,
}

impl Staging {
    /// `len` (a multiple of [`BLOCK`]) writable bytes, aligned, contents unspecified.
    fn aligned(&mut self, len: usize) -> &mut [u8] {
        let block = BLOCK as usize;
        if self.buf.len() < len + block {
            self.buf = vec![0; len + block];
        }
        let start = self.buf.as_ptr().align_offset(block).min(block);
        &mut self.buf[start..start + len]
    }

    /// Gives back a buffer grown past `bytes` (for an unusually large append).
    pub(super) fn shrink_to(&mut self, bytes: usize) {
        if self.buf.len() > bytes {
            self.buf = Vec::new();
        }
    }
}

/// What a direct append did.
pub(super) enum Written {
    /// On disk; the file now extends at least to this offset (zeros after the records).
    Durable { file_end: u64 },
    /// The file system refuses direct I/O: nothing was written, use the page cache.
    Refused(io::Error),
}

/// Writes `bytes` (records, maybe followed by preallocated zeros) at `end` of segment `seq`
/// (`path`, `file` its ordinary handle), of which the first `records_len` are records: the
/// segment's records then end at `end + records_len`.
pub(super) fn append(
    tail: &mut Option<Tail>,
    staging: &mut Staging,
    (seq, path, file): (u64, &Path, &File),
    end: u64,
    bytes: &[u8],
    records_len: usize,
) -> io::Result<Written> {
    let mut current = match tail.take() {
        Some(t) if t.seq == seq => t,
        _ => match open(path) {
            Ok(direct) => Tail {
                seq,
                file: direct,
                end: u64::MAX,
                partial: Vec::new(),
            },
            Err(e) if refused(&e) => return Ok(Written::Refused(e)),
            Err(e) => return Err(e),
        },
    };
    let block_start = end - end % BLOCK;
    let before = (end - block_start) as usize;
    if current.end != end {
        // Opened just now, or the segment was cut since (a truncation): the bytes before
        // `end` in its block are on disk, read them once.
        current.partial.resize(before, 0);
        file.read_exact_at(&mut current.partial, block_start)?;
        current.end = end;
    }
    let total = before + bytes.len();
    let padded = total.div_ceil(BLOCK as usize) * BLOCK as usize;
    let out = staging.aligned(padded);
    out[..before].copy_from_slice(&current.partial);
    out[before..total].copy_from_slice(bytes);
    out[total..].fill(0);
    if let Err(e) = current.file.write_all_at(out, block_start) {
        // EINVAL: the flag or the alignment refused. Whatever part did move holds the bytes
        // the page cache path writes again and syncs.
        return match refused(&e) {
            true => Ok(Written::Refused(e)),
            false => Err(e),
        };
    }
    let new_end = end + records_len as u64;
    let from = (new_end - new_end % BLOCK - block_start) as usize;
    let to = (new_end - block_start) as usize;
    current.partial.clear();
    current.partial.extend_from_slice(&out[from..to]);
    current.end = new_end;
    *tail = Some(current);
    Ok(Written::Durable {
        file_end: block_start + padded as u64,
    })
}

fn open(path: &Path) -> io::Result<File> {
    #[cfg(feature = "failpoints")]
    if crate::failpoint::armed("wal-direct-refused") {
        // A file system without direct I/O, for the tests of the page cache path.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)
}

fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}
