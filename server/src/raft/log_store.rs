//! `RaftLogStorage`: the Raft log in the WAL (`raft::wal`), the vote and the committed and
//! purged log ids in redb (`raft::store`).
//!
//! - `append` encodes the entries, hands them to the WAL's writer thread and returns at once;
//!   the writer writes every append queued at that moment with one direct, `O_DSYNC` write
//!   (or a write and an `fdatasync` where direct I/O is refused: group commit) and only then
//!   calls openraft's `LogFlushed` callback.
//!   Returning early lets openraft replicate to followers while the leader's own sync runs.
//! - Appended entries go into an in-memory cache of the log's tail that readers see as part of
//!   the log, before and after they are durable (openraft reads an entry it accepted to
//!   replicate and to apply it, often before it is durable). The cache keeps the newest
//!   entries, bounded by count and bytes; only entries already durable are evicted. Reads that
//!   start inside the cache touch no file.
//! - `truncate` and `purge` are queued behind earlier appends and awaited. `purge` records the
//!   purged log id durably before deleting segments, so a crash between the two leaves extra
//!   entries, never a gap.
//! - `save_vote` is a durable redb commit (rare: elections); `save_committed` a lazy one, made
//!   on the writer thread behind the queued appends so that it never gets ahead of the
//!   durable log (openraft re-applies up to it at start), and at most once per
//!   [`LAZY_EVERY`](super::store::LAZY_EVERY).
//!
//! Entries are bincode-encoded; the page delta inside travels as opaque bytes. No file I/O
//! runs on a tokio worker: the writer is a std thread, and reads and redb commits use the
//! blocking pool.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, EntryPayload, LogState, OptionalSend, RaftLogReader, StorageIOError};

use super::state_machine::Proposals;
use super::store::{LazyClock, RaftStore, Sync};
use super::types::{Command, Entry, LogId, StorageError, TypeConfig, Vote};
use super::wal::{Wal, WalOptions, WalWriter};
use crate::peer::early::EarlyReplication;

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

#[derive(Clone)]
pub struct LogStore {
    store: RaftStore,
    purge_floor: PurgeFloor,
    /// The tail of the log, by index (see the module docs).
    pending: Arc<Mutex<TailCache>>,
    wal: WalWriter,
    /// Lowest index readers may see: purged entries stay in the WAL until their whole segment
    /// goes, but read as gone (like the entries the redb log deleted one by one).
    first_visible: Arc<AtomicU64>,
    /// The vote last saved or read: whether appended entries are this leader's own.
    vote: Arc<Mutex<Option<Vote>>>,
    /// Where a leader's own entries go as they are appended (`peer::early`).
    early: Option<(Arc<EarlyReplication>, Proposals)>,
    /// The committed log id openraft last saved (`None` until it saves one), and when it
    /// was last written to redb ([`LazyClock`]).
    committed: Option<Option<LogId>>,
    committed_written: LazyClock,
    /// The state machine's applied index: a purge past it waits for it ([`LogStore::purge`]).
    applied: Option<tokio::sync::watch::Receiver<u64>>,
    /// The last purged id written to redb: purges that waited may finish after later ones.
    purged_written: Arc<Mutex<Option<LogId>>>,
    /// The highest index on this node's disk (lowered by a truncation): a leader commits a
    /// batch in place only once its own entry is here, so its database never holds an entry
    /// its log lacks after a crash (`raft::lineage`).
    durable: Arc<tokio::sync::watch::Sender<u64>>,
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

    /// Forgets entries ≥ `from` (a truncation): entries appended there later are new and not
    /// durable, whatever was durable at those indexes before.
    fn truncate(&mut self, from: u64) {
        self.retain(|index| index < from);
        self.durable_upto = self.durable_upto.min(from.saturating_sub(1));
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

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

/// Runs blocking file or redb work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(read_err)?
}

/// `[start, end)` of a range of log indexes.
fn half_open(start: Bound<u64>, end: Bound<u64>) -> (u64, u64) {
    let from = match start {
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match end {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
    let entry: Entry = super::codec::decode(bytes)
        .map_err(|e| read_err(format!("decode log entry {index}: {e}")))?;
    if entry.log_id.index != index {
        return Err(read_err(format!(
            "the WAL record of index {index} holds entry {}",
            entry.log_id.index
        )));
    }
    Ok(entry)
}

/// What a purge needs, apart from the log store (see `LogStore::purge`).
struct Purge {
    store: RaftStore,
    wal: WalWriter,
    floor: PurgeFloor,
    written: Arc<Mutex<Option<LogId>>>,
}

impl Purge {
    async fn run(self, log_id: LogId) -> Result<(), StorageError> {
        // First the purged id, durably: a crash before the segments go leaves extra entries
        // below it, which readers skip; the other order could leave a gap above it. Never
        // backwards: a purge that waited may come after a later one.
        let (store, written) = (self.store, self.written);
        let newer = blocking(move || {
            let mut written = written.lock().unwrap_or_else(|p| p.into_inner());
            if written.is_some_and(|w| w.index >= log_id.index) {
                return Ok(false);
            }
            store.write_meta(KEY_LAST_PURGED, &log_id, Sync::Durable)?;
            *written = Some(log_id);
            Ok(true)
        })
        .await?;
        if !newer {
            return Ok(());
        }
        let delete_upto = log_id.index.min(self.floor.get());
        let wal = self.wal;
        wal_op(move |done| wal.purge(delete_upto, done)).await
    }
}

/// Refuses a log that ends before the committed index this node recorded. That index is
/// written only behind the appends queued before it (`save_committed`), so every entry up to
/// it was on this node's disk, and only a purge (recorded first) or a snapshot takes entries
/// away below it: a log that ends short of it lost records on disk after they were written,
/// which the WAL's recovery may have taken for a torn tail (damage that makes a record look
/// longer than it is) and cut. This node may have acknowledged them to a leader that counted
/// them for a quorum, so it must not start and serve as if it never held them.
fn refuse_a_log_short_of_committed(
    store: &RaftStore,
    wal: &Wal,
    purged: Option<LogId>,
    dir: &Path,
) -> anyhow::Result<()> {
    let committed: Option<LogId> = store.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten();
    let held = wal.reader().last_index().max(purged.map(|p| p.index));
    match committed {
        Some(committed) if held.is_none_or(|held| held < committed.index) => anyhow::bail!(
            "the Raft log in {} ends at index {} but this node recorded entries through {} as \
             committed, which it does only once they are on its disk: records were lost or \
             damaged on disk. The node will not start on a log that lost entries it may have \
             acknowledged: keep the data directory for inspection, move it aside, and start the \
             node empty; it re-syncs from the leader",
            dir.display(),
            held.unwrap_or(0),
            committed.index
        ),
        _ => Ok(()),
    }
}

impl LogStore {
    /// Opens the log in `dir` (the WAL's directory; recovery runs here, see `raft::wal`) and
    /// starts its writer thread. `store` holds the vote and the committed and purged ids.
    pub fn open(store: RaftStore, dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let wal = Wal::open(dir, WalOptions::default())
            .with_context(|| format!("open the Raft log in {}", dir.display()))?;
        let purged: Option<LogId> = store.read_meta(KEY_LAST_PURGED)?;
        refuse_a_log_short_of_committed(&store, &wal, purged, dir)?;
        let last = wal.reader().last_index().unwrap_or(0);
        let wal = WalWriter::start(wal).context("start the Raft log writer thread")?;
        Ok(Self {
            store,
            purge_floor: PurgeFloor::default(),
            pending: Arc::new(Mutex::new(TailCache::default())),
            wal,
            first_visible: Arc::new(AtomicU64::new(0)),
            vote: Arc::new(Mutex::new(None)),
            early: None,
            committed: None,
            committed_written: LazyClock::default(),
            applied: None,
            purged_written: Arc::new(Mutex::new(purged)),
            durable: Arc::new(tokio::sync::watch::Sender::new(last)),
        })
    }

    /// The highest index on this node's disk, as it moves.
    pub fn durable_index(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// From now on, a purge past the state machine's applied index (`applied`) waits until
    /// the state machine reaches it (see [`LogStore::purge`]).
    pub fn purge_after_applied(&mut self, applied: tokio::sync::watch::Receiver<u64>) {
        self.applied = Some(applied);
    }

    /// From now on, this leader's own entries are sent to its followers as they are appended,
    /// before their flush (see `peer::early`), and counted committed once a quorum holds them
    /// (`raft::early_commit`), which `proposals` hears of.
    pub fn replicate_early(&mut self, early: Arc<EarlyReplication>, proposals: Proposals) {
        self.early = Some((early, proposals));
    }

    /// The vote under which `entries` are this leader's own, if they are.
    fn own(&self, entries: &[Entry]) -> Option<(&Arc<EarlyReplication>, Vote)> {
        let (early, _) = self.early.as_ref()?;
        let vote = (*self.vote.lock().unwrap_or_else(|p| p.into_inner()))?;
        early.leads(&vote, entries).then_some((early, vote))
    }

    /// When `entries` are this leader's own and the entry before them is in the tail cache:
    /// what sends them early, to run once they are queued for the log (no entry may reach a
    /// follower ahead of the leader's own append).
    fn early_push(
        tail: &TailCache,
        own: Option<(&Arc<EarlyReplication>, Vote)>,
        entries: &[Entry],
    ) -> Option<impl FnOnce() + use<>> {
        let (early, vote) = own?;
        let first = entries.first()?.log_id.index;
        if first == 0 {
            return None;
        }
        let prev = tail.entries.get(&(first - 1)).map(|e| e.log_id)?;
        let (early, entries) = (early.clone(), entries.to_vec());
        Some(move || early.push(vote, Some(prev), entries))
    }

    /// Tells early commit and the write path what `entries` hold: a membership change stops
    /// early commits until it takes effect; the leader's own deltas are looked up by index
    /// when a quorum holds them.
    fn note_appended(&self, own: bool, entries: &[Entry]) {
        let Some((early, proposals)) = &self.early else {
            return;
        };
        // Entries appended at an index replace whatever the log held from there on.
        if let Some(first) = entries.first() {
            proposals.replaced_from(first.log_id.index);
        }
        for entry in entries {
            match &entry.payload {
                EntryPayload::Membership(_) => {
                    early.commit().membership_appended(entry.log_id.index)
                }
                EntryPayload::Normal(Command::Delta(bytes)) if own => {
                    if let Some(tag) = crate::db::peek_tag(bytes) {
                        proposals.appended(entry.log_id.index, tag);
                    }
                }
                _ => {}
            }
        }
    }

    /// Before Raft starts: if the saved vote says this node led its term, keep the vote but
    /// not the leadership, and return the term. openraft would otherwise resume leading that
    /// term at once, without an election. A write can be committed by the followers alone
    /// while the leader's own append of it is not yet on disk; a leader that crashed then and
    /// resumed would append a different entry under the same log id (same term and index),
    /// and the followers, seeing a log id they hold, would keep the old one: two histories.
    /// A leader it resumed could also answer reads from a committed index that went back with
    /// the restart. Uncommitted, the vote still binds this node for its term; it becomes
    /// leader again only by winning an election in a later term, which a node missing a
    /// committed entry cannot win.
    pub fn demote_restored_leader(
        &self,
        self_id: super::types::NodeId,
    ) -> anyhow::Result<Option<u64>> {
        let vote: Option<Vote> = self.store.read_meta(KEY_VOTE)?;
        match vote {
            Some(v) if v.is_committed() && v.leader_id().voted_for() == Some(self_id) => {
                let term = v.leader_id().term;
                self.store
                    .write_meta(KEY_VOTE, &Vote::new(term, self_id), Sync::Durable)?;
                Ok(Some(term))
            }
            _ => Ok(None),
        }
    }

    /// The handle that limits physical purging (see [`PurgeFloor`]).
    pub fn purge_floor(&self) -> PurgeFloor {
        self.purge_floor.clone()
    }

    /// True when the log holds no entry (durable or not).
    pub fn is_empty(&self) -> bool {
        self.pending().entries.is_empty() && self.wal.reader().last_index().is_none()
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
    /// makes durable (and the cache evicts) meanwhile is then found in the WAL, whose index is
    /// updated before the cache learns the entry is durable.
    async fn read(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, StorageError> {
        let (from, to) = half_open(start, end);
        let from = from.max(self.first_visible.load(Ordering::SeqCst));
        if from >= to {
            return Ok(Vec::new());
        }
        let (start, end) = (Bound::Included(from), Bound::Excluded(to));
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
        // Only what the cache does not hold comes from the files.
        let to = pending.first().map_or(to, |e| to.min(e.log_id.index));
        let reader = self.wal.reader().clone();
        let durable = blocking(move || {
            reader
                .read(from, to)
                .map_err(|e| read_err(format!("read log entries {from}..{to}: {e}")))?
                .into_iter()
                .map(|(index, bytes)| decode_entry(index, &bytes))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        let mut merged: BTreeMap<u64, Entry> =
            durable.into_iter().map(|e| (e.log_id.index, e)).collect();
        merged.extend(pending.into_iter().map(|e| (e.log_id.index, e)));
        Ok(merged.into_values().collect())
    }

    /// The log id of the last entry in the WAL.
    fn last_durable_id(&self) -> Result<Option<LogId>, StorageError> {
        let reader = self.wal.reader();
        let Some(last) = reader.last_index() else {
            return Ok(None);
        };
        match reader
            .read(last, last + 1)
            .map_err(|e| read_err(format!("read the last log entry: {e}")))?
            .pop()
        {
            Some((index, bytes)) => Ok(Some(decode_entry(index, &bytes)?.log_id)),
            // Truncated meanwhile: the cache or the next call has the answer.
            None => Ok(None),
        }
    }
}

/// Awaits a queued WAL operation.
async fn wal_op(
    queue: impl FnOnce(super::wal::Done) -> std::io::Result<()>,
) -> Result<(), StorageError> {
    let (done, result) = tokio::sync::oneshot::channel();
    queue(Box::new(move |r| {
        let _ = done.send(r);
    }))
    .map_err(write_err)?;
    result
        .await
        .map_err(|_| write_err("the Raft log writer thread is gone"))?
        .map_err(write_err)
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
        let this = self.clone();
        let (last_purged, last_durable) = blocking(move || {
            let last_purged: Option<LogId> = this.store.read_meta(KEY_LAST_PURGED)?;
            Ok((last_purged, this.last_durable_id()?))
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
        let (vote, store) = (*vote, self.store.clone());
        blocking(move || store.write_meta(KEY_VOTE, &vote, Sync::Durable)).await?;
        // Only once it is durable: an early AppendEntries carries it.
        *self.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let store = self.store.clone();
        let vote: Option<Vote> = blocking(move || store.read_meta(KEY_VOTE)).await?;
        *self.vote.lock().unwrap_or_else(|p| p.into_inner()) = vote;
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Lazy: a lost committed index is re-learned from the leader; it only saves re-applying.
        // But it must never get ahead of this node's durable log: at start openraft re-applies
        // the log up to it and fails on a missing entry. A node can learn that an entry is
        // committed before its own append of it is on disk, so the write waits behind every
        // queued append, on the writer thread, without making openraft wait. At most one
        // write per `LAZY_EVERY`; `read_committed` answers from memory in between.
        self.committed = Some(committed);
        if !self.committed_written.due() {
            return Ok(());
        }
        let store = self.store.clone();
        self.wal
            .after_writes(Box::new(move |appended| {
                if appended.is_err() {
                    return;
                }
                if let Err(e) = store.write_meta(KEY_COMMITTED, &committed, Sync::Lazy) {
                    tracing::warn!(error = %e, "saving the committed log id failed");
                }
            }))
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        // After the queued `save_committed` writes.
        let wal = self.wal.clone();
        wal_op(move |done| wal.after_writes(done)).await?;
        if let Some(committed) = self.committed {
            return Ok(committed);
        }
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut records = Vec::with_capacity(entries.len());
        let own = self.own(&entries);
        self.note_appended(own.is_some(), &entries);
        let flushed = own.map(|(early, vote)| (early.commit().clone(), vote));
        let early = {
            let mut pending = self.pending();
            let early = Self::early_push(&pending, own, &entries);
            for entry in entries {
                records.push((
                    entry.log_id.index,
                    super::codec::encode(&entry).map_err(write_err)?,
                ));
                pending.insert(entry);
            }
            early
        };
        let upto = records.last().map(|(index, _)| *index);
        crate::stamp!("log.append", upto.unwrap_or(0));
        let cache = self.pending.clone();
        let durable = self.durable.clone();
        self.wal
            .append(
                records,
                Box::new(move |result| {
                    crate::stamp!("log.flushed", upto.unwrap_or(0));
                    if let (Ok(()), Some(upto)) = (&result, upto) {
                        cache
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .mark_durable(upto);
                        durable.send_if_modified(|d| {
                            upto > *d && {
                                *d = upto;
                                true
                            }
                        });
                        if let Some((commit, vote)) = flushed {
                            commit.flushed(vote, upto);
                        }
                    }
                    callback.log_io_completed(result);
                }),
            )
            .map_err(write_err)?;
        if let Some(push) = early {
            push();
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some((_, proposals)) = &self.early {
            proposals.replaced_from(log_id.index);
        }
        self.pending().truncate(log_id.index);
        self.durable.send_if_modified(|d| {
            let below = log_id.index.saturating_sub(1);
            *d > below && {
                *d = below;
                true
            }
        });
        let wal = self.wal.clone();
        wal_op(move |done| wal.truncate(log_id.index, done)).await
    }

    /// openraft purges a follower's log the moment it starts to install a snapshot, seconds
    /// before the state machine holds it: a crash between the two restarted the node with its
    /// log purged past its applied state and no snapshot to cover the gap. So a purge past
    /// the applied index is recorded and done (on a task of its own: openraft's core must not
    /// wait) once the state machine reaches it; until then the entries only read as gone.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let delete_upto = log_id.index.min(self.purge_floor.get());
        self.first_visible
            .fetch_max(delete_upto.saturating_add(1), Ordering::SeqCst);
        self.pending().retain(|index| index > delete_upto);
        let purge = Purge {
            store: self.store.clone(),
            wal: self.wal.clone(),
            floor: self.purge_floor.clone(),
            written: self.purged_written.clone(),
        };
        match &self.applied {
            Some(applied) if *applied.borrow() < log_id.index => {
                let mut applied = applied.clone();
                tokio::spawn(async move {
                    while *applied.borrow_and_update() < log_id.index {
                        if applied.changed().await.is_err() {
                            return;
                        }
                    }
                    if let Err(e) = purge.run(log_id).await {
                        tracing::warn!(index = log_id.index, error = %e, "purging the Raft log failed");
                    }
                });
                Ok(())
            }
            _ => purge.run(log_id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    /// A record damaged so that it looks longer than it is reads as a torn tail, and the WAL
    /// cuts it and everything after it; the committed index this node recorded says those
    /// entries were on its disk, and the start is refused.
    #[test]
    fn a_log_cut_below_its_recorded_committed_index_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RaftStore::open(dir.path()).expect("store");
        let log_dir = dir.path().join(super::super::RAFT_LOG_DIR);
        let mut wal = Wal::open(&log_dir, WalOptions::default()).expect("wal");
        let records: Vec<(u64, Vec<u8>)> = (1..=10).map(|i| (i, vec![i as u8 + 1; 200])).collect();
        wal.append(records.iter().map(|(i, p)| (*i, p.as_slice())))
            .expect("append");
        drop(wal);
        let committed = |index| {
            store
                .write_meta(KEY_COMMITTED, &Some(log_id(index)), Sync::Durable)
                .expect("committed");
        };
        committed(8);
        drop(LogStore::open(store.clone(), &log_dir).expect("the log holds its committed entries"));

        // Entry 6's length grows by 2^20: its frame now runs into the zeros after the records.
        let segment = std::fs::read_dir(&log_dir)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "wal"))
            .expect("a segment");
        let sixth = 32 + 5 * (16 + 200);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segment)
            .expect("open");
        use std::os::unix::fs::FileExt;
        file.write_all_at(&[0x10], sixth + 2).expect("damage");
        drop(file);
        let refused = LogStore::open(store.clone(), &log_dir)
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("ends at index 5") && e.contains("through 8")),
            "{refused:?}"
        );

        // A log purged past its end holds its committed entries in a snapshot: no refusal.
        store
            .write_meta(KEY_LAST_PURGED, &log_id(9), Sync::Durable)
            .expect("purged");
        drop(LogStore::open(store, &log_dir).expect("purged through 9, committed 8"));
    }

    /// openraft purges a follower's log as it starts installing a snapshot: the purge is
    /// recorded and done only once the state machine has applied that far, so a crash during
    /// the install leaves the entries and the old purge point, which agree with the state.
    #[tokio::test]
    async fn a_purge_past_the_applied_index_waits_for_it() -> Result<(), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RaftStore::open(dir.path()).expect("store");
        let log_dir = dir.path().join(super::super::RAFT_LOG_DIR);
        let mut log = LogStore::open(store.clone(), &log_dir).expect("open");
        let (applied_tx, applied_rx) = tokio::sync::watch::channel(3u64);
        log.purge_after_applied(applied_rx);
        let stored = || -> Result<Option<LogId>, StorageError> { store.read_meta(KEY_LAST_PURGED) };

        log.purge(log_id(2)).await?;
        assert_eq!(
            stored()?,
            Some(log_id(2)),
            "within the applied index: at once"
        );
        log.purge(log_id(8)).await?;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            stored()?,
            Some(log_id(2)),
            "past the applied index: not yet"
        );

        let until = |index: u64| async move {
            for _ in 0..500 {
                if stored()? == Some(log_id(index)) {
                    return Ok::<(), StorageError>(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("the purge to {index} never ran once applied");
        };
        applied_tx.send_replace(8);
        until(8).await?;
        // A purge point is never taken back.
        log.purge(log_id(5)).await?;
        assert_eq!(stored()?, Some(log_id(8)));
        log.purge(log_id(9)).await?;
        applied_tx.send_replace(9);
        until(9).await?;
        Ok(())
    }
}
