//! A `raftlite dev` cluster of the built binary on free ports, and the process checks the
//! tests make on it.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const NODES: u16 = 3;
/// Election plus start-up of three debug-build nodes on a busy machine.
const BANNER_DEADLINE: Duration = Duration::from_secs(60);
/// How long the nodes may take to stop (their graceful shutdown) once the launcher is gone.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// A running `raftlite dev`: kills whatever is left of it when dropped (a failed test must
/// not leave nodes holding ports).
pub struct Dev {
    pub launcher: Child,
    /// The node processes (the launcher's children once its banner is out).
    pub nodes: Vec<i32>,
    /// The directory of data and logs the banner names.
    pub dir: PathBuf,
    /// Client ports, then peer ports.
    pub ports: Vec<u16>,
    /// The banner, line by line.
    pub banner: Vec<String>,
}

impl Dev {
    /// The banner line that starts with `prefix`, without the prefix.
    pub fn banner_value(&self, prefix: &str) -> &str {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {:#?}", self.banner))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
        for &pid in &self.nodes {
            if is_running(pid) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if self.dir.starts_with(std::env::temp_dir()) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// 2 * NODES consecutive ports, all free right now (client ports, then peer ports).
fn free_port_range() -> u16 {
    // The tests of this binary run in parallel: each call starts from its own range (a port
    // found free here is released before `dev` binds it).
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let count = 2 * NODES;
    let salt = std::process::id() % 997;
    for _ in 0..200 {
        let slot = NEXT.fetch_add(1, Ordering::Relaxed);
        // Below Linux's ephemeral range (32768-60999), where outgoing connections could take
        // a port between this check and the launcher's bind.
        let base = u16::try_from(20_000 + (salt * 31 + slot * 10) % 12_000).expect("in range");
        let held: Result<Vec<TcpListener>, _> = (base..base + count)
            .map(|p| TcpListener::bind(("127.0.0.1", p)))
            .collect();
        if held.is_ok() {
            return base;
        }
    }
    panic!("no {count} consecutive free ports");
}

/// Starts `raftlite dev --nodes 3` with `extra` arguments on free ports and waits for its
/// banner.
pub fn start_dev(extra: &[&str]) -> Dev {
    let base = free_port_range();
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_raftlite"))
        .args(["dev", "--nodes", &NODES.to_string()])
        .args(["--base-port", &base.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start raftlite dev");
    let stdout = launcher.stdout.take().expect("piped stdout");
    // The banner is read on a thread so that a launcher that never prints it times out.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        while let Some(Ok(line)) = lines.next() {
            let done = line.starts_with("Ctrl-C");
            banner.push(line);
            if done {
                break;
            }
        }
        let _ = tx.send(banner);
        // Keep draining so the launcher never blocks on a full pipe.
        for _ in lines {}
    });
    let mut dev = Dev {
        launcher,
        nodes: Vec::new(),
        dir: PathBuf::new(),
        ports: (base..base + 2 * NODES).collect(),
        banner: Vec::new(),
    };
    let banner = rx
        .recv_timeout(BANNER_DEADLINE)
        .unwrap_or_else(|_| panic!("no banner within {BANNER_DEADLINE:?}"));
    assert!(
        banner.last().is_some_and(|l| l.starts_with("Ctrl-C")),
        "launcher exited before its banner: {banner:?}"
    );
    let first = banner.first().expect("a banner line");
    let dir = first
        .split_once(" data and logs in ")
        .map(|(_, dir)| PathBuf::from(dir))
        .unwrap_or_else(|| panic!("no directory in {first:?}"));
    assert!(dir.is_dir(), "{}", dir.display());
    dev.dir = dir;
    dev.banner = banner;
    let launcher_pid = i32::try_from(dev.launcher.id()).expect("a pid");
    dev.nodes = children_of(launcher_pid);
    assert_eq!(
        dev.nodes.len(),
        usize::from(NODES),
        "the launcher's children: {:?}",
        dev.nodes
    );
    for &port in &dev.ports {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_err(),
            "port {port} should be in use by a node"
        );
    }
    dev
}

/// PIDs whose parent is `parent`, from /proc/*/stat.
fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if stat(pid).is_some_and(|(_, ppid)| ppid == parent) {
            children.push(pid);
        }
    }
    children.sort_unstable();
    children
}

/// (state, parent pid) of `pid`, if it exists. The fields after the command name, which is
/// in parentheses and may hold anything, are "state ppid ...".
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// A process that exists and is not a zombie (an orphan may wait to be reaped by an init
/// that never does; it has released its ports and files already).
pub fn is_running(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

pub fn signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("a pid");
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our child, not reaped.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// Polls `check` until it holds or `deadline` passes; returns whether it held.
pub fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn assert_all_gone(dev: &Dev, expect_dir_removed: bool) {
    let running = |dev: &Dev| -> Vec<i32> {
        dev.nodes
            .iter()
            .copied()
            .filter(|&p| is_running(p))
            .collect()
    };
    assert!(
        eventually(STOP_DEADLINE, || running(dev).is_empty()),
        "nodes still running {STOP_DEADLINE:?} after the signal: {:?}",
        running(dev)
    );
    let busy = |dev: &Dev| -> Vec<u16> {
        dev.ports
            .iter()
            .copied()
            .filter(|&p| TcpListener::bind(("127.0.0.1", p)).is_err())
            .collect()
    };
    assert!(
        eventually(STOP_DEADLINE, || busy(dev).is_empty()),
        "ports still in use: {:?}",
        busy(dev)
    );
    if expect_dir_removed {
        assert!(
            eventually(STOP_DEADLINE, || !dev.dir.exists()),
            "temporary data left in {}: {:?}",
            dev.dir.display(),
            list(&dev.dir)
        );
    }
}

fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the `raftlite` CLI with `args`; returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftlite"))
        .args(args)
        .env_remove("RAFTLITE_ADDR")
        .env_remove("RAFTLITE_TOKEN")
        .env_remove("RAFTLITE_TOKEN_FILE")
        .env_remove("RAFTLITE_TLS_CA")
        .output()
        .expect("run raftlite");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
