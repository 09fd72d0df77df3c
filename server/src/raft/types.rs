//! The openraft type configuration of raftlite and the log command it replicates.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// How a member of the cluster is reached: the address clients are told (status, leader
/// hints) and the address its peers connect to (the peer service on its own port).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub client: String,
    pub peer: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (peer {})", self.client, self.peer)
    }
}

/// What a log entry asks the state machine to do.
///
/// The page delta travels encoded (`db::PageDelta::encode`): the log never needs to look
/// inside it, cloning an entry for replication is a reference-count bump, and the bytes are
/// validated once more when applied.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Command {
    /// An encoded `PageDelta`: the pages one group-commit batch changed.
    Delta(Bytes),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Delta(b) => write!(f, "Delta({} bytes)", b.len()),
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What applying one entry did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum ApplyResult {
    /// Blank or membership entry: nothing to apply to the database.
    #[default]
    NoOp,
    /// The delta was written to the database.
    Applied,
    /// The delta was captured on a database state other than the current one (a leadership
    /// change raced with it) and was skipped on every node; its writes did not happen.
    Stale,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = ApplyResult,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
pub type StorageError = openraft::StorageError<NodeId>;
