//! The node's redb file (`raft.redb` in the data directory): Raft log, vote, and small
//! metadata of the state machine and cluster identity.
//!
//! redb rather than sled: sled 0.34 is unmaintained and has reports of databases that do not
//! open again after an abrupt stop; our users kill pods on purpose. redb commits are
//! crash-safe (copy-on-write with a checksummed commit slot).

use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, StorageIOError};
use redb::{ReadableDatabase, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{NodeId, StorageError};

pub(crate) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Shared handle to the node's redb database.
#[derive(Clone)]
pub struct RaftStore {
    pub(crate) db: Arc<redb::Database>,
}

/// Durability of a metadata write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sync {
    /// fsync before returning.
    Durable,
    /// Survives a process crash, may be lost on power loss (later reconstructible).
    Lazy,
}

impl RaftStore {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create data directory {}", dir.display()))?;
        let path = dir.join("raft.redb");
        let db = redb::Database::create(&path)
            .with_context(|| format!("open log store {}", path.display()))?;
        let tx = db.begin_write().context("initialize log store")?;
        tx.open_table(LOGS).context("initialize log table")?;
        tx.open_table(META).context("initialize meta table")?;
        tx.commit().context("initialize log store")?;
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
        let io = |e: &dyn std::fmt::Display| {
            StorageError::from(StorageIOError::write(AnyError::error(e.to_string())))
        };
        let bytes = super::codec::encode(value).map_err(|e| io(&e))?;
        let mut tx = self.db.begin_write().map_err(|e| io(&e))?;
        if sync == Sync::Lazy {
            tx.set_durability(redb::Durability::None)
                .map_err(|e| io(&e))?;
        }
        {
            let mut table = tx.open_table(META).map_err(|e| io(&e))?;
            table.insert(key, bytes.as_slice()).map_err(|e| io(&e))?;
        }
        tx.commit().map_err(|e| io(&e))
    }

    /// True when this node has any Raft state: a vote or log entries.
    pub fn has_raft_state(&self) -> Result<bool, StorageError> {
        use redb::ReadableTable;
        let io = |e: &dyn std::fmt::Display| {
            StorageError::from(StorageIOError::read(AnyError::error(e.to_string())))
        };
        if self.read_meta::<openraft::Vote<NodeId>>("vote")?.is_some() {
            return Ok(true);
        }
        let tx = self.db.begin_read().map_err(|e| io(&e))?;
        let logs = tx.open_table(LOGS).map_err(|e| io(&e))?;
        let any = logs.first().map_err(|e| io(&e))?.is_some();
        Ok(any)
    }
}
