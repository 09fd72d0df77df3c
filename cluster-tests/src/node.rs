//! One `raftlite serve` process: spawn, SIGKILL, SIGTERM, restart, wipe.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::wait::{wait_until, Fatal};

/// How long a SIGTERM'd node may take to exit before it is called hung.
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// A node of a [`crate::Cluster`]: its fixed identity (id, address, data directory, arguments)
/// and, while it runs, the process the harness started.
#[derive(Debug)]
pub struct NodeProcess {
    id: u64,
    addr: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    binary: PathBuf,
    args: Vec<OsString>,
    /// Environment variables set for the process.
    env: Vec<(String, String)>,
    /// The process while it runs (or until it is reaped). Behind a mutex so that a scenario
    /// can break nodes through a shared `&Cluster` while its writers use it; never held across
    /// an await.
    child: Mutex<Option<Child>>,
    /// How many times this node was started, to mark restarts in its log.
    starts: AtomicU32,
}

impl NodeProcess {
    pub(crate) fn new(
        id: u64,
        addr: SocketAddr,
        data_dir: PathBuf,
        log_path: PathBuf,
        binary: PathBuf,
        args: Vec<OsString>,
    ) -> Self {
        NodeProcess {
            id,
            addr,
            data_dir,
            log_path,
            binary,
            args,
            env: Vec::new(),
            child: Mutex::new(None),
            starts: AtomicU32::new(0),
        }
    }

    /// The node with `env` set in its environment at every start.
    pub(crate) fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address the node listens on for clients and peers.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, as gRPC clients want it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("db.sqlite")
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The PID of the running process, if the harness started one that has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// Sends `sig` to the running process (SIGSTOP pauses it, SIGCONT resumes it).
    pub fn send_signal(&self, sig: libc::c_int) -> anyhow::Result<()> {
        match self.child().as_ref() {
            Some(child) => signal(child, sig),
            None => anyhow::bail!("node {} is not running", self.id),
        }
    }

    /// True while the process the harness started is alive.
    pub fn is_running(&self) -> bool {
        matches!(self.exit_status(), Ok(None))
    }

    /// `Ok(None)` while the process runs, `Ok(Some(status))` once it has exited on its own or
    /// was killed; an error when no process was started.
    pub fn exit_status(&self) -> anyhow::Result<Option<ExitStatus>> {
        let mut child = self.child();
        let child = child
            .as_mut()
            .with_context(|| format!("node {} is not started", self.id))?;
        child
            .try_wait()
            .with_context(|| format!("poll node {} (pid {})", self.id, child.id()))
    }

    /// True when the harness started the node and has not stopped or killed it since.
    pub fn is_started(&self) -> bool {
        self.child().is_some()
    }

    /// Fails when the node was started and has since exited although nobody stopped it, or
    /// logged a panic since its start (a panicked Raft core leaves the process up but dead
    /// inside): a crash, which a scenario must not mistake for slowness.
    pub fn ensure_alive(&self) -> anyhow::Result<()> {
        let log = self.log_since_start();
        if let Some(at) = log.find("panicked at") {
            let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let excerpt: String = log[line_start..]
                .lines()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            return Err(Fatal(format!("node {} panicked: {excerpt}", self.id)).into());
        }
        if let Some(status) = self.exit_status()? {
            return Err(Fatal(format!(
                "node {} exited unexpectedly ({status}); last log lines:\n{}",
                self.id,
                self.log_tail(30)
            ))
            .into());
        }
        Ok(())
    }

    /// Spawns `raftlite serve` with this node's arguments; stdout and stderr append to its log.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut slot = self.child();
        if let Some(child) = slot.as_ref() {
            bail!("node {} is already started (pid {})", self.id, child.id());
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("create {}", self.data_dir.display()))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let start = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        writeln!(
            log,
            "===== cluster-tests: start #{start} of node {}: {} {} =====",
            self.id,
            self.binary.display(),
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )?;
        let stdout = log.try_clone().context("duplicate the log file handle")?;
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        // The harness decides every setting through arguments; a RAFTLITE_* variable of the
        // developer's shell must not change a node behind the test's back.
        // Plain log files: no colour escapes.
        command.env("NO_COLOR", "1");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RAFTLITE_") {
                command.env_remove(key);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .with_context(|| format!("spawn {} for node {}", self.binary.display(), self.id))?;
        tracing::debug!(node = self.id, pid = child.id(), "started");
        *slot = Some(child);
        Ok(())
    }

    /// SIGKILL by the PID the harness started, then reap it: a crash, not a shutdown.
    pub fn kill(&self) -> anyhow::Result<()> {
        let Some(mut child) = self.child().take() else {
            bail!("node {} is not running", self.id);
        };
        if child.try_wait()?.is_none() {
            signal(&child, libc::SIGKILL)?;
        }
        let status = child
            .wait()
            .with_context(|| format!("reap node {}", self.id))?;
        self.note(&format!("killed with SIGKILL ({status})"));
        Ok(())
    }

    /// SIGTERM and wait for a clean exit. A node that does not exit within 15 s is SIGKILLed
    /// and reported as an error (a hung shutdown is a bug worth failing on), as is a non-zero
    /// exit status.
    pub async fn stop(&self) -> anyhow::Result<()> {
        {
            let mut slot = self.child();
            let Some(child) = slot.as_mut() else {
                bail!("node {} is not running", self.id);
            };
            if child.try_wait()?.is_none() {
                signal(child, libc::SIGTERM)?;
            }
        }
        let id = self.id;
        let exited = wait_until(
            &format!("node {id} to exit after SIGTERM"),
            STOP_WITHIN,
            || {
                let status = self.exit_status();
                async move { status }
            },
        )
        .await;
        match exited {
            Ok(status) => {
                self.child().take();
                self.note(&format!("stopped with SIGTERM ({status})"));
                if !status.success() {
                    bail!(
                        "node {id} exited with {status} after SIGTERM; last log lines:\n{}",
                        self.log_tail(30)
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.kill()?;
                Err(e.context(format!("node {id} hung on SIGTERM and was SIGKILLed")))
            }
        }
    }

    /// Starts the node again with the same arguments and data directory; stops it first
    /// (SIGTERM) if it runs.
    pub async fn restart(&self) -> anyhow::Result<()> {
        if self.is_started() {
            self.stop().await?;
        }
        self.start()
    }

    /// Deletes everything in the data directory (the node must be down): the node comes back
    /// as a blank machine with the same id and address.
    pub fn wipe(&self) -> anyhow::Result<()> {
        if self.is_started() {
            bail!(
                "node {} must be stopped or killed before its data is wiped",
                self.id
            );
        }
        for entry in std::fs::read_dir(&self.data_dir)
            .with_context(|| format!("list {}", self.data_dir.display()))?
        {
            let path = entry?.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.with_context(|| format!("remove {}", path.display()))?;
        }
        self.note("data directory wiped");
        Ok(())
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_path.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The node's log lines at level WARN or ERROR, across all its starts.
    pub fn warnings(&self) -> Vec<String> {
        self.log_lines(|line| line.contains(" WARN ") || line.contains(" ERROR "))
    }

    /// The node's log lines that contain `text`, across all its starts.
    pub fn log_lines_with(&self, text: &str) -> Vec<String> {
        self.log_lines(|line| line.contains(text))
    }

    fn log_lines(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        text.lines()
            .filter(|line| keep(line))
            .map(str::to_owned)
            .collect()
    }

    /// Panic messages in the node's log (a line with "panicked at" and the message after it),
    /// across all its starts: the first thing to look at when a scenario fails.
    pub fn panics(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .iter()
            .enumerate()
            .filter(|(_, line)| line.contains("panicked at"))
            .map(|(i, line)| format!("{line} {}", lines.get(i + 1).unwrap_or(&"")))
            .collect()
    }

    /// What the node logged since it was last started (the harness marks every start).
    pub fn log_since_start(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let start = text.rfind("===== cluster-tests: start #").unwrap_or(0);
        text[start..].to_string()
    }

    /// Appends a harness note to the node's log so that its timeline shows what the test did.
    fn note(&self, what: &str) {
        tracing::debug!(node = self.id, "{what}");
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(log, "===== cluster-tests: node {} {what} =====", self.id);
        }
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for NodeProcess {
    /// Every process the harness started dies with its handle, killed by PID.
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = signal(&child, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

/// Sends `sig` to the process the harness spawned (by its PID, which is not reused before we
/// reap it).
fn signal(child: &Child, sig: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill(2) takes plain integers; the pid is our own unreaped child.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("kill({pid}, {sig})"));
    }
    Ok(())
}
