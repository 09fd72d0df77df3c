//! `RaftLogStorage`: the Raft log, vote and committed index in redb.
//!
//! All mutations go, in order, through one writer thread that owns the redb write path:
//! - `append` hands the entries to the writer and returns at once; the writer commits
//!   (fsync) every append queued at that moment in ONE redb transaction and only then calls
//!   openraft's `LogFlushed` callback. Returning early lets openraft replicate to followers
//!   while the leader's own fsync runs, instead of after it; grouping turns concurrent
//!   appends into one fsync.
//! - Appended entries go into an in-memory cache of the log's tail that readers see as part of
//!   the log, before and after their commit (openraft reads an entry it accepted to replicate and
//!   to apply it, often before it is durable). The cache keeps the newest entries, bounded by
//!   count and bytes; only entries already durable are evicted. Reads that start inside the
//!   cache never touch redb.
//! - `save_vote`, `truncate` and `purge` are queued behind earlier appends and awaited; a vote
//!   is durable when `save_vote` returns.
//!
//! Entries are bincode-encoded; the page delta inside travels as opaque bytes. No redb I/O runs
//! on a tokio worker: the writer is a std thread and reads use the blocking pool.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};
use redb::{ReadableDatabase, ReadableTable};

use super::store::{RaftStore, Sync, LOGS, META};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

#[derive(Clone)]
pub struct LogStore {
    store: RaftStore,
    purge_floor: PurgeFloor,
    /// The tail of the log, by index (see the module docs).
    pending: Arc<Mutex<TailCache>>,
    writer: mpsc::Sender<WriterOp>,
}

/// The highest log index the log store may physically delete. The archiver lowers it to what
/// the archive already holds, so the Raft log is never purged past it; `u64::MAX` (the
/// default) means no limit. openraft still considers the entries purged; they only stay on
/// disk, readable by `LogStore::read_entries`, until the archive catches up.
#[derive(Clone, Debug)]
pub struct PurgeFloor(Arc<AtomicU64>);

impl Default for PurgeFloor {
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(u64::MAX)))
    }
}

impl PurgeFloor {
    pub fn set(&self, index: u64) {
        self.0.store(index, Ordering::SeqCst);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Newest entries kept in memory (durable or not).
const CACHE_ENTRIES: usize = 1024;
const CACHE_BYTES: usize = 64 << 20;

#[derive(Default)]
struct TailCache {
    entries: BTreeMap<u64, Entry>,
    bytes: usize,
    /// Highest index known durable; only entries up to it may be evicted.
    durable_upto: u64,
}

fn entry_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(super::types::Command::Delta(b)) => b.len() + 64,
        _ => 64,
    }
}

impl TailCache {
    fn insert(&mut self, entry: Entry) {
        self.bytes += entry_bytes(&entry);
        if let Some(old) = self.entries.insert(entry.log_id.index, entry) {
            self.bytes -= entry_bytes(&old);
        }
    }

    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let mut bytes = self.bytes;
        self.entries.retain(|index, entry| {
            let k = keep(*index);
            if !k {
                bytes -= entry_bytes(entry);
            }
            k
        });
        self.bytes = bytes;
    }

    fn mark_durable(&mut self, upto: u64) {
        self.durable_upto = self.durable_upto.max(upto);
        while self.entries.len() > CACHE_ENTRIES || self.bytes > CACHE_BYTES {
            match self.entries.first_key_value() {
                Some((index, _)) if *index <= self.durable_upto => {
                    if let Some((_, e)) = self.entries.pop_first() {
                        self.bytes -= entry_bytes(&e);
                    }
                }
                _ => break,
            }
        }
    }

    /// Entries of `[start, end)` when the cache alone can answer: everything at or after its
    /// first index went through it.
    fn covering(&self, start: Bound<u64>, end: Bound<u64>) -> Option<Vec<Entry>> {
        let first = *self.entries.first_key_value()?.0;
        let from = match start {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        (from >= first).then(|| {
            self.entries
                .range((start, end))
                .map(|(_, e)| e.clone())
                .collect()
        })
    }
}

type StoreJob = Box<dyn FnOnce(&RaftStore) -> Result<(), StorageError> + Send>;

enum WriterOp {
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    Run {
        job: StoreJob,
        done: tokio::sync::oneshot::Sender<Result<(), StorageError>>,
    },
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

/// Runs blocking redb reads off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(read_err)?
}

impl LogStore {
    pub fn new(store: RaftStore) -> Self {
        let pending = Arc::new(Mutex::new(TailCache::default()));
        let (writer, ops) = mpsc::channel();
        let (thread_store, thread_pending) = (store.clone(), pending.clone());
        let spawned = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run_writer(thread_store, thread_pending, ops));
        if let Err(e) = spawned {
            // Without the thread every write fails with a clear error (the channel is closed).
            tracing::error!(error = %e, "cannot start the log writer thread");
        }
        Self {
            store,
            purge_floor: PurgeFloor::default(),
            pending,
            writer,
        }
    }

    /// The handle that limits physical purging (see [`PurgeFloor`]).
    pub fn purge_floor(&self) -> PurgeFloor {
        self.purge_floor.clone()
    }

    /// Entries in `range` still in the log (including ones openraft purged but the purge floor
    /// kept), for readers outside Raft such as the archiver.
    pub async fn read_entries(
        &self,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read(Bound::Included(range.start), Bound::Excluded(range.end))
            .await
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, TailCache> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Durable entries overlaid with pending ones. Pending is copied FIRST: an entry the writer
    /// makes durable (and drops from pending) meanwhile is then found in redb.
    async fn read(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, StorageError> {
        let pending: Vec<Entry> = {
            let cache = self.pending();
            if let Some(hit) = cache.covering(start, end) {
                return Ok(hit);
            }
            cache
                .entries
                .range((start, end))
                .map(|(_, e)| e.clone())
                .collect()
        };
        let store = self.store.clone();
        let durable = blocking(move || read_range(&store, start, end)).await?;
        let mut merged: BTreeMap<u64, Entry> =
            durable.into_iter().map(|e| (e.log_id.index, e)).collect();
        merged.extend(pending.into_iter().map(|e| (e.log_id.index, e)));
        Ok(merged.into_values().collect())
    }

    /// Queues `job` behind every earlier write and waits for it.
    async fn run(
        &self,
        job: impl FnOnce(&RaftStore) -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), StorageError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.writer
            .send(WriterOp::Run {
                job: Box::new(job),
                done,
            })
            .map_err(|_| write_err("the log writer thread is gone"))?;
        result
            .await
            .map_err(|_| write_err("the log writer thread is gone"))?
    }
}

fn read_range(
    store: &RaftStore,
    start: Bound<u64>,
    end: Bound<u64>,
) -> Result<Vec<Entry>, StorageError> {
    let tx = store.db.begin_read().map_err(read_err)?;
    let table = tx.open_table(LOGS).map_err(read_err)?;
    let mut out = Vec::new();
    for item in table.range::<u64>((start, end)).map_err(read_err)? {
        let (k, v) = item.map_err(read_err)?;
        let entry: Entry = super::codec::decode(v.value())
            .map_err(|e| read_err(format!("decode log entry {}: {e}", k.value())))?;
        out.push(entry);
    }
    Ok(out)
}

fn last_durable_id(store: &RaftStore) -> Result<Option<LogId>, StorageError> {
    let tx = store.db.begin_read().map_err(read_err)?;
    let table = tx.open_table(LOGS).map_err(read_err)?;
    let last = match table.last().map_err(read_err)? {
        None => None,
        Some((k, v)) => {
            let entry: Entry = super::codec::decode(v.value())
                .map_err(|e| read_err(format!("decode log entry {}: {e}", k.value())))?;
            Some(entry.log_id)
        }
    };
    Ok(last)
}

/// The writer thread: applies queued operations in order, grouping consecutive appends into
/// one durable redb commit.
fn run_writer(store: RaftStore, pending: Arc<Mutex<TailCache>>, ops: mpsc::Receiver<WriterOp>) {
    let mut carried: Option<WriterOp> = None;
    loop {
        let op = match carried.take() {
            Some(op) => op,
            None => match ops.recv() {
                Ok(op) => op,
                Err(_) => return,
            },
        };
        match op {
            WriterOp::Run { job, done } => {
                let _ = done.send(job(&store));
            }
            WriterOp::Append { entries, callback } => {
                let mut batch = vec![(entries, callback)];
                loop {
                    match ops.try_recv() {
                        Ok(WriterOp::Append { entries, callback }) => {
                            batch.push((entries, callback))
                        }
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let started = std::time::Instant::now();
                let result = write_entries(&store, batch.iter().flat_map(|(e, _)| e.iter()));
                tracing::debug!(
                    appends = batch.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "log flushed"
                );
                if result.is_ok() {
                    let upto = batch
                        .iter()
                        .flat_map(|(e, _)| e.iter())
                        .map(|(l, _)| l.index)
                        .max();
                    if let Some(upto) = upto {
                        pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .mark_durable(upto);
                    }
                }
                for (_, callback) in batch {
                    let outcome = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    };
                    callback.log_io_completed(outcome);
                }
                if let Err(e) = result {
                    tracing::error!(error = %e, "writing the Raft log failed");
                }
            }
        }
    }
}

fn write_entries<'a>(
    store: &RaftStore,
    entries: impl Iterator<Item = &'a (LogId, Vec<u8>)>,
) -> Result<(), StorageError> {
    let tx = store.db.begin_write().map_err(write_err)?;
    {
        let mut table = tx.open_table(LOGS).map_err(write_err)?;
        for (log_id, bytes) in entries {
            table
                .insert(log_id.index, bytes.as_slice())
                .map_err(write_err)?;
        }
    }
    tx.commit().map_err(write_err)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read(range.start_bound().cloned(), range.end_bound().cloned())
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_pending = self
            .pending()
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id);
        let store = self.store.clone();
        let (last_purged, last_durable) = blocking(move || {
            let last_purged: Option<LogId> = store.read_meta(KEY_LAST_PURGED)?;
            Ok((last_purged, last_durable_id(&store)?))
        })
        .await?;
        // Entries the purge floor kept below `last_purged` do not count as the log's end.
        let last = last_pending.max(last_durable).max(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.run(move |store| store.write_meta(KEY_VOTE, &vote, Sync::Durable))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let store = self.store.clone();
        blocking(move || store.read_meta(KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Lazy: a lost committed index is re-learned from the leader; it only saves re-applying.
        self.run(move |store| store.write_meta(KEY_COMMITTED, &committed, Sync::Lazy))
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let store = self.store.clone();
        blocking(move || Ok(store.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())).await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut pending = self.pending();
            for entry in entries {
                encoded.push((
                    entry.log_id,
                    super::codec::encode(&entry).map_err(write_err)?,
                ));
                pending.insert(entry);
            }
        }
        self.writer
            .send(WriterOp::Append {
                entries: encoded,
                callback,
            })
            .map_err(|_| write_err("the log writer thread is gone"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending().retain(|index| index < log_id.index);
        self.run(move |store| {
            let tx = store.db.begin_write().map_err(write_err)?;
            {
                let mut table = tx.open_table(LOGS).map_err(write_err)?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let delete_upto = log_id.index.min(self.purge_floor.get());
        self.pending().retain(|index| index > delete_upto);
        self.run(move |store| {
            let tx = store.db.begin_write().map_err(write_err)?;
            {
                let mut meta = tx.open_table(META).map_err(write_err)?;
                let bytes = super::codec::encode(&log_id).map_err(write_err)?;
                meta.insert(KEY_LAST_PURGED, bytes.as_slice())
                    .map_err(write_err)?;
                let mut table = tx.open_table(LOGS).map_err(write_err)?;
                table
                    .retain_in(..=delete_upto, |_, _| false)
                    .map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await
    }
}
