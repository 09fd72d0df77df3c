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

use std::sync::atomic::{AtomicBool, Ordering};

use crate::cluster::identity::ClusterMismatch;
use crate::node::Node;

static RESYNCING: AtomicBool = AtomicBool::new(false);

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
    if RESYNCING.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::warn!(
        ours = %mismatch.ours, theirs = %mismatch.theirs, data_dir = %node.config().data_dir.display(),
        "re-sync: this node's data belongs to another cluster; wiping it and rejoining from the current leader"
    );
    let dir = node.config().data_dir.clone();
    std::thread::spawn(move || {
        if let Err(e) = wipe_dir(&dir) {
            tracing::error!(error = %e, "re-sync: could not wipe the data directory");
            std::process::exit(75);
        }
        restart_in_place();
    });
}

/// Removes everything inside `dir` (the directory itself stays: it may be a mount point).
pub fn wipe_dir(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
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
