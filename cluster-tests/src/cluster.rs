//! A cluster of real `raftlite serve` processes on loopback.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use raftlite_client::proto::v1::StatusResponse;
use raftlite_client::{Client, ClientOptions};

use crate::convergence::{agreed_leader, converged_index};
use crate::node::NodeProcess;
use crate::pages::{PageDigests, PageImage};
use crate::wait::wait_until;

/// How a cluster's nodes are configured. The defaults are the timings the scenarios are
/// written for: 100 ms heartbeats and 300–600 ms election timeouts, so a failover takes about
/// a second on a busy 2-core machine.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// `--snapshot-every`: build a snapshot (and purge the log) every N applied entries.
    pub snapshot_every: Option<u64>,
    /// `--max-request-bytes`; the server's default (16 MiB) when unset.
    pub max_request_bytes: Option<usize>,
    /// Further `raftlite serve` arguments, appended as given.
    pub extra_args: Vec<String>,
    /// TLS on both ports and tokens (see [`crate::Credentials`]); the harness's own clients
    /// then use the CA and the admin token.
    pub secure: bool,
    /// Environment variables of every node (settings only the environment carries, such as
    /// `RAFTLITE_ARCHIVE_KEY`).
    pub env: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_every: None,
            max_request_bytes: None,
            extra_args: Vec::new(),
            secure: false,
            env: Vec::new(),
        }
    }
}

/// Running nodes, their temporary directory and a probe client per node.
///
/// Dropping it SIGKILLs every process it started. If the thread is panicking (a failed
/// assertion), it first prints the tail of every node's log and keeps the directory.
pub struct Cluster {
    /// `None` once kept for a post-mortem.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    binary: PathBuf,
    options: ClusterOptions,
    /// The initial members' client addresses.
    initial: BTreeMap<u64, SocketAddr>,
    /// Every started node's peer address (`--peer-listen`); `--peers` lists the initial ones.
    peer_addrs: BTreeMap<u64, SocketAddr>,
    nodes: BTreeMap<u64, NodeProcess>,
    /// One client per node that tries once, for status polling.
    probes: BTreeMap<u64, Client>,
    /// With `ClusterOptions::secure`: the CA, certificates and tokens.
    credentials: Option<crate::Credentials>,
}

impl Cluster {
    /// One node with default options that has elected itself: for checks of what a single
    /// node does with a request.
    pub async fn single_node() -> Cluster {
        let cluster = Cluster::start(1, ClusterOptions::default()).expect("start a node");
        cluster
            .wait_for_leader(Duration::from_secs(20))
            .await
            .expect("a leader");
        cluster
    }

    /// Starts `n` nodes (ids 1..=n) that form a fresh cluster on loopback. Returns once the
    /// processes are spawned; use [`Cluster::wait_for_leader`] to wait for an election.
    pub fn start(n: u64, options: ClusterOptions) -> anyhow::Result<Cluster> {
        ensure!(n >= 1, "a cluster needs at least one node");
        let binary = crate::raftlite_binary();
        let dir = tempfile::Builder::new()
            .prefix("raftlite-cluster-")
            .tempdir()
            .context("create the cluster's temporary directory")?;
        let root = dir.path().to_path_buf();
        let addrs = free_loopback_addrs(2 * n as usize)?;
        let (client_addrs, peer_addrs) = addrs.split_at(n as usize);
        let initial: BTreeMap<u64, SocketAddr> = (1..=n).zip(client_addrs.to_vec()).collect();
        let peer_addrs: BTreeMap<u64, SocketAddr> = (1..=n).zip(peer_addrs.to_vec()).collect();
        let credentials = if options.secure {
            Some(crate::Credentials::generate(&root.join("tls"), 1..=n)?)
        } else {
            None
        };
        let mut cluster = Cluster {
            dir: Some(dir),
            root,
            binary,
            options,
            initial: initial.clone(),
            peer_addrs: peer_addrs.clone(),
            nodes: BTreeMap::new(),
            probes: BTreeMap::new(),
            credentials,
        };
        for (id, addr) in initial {
            cluster.spawn_node(id, addr, &peer_addrs)?;
        }
        tracing::info!(
            nodes = n,
            dir = %cluster.root.display(),
            binary = %cluster.binary.display(),
            "cluster started"
        );
        Ok(cluster)
    }

    /// Starts one more node (the next id) that is not part of the initial membership: its
    /// `--peers` are the initial members plus itself, so it waits to be added (as a learner
    /// or voter) instead of bootstrapping. Returns its id.
    pub fn start_extra_node(&mut self) -> anyhow::Result<u64> {
        let id = self.nodes.keys().next_back().copied().unwrap_or(0) + 1;
        let addrs = free_loopback_addrs(2)?;
        let (addr, peer_addr) = (addrs[0], addrs[1]);
        let mut peers: BTreeMap<u64, SocketAddr> = self
            .peer_addrs
            .iter()
            .filter(|(id, _)| self.initial.contains_key(id))
            .map(|(id, a)| (*id, *a))
            .collect();
        peers.insert(id, peer_addr);
        self.peer_addrs.insert(id, peer_addr);
        if let Some(c) = &self.credentials {
            c.issue_node(id)?;
        }
        self.spawn_node(id, addr, &peers)?;
        tracing::debug!(node = id, %addr, "extra node started");
        Ok(id)
    }

    fn spawn_node(
        &mut self,
        id: u64,
        addr: SocketAddr,
        peers: &BTreeMap<u64, SocketAddr>,
    ) -> anyhow::Result<()> {
        let data_dir = self.root.join(format!("node-{id}"));
        let log_path = self.root.join(format!("node-{id}.log"));
        let node = NodeProcess::new(
            id,
            addr,
            data_dir.clone(),
            log_path,
            self.binary.clone(),
            self.serve_args(id, addr, &data_dir, peers),
        )
        .with_env(self.options.env.clone());
        node.start()?;
        let probe = self.probe_client(&node)?;
        self.probes.insert(id, probe);
        self.nodes.insert(id, node);
        Ok(())
    }

    fn serve_args(
        &self,
        id: u64,
        addr: SocketAddr,
        data_dir: &Path,
        peers: &BTreeMap<u64, SocketAddr>,
    ) -> Vec<OsString> {
        let o = &self.options;
        let peer_listen = peers[&id];
        let peers = peers
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut args: Vec<OsString> = vec![
            "serve".into(),
            "--node-id".into(),
            id.to_string().into(),
            "--data-dir".into(),
            data_dir.into(),
            "--listen".into(),
            addr.to_string().into(),
            "--peer-listen".into(),
            peer_listen.to_string().into(),
            "--peers".into(),
            peers.into(),
            "--heartbeat-ms".into(),
            o.heartbeat_ms.to_string().into(),
            "--election-timeout-min-ms".into(),
            o.election_timeout_min_ms.to_string().into(),
            "--election-timeout-max-ms".into(),
            o.election_timeout_max_ms.to_string().into(),
        ];
        if let Some(n) = o.snapshot_every {
            args.extend(["--snapshot-every".into(), n.to_string().into()]);
        }
        if let Some(n) = o.max_request_bytes {
            args.extend(["--max-request-bytes".into(), n.to_string().into()]);
        }
        // The write pipeline is off by default (it pays only where nodes have cores of their
        // own); the scenarios run it, so that every failure they inject meets it. The default
        // (the leader commits its batches in place) is what t20's depth-1 scenarios and the
        // compose and chaos scenarios (t70, t80) run.
        if !o.extra_args.iter().any(|a| a == "--write-pipeline-depth") {
            args.extend(["--write-pipeline-depth".into(), "3".into()]);
        }
        // Nodes share the host: no /metrics on the default port unless a scenario asks.
        if !o.extra_args.iter().any(|a| a == "--metrics-addr") {
            args.extend(["--metrics-addr".into(), "off".into()]);
        }
        if let Some(c) = &self.credentials {
            args.extend(c.serve_args(id));
        }
        args.extend(o.extra_args.iter().map(OsString::from));
        args
    }

    /// A client for `node` alone that tries once with a 2 s timeout (status polling).
    fn probe_client(&self, node: &NodeProcess) -> anyhow::Result<Client> {
        Ok(Client::with_options(
            [self.endpoint_of(node)],
            ClientOptions {
                request_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_millis(500),
                retry_deadline: Duration::ZERO,
                ..self.credential_options(Some("admin"))
            },
        )?)
    }

    /// How clients reach `node`: `https://` on a secure cluster.
    fn endpoint_of(&self, node: &NodeProcess) -> String {
        match self.credentials {
            Some(_) => format!("https://{}", node.addr()),
            None => node.endpoint(),
        }
    }

    /// Client options with the CA and the token of `role` on a secure cluster; the defaults
    /// otherwise.
    fn credential_options(&self, role: Option<&str>) -> ClientOptions {
        match &self.credentials {
            Some(c) => c.client_options(role),
            None => ClientOptions::default(),
        }
    }

    /// The CA, certificates and tokens of a secure cluster.
    pub fn credentials(&self) -> Option<&crate::Credentials> {
        self.credentials.as_ref()
    }

    /// A client for every node with the token of `role` (`None`: no token); on a secure
    /// cluster only.
    pub fn client_as(&self, role: Option<&str>) -> Client {
        self.client_with_role(self.ids(), Duration::from_secs(5), role)
    }

    /// The peer address (`--peer-listen`) of node `id`.
    pub fn peer_addr(&self, id: u64) -> SocketAddr {
        self.peer_addrs[&id]
    }

    /// The temporary directory holding every node's data directory and log.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// All node ids, started or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// All node ids but `id` (the followers of leader `id`), in id order.
    pub fn ids_except(&self, id: u64) -> Vec<u64> {
        self.nodes.keys().copied().filter(|n| *n != id).collect()
    }

    /// Ids of the nodes the harness started and has not stopped or killed since (whether or
    /// not they are still alive: see [`NodeProcess::ensure_alive`]).
    pub fn started_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.is_started())
            .map(NodeProcess::id)
            .collect()
    }

    /// The node with id `id`. Panics on an unknown id (a bug in the scenario).
    pub fn node(&self, id: u64) -> &NodeProcess {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// A client that knows every node (the way an application is configured), with a retry
    /// deadline long enough to ride out a failover.
    pub fn client(&self) -> Client {
        self.client_with(self.ids(), Duration::from_secs(20))
    }

    /// A client that talks to node `id` only (so a check runs on that very node), retrying
    /// retryable errors for at most 5 s.
    pub fn client_for(&self, id: u64) -> Client {
        self.client_with([id], Duration::from_secs(5))
    }

    /// A client for the nodes `ids` that retries for at most `retry_deadline`.
    pub fn client_with(
        &self,
        ids: impl IntoIterator<Item = u64>,
        retry_deadline: Duration,
    ) -> Client {
        self.client_with_role(ids, retry_deadline, Some("admin"))
    }

    /// A client for the nodes `ids` with the token of `role` (on a secure cluster) that
    /// retries for at most `retry_deadline`.
    pub fn client_with_role(
        &self,
        ids: impl IntoIterator<Item = u64>,
        retry_deadline: Duration,
        role: Option<&str>,
    ) -> Client {
        let endpoints: Vec<String> = ids
            .into_iter()
            .map(|id| self.endpoint_of(self.node(id)))
            .collect();
        Client::with_options(
            endpoints,
            ClientOptions {
                request_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(1),
                retry_deadline,
                backoff_initial: Duration::from_millis(20),
                backoff_max: Duration::from_millis(250),
                ..self.credential_options(role)
            },
        )
        .expect("loopback endpoints are valid")
    }

    /// Node `id`'s own Status answer, one attempt with a 2 s timeout.
    pub async fn status_of(&self, id: u64) -> anyhow::Result<StatusResponse> {
        let probe = self
            .probes
            .get(&id)
            .with_context(|| format!("no node {id}"))?;
        // A secure cluster's CA may have been rotated: a fresh probe reads the current one.
        let fresh;
        let probe = match &self.credentials {
            None => probe,
            Some(_) => {
                fresh = self.probe_client(self.node(id))?;
                &fresh
            }
        };
        probe
            .status()
            .await
            .with_context(|| format!("Status on node {id}"))
    }

    /// The leader, if one is established right now: the node that every started node names
    /// and that calls itself leader. `None` while an election is under way.
    pub async fn leader_id(&self) -> Option<u64> {
        self.established_leader().await.ok()
    }

    /// Waits until every started node names the same leader, which itself reports the
    /// leader role; returns its id.
    pub async fn wait_for_leader(&self, within: Duration) -> anyhow::Result<u64> {
        let leader = wait_until("a leader all nodes agree on", within, || async {
            self.established_leader().await.map(Some)
        })
        .await?;
        tracing::debug!(leader, "leader established");
        Ok(leader)
    }

    async fn established_leader(&self) -> anyhow::Result<u64> {
        agreed_leader(&self.statuses().await?)
    }

    /// Status from every started node, failing fast (see [`crate::wait::Fatal`]) when one of
    /// them has crashed.
    async fn statuses(&self) -> anyhow::Result<Vec<(u64, StatusResponse)>> {
        let ids = self.started_ids();
        ensure!(!ids.is_empty(), "no node is running");
        let mut statuses = Vec::with_capacity(ids.len());
        for id in ids {
            self.node(id).ensure_alive()?;
            statuses.push((id, self.status_of(id).await?));
        }
        Ok(statuses)
    }

    /// Waits until the cluster is quiet and whole: a leader is established, every started
    /// node reports the same applied index as the leader and the leader's commit index, and
    /// the leader sees no started node lagging. Returns that index.
    ///
    /// Call it once writes have stopped; under load it may never hold.
    pub async fn wait_converged(&self, within: Duration) -> anyhow::Result<u64> {
        let index = wait_until("all running nodes to converge", within, || async {
            converged_index(&self.statuses().await?).map(Some)
        })
        .await?;
        tracing::debug!(index, "converged");
        Ok(index)
    }

    /// Page images of the started nodes' databases, each read in one read transaction.
    /// Meaningful once the cluster has converged and nothing writes.
    pub async fn page_digests(&self) -> anyhow::Result<PageDigests> {
        let dbs: Vec<(u64, PathBuf)> = self
            .started_ids()
            .into_iter()
            .map(|id| (id, self.node(id).db_path()))
            .collect();
        let images = tokio::task::spawn_blocking(move || {
            dbs.iter()
                .map(|(id, path)| PageImage::read(*id, path))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await
        .context("page reader thread")??;
        Ok(PageDigests { images })
    }

    /// Waits for convergence, then asserts that every started node's database is
    /// byte-identical, page by page.
    pub async fn assert_identical_pages(&self) {
        let index = self
            .wait_converged(Duration::from_secs(20))
            .await
            .expect("the cluster converges before its pages are compared");
        let digests = self.page_digests().await.expect("read every node's pages");
        if let Err(e) = digests.ensure_identical() {
            panic!("{e:#} (all nodes at applied index {index})");
        }
        tracing::info!(
            nodes = digests.images.len(),
            pages = digests.images[0].pages.len(),
            index,
            "replicas are byte-identical"
        );
    }

    /// The last `lines` lines of every node's log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            out.push_str(&format!(
                "----- node {} ({}), last {lines} lines of {} -----\n{}\n",
                node.id(),
                node.addr(),
                node.log_path().display(),
                node.log_tail(lines)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\n===== cluster-tests: the test failed; node logs follow =====");
            eprintln!("{}", self.log_tails(40));
            for node in self.nodes.values() {
                for panic in node.panics() {
                    eprintln!("!!!!! node {} panicked: {panic}", node.id());
                }
            }
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!(
                    "===== data directories and full logs kept in {} =====",
                    kept.display()
                );
            }
        }
        // The nodes' own Drop SIGKILLs and reaps every process by PID.
        for node in self.nodes.values() {
            if node.is_started() {
                let _ = node.kill();
            }
        }
    }
}

/// `count` distinct loopback addresses with ports that were free a moment ago, outside the
/// ephemeral range (so no outgoing connection takes one before the node binds it); anything
/// else that takes one would show in the node's log.
fn free_loopback_addrs(count: usize) -> anyhow::Result<Vec<SocketAddr>> {
    if count == 0 {
        bail!("no ports requested");
    }
    let ports = raftlite::cli::local_cluster::free_loopback_ports(count as u64)?;
    Ok(ports
        .into_iter()
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .collect())
}

/// Three nodes, their leader, and the audited table `table`.
pub async fn three_nodes_with(
    table: &str,
    options: ClusterOptions,
) -> (Cluster, u64, crate::Checker) {
    let cluster = Cluster::start(3, options).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let checker = crate::Checker::new(table);
    checker
        .create_table(&cluster.client())
        .await
        .expect("create the table");
    (cluster, leader, checker)
}
