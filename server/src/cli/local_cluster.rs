//! A cluster of `raftlite serve` child processes on loopback, for `raftlite dev` and
//! `raftlite bench`.
//!
//! Children run the current executable, each in its own process group (a Ctrl-C in the
//! terminal reaches only the parent, which then stops them in order), with their output in
//! `<dir>/node-<id>.log`. They are stopped by the PIDs started here: SIGTERM, then SIGKILL
//! after a grace period; dropping a [`LocalCluster`] kills them outright. A launcher that
//! dies without stopping them (SIGKILL) takes them along: each node gets SIGTERM from the
//! kernel when its parent dies (`PR_SET_PDEATHSIG`), and the last node out removes temporary
//! data (see [`super::local_cleanup`]). [`StopSignals`] are the signals on which a launcher
//! stops its cluster.
//!
//! By default the nodes run as `raftlite dev` wants them: plaintext on loopback, no tokens,
//! and the archive the nodes' own settings give (`file://<data-dir>/archive` unless
//! `RAFTLITE_ARCHIVE` says otherwise). [`LocalClusterOptions::secure`] gives them the
//! production configuration instead (see [`LocalCredentials`]), and
//! [`LocalClusterOptions::archive`] pins the archive setting.
//!
//! The nodes share this machine's cores: each gets its share as its `--worker-threads` (the
//! cores divided by the node count, at least 1) unless `RAFTLITE_WORKER_THREADS` says
//! otherwise. With one runtime thread per core in every node, three nodes on two cores ran six
//! runtime threads besides their SQLite and log threads, and each write crossed between them
//! (BENCHMARKS.md, session 23).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use raftlite_client::{Client, ClientOptions, ClusterUrl};
use tokio::process::{Child, Command};

use super::local_cleanup::LauncherLock;
use super::local_credentials::LocalCredentials;

/// How long a stopped node may take to shut down before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a node's log shown when it fails.
const LOG_TAIL_LINES: usize = 30;

#[derive(Debug, Clone, Default)]
pub struct LocalClusterOptions {
    pub nodes: u64,
    /// Node `i` serves clients on `base_port + i - 1`, peers on `base_port + nodes + i - 1`
    /// and metrics on `base_port + 2 * nodes + i - 1` (see [`node_ports`]); `None` picks free
    /// ports.
    pub base_port: Option<u16>,
    /// Where data and logs go; `None`: a temporary directory removed on stop.
    pub data_dir: Option<PathBuf>,
    /// Mutual TLS between nodes, TLS and a token for clients, with credentials made for this
    /// cluster in `<dir>/tls`.
    pub secure: bool,
    /// `None`: the nodes' own archive setting (flags, environment, default).
    pub archive: Option<LocalArchive>,
}

/// The archive setting given to every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalArchive {
    /// `file://<node data dir>/archive`, the default of `raftlite serve`, given explicitly.
    DataDir,
    /// `--archive none`.
    Off,
}

/// One child node.
#[derive(Debug)]
pub struct LocalNode {
    pub id: u64,
    /// How clients reach it: `HOST:PORT`, or `https://HOST:PORT` on a secure cluster.
    pub addr: String,
    /// Where it serves `/metrics`: `HOST:PORT`.
    pub metrics_addr: String,
    pub log: PathBuf,
    child: Child,
    /// Asks only this node, once: for polling without the client's retries.
    probe: Client,
}

#[derive(Debug)]
pub struct LocalCluster {
    nodes: Vec<LocalNode>,
    dir: PathBuf,
    credentials: Option<LocalCredentials>,
    /// Removes the data when dropped, if it is temporary.
    temp: Option<tempfile::TempDir>,
    /// Held while this process runs, on temporary data: tells the nodes that their launcher
    /// is alive and will remove the data itself.
    _launcher_lock: Option<LauncherLock>,
}

impl LocalCluster {
    /// Starts the nodes (without waiting for them; see [`LocalCluster::wait_for_leader`]).
    /// Call it from the thread that lives as long as the cluster (the one `block_on` runs
    /// the launcher on): the nodes get SIGTERM when the thread that spawned them ends.
    pub fn start(options: &LocalClusterOptions) -> anyhow::Result<LocalCluster> {
        if options.nodes == 0 {
            bail!("a cluster needs at least one node");
        }
        let (dir, temp, launcher_lock) = match &options.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create data directory {}", dir.display()))?;
                (dir.clone(), None, None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("raftlite-dev-")
                    .tempdir()
                    .context("create temporary directory")?;
                let lock = LauncherLock::acquire(temp.path())?;
                (temp.path().to_path_buf(), Some(temp), Some(lock))
            }
        };
        let ports = node_ports(options.base_port, options.nodes)?;
        let addrs: BTreeMap<u64, [String; 3]> = (1..=options.nodes)
            .zip(ports)
            .map(|(id, ports)| (id, ports.map(|port| format!("127.0.0.1:{port}"))))
            .collect();
        let peers: BTreeMap<u64, String> = addrs
            .iter()
            .map(|(&id, [_, peer, _])| (id, peer.clone()))
            .collect();
        let exe = std::env::current_exe().context("find the raftlite executable")?;
        let worker_threads = match std::env::var_os("RAFTLITE_WORKER_THREADS") {
            Some(_) => None,
            None => Some(share_of_cores(
                crate::config::defaults::default_worker_threads(),
                options.nodes,
            )),
        };
        let credentials = if options.secure {
            Some(LocalCredentials::generate(
                &dir.join("tls"),
                addrs.keys().copied(),
            )?)
        } else {
            None
        };
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            dir,
            credentials,
            temp,
            _launcher_lock: launcher_lock,
        };
        for (&id, [addr, peer_addr, metrics_addr]) in &addrs {
            let node = spawn_node(
                &exe,
                &cluster.dir,
                NodeSpec {
                    id,
                    addr,
                    peer_addr,
                    metrics_addr,
                    peers: &peers,
                    credentials: cluster.credentials.as_ref(),
                    archive: options.archive,
                    worker_threads,
                    temporary: cluster.temp.is_some(),
                },
            )?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    pub fn nodes(&self) -> &[LocalNode] {
        &self.nodes
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the nodes run with TLS and tokens.
    pub fn is_secure(&self) -> bool {
        self.credentials.is_some()
    }

    /// `base` plus what this cluster's clients need: the CA and a `write` token when secure.
    pub fn client_options(&self, base: ClientOptions) -> ClientOptions {
        match &self.credentials {
            Some(c) => c.client_options(base),
            None => base,
        }
    }

    /// The URL clients use: `raftlite://HOST:PORT,...`, with the token and the CA's absolute
    /// path when secure.
    pub fn url(&self) -> ClusterUrl {
        let url = self.plain_url();
        match &self.credentials {
            Some(c) => c.url(url),
            None => url,
        }
    }

    /// The URL of the `admin` token (membership changes, snapshots), when secure.
    pub fn admin_url(&self) -> Option<ClusterUrl> {
        let url = self.plain_url();
        self.credentials.as_ref().map(|c| c.admin_url(url))
    }

    /// The nodes' addresses, without credentials.
    fn plain_url(&self) -> ClusterUrl {
        ClusterUrl::new(
            self.nodes
                .iter()
                .map(|n| n.addr.trim_start_matches("https://").to_owned()),
        )
    }

    /// The CA that signed the nodes' certificates, when secure.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.credentials.as_ref().map(LocalCredentials::ca_pem)
    }

    pub fn is_temporary(&self) -> bool {
        self.temp.is_some()
    }

    /// Nodes that have exited, with their exit status.
    pub fn exited(&mut self) -> anyhow::Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            if let Some(status) = node
                .child
                .try_wait()
                .with_context(|| format!("check node {}", node.id))?
            {
                out.push((node.id, status.to_string()));
            }
        }
        Ok(out)
    }

    /// Fails, with the end of its log, if a node has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if let Some(status) = node
                .child
                .try_wait()
                .with_context(|| format!("check node {}", node.id))?
            {
                bail!(
                    "node {} exited early ({status}); end of {}:\n{}",
                    node.id,
                    node.log.display(),
                    log_tail(&node.log)
                );
            }
        }
        Ok(())
    }

    /// Polls the nodes until a majority names the same leader, and returns its id.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
            for node in &self.nodes {
                if let Ok(status) = node.probe.status().await {
                    if status.leader != 0 {
                        *votes.entry(status.leader).or_default() += 1;
                    }
                }
            }
            let majority = self.nodes.len() / 2 + 1;
            if let Some((&leader, _)) = votes.iter().find(|(_, &n)| n >= majority) {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                let tails: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- end of {}:\n{}", n.log.display(), log_tail(&n.log)))
                    .collect();
                bail!("no leader elected within {timeout:?}\n{}", tails.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs node `id` (the benchmark's failover phase). `stop` copes with the dead child.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))?;
        node.child
            .start_kill()
            .with_context(|| format!("kill node {id}"))
    }

    /// Stops every node (SIGTERM, SIGKILL after a grace period) and removes temporary data.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for node in &self.nodes {
            if let Some(pid) = node.child.id() {
                terminate(pid);
            }
        }
        for node in &mut self.nodes {
            match tokio::time::timeout(STOP_GRACE, node.child.wait()).await {
                Ok(result) => {
                    result.with_context(|| format!("wait for node {}", node.id))?;
                }
                Err(_) => {
                    tracing::warn!(
                        node = node.id,
                        "node did not stop within {STOP_GRACE:?}; killing it"
                    );
                    node.child
                        .kill()
                        .await
                        .with_context(|| format!("kill node {}", node.id))?;
                }
            }
        }
        Ok(())
    }
}

/// The signals on which a launcher stops its cluster: SIGINT (Ctrl-C), SIGTERM (`kill`,
/// `timeout`, a container stop) and SIGHUP (its terminal closed). Their default action would
/// end the launcher at once and leave the nodes to the kernel's `PR_SET_PDEATHSIG`.
#[derive(Debug)]
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Catches the three signals from now on (install before starting the cluster: a signal
    /// that arrives meanwhile is kept until [`StopSignals::recv`]).
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let catch =
            |kind: SignalKind, name: &str| signal(kind).with_context(|| format!("catch {name}"));
        Ok(StopSignals {
            interrupt: catch(SignalKind::interrupt(), "SIGINT")?,
            terminate: catch(SignalKind::terminate(), "SIGTERM")?,
            hangup: catch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits for one of them; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// What one node is started with.
struct NodeSpec<'a> {
    id: u64,
    addr: &'a str,
    peer_addr: &'a str,
    metrics_addr: &'a str,
    peers: &'a BTreeMap<u64, String>,
    credentials: Option<&'a LocalCredentials>,
    archive: Option<LocalArchive>,
    /// `--worker-threads`, if given.
    worker_threads: Option<usize>,
    /// The data is the launcher's temporary directory: the node removes it if it outlives
    /// the launcher.
    temporary: bool,
}

/// Runtime threads for each of `nodes` nodes sharing `cores`: an equal share, at least 1.
fn share_of_cores(cores: usize, nodes: u64) -> usize {
    let nodes = usize::try_from(nodes).unwrap_or(usize::MAX).max(1);
    (cores / nodes).max(1)
}

/// Spawns a node. It gets SIGTERM when the thread that spawned it ends
/// (`PR_SET_PDEATHSIG` follows the parent *thread*): spawn from the thread that runs the
/// launcher's main future (what `block_on` runs), never from a pool thread that may retire.
fn spawn_node(exe: &Path, dir: &Path, spec: NodeSpec<'_>) -> anyhow::Result<LocalNode> {
    let NodeSpec {
        id,
        addr,
        peer_addr,
        metrics_addr,
        peers,
        credentials,
        archive,
        worker_threads,
        temporary,
    } = spec;
    let data_dir = dir.join(format!("node-{id}"));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let log = dir.join(format!("node-{id}.log"));
    let stdout = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("open {}", log.display()))?;
    let stderr = stdout
        .try_clone()
        .with_context(|| format!("open {}", log.display()))?;
    let peers_arg = peers
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--data-dir")
        .arg(&data_dir)
        // Loopback only: TLS and tokens are not required, only given when secure.
        .arg("--listen")
        .arg(addr)
        .arg("--peer-listen")
        .arg(peer_addr)
        .arg("--peers")
        .arg(&peers_arg)
        // Several nodes on one host: each serves /metrics on a loopback port of its own.
        .arg("--metrics-addr")
        .arg(metrics_addr);
    if let Some(credentials) = credentials {
        command.args(credentials.serve_args(id));
    }
    match archive {
        None => {}
        Some(LocalArchive::DataDir) => {
            command.arg("--archive").arg(archive_url(&data_dir)?);
        }
        Some(LocalArchive::Off) => {
            command.arg("--archive").arg("none");
        }
    }
    if let Some(threads) = worker_threads {
        command.arg("--worker-threads").arg(threads.to_string());
    }
    if temporary {
        command.arg("--local-cluster-dir").arg(dir);
    }
    die_with_launcher(&mut command)?;
    let child = command
        // Log files, not a terminal: no colour codes.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start node {id} ({})", exe.display()))?;
    let mut probe_options = ClientOptions {
        request_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        retry_deadline: Duration::ZERO,
        ..ClientOptions::default()
    };
    let addr = match credentials {
        Some(c) => {
            probe_options = c.client_options(probe_options);
            format!("https://{addr}")
        }
        None => addr.to_owned(),
    };
    let probe = Client::with_options([addr.as_str()], probe_options)?;
    Ok(LocalNode {
        id,
        addr,
        metrics_addr: metrics_addr.to_owned(),
        log,
        child,
        probe,
    })
}

/// Makes the child get SIGTERM when this process dies, however it dies (`PR_SET_PDEATHSIG`),
/// so that a launcher killed with SIGKILL leaves no node running.
fn die_with_launcher(command: &mut Command) -> anyhow::Result<()> {
    let launcher = libc::pid_t::try_from(std::process::id()).context("this process's id")?;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: prctl(2) and getppid(2) are, and it neither
    // allocates nor takes locks (`from_raw_os_error` and `last_os_error` do not allocate).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher died between fork and prctl: nothing will signal this child, so
            // it must not start.
            if libc::getppid() != launcher {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    Ok(())
}

/// `file://<dir>/archive` with `dir` made absolute (the URL needs an absolute path).
fn archive_url(data_dir: &Path) -> anyhow::Result<String> {
    let dir =
        std::path::absolute(data_dir).with_context(|| format!("resolve {}", data_dir.display()))?;
    Ok(format!("file://{}", dir.join("archive").display()))
}

/// Sends SIGTERM to a process this module started.
fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child we spawned and
    // have not reaped yet, so it cannot name another process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// The (client, peer) port of each node. With a base port, the nodes serve clients on the
/// first `nodes` ports from `base` and peers on the next `nodes` (3 nodes from 7401: clients
/// 7401-7403, peers 7404-7406); without one, free ports. Each node is given its peer port:
/// the default, client port + 1, would be the next node's client port.
/// Each node's client, peer and metrics ports: from `base` on, the nodes' client ports, then
/// their peer ports, then their metrics ports; free ones without a `base`.
fn node_ports(base: Option<u16>, nodes: u64) -> anyhow::Result<Vec<[u16; 3]>> {
    let ports = match base {
        Some(base) => consecutive_ports(base, 3 * nodes)?,
        None => free_loopback_ports(3 * nodes)?,
    };
    let n = ports.len() / 3;
    Ok((0..n)
        .map(|i| [ports[i], ports[n + i], ports[2 * n + i]])
        .collect())
}

fn consecutive_ports(base: u16, nodes: u64) -> anyhow::Result<Vec<u16>> {
    (0..nodes)
        .map(|i| {
            u16::try_from(u64::from(base) + i)
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| format!("port {base} + {i} is out of range"))
        })
        .collect()
}

/// `n` distinct loopback ports, free right now, chosen outside the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port found free is released before the node binds it,
/// and an outgoing connection (of this cluster or of anything else on the host) could take an
/// ephemeral one in between. Starts at a different place in each process and call, so
/// launchers running side by side rarely probe the same ports.
pub fn free_loopback_ports(n: u64) -> anyhow::Result<Vec<u16>> {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let (low, high) = ephemeral_range();
    let range = outside_ephemeral(low, high);
    let span = u32::from(range.end - range.start);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut next =
        (std::process::id().wrapping_mul(7919) ^ nanos ^ call.wrapping_mul(104_729)) % span;
    let mut held = Vec::new();
    for _ in 0..span {
        if held.len() as u64 == n {
            break;
        }
        let port = range.start + u16::try_from(next).unwrap_or(0);
        next = (next + 1) % span;
        // All listeners are held until every port is chosen, so the ports differ.
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    if held.len() as u64 != n {
        anyhow::bail!(
            "found only {} of {n} free loopback ports in {range:?}",
            held.len()
        );
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// The kernel's ephemeral port range, or Linux's default when it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(str::parse::<u16>);
            Some((parts.next()?.ok()?, parts.next()?.ok()?))
        })
        .filter(|(low, high)| low <= high)
        .unwrap_or((32_768, 60_999))
}

/// The larger stretch of unprivileged ports (from 10000, clear of common well-known
/// services) below or above the ephemeral range `low..=high`.
fn outside_ephemeral(low: u16, high: u16) -> std::ops::Range<u16> {
    const FIRST: u16 = 10_000;
    let below = FIRST..low.max(FIRST);
    let above = high.saturating_add(1).max(FIRST)..u16::MAX;
    let len = |r: &std::ops::Range<u16>| r.end.saturating_sub(r.start);
    if len(&below) >= len(&above) && len(&below) >= 1_000 {
        below
    } else if len(&above) >= 1_000 {
        above
    } else {
        // The ephemeral range covers nearly everything: probe it all.
        FIRST..u16::MAX
    }
}

/// The last lines of a log file, or why it cannot be read.
pub fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_consecutive_from_the_base() {
        assert_eq!(
            consecutive_ports(7401, 3).expect("in range"),
            [7401, 7402, 7403]
        );
        assert!(consecutive_ports(65535, 2).is_err());
    }

    #[test]
    fn peer_and_metrics_ports_follow_the_client_ports() {
        assert_eq!(
            node_ports(Some(7401), 3).expect("in range"),
            [[7401, 7404, 7407], [7402, 7405, 7408], [7403, 7406, 7409]]
        );
        assert!(node_ports(Some(65531), 2).is_err());
        let free = node_ports(None, 3).expect("ports");
        let unique: std::collections::BTreeSet<_> = free.iter().flatten().collect();
        assert_eq!(unique.len(), 9);
    }

    #[test]
    fn the_archive_url_is_absolute_and_under_the_data_dir() {
        assert_eq!(
            archive_url(Path::new("/d/node-1")).expect("absolute"),
            "file:///d/node-1/archive"
        );
        let relative = archive_url(Path::new("node-2")).expect("resolved");
        assert!(relative.starts_with("file:///"), "{relative}");
        assert!(relative.ends_with("/node-2/archive"), "{relative}");
        crate::archive::ArchiveUrl::parse(&relative).expect("a URL the node accepts");
    }

    #[test]
    fn free_ports_are_distinct_and_not_ephemeral() {
        let ports = free_loopback_ports(4).expect("ports");
        let unique: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), 4);
        let (low, high) = ephemeral_range();
        assert!(
            ports.iter().all(|p| !(low..=high).contains(p)),
            "{ports:?} in {low}-{high}"
        );
    }

    #[test]
    fn the_range_outside_the_ephemeral_one() {
        assert_eq!(outside_ephemeral(32_768, 60_999), 10_000..32_768);
        assert_eq!(outside_ephemeral(1_024, 20_000), 20_001..u16::MAX);
        assert_eq!(outside_ephemeral(1_024, 65_000), 10_000..u16::MAX);
    }

    #[test]
    fn each_node_gets_its_share_of_the_cores() {
        assert_eq!(share_of_cores(2, 3), 1);
        assert_eq!(share_of_cores(8, 3), 2);
        assert_eq!(share_of_cores(16, 1), 16);
        assert_eq!(share_of_cores(1, 5), 1);
        assert_eq!(share_of_cores(4, 0), 4);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node-1.log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        let tail = log_tail(&path);
        assert!(
            tail.starts_with("line 71\n") && tail.ends_with("line 100"),
            "{tail}"
        );
        assert!(log_tail(&dir.path().join("missing.log")).starts_with("(cannot read"));
    }
}
