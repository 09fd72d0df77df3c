//! openraft's storage conformance suite against raftlite's redb log store and SQLite state
//! machine (real files in a temporary directory).

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use raftlite::db::{Database, DbOptions};
use raftlite::raft::log_store::LogStore;
use raftlite::raft::state_machine::StateMachine;
use raftlite::raft::store::RaftStore;
use raftlite::raft::types::{StorageError, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = RaftStore::open(dir.path()).expect("open raft store");
        let db = Database::open(dir.path().join("db.sqlite"), DbOptions::default())
            .expect("open database");
        let (applied_tx, _) = tokio::sync::watch::channel(0);
        let sm = StateMachine::open(
            Arc::new(db),
            store.clone(),
            dir.path().join("snapshots"),
            applied_tx,
        )
        .await
        .expect("open state machine");
        Ok((dir, LogStore::new(store), sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)?;
    Ok(())
}
