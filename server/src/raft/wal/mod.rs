//! The Raft log's storage engine: a segmented, append-only write-ahead log with group commit.
//!
//! The log is a directory of segment files named by a growing sequence number
//! (`0000000000000001.wal`, ...), each a header followed by records framed with their length,
//! log index and a CRC32 (see `segment`). It stores opaque payloads by log index and knows
//! nothing of openraft; `log_store` puts the Raft types on top.
//!
//! - **Append**: every record of a batch goes to the last segment in ONE `pwrite` made with
//!   direct I/O and `O_DSYNC` (see `direct`), or, where the file system refuses direct I/O,
//!   one `pwrite` into the page cache and one `fdatasync`; only then does the batch count as
//!   written. [`WalWriter`] is the thread that
//!   groups every append queued at that moment into one such batch (group commit) and calls
//!   each append's completion after the sync. When the last segment has reached its target
//!   size, the next batch starts a new segment, created and synced (file and directory)
//!   before any record goes into it, so every segment but the last is complete on disk.
//!   A small batch that extends the file also writes 1 MiB of zeros after itself, so the
//!   next appends overwrite allocated space and their `fdatasync` need not wait for a
//!   journal commit of the file's new size; a segment is trimmed to its records before the
//!   next one is created, and the last one on open.
//! - **Index**: in memory, index → (segment, offset, length), rebuilt on open by reading every
//!   record and checking its CRC. Within a segment the indexes are consecutive; a segment may
//!   start after a gap (the log after a snapshot install that the purge floor kept old
//!   entries below).
//! - **Recovery**: a torn write can only damage the end of the last segment, so the first
//!   short or corrupt record there — or a last segment whose header never made it to disk —
//!   is cut off (logged with the bytes dropped) and appending continues after the last good
//!   record. The same damage anywhere else is an error, not silent loss. A bad record in the
//!   last segment that a torn write cannot leave (records are written over zeros, so a torn
//!   one reads as zeros where its bytes did not land; one with every sector written was
//!   damaged afterwards) is cut too, with an error logged, since some file systems leave
//!   stale bytes after a crash that read the same; the log store then refuses the start if
//!   the cut took entries the node recorded as committed (`log_store`). Whatever follows the
//!   last good record (a torn tail, preallocated zeros) is cut off the file, so that no stale
//!   record can ever line up behind new ones. The directory and the last segment are synced
//!   on open: a process killed between a write and its sync leaves changes that read back
//!   from the page cache but may not be on the disk.
//! - **Truncate** (a conflict: drop entries ≥ i) deletes whole segments from the newest
//!   backwards and cuts the one holding i; **purge** deletes whole segments from the oldest
//!   whose entries are all at or below the purge point, never the last one. Both sync the
//!   files and the directory, and a crash midway leaves a log that is still a contiguous run.
//! - After a failed write or sync the log refuses every further change (a failed `fsync` may
//!   have dropped the data it was given: retrying it could report lost data durable); the node
//!   must restart and recover from the files.
//!
//! Why not redb (used before): a B-tree commit per append cost 0.55–0.8 ms here against about
//! 0.2 ms for an append and `fdatasync` of the same bytes (BENCHMARKS.md, "Raft log append").

mod direct;
mod segment;

/// Bytes of a segment's header: a longer segment file has held records.
pub(crate) const SEGMENT_HEADER_LEN: u64 = segment::HEADER_LEN;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, RwLock};

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Size after which the next batch starts a new segment (a segment holds at least one
    /// batch, so one may be larger).
    pub segment_bytes: u64,
    /// Appends with direct I/O where the file system allows it (see `direct`); off, or where
    /// it is refused, through the page cache and `fdatasync`.
    pub direct_io: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            direct_io: true,
        }
    }
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Makes the names in `dir` durable (a file created, renamed or removed there).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Where the records of one segment are.
struct SegmentIndex {
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Index of `records[0]` (meaningless while `records` is empty).
    first_index: u64,
    /// (frame offset, payload length) of consecutive indexes from `first_index`.
    records: Vec<(u64, u32)>,
    /// End of the last record: where the next one goes.
    end: u64,
    /// Length of the file; from `end` on it is zeros (see [`PREALLOCATE`]).
    allocated: u64,
}

impl SegmentIndex {
    fn last_index(&self) -> Option<u64> {
        (!self.records.is_empty()).then(|| self.first_index + self.records.len() as u64 - 1)
    }

    /// Position in `records` of `index`, if this segment holds it.
    fn position(&self, index: u64) -> Option<usize> {
        let last = self.last_index()?;
        (index >= self.first_index && index <= last).then(|| (index - self.first_index) as usize)
    }
}

/// The segments, shared by the writer (the only one that changes them) and readers.
type Segments = Arc<RwLock<Vec<SegmentIndex>>>;

/// Reads entries by index, from any thread, while the writer appends.
#[derive(Clone)]
pub struct WalReader {
    segments: Segments,
    direct_io: Arc<AtomicBool>,
}

impl WalReader {
    fn segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<SegmentIndex>> {
        self.segments.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The records with index in `[start, end)` that the log holds, in index order, each
    /// checked against its CRC.
    pub fn read(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let mut plan = Vec::new();
        for seg in self.segments().iter() {
            let Some(last) = seg.last_index() else {
                continue;
            };
            let from = start.max(seg.first_index);
            let to = end.min(last.saturating_add(1));
            for index in from..to {
                let (offset, len) = seg.records[(index - seg.first_index) as usize];
                plan.push((seg.file.clone(), index, offset, len));
            }
        }
        plan.into_iter()
            .map(|(file, index, offset, len)| {
                segment::read_record(&file, offset, index, len).map(|payload| (index, payload))
            })
            .collect()
    }

    /// Lowest index held.
    pub fn first_index(&self) -> Option<u64> {
        self.segments()
            .iter()
            .find(|s| !s.records.is_empty())
            .map(|s| s.first_index)
    }

    /// Highest index held.
    pub fn last_index(&self) -> Option<u64> {
        self.segments()
            .iter()
            .rev()
            .find_map(SegmentIndex::last_index)
    }

    /// Whether appends reach the disk with direct I/O: as the options say, until the file
    /// system refuses it (see `direct`).
    pub fn direct_io(&self) -> bool {
        self.direct_io.load(Ordering::Relaxed)
    }

    /// Number of segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.segments().len()
    }
}

/// The log's files and index. Owned by one thread that makes every change (see
/// [`WalWriter`]); [`WalReader`]s read concurrently.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    segments: Segments,
    next_seq: u64,
    /// Set by the first failed write or sync (see the module docs).
    failed: Option<String>,
    /// The buffer of the batch being written, kept between appends: a fresh one per append
    /// cost page faults on every megabyte of large entries.
    batch: Batch,
    /// Whether appends use direct I/O (shown to readers too), the segment open for it, and
    /// its aligned buffer.
    direct_io: Arc<AtomicBool>,
    tail: Option<direct::Tail>,
    staging: direct::Staging,
}

impl Wal {
    /// Opens the log in `dir` (created if missing), rebuilding the index and cutting off a
    /// torn tail (see the module docs).
    pub fn open(dir: &Path, options: WalOptions) -> io::Result<Wal> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            // The directory's own entry must be durable before anything in it counts.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let mut found = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            if let Some(seq) = item.file_name().to_str().and_then(parse_segment_name) {
                found.push((seq, item.path()));
            }
        }
        found.sort();
        let mut segments: Vec<SegmentIndex> = Vec::new();
        let mut next_seq = 1;
        let count = found.len();
        for (k, (seq, path)) in found.into_iter().enumerate() {
            next_seq = next_seq.max(seq + 1);
            let is_last = k + 1 == count;
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            match segment::read_header(&file, len)? {
                // Records go into a segment only after its header is synced, so a last segment
                // with a bad header and no room for records was cut short while being created.
                Err(defect) if is_last && len <= segment::HEADER_LEN => {
                    tracing::warn!(segment = %path.display(), %defect,
                        "WAL: removing a last segment whose header was never completed");
                    drop(file);
                    std::fs::remove_file(&path)?;
                    sync_dir(dir)?;
                    continue;
                }
                Err(defect) => {
                    return Err(invalid_data(format!(
                        "WAL segment {} has a bad header ({defect}); only a last segment no \
                         longer than a header may be incomplete",
                        path.display()
                    )))
                }
                Ok(header_seq) if header_seq != seq => {
                    return Err(invalid_data(format!(
                        "WAL segment {} says it is segment {header_seq}",
                        path.display()
                    )))
                }
                Ok(_) => {}
            }
            let scan = segment::scan(&file, len)?;
            let mut prev = segments.iter().rev().find_map(SegmentIndex::last_index);
            for (j, r) in scan.records.iter().enumerate() {
                let in_order = match prev {
                    None => true,
                    Some(p) if j == 0 => r.index > p,
                    Some(p) => r.index == p + 1,
                };
                if !in_order {
                    return Err(invalid_data(format!(
                        "WAL segment {}: the record at offset {} has index {} after {}",
                        path.display(),
                        r.offset,
                        r.index,
                        prev.unwrap_or_default()
                    )));
                }
                prev = Some(r.index);
            }
            if scan.defect.is_none() && scan.end < len && !is_last {
                // Segments are trimmed to their records before the next one is created.
                return Err(invalid_data(format!(
                    "WAL segment {} has zeros after its last record at offset {}; only the last \
                     segment may",
                    path.display(),
                    scan.end
                )));
            }
            if let Some(defect) = &scan.defect {
                if !is_last {
                    return Err(invalid_data(format!(
                        "WAL segment {} is damaged at offset {} ({defect}); only the last \
                         segment may end in a torn write",
                        path.display(),
                        scan.end
                    )));
                }
                let dropped_bytes = len - scan.end;
                if matches!(defect, segment::Defect::Damaged(_)) {
                    // Not what a torn write leaves, but a crash on some file systems (ext4 with
                    // data=writeback, some network ones) can leave stale bytes after the last
                    // record, which read the same: cut, and say so loudly. The log store then
                    // refuses the start if the cut took entries this node recorded committed.
                    tracing::error!(segment = %path.display(), offset = scan.end, dropped_bytes,
                        %defect, "WAL: cutting off a tail that looks damaged on disk rather than torn");
                } else {
                    tracing::warn!(segment = %path.display(), offset = scan.end, dropped_bytes,
                        %defect, "WAL: cutting off a torn or corrupt tail");
                }
            }
            if scan.end < len {
                // A torn tail, or preallocated zeros: either way nothing may stay after the
                // last record (stale records after new ones would read as part of the log).
                file.set_len(scan.end)?;
                file.sync_all()?;
            } else if is_last {
                // A process killed between its write and its sync leaves records that read
                // back from the page cache but may not be on the disk: this node is about to
                // tell a leader it holds them, so they must be durable first.
                file.sync_all()?;
            }
            segments.push(SegmentIndex {
                seq,
                path,
                file: Arc::new(file),
                first_index: scan.records.first().map(|r| r.index).unwrap_or(0),
                records: scan.records.iter().map(|r| (r.offset, r.len)).collect(),
                end: scan.end,
                allocated: scan.end,
            });
        }
        sync_dir(dir)?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            options: options.clone(),
            segments: Arc::new(RwLock::new(segments)),
            next_seq,
            failed: None,
            batch: Batch::default(),
            direct_io: Arc::new(AtomicBool::new(options.direct_io)),
            tail: None,
            staging: direct::Staging::default(),
        };
        if wal.segments_mut().is_empty() {
            wal.new_segment()?;
        }
        Ok(wal)
    }

    pub fn reader(&self) -> WalReader {
        WalReader {
            segments: self.segments.clone(),
            direct_io: self.direct_io.clone(),
        }
    }

    fn segments_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<SegmentIndex>> {
        self.segments.write().unwrap_or_else(|p| p.into_inner())
    }

    fn check_usable(&self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(cause) => Err(io::Error::other(format!(
                "the Raft log refuses changes after an earlier I/O error ({cause}); restart \
                 the node"
            ))),
        }
    }

    /// Runs a change (`what`, for the error); a failure makes the log refuse every later
    /// change.
    fn guarded<T>(
        &mut self,
        what: &str,
        change: impl FnOnce(&mut Self) -> io::Result<T>,
    ) -> io::Result<T> {
        self.check_usable()?;
        change(self).map_err(|e| {
            let e = io::Error::new(
                e.kind(),
                format!("{what} in the Raft log {}: {e}", self.dir.display()),
            );
            self.failed = Some(e.to_string());
            e
        })
    }

    fn new_segment(&mut self) -> io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all_at(&segment::encode_header(seq), 0)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.segments_mut().push(SegmentIndex {
            seq,
            path,
            file: Arc::new(file),
            first_index: 0,
            records: Vec::new(),
            end: segment::HEADER_LEN,
            allocated: segment::HEADER_LEN,
        });
        Ok(())
    }

    /// Appends records durably: when this returns Ok, they are on disk. Indexes must follow
    /// the log's last one (a gap starts a new segment); to overwrite, truncate first.
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> io::Result<()> {
        self.guarded("append", |wal| wal.append_unguarded(records))
    }

    fn append_unguarded<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> io::Result<()> {
        let mut batch = std::mem::take(&mut self.batch);
        batch.buf.clear();
        batch.locs.clear();
        let (mut next, mut active_end, mut active_empty) = {
            let segments = self.segments_mut();
            let active = segments
                .last()
                .ok_or_else(|| io::Error::other("the WAL has no segment"))?;
            (
                segments
                    .iter()
                    .rev()
                    .find_map(SegmentIndex::last_index)
                    .map(|l| l + 1),
                active.end,
                active.records.is_empty(),
            )
        };
        for (index, payload) in records {
            if let Some(expected) = next {
                if index < expected {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "append of log index {index} overlaps the log (next is {expected}); \
                             truncate first"
                        ),
                    ));
                }
            }
            let gap = next.is_some_and(|expected| index > expected);
            let full = active_end + batch.buf.len() as u64 >= self.options.segment_bytes;
            let holds_records = !active_empty || !batch.locs.is_empty();
            if holds_records && (gap || full) {
                self.write_batch(&mut batch)?;
                self.seal_last_segment()?;
                self.new_segment()?;
                active_end = segment::HEADER_LEN;
                active_empty = true;
            }
            let offset = active_end + batch.buf.len() as u64;
            segment::encode_record(&mut batch.buf, index, payload)?;
            batch.locs.push((index, offset, payload.len() as u32));
            next = Some(index + 1);
        }
        let written = self.write_batch(&mut batch);
        if batch.buf.capacity() > RETAINED_BATCH_BYTES {
            batch.buf = Vec::new();
        }
        self.staging.shrink_to(direct::RETAINED_STAGING_BYTES);
        self.batch = batch;
        written
    }

    /// Cuts the preallocated zeros off the last segment before a new one follows it.
    fn seal_last_segment(&mut self) -> io::Result<()> {
        let mut segments = self.segments_mut();
        let active = segments
            .last_mut()
            .ok_or_else(|| io::Error::other("the WAL has no segment"))?;
        if active.allocated > active.end {
            active.file.set_len(active.end)?;
            active.file.sync_all()?;
            active.allocated = active.end;
        }
        Ok(())
    }

    /// One write and one `fdatasync` of the batch into the last segment, then the index.
    fn write_batch(&mut self, batch: &mut Batch) -> io::Result<()> {
        if batch.locs.is_empty() {
            return Ok(());
        }
        let (seq, path, file, end, allocated) = {
            let segments = self.segments_mut();
            let active = segments
                .last()
                .ok_or_else(|| io::Error::other("the WAL has no segment"))?;
            let (seq, path) = (active.seq, active.path.clone());
            (seq, path, active.file.clone(), active.end, active.allocated)
        };
        let records_len = batch.buf.len();
        let grows = end + records_len as u64 > allocated;
        if grows && records_len < PREALLOCATE {
            // Zeros after the records: the next appends overwrite them without changing the
            // file's size, so their fdatasync flushes data only, not the journal.
            batch.buf.resize(records_len + PREALLOCATE, 0);
        }
        crate::fail_point!("wal-before-write");
        #[cfg(feature = "failpoints")]
        if crate::failpoint::armed("wal-torn-write") {
            // A write the process did not finish: half the batch reaches the file.
            file.write_all_at(&batch.buf[..batch.buf.len() / 2], end)?;
            eprintln!("fail point wal-torn-write reached: aborting");
            std::process::abort();
        }
        let mut file_end = end + batch.buf.len() as u64;
        let mut durable = false;
        if self.direct_io.load(Ordering::Relaxed) {
            let segment = (seq, path.as_path(), &*file);
            let (tail, staging) = (&mut self.tail, &mut self.staging);
            match direct::append(tail, staging, segment, end, &batch.buf, records_len)? {
                direct::Written::Durable { file_end: to } => {
                    file_end = file_end.max(to);
                    durable = true;
                }
                direct::Written::Refused(why) => {
                    tracing::info!(dir = %self.dir.display(), error = %why,
                        "the Raft log's file system refuses direct I/O: appending through the \
                         page cache and fdatasync");
                    self.direct_io.store(false, Ordering::Relaxed);
                }
            }
        }
        if !durable {
            file.write_all_at(&batch.buf, end)?;
        }
        crate::fail_point!("wal-after-write");
        if !durable {
            file.sync_data()?;
        }
        crate::fail_point!("wal-after-sync");
        let mut segments = self.segments_mut();
        let active = segments
            .last_mut()
            .ok_or_else(|| io::Error::other("the WAL has no segment"))?;
        if active.records.is_empty() {
            active.first_index = batch.locs[0].0;
        }
        active
            .records
            .extend(batch.locs.iter().map(|&(_, offset, len)| (offset, len)));
        active.end = end + records_len as u64;
        active.allocated = active.allocated.max(file_end);
        batch.buf.clear();
        batch.locs.clear();
        Ok(())
    }

    /// Drops every record with index ≥ `from`, durably.
    pub fn truncate(&mut self, from: u64) -> io::Result<()> {
        self.guarded("truncate", |wal| wal.truncate_unguarded(from))
    }

    fn truncate_unguarded(&mut self, from: u64) -> io::Result<()> {
        // Whole segments from the newest backwards, so that a crash leaves a prefix.
        let mut removed_any = false;
        loop {
            let removed = {
                let mut segments = self.segments_mut();
                let doomed = segments.len() > 1
                    && segments
                        .last()
                        .is_some_and(|s| s.records.is_empty() || s.first_index >= from);
                if doomed {
                    segments.pop()
                } else {
                    None
                }
            };
            let Some(segment) = removed else { break };
            std::fs::remove_file(&segment.path)?;
            removed_any = true;
        }
        if removed_any {
            sync_dir(&self.dir)?;
        }
        let mut segments = self.segments_mut();
        let active = segments
            .last_mut()
            .ok_or_else(|| io::Error::other("the WAL has no segment"))?;
        let cut_from = match active.last_index() {
            None => None,
            Some(_) if from <= active.first_index => Some(0),
            Some(_) => active.position(from),
        };
        if let Some(position) = cut_from {
            let cut = active.records[position].0;
            active.file.set_len(cut)?;
            active.file.sync_all()?;
            active.records.truncate(position);
            active.end = cut;
            active.allocated = cut;
        }
        Ok(())
    }

    /// Deletes the oldest segments whose records all have index ≤ `upto`; the last segment
    /// always stays. Records at or below `upto` in a kept segment stay readable.
    pub fn purge(&mut self, upto: u64) -> io::Result<()> {
        self.guarded("purge", |wal| wal.purge_unguarded(upto))
    }

    fn purge_unguarded(&mut self, upto: u64) -> io::Result<()> {
        let removed: Vec<SegmentIndex> = {
            let mut segments = self.segments_mut();
            let keep_from = segments
                .iter()
                .position(|s| s.last_index().is_some_and(|last| last > upto))
                .unwrap_or(segments.len())
                .min(segments.len().saturating_sub(1));
            segments.drain(..keep_from).collect()
        };
        if removed.is_empty() {
            return Ok(());
        }
        for segment in &removed {
            tracing::debug!(seq = segment.seq, "WAL: purging segment");
            std::fs::remove_file(&segment.path)?;
        }
        sync_dir(&self.dir)
    }
}

/// Zeros written after a small batch that extends its segment (see `write_batch`). On ext4
/// an `fdatasync` that must also record a new file size waits for a journal commit: about
/// 0.2 ms against 0.12 ms for overwriting allocated blocks here (BENCHMARKS.md). Batches this
/// large or larger just grow the file; for them the data, not the journal, is the cost.
const PREALLOCATE: usize = 1 << 20;

/// A batch buffer larger than this is not kept for the next append.
const RETAINED_BATCH_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    /// (index, frame offset, payload length) of each record in `buf`.
    locs: Vec<(u64, u64, u32)>,
}

/// Called once an operation is durable, or failed.
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

enum Op {
    Append {
        records: Vec<(u64, Vec<u8>)>,
        done: Done,
    },
    Truncate {
        from: u64,
        done: Done,
    },
    Purge {
        upto: u64,
        done: Done,
    },
    AfterWrites {
        done: Done,
    },
}

/// A group-commit batch stops growing past this many payload bytes.
const GROUP_BYTES: usize = 64 << 20;

/// The thread that owns a [`Wal`]: runs operations in the order they were queued, and writes
/// every append queued at the moment it starts a batch with one write and one `fdatasync`,
/// then calls each append's completion in order.
#[derive(Clone)]
pub struct WalWriter {
    ops: mpsc::Sender<Op>,
    reader: WalReader,
}

fn writer_gone() -> io::Error {
    io::Error::other("the Raft log writer thread is gone")
}

impl WalWriter {
    pub fn start(wal: Wal) -> io::Result<WalWriter> {
        let reader = wal.reader();
        let (ops, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("raft-wal-writer".into())
            .spawn(move || run_writer(wal, queue))?;
        Ok(WalWriter { ops, reader })
    }

    pub fn reader(&self) -> &WalReader {
        &self.reader
    }

    /// Queues records; `done` runs on the writer thread once they are durable (or failed).
    pub fn append(&self, records: Vec<(u64, Vec<u8>)>, done: Done) -> io::Result<()> {
        self.ops
            .send(Op::Append { records, done })
            .map_err(|_| writer_gone())
    }

    /// Queues a truncation behind every earlier append (see [`Wal::truncate`]).
    pub fn truncate(&self, from: u64, done: Done) -> io::Result<()> {
        self.ops
            .send(Op::Truncate { from, done })
            .map_err(|_| writer_gone())
    }

    /// Runs `done` on the writer thread once every earlier operation is done: with `Ok` if
    /// they all succeeded so far, with the error that stopped the log otherwise.
    pub fn after_writes(&self, done: Done) -> io::Result<()> {
        self.ops
            .send(Op::AfterWrites { done })
            .map_err(|_| writer_gone())
    }

    /// Queues a purge behind every earlier append (see [`Wal::purge`]).
    pub fn purge(&self, upto: u64, done: Done) -> io::Result<()> {
        self.ops
            .send(Op::Purge { upto, done })
            .map_err(|_| writer_gone())
    }
}

/// An `io::Error` for each of several waiters (`io::Error` is not `Clone`).
fn share(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

fn run_writer(mut wal: Wal, queue: mpsc::Receiver<Op>) {
    let mut carried: Option<Op> = None;
    loop {
        let op = match carried.take() {
            Some(op) => op,
            None => match queue.recv() {
                Ok(op) => op,
                Err(_) => return,
            },
        };
        match op {
            Op::Truncate { from, done } => done(wal.truncate(from)),
            Op::Purge { upto, done } => done(wal.purge(upto)),
            Op::AfterWrites { done } => done(wal.check_usable()),
            Op::Append { records, done } => {
                let mut bytes: usize = records.iter().map(|(_, p)| p.len()).sum();
                let mut group = vec![(records, done)];
                while bytes < GROUP_BYTES {
                    match queue.try_recv() {
                        Ok(Op::Append { records, done }) => {
                            bytes += records.iter().map(|(_, p)| p.len()).sum::<usize>();
                            group.push((records, done));
                        }
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let started = std::time::Instant::now();
                let result = wal.append(
                    group
                        .iter()
                        .flat_map(|(records, _)| records.iter())
                        .map(|(index, payload)| (*index, payload.as_slice())),
                );
                tracing::debug!(
                    appends = group.len(),
                    bytes,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "WAL: group written"
                );
                if let Err(e) = &result {
                    tracing::error!(error = %e, "writing the Raft log failed");
                }
                for (_, done) in group {
                    done(share(&result));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
