//! Bootstrap: given the full list of initial members, exactly one node initializes.
//!
//! The node with the lowest id initializes, and only when (a) it has no Raft state of its own
//! and (b) every other initial member answered and has none either. Any member that already
//! has state or a cluster id means a cluster exists: the node joins it instead (the leader
//! replicates to it or sends a snapshot). A restart finds its own Raft state and never
//! initializes again. A wiped lowest-id node therefore re-syncs rather than splitting the
//! cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::archive::Archive;
use crate::node::Node;
use crate::raft::types::NodeAddr;

const RETRY: Duration = Duration::from_millis(300);

pub async fn bootstrap(node: Node, archive: Option<Archive>) -> anyhow::Result<()> {
    if node.has_raft_state()? {
        if node.identity().recovery_pending()? {
            tracing::warn!(
                node = node.id(),
                "restarting in the middle of the cluster's recovery from the archive: finishing it before any member joins"
            );
            return finish_recovery(&node).await;
        }
        tracing::info!(node = node.id(), "restarting with existing Raft state");
        return Ok(());
    }
    let peers = node.config().peers.clone();
    let lowest = initializer(node.config());
    if lowest != node.id() {
        tracing::info!(
            node = node.id(),
            initializer = lowest,
            "new node: waiting to be contacted by the cluster"
        );
        return Ok(());
    }
    let mut last_report = Instant::now();
    let members = loop {
        match survey(&node, &peers).await {
            Survey::ClusterExists(who) => {
                tracing::info!(
                    peer = who,
                    "a peer already belongs to a cluster: joining it instead of initializing"
                );
                return Ok(());
            }
            Survey::AllEmpty(members) => break members,
            Survey::Missing(missing) => {
                if last_report.elapsed() > Duration::from_secs(5) {
                    tracing::info!(
                        ?missing,
                        "waiting for every initial member to answer before initializing"
                    );
                    last_report = Instant::now();
                }
            }
        }
        if node.has_raft_state()? {
            tracing::info!("contacted by a cluster while waiting; not initializing");
            return Ok(());
        }
        tokio::time::sleep(RETRY).await;
    };
    if let Some(archive) = &archive {
        // An unreachable archive is retried, never skipped: starting a fresh cluster over an
        // archive that holds one would fork its history.
        let recovered = loop {
            match crate::archive::restore_for_bootstrap(
                archive,
                &node.config().data_dir,
                node.database(),
            )
            .await
            {
                Ok(r) => {
                    node.archive_status().set_error(String::new());
                    break r;
                }
                Err(e) => {
                    let error = crate::error_text(&e);
                    tracing::warn!(%error, "cannot read the archive before initializing; retrying");
                    // Status and metrics say why the cluster does not form (no leader yet).
                    node.archive_status().set_error(format!(
                        "the cluster cannot start before it has read the archive: {error}"
                    ));
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        if let Some((restored, generation)) = recovered {
            return recover_cluster(&node, restored, generation).await;
        }
    }
    if !node.database().is_empty().await? {
        anyhow::bail!(not_a_new_database(node.database().path()));
    }
    let cluster_id = node.identity().create()?;
    let count = members.len();
    node.raft().initialize(members).await?;
    tracing::info!(%cluster_id, members = count, "initialized a new cluster");
    Ok(())
}

/// The node that initializes the cluster: the lowest id of the initial members.
fn initializer(config: &crate::config::Config) -> u64 {
    config
        .peers
        .keys()
        .next()
        .copied()
        .unwrap_or(config.node_id)
}

/// Whether bootstrap may restore this node's database from the archive (it initializes the
/// cluster and has one): a restore stopped halfway leaves a database and no Raft state, and
/// bootstrap restores again over it (or refuses it before a new cluster starts on it).
pub fn may_restore(config: &crate::config::Config) -> bool {
    initializer(config) == config.node_id && config.archive.is_some()
}

/// Why a node without Raft state does not start on the database file at `path`.
pub fn not_a_new_database(path: &std::path::Path) -> String {
    format!(
        "{} holds data, but this node has no Raft state: a new node takes its database from \
         the cluster (or the archive), and a file already in place would be served as if it \
         held the cluster's first writes. Move db.sqlite, db.sqlite-wal and db.sqlite-shm out \
         of the data directory and start the node again (raftlite does not import a database \
         file: replay its SQL through a client)",
        path.display()
    )
}

/// This node's addresses, as its peers and clients reach it.
fn own_addr(node: &Node) -> NodeAddr {
    NodeAddr {
        client: node.config().advertise_addr.clone(),
        peer: node.config().peer_advertise_addr.clone(),
    }
}

enum Survey {
    /// Every initial member answered and has no state: their addresses.
    AllEmpty(BTreeMap<u64, NodeAddr>),
    ClusterExists(u64),
    Missing(Vec<u64>),
}

async fn survey(node: &Node, peers: &BTreeMap<u64, String>) -> Survey {
    let mut missing = Vec::new();
    let mut members = BTreeMap::new();
    for (id, addr) in peers {
        if *id == node.id() {
            members.insert(*id, own_addr(node));
            continue;
        }
        let Ok(client) = node.inner.peer(addr) else {
            missing.push(*id);
            continue;
        };
        match client.identity(Duration::from_secs(1)).await {
            Some(peer) if peer.initialized || !peer.cluster_id.is_empty() => {
                return Survey::ClusterExists(*id);
            }
            Some(peer) => {
                members.insert(
                    *id,
                    NodeAddr {
                        client: peer.client_addr,
                        peer: addr.clone(),
                    },
                );
            }
            None => missing.push(*id),
        }
    }
    if missing.is_empty() {
        Survey::AllEmpty(members)
    } else {
        Survey::Missing(missing)
    }
}

/// The end of whole-cluster recovery, on the node that restored the archive and leads a
/// cluster of itself: once leader, takes a snapshot of the restored state and purges the log
/// behind it, so that every member that joins installs that snapshot, then adds the members
/// and records the recovery as finished (a restart before that does all of it again).
async fn finish_recovery(node: &Node) -> anyhow::Result<()> {
    let (voters, _) = node.members();
    // Members are added only after the purge: with more than one voter it is done, and
    // another voter may lead now.
    if voters.len() <= 1 {
        // The only voter leads sooner or later: retry until the log is purged, holding
        // members off meanwhile (`recovering`, set from the mark at start or by
        // `recover_cluster`).
        while let Err(e) = snapshot_and_purge(node).await {
            tracing::warn!(error = %crate::error_text(&e), "recovery from the archive: retrying its snapshot and purge");
            tokio::time::sleep(RETRY).await;
        }
    }
    node.set_recovering(false);
    // After a restart, wait for the election: only a leader adds members.
    for _ in 0..50 {
        if node.raft().metrics().borrow().current_leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if add_missing_members(node).await {
        tracing::info!("the recovered cluster has all its members");
    }
    node.identity().set_recovery_pending(false)?;
    Ok(())
}

/// Once this node leads and has applied the restored state: a snapshot of it, and the log
/// purged behind it.
async fn snapshot_and_purge(node: &Node) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut ready = false;
    for _ in 0..100 {
        if node.is_leader() && node.applied_index() > 0 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(ready, "the recovered node did not become leader");
    let index = node
        .trigger_snapshot()
        .await
        .map_err(|e| anyhow::anyhow!("snapshot of the restored state: {e}"))?;
    node.raft()
        .trigger()
        .purge_log(index)
        .await
        .context("purge the log behind the restored snapshot")?;
    // `purge_log` only queues the purge: wait until openraft counts the log as purged, so a
    // member added next is sent the snapshot, not the log from index 1.
    node.raft()
        .wait(Some(Duration::from_secs(60)))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= index),
            "log purged behind the restored snapshot",
        )
        .await
        .map_err(|e| anyhow::anyhow!("purge the log behind the restored snapshot: {e}"))?;
    Ok(())
}

/// Adds every configured peer that is not a voter yet, with the client address it gives when
/// asked; retries each until it is added. Gives up (false) if this node stops leading: the
/// rest then join by themselves (`auto_join`) or through `raftlite cluster add`.
async fn add_missing_members(node: &Node) -> bool {
    let (voters, _) = node.members();
    let peers = node.config().peers.clone();
    let missing = peers
        .iter()
        .filter(|(id, _)| **id != node.id() && !voters.contains(id));
    for (&id, peer) in missing {
        let mut last_report = Instant::now();
        loop {
            let asked = match node.inner.peer(peer) {
                Ok(client) => client.identity(Duration::from_secs(1)).await,
                Err(_) => None,
            };
            let added = match asked {
                Some(answer) if answer.node_id == id => {
                    let addr = NodeAddr {
                        client: answer.client_addr,
                        peer: peer.clone(),
                    };
                    node.add_voter(id, addr).await.map_err(|e| e.to_string())
                }
                Some(answer) => Err(format!("{peer} answers as node {}", answer.node_id)),
                None => Err(format!("{peer} does not answer")),
            };
            match added {
                Ok(_) => break,
                Err(error) if !node.is_leader() => {
                    tracing::warn!(node = id, %error, "this node no longer leads the recovered cluster: the members it did not add join by themselves (auto_join) or through `raftlite cluster add`");
                    return false;
                }
                Err(error) => {
                    if last_report.elapsed() > Duration::from_secs(5) {
                        tracing::info!(node = id, %error, "waiting to add a member to the recovered cluster");
                        last_report = Instant::now();
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
    true
}

/// Whole-cluster recovery: the database already holds the archived state. Initialize a
/// one-member cluster under the archived cluster id, take a snapshot and purge the log behind
/// it, then add the other members: they catch up through a snapshot install, so every replica
/// starts from the restored state (deltas alone would not carry it).
async fn recover_cluster(
    node: &Node,
    restored: crate::archive::Restored,
    generation: u64,
) -> anyhow::Result<()> {
    // Durable before the Raft state exists: a restart from here on, which finds that state and
    // so never comes back here, finishes the recovery instead of letting members join a log
    // that does not carry the restored state.
    node.identity().set_recovery_pending(true)?;
    node.identity().adopt(&restored.cluster_id)?;
    // Peers that see this leader try to join (cluster/join.rs); hold them off until the
    // restored state is a snapshot and the log behind it is purged, so they install it.
    node.set_recovering(true);
    let me = BTreeMap::from([(node.id(), own_addr(node))]);
    node.raft().initialize(me).await?;
    tracing::info!(
        cluster_id = %restored.cluster_id,
        restored_index = restored.index,
        generation,
        "recovered the cluster from the archive; adding the other members"
    );
    finish_recovery(node).await
}
