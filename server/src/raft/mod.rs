//! The openraft seam, one trait per file: `log_store` (RaftLogStorage on the WAL),
//! `state_machine` (RaftStateMachine = the SQLite database); the third seam, RaftNetwork, lives
//! with the rest of the node-to-node traffic in `peer::network`. `types` declares the type
//! configuration, `codec` the one binary encoding, `wal` the log's storage engine (segment
//! files, group commit, recovery), `store` the redb file of the vote and metadata.
//! `early_commit` counts a leader's quorum from early replication's answers and its own flush.
//! `lineage` checks at start that the database is one the node's own log leads to.

pub mod codec;
pub mod early_commit;
pub mod lineage;
pub mod log_store;
pub mod state_machine;
pub mod store;
pub mod types;
pub mod wal;

/// The directory (inside the data directory) holding snapshot images.
pub const SNAPSHOT_DIR: &str = "snapshots";
/// The Raft log's segment files (`wal`).
pub const RAFT_LOG_DIR: &str = "raft-log";
/// The redb file of the vote and metadata (`store`).
pub const STORE_FILE: &str = "raft.redb";
