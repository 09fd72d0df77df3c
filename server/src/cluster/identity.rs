//! Cluster identity: a cluster id created when the cluster is initialized and stored with
//! every node's data, carried on every peer message.
//!
//! A node that has no id yet adopts the id of the first cluster that talks to it. A node whose
//! data belongs to another cluster refuses votes from it, and when that cluster's leader sends
//! it entries or a snapshot, wipes its data and re-syncs (if `auto_resync` allows) — instead of
//! LiteFS' "cannot stream from primary with a different cluster id" and a manual PVC deletion.

use std::sync::RwLock;

use crate::raft::store::{RaftStore, Sync};

const KEY_CLUSTER_ID: &str = "cluster_id";
/// Whole-cluster recovery from the archive is under way (see `cluster::bootstrap`).
const KEY_RECOVERY_PENDING: &str = "recovery_pending";

pub struct ClusterIdentity {
    store: RaftStore,
    id: RwLock<Option<String>>,
}

/// The peer belongs to another cluster than this node's data.
#[derive(Debug, thiserror::Error)]
#[error("this node's data belongs to cluster {ours}, but the peer is in cluster {theirs}")]
pub struct ClusterMismatch {
    pub ours: String,
    pub theirs: String,
}

impl ClusterIdentity {
    pub fn load(store: RaftStore) -> anyhow::Result<Self> {
        let id: Option<String> = store.read_meta(KEY_CLUSTER_ID)?;
        Ok(Self {
            store,
            id: RwLock::new(id),
        })
    }

    pub fn get(&self) -> Option<String> {
        self.id
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Creates and durably stores a new cluster id (bootstrap only).
    pub fn create(&self) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        self.set(&id)?;
        Ok(id)
    }

    /// Stores a cluster id restored from the archive (whole-cluster recovery, bootstrap only).
    pub fn adopt(&self, id: &str) -> anyhow::Result<()> {
        self.set(id)
    }

    /// Records, durably, whether this node is in the middle of restoring the cluster from the
    /// archive: set before its Raft state exists, cleared once the restored state is a
    /// snapshot with the log behind it purged, so that a restart in between finishes it.
    pub fn set_recovery_pending(&self, pending: bool) -> anyhow::Result<()> {
        self.store
            .write_meta(KEY_RECOVERY_PENDING, &pending, Sync::Durable)?;
        Ok(())
    }

    /// Whether a recovery from the archive was started and not finished.
    pub fn recovery_pending(&self) -> anyhow::Result<bool> {
        let pending: Option<bool> = self.store.read_meta(KEY_RECOVERY_PENDING)?;
        Ok(pending.unwrap_or(false))
    }

    fn set(&self, id: &str) -> anyhow::Result<()> {
        self.store
            .write_meta(KEY_CLUSTER_ID, &id.to_string(), Sync::Durable)?;
        let mut guard = self.id.write().unwrap_or_else(|p| p.into_inner());
        *guard = Some(id.to_string());
        Ok(())
    }

    /// Checks a peer's cluster id. Adopts it when this node has none yet. An empty id (a
    /// message from a node in no cluster) is accepted only while this node has none either:
    /// nodes of a cluster always send its id, so an empty one is no member's.
    pub fn check_peer(&self, theirs: &str) -> Result<(), ClusterMismatch> {
        if theirs.is_empty() {
            return match self.get() {
                Some(ours) => Err(ClusterMismatch {
                    ours,
                    theirs: String::new(),
                }),
                None => Ok(()),
            };
        }
        match self.get() {
            Some(ours) if ours == theirs => Ok(()),
            Some(ours) => Err(ClusterMismatch {
                ours,
                theirs: theirs.to_string(),
            }),
            None => {
                if let Err(e) = self.set(theirs) {
                    tracing::error!(error = %e, "could not store the cluster id");
                } else {
                    tracing::info!(cluster_id = theirs, "joined cluster");
                }
                Ok(())
            }
        }
    }
}
