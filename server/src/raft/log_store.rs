//! `RaftLogStorage`: the Raft log, vote and committed index in redb.
//!
//! Every mutation commits (fsync) before it is acknowledged: `append` calls openraft's
//! `LogFlushed` callback only after the redb commit returned, `save_vote` returns only once the
//! vote is durable. Entries are bincode-encoded; the page delta inside travels as opaque bytes.
//! redb I/O runs on tokio's blocking pool, never on a runtime worker.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

/// Runs blocking redb work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(write_err)?
}

impl LogStore {
    pub fn new(store: RaftStore) -> Self {
        Self {
            store,
            purge_floor: PurgeFloor::default(),
        }
    }

    /// The handle that limits physical purging (see [`PurgeFloor`]).
    pub fn purge_floor(&self) -> PurgeFloor {
        self.purge_floor.clone()
    }

    /// Entries in `range` still on disk (including ones openraft purged but the purge floor
    /// kept), for readers outside Raft such as the archiver.
    pub async fn read_entries(
        &self,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let store = self.store.clone();
        blocking(move || {
            Self::read_range(
                &store,
                Bound::Included(range.start),
                Bound::Excluded(range.end),
            )
        })
        .await
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

    fn last_entry_id(store: &RaftStore) -> Result<Option<LogId>, StorageError> {
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
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let store = self.store.clone();
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || Self::read_range(&store, start, end)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let store = self.store.clone();
        blocking(move || {
            let last_purged: Option<LogId> = store.read_meta(KEY_LAST_PURGED)?;
            // Entries the purge floor kept below `last_purged` do not count as the log's end.
            let last = Self::last_entry_id(&store)?.max(last_purged);
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let store = self.store.clone();
        let vote = *vote;
        blocking(move || store.write_meta(KEY_VOTE, &vote, Sync::Durable)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let store = self.store.clone();
        blocking(move || store.read_meta(KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Lazy: a lost committed index is re-learned from the leader; it only saves re-applying.
        let store = self.store.clone();
        blocking(move || store.write_meta(KEY_COMMITTED, &committed, Sync::Lazy)).await
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
        let encoded = entries
            .into_iter()
            .map(|e| super::codec::encode(&e).map(|b| (e.log_id.index, b)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(write_err)?;
        let store = self.store.clone();
        let started = std::time::Instant::now();
        let res = blocking(move || {
            let tx = store.db.begin_write().map_err(write_err)?;
            {
                let mut table = tx.open_table(LOGS).map_err(write_err)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(write_err)?;
                }
            }
            tx.commit().map_err(write_err)
        })
        .await;
        tracing::debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "log append"
        );
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let store = self.store.clone();
        blocking(move || {
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
        let store = self.store.clone();
        let delete_upto = log_id.index.min(self.purge_floor.get());
        blocking(move || {
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
