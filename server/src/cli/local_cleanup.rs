//! Who removes a [`LocalCluster`](super::local_cluster::LocalCluster)'s temporary directory
//! when its launcher (`raftlite dev`, `raftlite bench`) dies without stopping its nodes.
//!
//! A launcher that is asked to stop (SIGINT, SIGTERM, SIGHUP) stops its nodes and removes the
//! directory itself. One that is killed outright (SIGKILL, the OOM killer, a crash) cannot;
//! its nodes then receive SIGTERM from the kernel (`PR_SET_PDEATHSIG`, set when they are
//! spawned) and stop as on any SIGTERM. To leave no data behind, each node of a temporary
//! cluster is started with the hidden `--local-cluster-dir DIR` and cleans up on its way out,
//! coordinated by `flock(2)` locks, which the kernel releases when their holder dies however
//! it dies:
//!
//! - the launcher holds an exclusive lock on the cluster directory for as long as it runs;
//! - each node holds an exclusive lock on its own data directory (`DIR/node-<id>`);
//! - a node that has stopped checks the launcher's lock. Held: the launcher is alive and
//!   removes the directory itself. Free: the node releases its own lock, then probes every
//!   other node's; if none is held, it is the last one out and removes `DIR`.
//!
//! Each node releases its lock before it probes the others, so of any two nodes stopping at
//! once at least one sees the other's lock free: at least one removes `DIR` (two may try;
//! removal is idempotent). A node that died earlier (killed to watch a failover) holds no
//! lock, so it does not keep the directory alive.
//!
//! What can remain: the directory, if the launcher dies after creating it and before its
//! first node started, or if every node is killed with SIGKILL too.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Hidden `raftlite serve` flag that a local cluster gives its nodes when their data is
/// temporary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LocalNodeArgs {
    /// The temporary directory of the `raftlite dev` or `raftlite bench` that started this
    /// node (its data directory is inside): when the node stops after its launcher died, it
    /// removes its data, and the last node out removes the directory.
    #[arg(long, hide = true, value_name = "DIR")]
    pub local_cluster_dir: Option<PathBuf>,
}

/// The launcher's exclusive lock on the cluster directory: released when it exits or dies.
#[derive(Debug)]
pub struct LauncherLock {
    _dir: File,
}

impl LauncherLock {
    pub fn acquire(cluster_dir: &Path) -> anyhow::Result<Self> {
        let dir = open_dir(cluster_dir)?;
        dir.try_lock()
            .with_context(|| format!("lock {}", cluster_dir.display()))?;
        Ok(LauncherLock { _dir: dir })
    }
}

/// A node's part: its lock, taken at start, and the cleanup when it has stopped.
#[derive(Debug)]
pub struct NodeCleanup {
    cluster_dir: PathBuf,
    own: File,
}

impl NodeCleanup {
    /// Locks this node's data directory, if the node belongs to a temporary local cluster.
    pub fn start(args: &LocalNodeArgs, data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let Some(cluster_dir) = &args.local_cluster_dir else {
            return Ok(None);
        };
        let own = open_dir(data_dir)?;
        own.try_lock()
            .with_context(|| format!("lock {} (is another node using it?)", data_dir.display()))?;
        Ok(Some(NodeCleanup {
            cluster_dir: cluster_dir.clone(),
            own,
        }))
    }

    /// Called when the node has stopped: if the launcher is gone and no other node of the
    /// cluster runs, removes the cluster directory. Returns whether it did. Best effort: a
    /// failure is logged, not returned (the node has stopped either way).
    pub fn finish(self) -> bool {
        if is_locked(&self.cluster_dir) {
            return false; // The launcher is alive and cleans up.
        }
        drop(self.own);
        match other_node_running(&self.cluster_dir) {
            Ok(true) => false,
            Ok(false) => remove(&self.cluster_dir),
            Err(e) => {
                tracing::warn!(dir = %self.cluster_dir.display(), error = %format!("{e:#}"),
                    "cannot tell whether other local nodes run; leaving the directory");
                false
            }
        }
    }
}

fn open_dir(dir: &Path) -> anyhow::Result<File> {
    File::open(dir).with_context(|| format!("open {}", dir.display()))
}

/// Whether someone holds an exclusive lock on `dir`. A directory that is gone (removed by a
/// node stopping at the same time) is not locked.
fn is_locked(dir: &Path) -> bool {
    let Ok(file) = File::open(dir) else {
        return false;
    };
    // A shared probe: probes by several nodes at once do not see each other.
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}

/// Whether a `node-*` directory in `cluster_dir` is locked by its node.
fn other_node_running(cluster_dir: &Path) -> anyhow::Result<bool> {
    let entries = match std::fs::read_dir(cluster_dir) {
        Ok(entries) => entries,
        // Another node removed it meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("list {}", cluster_dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", cluster_dir.display()))?;
        let is_node_dir = entry.file_name().to_string_lossy().starts_with("node-")
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if is_node_dir && is_locked(&entry.path()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes `dir`, tolerating a node that removes it at the same time.
fn remove(dir: &Path) -> bool {
    for _ in 0..3 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the local cluster's directory");
            }
        }
    }
    !dir.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Layout {
        _tmp: tempfile::TempDir,
        cluster: PathBuf,
    }

    fn layout(nodes: u64) -> Layout {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cluster = tmp.path().join("cluster");
        for id in 1..=nodes {
            std::fs::create_dir_all(cluster.join(format!("node-{id}"))).expect("node dir");
        }
        std::fs::write(cluster.join("node-1.log"), "log").expect("log");
        Layout { _tmp: tmp, cluster }
    }

    fn node(layout: &Layout, id: u64) -> NodeCleanup {
        let args = LocalNodeArgs {
            local_cluster_dir: Some(layout.cluster.clone()),
        };
        NodeCleanup::start(&args, &layout.cluster.join(format!("node-{id}")))
            .expect("lock")
            .expect("a local node")
    }

    #[test]
    fn nothing_is_removed_while_the_launcher_runs() {
        let layout = layout(2);
        let launcher = LauncherLock::acquire(&layout.cluster).expect("launcher lock");
        let (one, two) = (node(&layout, 1), node(&layout, 2));
        assert!(!one.finish());
        assert!(!two.finish());
        assert!(layout.cluster.join("node-1").exists());
        drop(launcher);
    }

    #[test]
    fn the_last_node_out_removes_the_directory_once_the_launcher_is_gone() {
        let layout = layout(3);
        let launcher = LauncherLock::acquire(&layout.cluster).expect("launcher lock");
        let (one, two) = (node(&layout, 1), node(&layout, 2));
        // Node 3 died earlier (no lock): it does not keep the directory.
        drop(launcher);
        assert!(!one.finish(), "node 2 still runs");
        assert!(layout.cluster.exists());
        assert!(two.finish(), "the last one out");
        assert!(!layout.cluster.exists());
    }

    #[test]
    fn a_node_without_the_flag_does_nothing() {
        let layout = layout(1);
        let none = NodeCleanup::start(&LocalNodeArgs::default(), &layout.cluster.join("node-1"))
            .expect("no lock needed");
        assert!(none.is_none());
    }

    #[test]
    fn a_data_directory_is_locked_by_one_node_only() {
        let layout = layout(1);
        let _one = node(&layout, 1);
        let args = LocalNodeArgs {
            local_cluster_dir: Some(layout.cluster.clone()),
        };
        let err = NodeCleanup::start(&args, &layout.cluster.join("node-1")).expect_err("locked");
        assert!(format!("{err:#}").contains("another node"), "{err:#}");
    }
}
