//! t95: overload. A node flooded with more slow requests than `--max-concurrent-requests`
//! refuses the excess at once with RESOURCE_EXHAUSTED instead of queueing them, cuts the
//! admitted ones off at `--request-timeout-ms` with DEADLINE_EXCEEDED, keeps Raft traffic and
//! forwarded writes flowing (no election, a write through a follower commits), and serves
//! normally once the flood is over.

use std::time::{Duration, Instant};

use cluster_tests::{client::Error, Statement};
use cluster_tests::{
    init_tracing, three_nodes_with, Client, ClientOptions, Cluster, ClusterOptions, Consistency,
};
use tracing::info;

const LIMIT: usize = 3;
const FLOOD: usize = 12;
/// Far more work than fits in the server's deadline on any machine.
const SLOW_QUERY: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                          WHERE x < 20000000) SELECT count(*) FROM c";

#[tokio::test(flavor = "multi_thread")]
async fn a_flooded_node_sheds_quickly_and_keeps_serving() {
    init_tracing();
    let options = ClusterOptions {
        extra_args: vec![
            "--max-concurrent-requests".into(),
            LIMIT.to_string(),
            "--request-timeout-ms".into(),
            "1000".into(),
        ],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let follower = *cluster
        .ids()
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");
    let client = cluster.client();
    client
        .exec("CREATE TABLE hits (n INTEGER)", Vec::<i64>::new())
        .await
        .expect("create the table");
    let term = cluster.status_of(leader).await.expect("status").term;

    info!(
        leader,
        FLOOD, LIMIT, "phase 1: flood the leader with slow queries, one attempt each"
    );
    // No retries, a deadline far beyond the server's: what comes back is the server's answer.
    let once = Client::with_options(
        [cluster.node(leader).endpoint()],
        ClientOptions {
            request_timeout: Duration::from_secs(60),
            retry_deadline: Duration::ZERO,
            ..ClientOptions::default()
        },
    )
    .expect("client");
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..FLOOD {
        let once = once.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = once
                .query_with(Statement::new(SLOW_QUERY), Consistency::Stale, 0)
                .await;
            let _ = tx.send((result.map(|_| ()), started.elapsed()));
        });
    }
    drop(tx);

    info!("phase 2: while the leader is saturated, a write through a follower still commits");
    let forwarded = cluster
        .client_for(follower)
        .exec("INSERT INTO hits VALUES (?1)", [1_i64])
        .await;

    let mut shed = Vec::new();
    let mut admitted = Vec::new();
    while let Some((result, at)) = rx.recv().await {
        match result {
            Err(Error::Status {
                code: tonic::Code::ResourceExhausted,
                message,
                ..
            }) => {
                assert!(message.contains("max_concurrent_requests"), "{message}");
                shed.push(at);
            }
            Err(Error::Status {
                code: tonic::Code::DeadlineExceeded,
                message,
                ..
            }) => {
                // Either the limits layer's deadline or, a moment earlier, SQLite interrupted
                // inside the statement at the same deadline.
                assert!(
                    message.contains("request_timeout_ms") || message.contains("interrupted"),
                    "{message}"
                );
                admitted.push(at);
            }
            Ok(()) => admitted.push(at),
            Err(other) => panic!("unexpected answer to a slow query: {other:?}"),
        }
    }
    info!(?shed, ?admitted, "flood answered");
    assert_eq!(admitted.len(), LIMIT, "exactly the limit is admitted");
    assert_eq!(shed.len(), FLOOD - LIMIT, "the rest is refused");
    let last_shed = shed.iter().max().expect("some were shed");
    let first_admitted = admitted.iter().min().expect("some were admitted");
    assert!(
        last_shed < first_admitted,
        "refusals must not queue behind admitted requests: last refusal at {last_shed:?}, \
         first admitted answer at {first_admitted:?}"
    );
    assert!(
        *first_admitted >= Duration::from_millis(1000),
        "admitted requests run until request_timeout_ms"
    );
    let forwarded = forwarded.expect("a forwarded write is Raft traffic and is never shed");
    assert!(forwarded.log_index > 0);

    info!("phase 3: the flood is over; the node serves as before, with no election in between");
    let direct = cluster.client_for(leader);
    direct
        .exec("INSERT INTO hits VALUES (?1)", [2_i64])
        .await
        .expect("a write on the leader after the flood");
    let rows = direct
        .query("SELECT count(*) FROM hits", Vec::<i64>::new())
        .await
        .expect("a read on the leader after the flood");
    assert_eq!(rows.rows[0].get::<i64>(0).expect("count"), 2);
    let status = cluster.status_of(leader).await.expect("status");
    assert_eq!(status.term, term, "the flood caused no election");
    assert_eq!(status.leader, leader);
}

/// Open files of process `pid`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
}

/// Connections that never send a byte cannot take a node's open files (the node needs them
/// for its log and database, and stopped when they ran out): past `--max-connections`, new
/// connections are closed at once, the clients already connected and the peers keep being
/// served, and new clients connect again once the idle ones are gone.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_cannot_take_a_nodes_files() {
    const MAX_CONNECTIONS: usize = 40;
    const IDLE: usize = 400;
    init_tracing();
    let options = ClusterOptions {
        extra_args: vec!["--max-connections".into(), MAX_CONNECTIONS.to_string()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let client = Client::connect([cluster.node(leader).endpoint()]).expect("client");
    client
        .exec("CREATE TABLE idle (n INTEGER)", Vec::<i64>::new())
        .await
        .expect("create the table");
    let pid = cluster.node(leader).pid().expect("the leader runs");
    let files_before = open_files(pid);

    info!(
        IDLE,
        MAX_CONNECTIONS, "phase 1: idle connections to the leader's client port"
    );
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        match tokio::net::TcpStream::connect(cluster.node(leader).addr()).await {
            Ok(stream) => idle.push(stream),
            Err(e) => panic!("connect: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let files_during = open_files(pid);
    info!(files_before, files_during, "the leader's open files");
    assert!(
        files_during <= files_before + MAX_CONNECTIONS,
        "{IDLE} idle connections took {} of the leader's files (limit {MAX_CONNECTIONS})",
        files_during - files_before
    );

    info!("phase 2: the client connected before, and writes through a follower, still work");
    for n in 0..10_i64 {
        client
            .exec("INSERT INTO idle VALUES (?1)", [n])
            .await
            .expect("a write on the connection opened before the flood");
    }
    let follower = *cluster
        .ids()
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");
    cluster
        .client_for(follower)
        .exec("INSERT INTO idle VALUES (?1)", [100_i64])
        .await
        .expect("a write forwarded to the leader");
    assert!(
        !cluster
            .node(leader)
            .log_lines_with("connection limit reached")
            .is_empty(),
        "the leader says why it closes connections"
    );

    info!("phase 3: once the idle connections are gone, new clients connect");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = Client::connect([cluster.node(leader).endpoint()]).expect("client");
    let rows = fresh
        .query_with(
            Statement::new("SELECT count(*) FROM idle"),
            Consistency::Linearizable,
            0,
        )
        .await
        .expect("a new client is served");
    assert_eq!(rows.rows[0].get::<i64>(0).expect("count"), 11);
    cluster
        .node(leader)
        .ensure_alive()
        .expect("the leader runs");
}

/// Connections that finish their TLS handshake and then sit there, made by anyone who can
/// reach the client port (no token needed), filled the listener: applications and the
/// Helm chart's probes (`raftlite health`, a new connection each time) were turned away,
/// and the kubelet restarted the pod, which the same connections filled again. A full
/// listener now closes the oldest connection that never made a request with a valid token
/// to let a new one in; connections that did are kept.
#[tokio::test(flavor = "multi_thread")]
async fn idle_tls_connections_cannot_keep_clients_or_probes_out() {
    const MAX_CONNECTIONS: usize = 20;
    const IDLE: usize = 60;
    init_tracing();
    let options = ClusterOptions {
        secure: true,
        extra_args: vec!["--max-connections".into(), MAX_CONNECTIONS.to_string()],
        ..ClusterOptions::default()
    };
    let (cluster, leader, checker) = three_nodes_with("idle_tls", options).await;
    let client = cluster.client_for(leader);
    checker
        .write_many(&client, "before", 1)
        .await
        .expect("a write before the idle connections");
    let creds = cluster.credentials().expect("secure cluster");
    let addr = cluster.node(leader).addr();

    info!(
        IDLE,
        MAX_CONNECTIONS, "phase 1: TLS connections that make no request"
    );
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(creds.ca_pem()))
        .domain_name("localhost");
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .expect("uri")
            .connect_timeout(Duration::from_secs(2))
            .tls_config(tls.clone())
            .expect("tls");
        // Handshake and HTTP/2 preface done; a refused one is what the test is about.
        if let Ok(channel) = endpoint.connect().await {
            idle.push(channel);
        }
    }
    info!(connected = idle.len(), "idle connections made");

    info!("phase 2: the client that wrote before, a new client, and the probe are served");
    checker
        .write_many(&client, "used-connection", 1)
        .await
        .expect("a write on the connection that made requests before");
    checker
        .write_many(&cluster.client_for(leader), "new-connection", 1)
        .await
        .expect("a new client is let in");
    // The chart's probes with TLS: `raftlite health` on a new connection, with no token.
    let probe = std::process::Command::new(cluster_tests::raftlite_binary())
        .arg("health")
        .arg("--addr")
        .arg(format!("https://localhost:{}", addr.port()))
        .arg("--tls-ca")
        .arg(creds.ca_path())
        .output()
        .expect("run raftlite health");
    assert!(
        probe.status.success(),
        "the probe was turned away: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert!(
        !cluster
            .node(leader)
            .log_lines_with("connection limit reached")
            .is_empty(),
        "the leader says why it closes connections"
    );
    drop(idle);
    cluster
        .node(leader)
        .ensure_alive()
        .expect("the leader runs");
}
