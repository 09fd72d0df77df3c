//! Automatic re-sync of a node whose data belongs to another cluster.
//!
//! When the leader of another cluster sends this node entries or a snapshot, the node's data
//! is from a previous incarnation (a reused volume, a recreated cluster). With `auto_resync`
//! (the default when TLS is configured) the node says so in one log line, removes its data directory's contents and
//! restarts itself in place (`exec` of the same binary and arguments); it comes back empty and
//! the leader fills it with a snapshot. Without `auto_resync` it refuses the messages and keeps
//! its data for an operator to inspect.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::cluster::identity::ClusterMismatch;
use crate::node::Node;

static RESYNCING: AtomicBool = AtomicBool::new(false);

pub fn foreign_leader(node: &Node, mismatch: &ClusterMismatch) {
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
