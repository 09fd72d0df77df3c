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
//! A launcher killed outright dies one thread at a time. The kernel sends the death signal
//! when the thread that spawned the nodes (the main thread) exits, but the lock goes only
//! with the last thread, so a node that stops quickly can still find it held. A node whose
//! launcher's main thread is gone (a zombie, or no such process) therefore waits up to
//! [`DYING_LAUNCHER_WAIT`] for the lock to go; a live launcher's lock means it cleans up.
//!
//! What can remain: the directory, if the launcher dies after creating it and before its
//! first node started, or if every node is killed with SIGKILL too.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// Longest a node waits for the lock of a launcher that is dying (see the module docs).
pub const DYING_LAUNCHER_WAIT: Duration = Duration::from_secs(5);

/// A node's part: its lock, taken at start, and the cleanup when it has stopped.
#[derive(Debug)]
pub struct NodeCleanup {
    cluster_dir: PathBuf,
    own: File,
    /// The process that started this node (its parent when it started): the launcher.
    launcher: libc::pid_t,
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
        // SAFETY: getppid(2) has no preconditions.
        let launcher = unsafe { libc::getppid() };
        Ok(Some(NodeCleanup {
            cluster_dir: cluster_dir.clone(),
            own,
            launcher,
        }))
    }

    /// Called when the node has stopped: if the launcher is gone and no other node of the
    /// cluster runs, removes the cluster directory. Returns whether it did. Best effort: a
    /// failure is logged, not returned (the node has stopped either way).
    pub fn finish(self) -> bool {
        if is_locked(&self.cluster_dir) {
            if !main_thread_gone(self.launcher) {
                return false; // The launcher is alive and cleans up.
            }
            // Dying: its last threads still hold the lock for a moment.
            let deadline = Instant::now() + DYING_LAUNCHER_WAIT;
            while is_locked(&self.cluster_dir) {
                if Instant::now() >= deadline {
                    tracing::warn!(dir = %self.cluster_dir.display(),
                        "the launcher's lock outlived its main thread; leaving the directory");
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
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

/// Whether process `pid`'s main thread has exited: no such process, or a zombie (a leader
/// that exited waits as one for its other threads).
fn main_thread_gone(pid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name, which is in parentheses and may hold any byte.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z" | "X") | None)
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

    /// A child that has exited and is not reaped yet: a zombie, as a launcher whose main
    /// thread exited before its other threads is.
    fn zombie() -> std::process::Child {
        let child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !main_thread_gone(pid) {
            assert!(Instant::now() < deadline, "`true` did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }

    #[test]
    fn a_zombie_or_a_missing_process_has_no_main_thread() {
        let own = libc::pid_t::try_from(std::process::id()).expect("a pid");
        assert!(!main_thread_gone(own), "this process runs");
        let mut child = zombie();
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        assert!(main_thread_gone(pid), "a zombie");
        child.wait().expect("reap");
        assert!(main_thread_gone(pid), "reaped: no such process");
    }

    #[test]
    fn a_node_waits_for_the_lock_of_a_dying_launcher_then_cleans_up() {
        let layout = layout(1);
        let launcher = LauncherLock::acquire(&layout.cluster).expect("launcher lock");
        let mut one = node(&layout, 1);
        // The launcher's main thread is gone; its lock goes a moment later, with its last
        // thread. Without the wait, the node would leave the directory behind.
        let mut dying = zombie();
        one.launcher = libc::pid_t::try_from(dying.id()).expect("a pid");
        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(launcher);
        });
        let started = Instant::now();
        assert!(one.finish(), "the last one out, once the lock went");
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(!layout.cluster.exists());
        released.join().expect("release thread");
        dying.wait().expect("reap");
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
