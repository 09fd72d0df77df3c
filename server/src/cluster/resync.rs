//! Automatic re-sync of a node whose data belongs to another cluster.
//!
//! When the leader of another cluster sends this node entries or a snapshot, the node's data
//! is from a previous incarnation (a reused volume, a recreated cluster). The node then says so
//! in one log line, removes its data directory's contents and restarts itself in place (`exec`
//! of the same binary and arguments); it comes back empty and the leader fills it with a
//! snapshot. Otherwise it refuses the messages and keeps its data for an operator to inspect.
//!
//! # Exactly when a node wipes its data
//!
//! All of these must hold:
//! 1. `auto_resync` is on: the default with TLS; without TLS (loopback, `--insecure`) only when
//!    set explicitly, since nothing then proves who sent the message.
//! 2. The message is AppendEntries or InstallSnapshot (what a leader sends) with a cluster id
//!    that is not empty and differs from this node's.
//! 3. The sender is vouched for (`vouched`): its node id is in this node's configured peers
//!    (`--peers` / the StatefulSet pattern) or current membership, and, with TLS, the message
//!    came over mutual TLS with a certificate signed by the cluster CA that names that node
//!    (`raftlite-node-<id>`, or the host of its configured peer address). With TLS, a message
//!    without such a certificate never wipes anything, whatever `auto_resync` says.
//! 4. The sender is not this node itself.
//! 5. **The other peers confirm it.** One message proves only that its sender holds a peer
//!    certificate: a single compromised or broken member could otherwise send every node a
//!    made-up cluster id and have the whole cluster wipe itself. So before wiping, the node
//!    asks every other peer it knows (the configured peers and its own membership, but not the
//!    sender) which cluster it belongs to, and wipes only when the sender and the peers that
//!    answer with the sender's cluster id are a majority of all of them, at least one of them
//!    besides the sender. A node that is the odd one out (a reused volume beside a running
//!    cluster) passes; a node whose own cluster is alive does not. A refusal is logged, and
//!    the question is asked again at most every [`RECHECK_AFTER`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cluster::identity::ClusterMismatch;
use crate::node::Node;

/// A re-sync is being confirmed or under way: one at a time.
static RESYNCING: AtomicBool = AtomicBool::new(false);

/// After a refused re-sync, how long before the peers are asked again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(30);

/// How long each peer has to say which cluster it is in.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A leader of another cluster (`from`) sent this node entries or a snapshot. `vouched`: see
/// the module docs (rule 3).
pub fn foreign_leader(node: &Node, mismatch: &ClusterMismatch, from: u64, vouched: bool) {
    if !vouched {
        tracing::error!(
            error = %mismatch, from,
            "refusing a message from another cluster: its sender is not a configured peer or not authenticated"
        );
        return;
    }
    if !node.config().auto_resync {
        tracing::error!(
            error = %mismatch,
            "refusing the leader of another cluster; set auto_resync to let this node wipe its data and re-sync"
        );
        return;
    }
    if from == node.id() {
        tracing::error!(
            error = %mismatch, from,
            "refusing a message from another cluster that names this node as its sender"
        );
        return;
    }
    if RESYNCING.swap(true, Ordering::SeqCst) {
        return;
    }
    let node = node.clone();
    let theirs = mismatch.theirs.clone();
    let ours = mismatch.ours.clone();
    tokio::spawn(async move {
        match confirmed(&node, from, &theirs).await {
            Ok(confirmers) => {
                tracing::warn!(
                    %ours, %theirs, from, ?confirmers, data_dir = %node.config().data_dir.display(),
                    "re-sync: this node's data belongs to another cluster, as its peers confirm; wiping it and rejoining from the current leader"
                );
                let dir = node.config().data_dir.clone();
                std::thread::spawn(move || {
                    // The restarted process wipes the directory before it opens anything:
                    // this one keeps writing to it until it is gone.
                    if let Err(e) = mark_for_wipe(&dir) {
                        tracing::error!(error = %e, "re-sync: could not mark the data directory for wiping");
                        std::process::exit(75);
                    }
                    restart_in_place();
                });
            }
            Err(why) => {
                tracing::error!(
                    %ours, %theirs, from,
                    "refusing to wipe this node's data for another cluster: {why}; it keeps its data (asking again in {}s at the earliest)",
                    RECHECK_AFTER.as_secs()
                );
                tokio::time::sleep(RECHECK_AFTER).await;
                RESYNCING.store(false, Ordering::SeqCst);
            }
        }
    });
}

/// Rule 5 of the module docs: the ids of the peers that confirmed cluster `theirs`, or why
/// the re-sync is refused.
async fn confirmed(node: &Node, from: u64, theirs: &str) -> Result<Vec<u64>, String> {
    let mut peers: BTreeMap<u64, String> = node
        .member_addrs()
        .into_iter()
        .map(|(id, a)| (id, a.peer))
        .collect();
    peers.extend(node.config().peers.clone());
    // The sender and this node count in the total; the others are asked.
    peers.remove(&from);
    peers.remove(&node.id());
    let total = peers.len() + 2;
    let mut confirmers = Vec::new();
    let mut answers = Vec::new();
    for (id, addr) in &peers {
        let answer = match node.inner.peer(addr) {
            Ok(client) => client.identity(ASK_TIMEOUT).await,
            Err(_) => None,
        };
        match answer {
            Some(peer) if peer.node_id == *id && peer.cluster_id == theirs => confirmers.push(*id),
            Some(peer) if peer.node_id == *id => {
                answers.push(format!("node {id} is in cluster {:?}", peer.cluster_id))
            }
            Some(peer) => answers.push(format!(
                "{addr} answered as node {} instead of node {id}",
                peer.node_id
            )),
            None => answers.push(format!("node {id} did not answer")),
        }
    }
    let agree = 1 + confirmers.len();
    if !confirmers.is_empty() && agree * 2 > total {
        return Ok(confirmers);
    }
    Err(format!(
        "only {agree} of the {total} peers (node {from}, which sent it, and {confirmers:?}) say this node's cluster is {theirs}; {}",
        if answers.is_empty() { "no other peer to ask".to_string() } else { answers.join(", ") }
    ))
}

/// A file in the data directory that says a wipe is under way: made durable before anything
/// is removed, and removed last.
pub const WIPE_MARKER: &str = "WIPING";

/// Removes everything inside `dir` (the directory itself stays: it may be a mount point).
/// A wipe cut short (a crash, a full disk, a kill) leaves a mix no start could use, e.g. a
/// log without its store: the marker written first has the next start finish it
/// ([`finish_marked_wipe`]). A re-sync only marks the directory and restarts, and the new
/// process wipes it before it opens anything.
pub fn wipe_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let marker = dir.join(WIPE_MARKER);
    if !marker.exists() {
        mark_for_wipe(dir)?;
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path == marker {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    crate::raft::wal::sync_dir(dir)?;
    std::fs::remove_file(&marker)?;
    crate::raft::wal::sync_dir(dir)
}

/// Marks `dir` to be wiped by the next start ([`finish_marked_wipe`]), durably.
pub fn mark_for_wipe(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::create(dir.join(WIPE_MARKER))?.sync_all()?;
    crate::raft::wal::sync_dir(dir)
}

/// Wipes `dir` if it is marked (a re-sync, or a wipe cut short), before anything in it is
/// opened; whether it was.
pub fn finish_marked_wipe(dir: &std::path::Path) -> std::io::Result<bool> {
    if !dir.join(WIPE_MARKER).exists() {
        return Ok(false);
    }
    tracing::warn!(data_dir = %dir.display(),
        "re-sync: wiping this node's data as marked; the node starts empty and re-syncs from the leader");
    wipe_dir(dir)?;
    Ok(true)
}

fn restart_in_place() -> ! {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let exe = std::env::current_exe()
        .ok()
        .or_else(|| args.next().map(Into::into));
    let Some(exe) = exe else {
        std::process::exit(75)
    };
    let rest: Vec<_> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new(exe).args(rest).exec();
    tracing::error!(error = %err, "re-sync: could not restart; exiting so the supervisor restarts the node");
    std::process::exit(75);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::store::RaftStore;
    use crate::raft::{RAFT_LOG_DIR, SNAPSHOT_DIR, STORE_FILE};

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A node's data: a store, a log with a record, a database file, a snapshot directory.
    fn node_data(data: &std::path::Path) {
        drop(RaftStore::open(data).expect("open the store"));
        let mut wal = crate::raft::wal::Wal::open(&data.join(RAFT_LOG_DIR), Default::default())
            .expect("open the log");
        wal.append([(1u64, b"entry".as_slice())]).expect("append");
        drop(wal);
        std::fs::write(data.join("db.sqlite"), b"pages").expect("db");
        std::fs::create_dir_all(data.join(SNAPSHOT_DIR)).expect("snapshots");
    }

    /// A wipe cut short after it removed the store but not the log left a directory that
    /// every start refused (a log without its store could vote twice): the marker has the
    /// next start finish the wipe, and the node starts empty.
    #[test]
    fn a_wipe_cut_short_is_finished_by_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        node_data(data);
        wipe_dir(data).expect("wipe");
        assert!(names(data).is_empty(), "left: {:?}", names(data));
        assert!(
            !finish_marked_wipe(data).expect("check"),
            "no wipe was cut short"
        );

        // A re-sync marks the directory and restarts: the new process wipes it.
        node_data(data);
        mark_for_wipe(data).expect("mark");
        assert!(finish_marked_wipe(data).expect("wipe"), "marked");
        assert!(names(data).is_empty(), "left: {:?}", names(data));

        node_data(data);
        std::fs::File::create(data.join(WIPE_MARKER)).expect("marker");
        std::fs::remove_file(data.join(STORE_FILE)).expect("the store went first");
        let refused = RaftStore::open(data).err().map(|e| format!("{e:#}"));
        assert!(
            refused.is_some_and(|e| e.contains("vote twice")),
            "what is left cannot be started on as it is"
        );
        assert!(
            finish_marked_wipe(data).expect("finish"),
            "the wipe was cut short"
        );
        assert!(names(data).is_empty(), "left: {:?}", names(data));
        RaftStore::open(data).expect("an empty node starts");
    }
}
