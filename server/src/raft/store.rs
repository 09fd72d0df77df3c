//! The node's redb file (`raft.redb` in the data directory): the vote, the committed and purged
//! log ids, and small metadata of the state machine and cluster identity — everything Raft
//! keeps on disk except the log itself, which is in the WAL (`raft-log/`, see `raft::wal`).
//!
//! redb rather than sled: sled 0.34 is unmaintained and has reports of databases that do not
//! open again after an abrupt stop; our users kill pods on purpose. redb commits are
//! crash-safe (copy-on-write with a checksummed commit slot). These keys change rarely (a vote
//! per election, a purge per snapshot) or lazily, so a B-tree commit costs nothing that
//! matters here; the log's appends, which do pay per write, left redb for that reason.
//! A lazy write is not on disk until the next durable one, though: see [`Sync`].

use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, StorageIOError};
use redb::{ReadableDatabase, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{NodeId, StorageError};

/// Where the Raft log was before the WAL (read only to refuse such a directory, see `open`).
const LEGACY_LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Shared handle to the node's redb database.
#[derive(Clone)]
pub struct RaftStore {
    pub(crate) db: Arc<redb::Database>,
}

/// Least time between two lazy writes of a value that changes with every write: the
/// committed log id (`save_committed`) and the applied state. Each is a redb commit, about
/// 7 µs, once per batch on every node, on the log writer's thread or openraft's state machine
/// task (6.5 % of a leader's CPU at 16 clients, BENCHMARKS.md "Session 21"). Writing them less
/// often loses nothing a restart needs: both are older on disk than in memory already (a lazy
/// commit survives neither a process crash nor a power loss, see [`Sync::Lazy`]), and a
/// restart re-learns the committed index from the leader and skips the deltas its database
/// already holds.
pub const LAZY_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// When a lazily written value was last written: the next write is due [`LAZY_EVERY`] later.
#[derive(Clone, Copy, Default, Debug)]
pub struct LazyClock(Option<std::time::Instant>);

impl LazyClock {
    /// Whether a write is due now (and if so, counts it as made).
    pub fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self
            .0
            .is_some_and(|last| now.duration_since(last) < LAZY_EVERY)
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

/// Durability of a metadata write.
///
/// redb 4 has two levels (`redb::Durability`): `Immediate` writes the commit to the file and
/// fsyncs it; `None` keeps the commit in this process's memory (the header naming it is not
/// written) until the next `Immediate` commit, of any key, carries it to the file with every
/// other lazy one before it, or until the database is closed cleanly. No level writes a commit
/// to the file without an fsync, which would survive a process crash at no fsync's cost.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sync {
    /// fsync before returning.
    Durable,
    /// No fsync and no write to the file: visible at once to this process, but lost by a
    /// process crash (SIGKILL, OOM kill, abort) or a power loss before the next durable
    /// commit or a clean close. The file then holds the value of the last durable commit:
    /// older, never torn. Only for values a restart can do without (the committed log id,
    /// the applied state: the log is replayed from the older value, see `state_machine`).
    Lazy,
}

impl RaftStore {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create data directory {}", dir.display()))?;
        let path = dir.join(super::STORE_FILE);
        let existed = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        if !existed {
            refuse_state_without_store(dir, &path)?;
        }
        // The file is small: checking every page at open costs little, and a file altered
        // outside redb is then an error, never trusted (a plain open may panic on one).
        let db = redb::Database::builder()
            .set_check_integrity_on_open(true)
            .create(&path)
            .with_context(|| format!("open log store {}", path.display()))?;
        let tx = db.begin_write().context("initialize log store")?;
        tx.open_table(META).context("initialize meta table")?;
        tx.commit().context("initialize log store")?;
        refuse_legacy_log(&db, &path)?;
        Ok(Self { db: Arc::new(db) })
    }

    pub fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let io = |e: &dyn std::fmt::Display| {
            StorageError::from(StorageIOError::read(AnyError::error(e.to_string())))
        };
        let tx = self.db.begin_read().map_err(|e| io(&e))?;
        let table = tx.open_table(META).map_err(|e| io(&e))?;
        match table.get(key).map_err(|e| io(&e))? {
            None => Ok(None),
            Some(v) => super::codec::decode(v.value())
                .map(Some)
                .map_err(|e| io(&format!("decode meta key {key}: {e}"))),
        }
    }

    pub fn write_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        sync: Sync,
    ) -> Result<(), StorageError> {
        self.write_encoded(&[(key, encode(value)?)], sync)
    }

    /// Writes several keys in one transaction: all of them or none. Values are encoded with
    /// [`encode`].
    pub fn write_encoded(
        &self,
        values: &[(&str, Vec<u8>)],
        sync: Sync,
    ) -> Result<(), StorageError> {
        let io = |e: &dyn std::fmt::Display| {
            StorageError::from(StorageIOError::write(AnyError::error(e.to_string())))
        };
        let mut tx = self.db.begin_write().map_err(|e| io(&e))?;
        if sync == Sync::Lazy {
            // Not on disk before the next durable commit (see `Sync::Lazy`).
            tx.set_durability(redb::Durability::None)
                .map_err(|e| io(&e))?;
        }
        {
            let mut table = tx.open_table(META).map_err(|e| io(&e))?;
            for (key, bytes) in values {
                table.insert(*key, bytes.as_slice()).map_err(|e| io(&e))?;
            }
        }
        tx.commit().map_err(|e| io(&e))
    }

    /// True when this node has voted (part of "has Raft state"; the log is the other part).
    pub fn has_vote(&self) -> Result<bool, StorageError> {
        Ok(self.read_meta::<openraft::Vote<NodeId>>("vote")?.is_some())
    }
}

/// `value` as a meta value is stored (`codec`), for [`RaftStore::write_encoded`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    super::codec::encode(value)
        .map_err(|e| StorageError::from(StorageIOError::write(AnyError::error(e.to_string()))))
}

/// A missing or empty `raft.redb` beside a Raft log that holds records, or beside snapshots,
/// means the node's vote and applied state were lost (deleted, truncated, restored from an
/// older backup of part of the volume). Starting with a new file would let the node vote a
/// second time in a term it already voted in, and adopt whatever cluster id it hears: refused,
/// with what to do.
fn refuse_state_without_store(dir: &Path, path: &Path) -> anyhow::Result<()> {
    let any_file = |sub: &str, held: &dyn Fn(&std::fs::DirEntry) -> bool| {
        std::fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| held(&e))
    };
    let log_records = any_file(super::RAFT_LOG_DIR, &|e| {
        e.file_name().to_string_lossy().ends_with(".wal")
            && e.metadata()
                .is_ok_and(|m| m.len() > super::wal::SEGMENT_HEADER_LEN)
    });
    let snapshots = any_file(super::SNAPSHOT_DIR, &|e| {
        e.file_name().to_string_lossy().ends_with(".meta")
    });
    if log_records || snapshots {
        anyhow::bail!(
            "{} is missing or empty, but {} holds a Raft log or snapshots: this node's vote, \
             cluster id and applied state are lost, and starting with a new file could make it \
             vote twice in one term. Put the file back, or move the whole data directory away \
             and let the node re-sync from its peers",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Before the WAL, the log was a table of this file. The format changed without a migration
/// (pre-1.0): a directory that still has entries there is refused with a clear message instead
/// of starting with an empty log next to a vote.
fn refuse_legacy_log(db: &redb::Database, path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use redb::ReadableTableMetadata;
    let tx = db.begin_read().context("read log store")?;
    let entries = match tx.open_table(LEGACY_LOGS) {
        Ok(table) => table.len().context("read the old log table")?,
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e).context("read the old log table"),
    };
    if entries > 0 {
        anyhow::bail!(
            "{} holds {entries} Raft log entries in the format of raftlite before the WAL; the \
             log format changed and there is no migration: move this data directory away and \
             let the node join again (it re-syncs from the cluster)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store as a process crash at this moment would leave it: the file as the OS has it
    /// (whatever redb holds only in memory is not in it), opened from a copy in `to`.
    fn after_a_crash(dir: &Path, to: &Path) -> RaftStore {
        std::fs::create_dir_all(to).expect("create the crash directory");
        std::fs::copy(dir.join("raft.redb"), to.join("raft.redb")).expect("copy the file");
        RaftStore::open(to).expect("open the file a crash left")
    }

    fn read(store: &RaftStore, key: &str) -> Option<u64> {
        store.read_meta(key).expect("read")
    }

    /// What `Sync::Lazy` keeps: a lazy write is read back at once, but a process crash loses
    /// it (the file holds the durable value before it); the next durable commit, of another
    /// key, carries it to the file, and so does a clean close.
    #[test]
    fn a_lazy_write_is_lost_by_a_crash_until_a_durable_commit_or_a_clean_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("live");
        let store = RaftStore::open(&live).expect("open");
        store.write_meta("k", &1u64, Sync::Durable).expect("write");
        store.write_meta("k", &2u64, Sync::Lazy).expect("write");
        assert_eq!(read(&store, "k"), Some(2), "visible at once");

        let crashed = after_a_crash(&live, &dir.path().join("crash-1"));
        assert_eq!(
            read(&crashed, "k"),
            Some(1),
            "lost by a crash: the durable value"
        );

        store
            .write_meta("other", &7u64, Sync::Durable)
            .expect("write");
        let crashed = after_a_crash(&live, &dir.path().join("crash-2"));
        assert_eq!(
            (read(&crashed, "k"), read(&crashed, "other")),
            (Some(2), Some(7)),
            "a durable commit carries the lazy ones before it"
        );

        store.write_meta("k", &3u64, Sync::Lazy).expect("write");
        drop(store);
        let reopened = RaftStore::open(&live).expect("reopen");
        assert_eq!(read(&reopened, "k"), Some(3), "a clean close keeps it");
    }

    /// A node whose `raft.redb` is gone or empty while its log holds records (or snapshots
    /// exist) does not start with a new file: its vote is lost, and a new one would let it
    /// vote twice in a term. A damaged file is an error at open, not trusted.
    #[test]
    fn a_lost_or_damaged_store_beside_a_log_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        let path = data.join(super::super::STORE_FILE);
        let store = RaftStore::open(data).expect("open");
        store
            .write_meta("vote", &5u64, Sync::Durable)
            .expect("write");
        drop(store);
        // No log yet (a node that never held an entry): a lost file is no loss.
        std::fs::remove_file(&path).expect("remove");
        RaftStore::open(data).expect("a new node's file may be made again");

        let mut wal = super::super::wal::Wal::open(
            &data.join(super::super::RAFT_LOG_DIR),
            Default::default(),
        )
        .expect("open the log");
        wal.append([(1u64, b"entry".as_slice())]).expect("append");
        drop(wal);
        RaftStore::open(data).expect("the file and its log");

        for how in ["removed", "emptied"] {
            match how {
                "removed" => std::fs::remove_file(&path).expect("remove"),
                _ => std::fs::write(&path, b"").expect("empty"),
            }
            let refused = RaftStore::open(data).err().map(|e| format!("{e:#}"));
            assert!(
                refused.as_deref().is_some_and(|e| e.contains("vote twice")),
                "{how}: {refused:?}"
            );
            assert!(
                std::fs::metadata(&path).map_or(true, |m| m.len() == 0),
                "{how}: a refused start made a new file, which the next start would trust"
            );
        }

        // Snapshots alone say the same.
        let other = dir.path().join("other");
        std::fs::create_dir_all(other.join(super::super::SNAPSHOT_DIR)).expect("mkdir");
        std::fs::write(
            other.join(super::super::SNAPSHOT_DIR).join("s-1.meta"),
            b"x",
        )
        .expect("write");
        assert!(
            RaftStore::open(&other).is_err(),
            "snapshots without the store"
        );

        // Damage inside a file redb wrote: an error, not a panic, and not trusted.
        let damaged = dir.path().join("damaged");
        let store = RaftStore::open(&damaged).expect("open");
        for k in 0..200u64 {
            store
                .write_meta(&format!("key-{k}"), &vec![k; 64], Sync::Durable)
                .expect("write");
        }
        drop(store);
        let file = damaged.join(super::super::STORE_FILE);
        let mut bytes = std::fs::read(&file).expect("read");
        let len = bytes.len();
        for b in &mut bytes[len / 4..] {
            *b ^= 0x5a;
        }
        std::fs::write(&file, &bytes).expect("damage");
        let opened = std::panic::catch_unwind(|| RaftStore::open(&damaged).map(|_| ()));
        assert!(
            matches!(opened, Ok(Err(_))),
            "a damaged file must fail to open with an error: {:?}",
            opened.map(|r| r.map_err(|e| format!("{e:#}")))
        );
    }
}
