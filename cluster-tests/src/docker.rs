//! The chart's StatefulSet mirrored in Docker containers, for the chaos scenarios (t80).
//!
//! [`DockerCluster`] runs `raftlite serve` in containers of the image `docker/build-image.sh`
//! builds `FROM scratch` from the host-built binary (nothing is pulled), laid out like the
//! chart and `docker/compose.yaml`: pod `raftlite-i` (node id i + 1) with `POD_NAME`, the
//! chart's `raftlite.yaml`, its own named volume, non-root with a read-only root filesystem.
//! Everything a run creates is its own and carries the label `raftlite.cluster-tests.run=RUN`:
//! * network `RUN-pods` (internal): the peers' traffic. Pod i answers there to its
//!   headless-Service name `raftlite-i.raftlite-headless.default.svc.cluster.local`.
//!   Disconnecting a pod from it is a network partition ([`DockerCluster::partition`]).
//! * network `RUN-clients` (internal, a /24 of 10.128.0.0/10 picked at random): how the host
//!   (the scenario's clients, probes and page reader), the counter app and the archive's S3
//!   server reach the pods. Pod i has the fixed address `.10+i` and the name `raftlite-i`
//!   (the counter app knows it there by its headless-Service name, which its certificate
//!   carries); the counter app is `.100`; the host is the gateway `.1`, where `moto_server`
//!   listens.
//! * volume `RUN-data-raftlite-i` per pod, read from the host for the page comparison.
//!
//! TLS and tokens are on, as in the chart: `docker/gen-secrets.sh` writes the run's CA, pod
//! certificates and tokens into a temporary directory (the chart's Secrets), mounted like
//! `docker/compose.yaml` mounts them. Pod i's certificate also names its address on the
//! clients network, where the host reaches it. The harness' clients and probes speak TLS
//! with the CA and send the admin token; the counter app gets the CA and the `app` token
//! (role write).
//!
//! Both networks are `--internal`: the containers reach nothing but each other and the host.
//!
//! Names resolve the way Kubernetes resolves them, not the way Docker does: every container
//! gets the pods' names in `/etc/hosts` (`--add-host`, fixed addresses). Docker's embedded
//! DNS, on an internal network, does not answer at all for the name of a stopped container
//! (the lookup hangs until the resolver's 2 x 5 s timeout), where the cluster DNS answers at
//! once; with it every connection attempt to a dead pod would stall for 10 s.
//! Faults are explicit `docker` commands: kill (SIGKILL), stop (SIGTERM), delete a pod and
//! create it again (what the StatefulSet controller does), delete its volume, partition and
//! heal. Dropping the cluster removes its containers, volumes and networks (by label); if the
//! test is failing it first prints the tail of every container's log.
//!
//! Docker (and openssl, for `docker/gen-secrets.sh`) is required: without it the scenarios
//! fail, naming the command that failed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use raftlite_client::proto::v1::StatusResponse;
use raftlite_client::{Client, ClientOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::convergence::{agreed_leader, converged_index};
use crate::pages::{PageDigests, PageImage};
use crate::wait::wait_until;
use crate::{CheckReport, Checker, MotoServer};

/// Label on everything a run creates; its value is the run's name.
pub const RUN_LABEL: &str = "raftlite.cluster-tests.run";
const RAFTLITE_IMAGE: &str = "raftlite:cluster-tests-chaos";
const COUNTER_IMAGE: &str = "raftlite-counter:cluster-tests-chaos";
const HEADLESS: &str = "raftlite-headless.default.svc.cluster.local";
const GRPC_PORT: u16 = 7000;
/// Where the pods and the counter app find the run's certificates and tokens (as in the chart).
const TLS_DIR: &str = "/etc/raftlite/tls";
const AUTH_FILE: &str = "/etc/raftlite/auth/auth.yaml";
const TOKENS_DIR: &str = "/etc/raftlite/tokens";
const COUNTER_PORT: u16 = 8080;
/// Bound on one `docker` command (a `docker stop` waits up to 30 s for a graceful exit).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// S3 bucket of the archive scenarios.
pub const ARCHIVE_BUCKET: &str = "raftlite-chaos";

/// Runs `docker ARGS` and returns its trimmed stdout; fails with its stderr.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new("docker");
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(DOCKER_TIMEOUT, command.output())
        .await
        .with_context(|| format!("docker {} took over {DOCKER_TIMEOUT:?}", args.join(" ")))?
        .context("run docker (the chaos scenarios need Docker; CI has it)")?;
    ensure!(
        output.status.success(),
        "docker {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// [`docker`] for places that cannot await (`Drop`, the one-time image build).
fn docker_blocking(args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run docker (the chaos scenarios need Docker; CI has it)")?;
    ensure!(
        output.status.success(),
        "docker {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The images under test, built once per test process from the host-built binaries.
#[derive(Debug)]
pub struct Images {
    pub raftlite: String,
    pub counter: String,
}

/// Builds (once) `raftlite:cluster-tests-chaos` and `raftlite-counter:cluster-tests-chaos`
/// with `docker/build-image.sh`: `FROM scratch`, the binaries under test with their debug
/// info stripped, and the libraries `ldd` lists. Panics, saying why, without Docker.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| match build_images() {
        Ok(images) => images,
        Err(e) => panic!("cannot build the chaos scenarios' images: {e:#}"),
    })
}

fn build_images() -> anyhow::Result<Images> {
    docker_blocking(&["version", "--format", "{{.Server.Version}}"])
        .context("Docker must be running for the chaos scenarios (t80)")?;
    let script = workspace_root().join("docker/build-image.sh");
    for (app, binary, tag) in [
        ("raftlite", crate::raftlite_binary(), RAFTLITE_IMAGE),
        ("counter", crate::counter_binary(), COUNTER_IMAGE),
    ] {
        let previous = docker_blocking(&["image", "inspect", "--format", "{{.Id}}", tag]).ok();
        let output = std::process::Command::new(&script)
            .arg(tag)
            .env("APP", app)
            .env("BINARY", &binary)
            .env("STRIP", "1")
            .env("BASE_IMAGE", "scratch")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        ensure!(
            output.status.success(),
            "{} {tag} (APP={app}) failed ({}):\n{}\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        tracing::info!(tag, binary = %binary.display(), "image built FROM scratch");
        // A rebuilt binary leaves the tag's previous image dangling: remove it (unless a
        // container still uses it) so that repeated runs do not fill the disk.
        let current = docker_blocking(&["image", "inspect", "--format", "{{.Id}}", tag])?;
        if let Some(previous) = previous.filter(|p| *p != current) {
            let _ = docker_blocking(&["image", "rm", &previous]);
        }
    }
    Ok(Images {
        raftlite: RAFTLITE_IMAGE.into(),
        counter: COUNTER_IMAGE.into(),
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cluster-tests lives inside the workspace")
        .to_path_buf()
}

/// A run's certificates and tokens, written by `docker/gen-secrets.sh` (the chart's Secrets):
/// `tls/ca.crt`, `tls/raftlite-<i>.crt|.key`, `auth/auth.yaml`, `tokens/admin`, `tokens/app`.
struct Secrets {
    dir: tempfile::TempDir,
    /// PEM of the CA.
    ca: Vec<u8>,
    /// The admin token: the harness' clients send it.
    admin_token: String,
}

impl Secrets {
    /// Runs `docker/gen-secrets.sh` for `pods` pods; pod i's certificate also names `ips[i]`.
    async fn generate(pods: usize, ips: &[Ipv4Addr]) -> anyhow::Result<Secrets> {
        let dir = tempfile::Builder::new()
            .prefix("raftlite-chaos-secrets-")
            .tempdir()
            .context("create a directory for the run's certificates and tokens")?;
        let script = workspace_root().join("docker/gen-secrets.sh");
        let mut command = tokio::process::Command::new(&script);
        command
            .arg(dir.path())
            .env("PODS", pods.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (i, ip) in ips.iter().enumerate() {
            command.env(format!("EXTRA_SANS_{i}"), format!("IP:{ip}"));
        }
        let output = tokio::time::timeout(DOCKER_TIMEOUT, command.output())
            .await
            .with_context(|| format!("{} took over {DOCKER_TIMEOUT:?}", script.display()))?
            .with_context(|| format!("run {}", script.display()))?;
        ensure!(
            output.status.success(),
            "{} failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let read = |path: &str| {
            let path = dir.path().join(path);
            std::fs::read(&path).with_context(|| format!("read {}", path.display()))
        };
        let ca = read("tls/ca.crt")?;
        let admin_token = String::from_utf8(read("tokens/admin")?)
            .context("the admin token is not UTF-8")?
            .trim()
            .to_owned();
        Ok(Secrets {
            ca,
            admin_token,
            dir,
        })
    }

    /// `HOST_PATH:CONTAINER_PATH:ro` for `docker --volume`.
    fn mount(&self, path: &str, target: &str) -> String {
        format!("{}:{target}:ro", self.dir.path().join(path).display())
    }
}

/// How a [`DockerCluster`] is set up.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    pub replicas: usize,
    /// Start `moto_server` on the host's address of the clients network, create a bucket, and
    /// give every pod `RAFTLITE_ARCHIVE=s3://raftlite-chaos/RUN` with that endpoint.
    pub archive: bool,
    /// Further environment of every pod (`RAFTLITE_*` settings override the config file).
    pub env: Vec<(String, String)>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            replicas: 3,
            archive: false,
            env: Vec::new(),
        }
    }
}

/// Where a pod's container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    Running,
    /// Killed or stopped; the container (and its volume) still exist.
    Stopped,
    /// Container deleted (its volume may remain).
    Absent,
}

#[derive(Debug)]
struct Pod {
    ordinal: usize,
    container: String,
    volume: String,
    client_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
    state: PodState,
    partitioned: bool,
    /// Frozen by [`DockerCluster::pause`]: it runs but does nothing until resumed.
    paused: bool,
    /// One attempt, short timeouts: for status polling.
    probe: Client,
}

/// A StatefulSet of raftlite pods in Docker containers; see the module documentation.
pub struct DockerCluster {
    run: String,
    label: String,
    clients_net: String,
    pods_net: String,
    /// First three octets of the clients network's /24.
    clients_prefix: [u8; 3],
    pods_prefix: [u8; 3],
    images: &'static Images,
    options: DockerOptions,
    pods: Vec<Pod>,
    counter: Option<String>,
    moto: Option<MotoServer>,
    /// Made once the networks (and so the pods' addresses) are known.
    secrets: Option<Secrets>,
}

impl DockerCluster {
    /// Builds the images (once per process), creates the run's networks and volumes, starts
    /// `moto_server` if asked, and starts every pod. Returns once the containers run; use
    /// [`DockerCluster::wait_for_leader`] to wait for an election.
    pub async fn start(options: DockerOptions) -> anyhow::Result<DockerCluster> {
        ensure!(options.replicas >= 1, "a cluster needs at least one pod");
        let images = tokio::task::spawn_blocking(images)
            .await
            .context("image builder thread")?;
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = format!(
            "rlchaos-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::SeqCst)
        );
        let mut cluster = DockerCluster {
            label: format!("{RUN_LABEL}={run}"),
            clients_net: format!("{run}-clients"),
            pods_net: format!("{run}-pods"),
            run,
            clients_prefix: [0; 3],
            pods_prefix: [0; 3],
            images,
            options,
            pods: Vec::new(),
            counter: None,
            moto: None,
            secrets: None,
        };
        // From here on, Drop cleans up whatever was created.
        cluster.clients_prefix = cluster.create_network(&cluster.clients_net.clone()).await?;
        cluster.pods_prefix = cluster.create_network(&cluster.pods_net.clone()).await?;
        if cluster.options.archive {
            let moto = tokio::task::spawn_blocking({
                let gateway = cluster.host_ip();
                move || MotoServer::start_on(IpAddr::V4(gateway))
            })
            .await
            .context("moto starter thread")??;
            moto.create_bucket(ARCHIVE_BUCKET)?;
            cluster.moto = Some(moto);
        }
        let client_ips: Vec<Ipv4Addr> = (0..cluster.options.replicas)
            .map(|ordinal| cluster.ip(cluster.clients_prefix, 10 + ordinal as u8))
            .collect();
        cluster.secrets = Some(Secrets::generate(cluster.options.replicas, &client_ips).await?);
        for (ordinal, client_ip) in client_ips.into_iter().enumerate() {
            let probe = Client::with_options(
                [format!("https://{client_ip}:{GRPC_PORT}")],
                cluster.client_options(ClientOptions {
                    request_timeout: Duration::from_secs(2),
                    connect_timeout: Duration::from_millis(500),
                    retry_deadline: Duration::ZERO,
                    ..ClientOptions::default()
                }),
            )?;
            cluster.pods.push(Pod {
                ordinal,
                container: format!("{}-raftlite-{ordinal}", cluster.run),
                volume: format!("{}-data-raftlite-{ordinal}", cluster.run),
                client_ip,
                peer_ip: cluster.ip(cluster.pods_prefix, 10 + ordinal as u8),
                state: PodState::Absent,
                partitioned: false,
                paused: false,
                probe,
            });
        }
        for id in cluster.ids() {
            cluster.create_pod(id).await?;
        }
        tracing::info!(
            run = %cluster.run,
            pods = cluster.pods.len(),
            clients_net = %cluster.clients_net,
            pods_net = %cluster.pods_net,
            archive = cluster.moto.is_some(),
            "docker cluster started"
        );
        Ok(cluster)
    }

    fn ip(&self, prefix: [u8; 3], last: u8) -> Ipv4Addr {
        Ipv4Addr::new(prefix[0], prefix[1], prefix[2], last)
    }

    /// Creates an internal network on a free random /24 of 10.128.0.0/10; returns its prefix.
    async fn create_network(&self, name: &str) -> anyhow::Result<[u8; 3]> {
        let mut last_error = None;
        for _ in 0..20 {
            let r = random_u64();
            let prefix = [10, 128 + (r % 64) as u8, (r >> 8) as u8];
            let subnet = format!("{}.{}.{}.0/24", prefix[0], prefix[1], prefix[2]);
            match docker(&[
                "network",
                "create",
                "--internal",
                "--label",
                &self.label,
                "--subnet",
                &subnet,
                name,
            ])
            .await
            {
                Ok(_) => return Ok(prefix),
                Err(e) if format!("{e:#}").contains("overlap") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
            .context(format!("find a free subnet for network {name}")))
    }

    /// The run's name, the prefix of every container, volume and network it creates.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The host's address on the clients network (where `moto_server` listens).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.ip(self.clients_prefix, 1)
    }

    /// Node ids of every pod, 1..=replicas.
    pub fn ids(&self) -> Vec<u64> {
        (1..=self.pods.len() as u64).collect()
    }

    /// Ids of the pods whose container runs.
    pub fn running_ids(&self) -> Vec<u64> {
        self.pods
            .iter()
            .filter(|p| p.state == PodState::Running)
            .map(|p| p.ordinal as u64 + 1)
            .collect()
    }

    /// Ids of the pods that run and are neither partitioned nor paused.
    pub fn connected_ids(&self) -> Vec<u64> {
        self.pods
            .iter()
            .filter(|p| p.state == PodState::Running && !p.partitioned && !p.paused)
            .map(|p| p.ordinal as u64 + 1)
            .collect()
    }

    fn pod(&self, id: u64) -> &Pod {
        self.pods
            .get((id as usize).wrapping_sub(1))
            .unwrap_or_else(|| panic!("no pod with node id {id}"))
    }

    fn pod_mut(&mut self, id: u64) -> &mut Pod {
        self.pods
            .get_mut((id as usize).wrapping_sub(1))
            .unwrap_or_else(|| panic!("no pod with node id {id}"))
    }

    /// The pod name (`raftlite-i`) of node `id`.
    pub fn pod_name(&self, id: u64) -> String {
        format!("raftlite-{}", self.pod(id).ordinal)
    }

    pub fn pod_state(&self, id: u64) -> PodState {
        self.pod(id).state
    }

    /// Node `id`'s gRPC address on the clients network.
    pub fn addr(&self, id: u64) -> SocketAddr {
        SocketAddr::from((self.pod(id).client_ip, GRPC_PORT))
    }

    /// Node `id`'s gRPC endpoint as the harness' clients use it: `https://IP:7000` (its
    /// certificate names that address).
    pub fn url(&self, id: u64) -> String {
        format!("https://{}", self.addr(id))
    }

    fn secrets(&self) -> &Secrets {
        self.secrets
            .as_ref()
            .expect("the secrets are made before any pod")
    }

    /// PEM of the run's CA, which signed every pod's certificate.
    pub fn tls_ca(&self) -> &[u8] {
        &self.secrets().ca
    }

    /// `options` with the run's CA and the admin token.
    fn client_options(&self, options: ClientOptions) -> ClientOptions {
        let secrets = self.secrets();
        ClientOptions {
            token: Some(secrets.admin_token.clone()),
            tls_ca: Some(secrets.ca.clone()),
            ..options
        }
    }

    /// Every environment variable of pod `ordinal`'s container.
    fn pod_env(&self, ordinal: usize) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("POD_NAME".into(), format!("raftlite-{ordinal}")),
            ("POD_NAMESPACE".into(), "default".into()),
            (
                "RAFTLITE_CONFIG".into(),
                "/etc/raftlite/raftlite.yaml".into(),
            ),
            // TLS on the client port, mutual TLS on the peer port; tokens required.
            (
                "RAFTLITE_TLS_CERT".into(),
                format!("{TLS_DIR}/raftlite-{ordinal}.crt"),
            ),
            (
                "RAFTLITE_TLS_KEY".into(),
                format!("{TLS_DIR}/raftlite-{ordinal}.key"),
            ),
            ("RAFTLITE_TLS_CA".into(), format!("{TLS_DIR}/ca.crt")),
            ("RAFTLITE_AUTH_FILE".into(), AUTH_FILE.into()),
            // For the CLI in the container, as in the chart: this node, the CA, the admin token.
            (
                "RAFTLITE_ADDR".into(),
                format!("https://localhost:{GRPC_PORT}"),
            ),
            ("RAFTLITE_TOKEN_FILE".into(), format!("{TOKENS_DIR}/admin")),
        ];
        if let Some(moto) = &self.moto {
            env.extend(
                [
                    (
                        "RAFTLITE_ARCHIVE",
                        format!("s3://{ARCHIVE_BUCKET}/{}", self.run),
                    ),
                    (
                        "RAFTLITE_ARCHIVE_ENDPOINT",
                        format!("http://{}", moto.addr()),
                    ),
                    ("RAFTLITE_ARCHIVE_FLUSH_MS", "100".into()),
                    ("AWS_ACCESS_KEY_ID", "testing".into()),
                    ("AWS_SECRET_ACCESS_KEY", "testing".into()),
                    ("AWS_REGION", "us-east-1".into()),
                ]
                .map(|(k, v)| (k.to_string(), v)),
            );
        }
        env.extend(self.options.env.iter().cloned());
        env
    }

    /// Creates node `id`'s pod: its container (and its volume if missing) and starts it, as the
    /// StatefulSet controller does for a missing pod.
    pub async fn create_pod(&mut self, id: u64) -> anyhow::Result<()> {
        ensure!(
            self.pod(id).state == PodState::Absent,
            "pod {} already exists",
            self.pod_name(id)
        );
        let pod = self.pod(id);
        let ordinal = pod.ordinal;
        let (container, volume) = (pod.container.clone(), pod.volume.clone());
        let (client_ip, peer_ip) = (pod.client_ip.to_string(), pod.peer_ip.to_string());
        docker(&["volume", "create", "--label", &self.label, &volume]).await?;
        let config = workspace_root().join("docker/raftlite.yaml");
        let hostname = format!("raftlite-{ordinal}");
        let mut args: Vec<String> = [
            "create",
            "--name",
            &container,
            "--hostname",
            &hostname,
            "--label",
            &self.label,
            "--network",
            &self.clients_net,
            "--ip",
            &client_ip,
            "--network-alias",
            &hostname,
            "--volume",
            &format!("{volume}:/var/lib/raftlite"),
            "--volume",
            &format!("{}:/etc/raftlite/raftlite.yaml:ro", config.display()),
            // The chart's Secrets, mounted as docker/compose.yaml mounts them.
            "--volume",
            &self.secrets().mount("tls", TLS_DIR),
            "--volume",
            &self.secrets().mount("auth", "/etc/raftlite/auth"),
            "--volume",
            &self
                .secrets()
                .mount("tokens/admin", &format!("{TOKENS_DIR}/admin")),
            // A node that exits on a fatal error is restarted, as the kubelet restarts a
            // crashed container (compose: `restart: unless-stopped`). `docker kill` and
            // `docker stop` count as explicit stops: the scenario starts the pod again.
            "--restart",
            "unless-stopped",
            // The chart's securityContext.
            "--user",
            "10001:10001",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges:true",
        ]
        .map(String::from)
        .to_vec();
        for (k, v) in self.pod_env(ordinal) {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        for peer in &self.pods {
            args.extend([
                "--add-host".into(),
                format!("raftlite-{}.{HEADLESS}:{}", peer.ordinal, peer.peer_ip),
            ]);
        }
        args.extend([self.images.raftlite.clone(), "serve".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args).await?;
        // Peer network before start: the node resolves its peers as soon as it runs.
        docker(&[
            "network",
            "connect",
            "--ip",
            &peer_ip,
            "--alias",
            &format!("{hostname}.{HEADLESS}"),
            &self.pods_net,
            &container,
        ])
        .await?;
        docker(&["start", &container]).await?;
        let pod = self.pod_mut(id);
        pod.state = PodState::Running;
        pod.partitioned = false;
        pod.paused = false;
        Ok(())
    }

    /// SIGKILLs pod `id`'s container; it keeps its container and volume.
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        docker(&["kill", &self.pod(id).container]).await?;
        self.pod_mut(id).state = PodState::Stopped;
        Ok(())
    }

    /// Stops pod `id` gracefully (SIGTERM, up to 30 s), as Kubernetes does before deleting a
    /// pod.
    pub async fn stop(&mut self, id: u64) -> anyhow::Result<()> {
        docker(&["stop", "--time", "30", &self.pod(id).container]).await?;
        self.pod_mut(id).state = PodState::Stopped;
        Ok(())
    }

    /// Starts pod `id`'s stopped container again (same container, same volume), as the
    /// kubelet restarts a crashed container.
    pub async fn start_pod(&mut self, id: u64) -> anyhow::Result<()> {
        ensure!(
            self.pod(id).state == PodState::Stopped,
            "pod {} is not stopped",
            self.pod_name(id)
        );
        docker(&["start", &self.pod(id).container]).await?;
        self.pod_mut(id).state = PodState::Running;
        Ok(())
    }

    /// Deletes pod `id`'s container (SIGKILL if it runs); its volume stays.
    pub async fn delete_pod(&mut self, id: u64) -> anyhow::Result<()> {
        docker(&["rm", "--force", &self.pod(id).container]).await?;
        self.pod_mut(id).state = PodState::Absent;
        Ok(())
    }

    /// Deletes pod `id`'s volume; the pod must be deleted first.
    pub async fn delete_volume(&mut self, id: u64) -> anyhow::Result<()> {
        ensure!(
            self.pod(id).state == PodState::Absent,
            "delete pod {} before its volume",
            self.pod_name(id)
        );
        docker(&["volume", "rm", &self.pod(id).volume]).await?;
        Ok(())
    }

    /// Cuts pod `id` off from its peers (disconnects it from the pods network). The host
    /// still reaches it on the clients network.
    pub async fn partition(&mut self, id: u64) -> anyhow::Result<()> {
        docker(&[
            "network",
            "disconnect",
            "--force",
            &self.pods_net,
            &self.pod(id).container,
        ])
        .await?;
        self.pod_mut(id).partitioned = true;
        Ok(())
    }

    /// Freezes every process of pod `id` (`docker pause`: the cgroup freezer, like SIGSTOP):
    /// its connections stay open and its timers stop, as when a node's VM stalls. A paused
    /// leader wakes up still believing it leads.
    pub async fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        docker(&["pause", &self.pod(id).container]).await?;
        self.pod_mut(id).paused = true;
        Ok(())
    }

    /// Lets a paused pod run again.
    pub async fn unpause(&mut self, id: u64) -> anyhow::Result<()> {
        docker(&["unpause", &self.pod(id).container]).await?;
        self.pod_mut(id).paused = false;
        Ok(())
    }

    /// Reconnects a partitioned pod to its peers, with its address and name.
    pub async fn heal(&mut self, id: u64) -> anyhow::Result<()> {
        let pod = self.pod(id);
        docker(&[
            "network",
            "connect",
            "--ip",
            &pod.peer_ip.to_string(),
            "--alias",
            &format!("raftlite-{}.{HEADLESS}", pod.ordinal),
            &self.pods_net,
            &pod.container,
        ])
        .await?;
        self.pod_mut(id).partitioned = false;
        Ok(())
    }

    /// Fails, with the log of each, if a pod's container exited by itself and was restarted
    /// (a node stops on a fatal error, expecting the kubelet to restart it). Pods the scenario
    /// deleted and created again start counting anew.
    pub async fn ensure_no_crash(&self) -> anyhow::Result<()> {
        let mut crashed = Vec::new();
        for pod in self.pods.iter().filter(|p| p.state != PodState::Absent) {
            let restarts: u64 =
                docker(&["inspect", "--format", "{{.RestartCount}}", &pod.container])
                    .await?
                    .parse()
                    .context("parse RestartCount")?;
            if restarts > 0 {
                let logs = container_logs(&pod.container, 60).await?;
                let fatal: Vec<&str> = logs
                    .lines()
                    .filter(|l| l.contains("ERROR") || l.contains("panicked"))
                    .take(10)
                    .collect();
                crashed.push(format!(
                    "raftlite-{} exited by itself and was restarted {restarts} time(s); its errors:\n    {}",
                    pod.ordinal,
                    fatal.join("\n    ")
                ));
            }
        }
        if !crashed.is_empty() {
            bail!("{}", crashed.join("\n"));
        }
        Ok(())
    }

    /// The last `lines` lines of pod `id`'s log (stdout and stderr).
    pub async fn logs(&self, id: u64, lines: usize) -> anyhow::Result<String> {
        container_logs(&self.pod(id).container, lines).await
    }

    /// Node `id`'s own Status answer, one attempt with a 2 s timeout.
    pub async fn status_of(&self, id: u64) -> anyhow::Result<StatusResponse> {
        self.pod(id)
            .probe
            .status()
            .await
            .with_context(|| format!("Status on {} (node {id})", self.pod_name(id)))
    }

    async fn statuses(&self, ids: &[u64]) -> anyhow::Result<Vec<(u64, StatusResponse)>> {
        ensure!(!ids.is_empty(), "no pod is running");
        let mut statuses = Vec::with_capacity(ids.len());
        for &id in ids {
            statuses.push((id, self.status_of(id).await?));
        }
        Ok(statuses)
    }

    /// Waits until the pods `ids` all name the same leader (one of them, reporting the leader
    /// role); returns its id.
    pub async fn wait_for_leader_among(
        &self,
        ids: &[u64],
        within: Duration,
    ) -> anyhow::Result<u64> {
        wait_until(
            &format!("a leader pods {ids:?} agree on"),
            within,
            || async { agreed_leader(&self.statuses(ids).await?).map(Some) },
        )
        .await
    }

    /// [`DockerCluster::wait_for_leader_among`] the connected running pods.
    pub async fn wait_for_leader(&self, within: Duration) -> anyhow::Result<u64> {
        self.wait_for_leader_among(&self.connected_ids(), within)
            .await
    }

    /// Waits until every running pod has applied all the leader committed and the leader sees
    /// none lagging; returns that index. Call it once writes have stopped.
    pub async fn wait_converged(&self, within: Duration) -> anyhow::Result<u64> {
        let ids = self.running_ids();
        wait_until("all running pods to converge", within, || async {
            converged_index(&self.statuses(&ids).await?).map(Some)
        })
        .await
    }

    /// Waits until node `id` reports ready the way the chart's readiness probe asks
    /// (`grpc.health.v1`, service "", over TLS): it knows a leader and has caught up.
    pub async fn wait_ready(&self, id: u64, within: Duration) -> anyhow::Result<()> {
        let url = self.url(id);
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(self.tls_ca()));
        wait_until(
            &format!("{} to be ready", self.pod_name(id)),
            within,
            || async {
                use tonic_health::pb::health_check_response::ServingStatus;
                use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
                // TLS with the CA, no token: the health service needs none (like the probe).
                let channel = tonic::transport::Endpoint::from_shared(url.clone())?
                    .tls_config(tls.clone())?
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(1))
                    .connect()
                    .await?;
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?
                    .into_inner()
                    .status();
                Ok((status == ServingStatus::Serving).then_some(()))
            },
        )
        .await
    }

    /// A client that knows every pod (as an application is configured), with a retry
    /// deadline long enough to ride out a failover. Like every client of the harness it speaks
    /// TLS with the run's CA and sends the admin token.
    pub fn client(&self) -> Client {
        self.client_with(&self.ids(), Duration::from_secs(20))
    }

    /// A client for the pods `ids` that retries for at most `retry_deadline`.
    pub fn client_with(&self, ids: &[u64], retry_deadline: Duration) -> Client {
        Client::with_options(
            ids.iter().map(|&id| self.url(id)),
            self.client_options(ClientOptions {
                request_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(1),
                retry_deadline,
                backoff_initial: Duration::from_millis(20),
                backoff_max: Duration::from_millis(250),
                ..ClientOptions::default()
            }),
        )
        .expect("pod addresses are valid endpoints")
    }

    /// Converges, then audits `checker`'s table on every running pod.
    pub async fn verify(&self, checker: &Checker) -> anyhow::Result<CheckReport> {
        let index = self
            .wait_converged(Duration::from_secs(60))
            .await
            .context("converge before the audit")?;
        let clients: Vec<(u64, Client)> = self
            .running_ids()
            .into_iter()
            .map(|id| (id, self.client_with(&[id], Duration::from_secs(5))))
            .collect();
        checker.audit(index, &clients).await
    }

    /// Converges, then compares every running pod's `db.sqlite` page by page, read from the
    /// host through the volume's mount point. Returns (pages, applied index).
    pub async fn ensure_identical_pages(&self) -> anyhow::Result<(usize, u64)> {
        let index = self
            .wait_converged(Duration::from_secs(60))
            .await
            .context("converge before comparing pages")?;
        let mut dbs = Vec::new();
        for id in self.running_ids() {
            let mountpoint = docker(&[
                "volume",
                "inspect",
                "--format",
                "{{.Mountpoint}}",
                &self.pod(id).volume,
            ])
            .await?;
            dbs.push((id, PathBuf::from(mountpoint).join("db.sqlite")));
        }
        let images = tokio::task::spawn_blocking(move || {
            dbs.iter()
                .map(|(id, path)| PageImage::read(*id, path))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await
        .context("page reader thread")??;
        let digests = PageDigests { images };
        digests
            .ensure_identical()
            .with_context(|| format!("all pods at applied index {index}"))?;
        Ok((digests.images[0].pages.len(), index))
    }

    /// The archive as the leader reports it: (archived index, snapshot index, last error).
    pub async fn archive_view(&self) -> anyhow::Result<(u64, u64, String)> {
        let leader = agreed_leader(&self.statuses(&self.connected_ids()).await?)?;
        let archive = self
            .status_of(leader)
            .await?
            .archive
            .context("status has no archive")?;
        ensure!(archive.uploading, "the leader does not upload (yet)");
        Ok((
            archive.archived_index,
            archive.snapshot_index,
            archive.last_error,
        ))
    }

    /// Starts the counter app (`examples/counter`) on the clients network, pointed at every
    /// pod by its headless-Service name over TLS (`RAFTLITE_ADDR=https://raftlite-0.raftlite-
    /// headless.default.svc.cluster.local:7000,...`, names its certificate carries), with the
    /// CA and the `app` token (role write) mounted as in `docker/compose.yaml`, and waits until
    /// it counts visits.
    pub async fn start_counter(&mut self) -> anyhow::Result<Counter> {
        ensure!(self.counter.is_none(), "the counter app already runs");
        let container = format!("{}-counter", self.run);
        let ip = self.ip(self.clients_prefix, 100);
        let raftlite_addr = (0..self.pods.len())
            .map(|i| format!("https://raftlite-{i}.{HEADLESS}:{GRPC_PORT}"))
            .collect::<Vec<_>>()
            .join(",");
        let ip_arg = ip.to_string();
        let env_addr = format!("RAFTLITE_ADDR={raftlite_addr}");
        let env_port = format!("PORT={COUNTER_PORT}");
        let env_ca = format!("RAFTLITE_TLS_CA={TLS_DIR}/ca.crt");
        let env_token = format!("RAFTLITE_TOKEN_FILE={TOKENS_DIR}/app");
        let mount_ca = self
            .secrets()
            .mount("tls/ca.crt", &format!("{TLS_DIR}/ca.crt"));
        let mount_token = self
            .secrets()
            .mount("tokens/app", &format!("{TOKENS_DIR}/app"));
        let mut args: Vec<&str> = vec![
            "run",
            "--detach",
            "--name",
            &container,
            "--hostname",
            "counter",
            "--restart",
            "unless-stopped",
            "--label",
            &self.label,
            "--network",
            &self.clients_net,
            "--ip",
            &ip_arg,
            "--env",
            &env_addr,
            "--env",
            &env_port,
            "--env",
            &env_ca,
            "--env",
            &env_token,
            "--volume",
            &mount_ca,
            "--volume",
            &mount_token,
            "--user",
            "10001:10001",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges:true",
        ];
        let hosts: Vec<String> = self
            .pods
            .iter()
            .map(|p| format!("raftlite-{}.{HEADLESS}:{}", p.ordinal, p.client_ip))
            .collect();
        for host in &hosts {
            args.extend(["--add-host", host]);
        }
        args.push(&self.images.counter);
        docker(&args).await?;
        self.counter = Some(container);
        let counter = Counter {
            addr: SocketAddr::from((ip, COUNTER_PORT)),
        };
        wait_until(
            "the counter app to count a visit",
            Duration::from_secs(60),
            || async { counter.visit().await.map(Some) },
        )
        .await?;
        Ok(counter)
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== cluster-tests: the test failed; container logs of run {} follow =====",
                self.run
            );
            let containers = self
                .pods
                .iter()
                .filter(|p| p.state != PodState::Absent)
                .map(|p| p.container.clone())
                .chain(self.counter.clone());
            for container in containers {
                let logs = std::process::Command::new("docker")
                    .args(["logs", "--tail", "40", &container])
                    .output();
                match logs {
                    Ok(out) => eprintln!(
                        "----- {container}, last 40 lines -----\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    Err(e) => eprintln!("----- {container}: no logs: {e}"),
                }
            }
        }
        let filter = format!("label={}", self.label);
        for (list, remove) in [
            (
                ["ps", "--all", "--quiet"],
                vec!["rm", "--force", "--volumes"],
            ),
            (["volume", "ls", "--quiet"], vec!["volume", "rm", "--force"]),
            (["network", "ls", "--quiet"], vec!["network", "rm"]),
        ] {
            let mut args = list.to_vec();
            args.extend(["--filter", &filter]);
            let ids = match docker_blocking(&args) {
                Ok(ids) => ids,
                Err(e) => {
                    eprintln!("cleanup of run {}: {e:#}", self.run);
                    continue;
                }
            };
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if ids.is_empty() {
                continue;
            }
            let mut args = remove.clone();
            args.extend(ids);
            if let Err(e) = docker_blocking(&args) {
                eprintln!("cleanup of run {}: {e:#}", self.run);
            }
        }
    }
}

async fn container_logs(container: &str, lines: usize) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("docker")
        .args(["logs", "--tail", &lines.to_string(), container])
        .stdin(Stdio::null())
        .output()
        .await
        .context("run docker logs")?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// The counter app as its users see it: `GET /` over HTTP.
#[derive(Debug, Clone)]
pub struct Counter {
    addr: SocketAddr,
}

impl Counter {
    /// One visit: the count it reports ("This server has been visited N times.").
    pub async fn visit(&self) -> anyhow::Result<u64> {
        let (status, body) = http_get(self.addr, "/", Duration::from_secs(30)).await?;
        ensure!(
            status == 200,
            "the counter answered {status}: {}",
            body.trim()
        );
        body.trim()
            .strip_prefix("This server has been visited ")
            .and_then(|rest| rest.strip_suffix(" times."))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected answer from the counter: {body:?}"))
    }

    /// Visits one after the other in the background, until stopped or `max_visits`.
    pub fn visit_in_background(&self, max_visits: usize, pause: Duration) -> Visits {
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, flag) = (self.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut report = VisitReport::default();
            for _ in 0..max_visits {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                match counter.visit().await {
                    Ok(n) => {
                        if let Some(last) = report.last {
                            if n <= last {
                                report
                                    .regressions
                                    .push(format!("the count went from {last} to {n}"));
                            }
                        }
                        report.first.get_or_insert(n);
                        report.last = Some(n);
                        report.ok += 1;
                    }
                    Err(e) => {
                        report.failed += 1;
                        if report.errors.len() < 5 {
                            report.errors.push(format!("{e:#}"));
                        }
                    }
                }
                tokio::time::sleep(pause).await;
            }
            report
        });
        Visits { stop, task }
    }
}

/// Sequential counter visits running in the background.
pub struct Visits {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<VisitReport>,
}

impl Visits {
    pub async fn stop(self) -> anyhow::Result<VisitReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.context("visitor task")
    }
}

/// What a visitor saw: sequential visits must see a strictly increasing count.
#[derive(Debug, Clone, Default)]
pub struct VisitReport {
    pub ok: usize,
    pub failed: usize,
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// Visits whose count was not above the previous one (a lost increment).
    pub regressions: Vec<String>,
    pub errors: Vec<String>,
}

/// A plain HTTP/1.1 GET with `Connection: close`; returns (status, body).
async fn http_get(addr: SocketAddr, path: &str, within: Duration) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(within, exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within {within:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("GET http://{addr}{path}: malformed answer {text:?}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET http://{addr}{path}: no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}
