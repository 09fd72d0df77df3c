//! t16: bounded work. What a `write` client could do to stall or kill the cluster, replayed
//! against 3 real nodes while a steady writer on another connection keeps committing: each
//! gets a clear status, the steady writer never waits more than a second, the term does not
//! change, no node exits, replicas end byte-identical and no node's peak RSS reaches 400 MB.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::client::Error;
use cluster_tests::{
    init_tracing, wait_until, Client, ClientOptions, Cluster, ClusterOptions, Consistency,
    Statement,
};
use tonic::Code;
use tracing::info;

const ENDLESS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
/// Peak resident memory allowed to any node (the cap).
const RSS_CAP_KIB: u64 = 400 * 1024;

/// Three nodes started with `args`, once they agree on a leader (returned with them).
async fn three_nodes_with(args: &[&str]) -> (Cluster, u64) {
    let cluster = Cluster::start(
        3,
        ClusterOptions {
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            ..ClusterOptions::default()
        },
    )
    .expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader");
    (cluster, leader)
}

fn code<T: std::fmt::Debug>(result: &Result<T, Error>) -> Option<Code> {
    match result {
        Ok(_) => Some(Code::Ok),
        Err(Error::Status { code, .. }) => Some(*code),
        Err(other) => panic!("expected a status from the server, got {other:?}"),
    }
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn client_with(cluster: &Cluster, request_timeout: Duration) -> Client {
    let endpoints: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.node(id).endpoint())
        .collect();
    Client::with_options(
        endpoints,
        ClientOptions {
            request_timeout,
            retry_deadline: Duration::ZERO,
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

/// A small read answers within 6 s (retried while the node frees its read threads).
async fn reads_answer(client: &Client, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let started = Instant::now();
        match client
            .query_with(
                Statement::new("SELECT count(*) FROM steady"),
                Consistency::Stale,
                0,
            )
            .await
        {
            Ok(rows) => {
                assert_eq!(rows.rows.len(), 1);
                info!(
                    when,
                    ms = started.elapsed().as_millis() as u64,
                    "reads answer"
                );
                return;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "reads not yet back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reads did not come back {when}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_statement_stalls_or_kills_the_cluster() {
    init_tracing();
    info!("phase 1: 3 nodes, statement timeout 500 ms, request timeout 3 s; a steady writer");
    let (cluster, leader) = three_nodes_with(&[
        "--statement-timeout-ms",
        "500",
        "--request-timeout-ms",
        "3000",
    ])
    .await;
    let client = cluster.client();
    client
        .exec(
            "CREATE TABLE steady (n INTEGER PRIMARY KEY, at INTEGER)",
            Vec::<i64>::new(),
        )
        .await
        .expect("create steady");
    client
        .exec(
            "CREATE TABLE checked (v INTEGER CHECK (v > 0))",
            Vec::<i64>::new(),
        )
        .await
        .expect("create checked");
    client
        .exec("CREATE TABLE blobs (b BLOB)", Vec::<i64>::new())
        .await
        .expect("create blobs");
    let term = cluster.status_of(leader).await.expect("status").term;
    // The attacker's client does not retry: each call shows the server's own answer.
    let client = client_with(&cluster, Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let stop = stop.clone();
        let client = cluster.client();
        tokio::spawn(async move {
            let mut last = Instant::now();
            let mut worst = Duration::ZERO;
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match client
                    .exec("INSERT INTO steady VALUES (?1, ?2)", [n, n])
                    .await
                {
                    Ok(_) => {
                        worst = worst.max(last.elapsed());
                        last = Instant::now();
                    }
                    Err(e) => panic!("the steady writer failed: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (n, worst)
        })
    };

    info!("phase 2: an endless write is interrupted inside SQLite; its batch-mates commit");
    let endless_write = client
        .exec(
            "INSERT INTO steady SELECT -x, 0 FROM \
             (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c)",
            Vec::<i64>::new(),
        )
        .await;
    assert_eq!(code(&endless_write), Some(Code::DeadlineExceeded));

    info!("phase 3: endless reads and abandoned queries do not take the read threads for good");
    let short = client_with(&cluster, Duration::from_millis(300));
    let mut abandoned = Vec::new();
    for _ in 0..300 {
        let c = short.clone();
        abandoned.push(tokio::spawn(async move {
            c.query_with(Statement::new(ENDLESS), Consistency::Stale, 0)
                .await
                .map(|_| ())
        }));
    }
    for q in abandoned {
        let r = q.await.expect("task");
        assert!(r.is_err(), "an endless query never answers rows");
    }
    let slow = client_with(&cluster, Duration::from_secs(10));
    reads_answer(&slow, "after 300 abandoned queries").await;
    let endless_read = slow
        .query_with(Statement::new(ENDLESS), Consistency::Stale, 0)
        .await;
    assert_eq!(
        code(&endless_read),
        Some(Code::DeadlineExceeded),
        "interrupted at the server's deadline"
    );
    reads_answer(&slow, "after an endless read").await;
    // Streams opened and never read (on their own connection: a client that never reads
    // exhausts its own connection's HTTP/2 window): the node ends them at the request
    // deadline (3 s) and its read threads go back to work.
    let stalling = client_with(&cluster, Duration::from_secs(10));
    let mut unread = Vec::new();
    for _ in 0..4 {
        unread.push(
            stalling.query_stream(
                Statement::new(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10000000) SELECT x FROM c",
                ),
                Consistency::Stale,
                0,
            )
            .await,
        );
    }
    reads_answer(&slow, "while 4 streams are never read").await;
    drop(unread);

    info!("phase 4: oversized values and deltas are refused alone (RESOURCE_EXHAUSTED)");
    let big_blob = client
        .exec(
            "INSERT INTO blobs VALUES (zeroblob(200000000))",
            Vec::<i64>::new(),
        )
        .await;
    assert_eq!(code(&big_blob), Some(Code::ResourceExhausted));
    let two_blobs = client
        .execute([
            Statement::new("INSERT INTO blobs VALUES (zeroblob(60000000))"),
            Statement::new("INSERT INTO blobs VALUES (zeroblob(60000000))"),
        ])
        .await;
    assert_eq!(
        code(&two_blobs),
        Some(Code::ResourceExhausted),
        "over max_delta_bytes"
    );
    let big_read = client
        .query_with(
            Statement::new("SELECT length(randomblob(900000000))"),
            Consistency::Stale,
            0,
        )
        .await;
    assert_eq!(code(&big_read), Some(Code::ResourceExhausted));

    info!("phase 5: pragmas that would change a connection for everyone are refused");
    for pragma in [
        "PRAGMA hard_heap_limit=1",
        "PRAGMA ignore_check_constraints=ON",
        "PRAGMA max_page_count=1",
        "PRAGMA schema_version=5",
        "PRAGMA recursive_triggers=ON",
    ] {
        let r = client.exec(pragma, Vec::<i64>::new()).await;
        assert_eq!(code(&r), Some(Code::PermissionDenied), "{pragma}");
        let r = client
            .query_with(Statement::new(pragma), Consistency::Stale, 0)
            .await;
        assert_eq!(
            code(&r),
            Some(Code::PermissionDenied),
            "{pragma} as a query"
        );
    }
    let bad_row = client
        .exec("INSERT INTO checked VALUES (-1)", Vec::<i64>::new())
        .await;
    assert!(
        bad_row.is_err(),
        "CHECK constraints still hold for every client"
    );
    // PRAGMA foreign_keys = OFF first in a write turns them off for that write alone (a table
    // rebuild); it is refused later in one, and as a query; the next write has them again.
    client
        .execute([
            "CREATE TABLE fk_parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE fk_child (parent INTEGER REFERENCES fk_parent (id))",
        ])
        .await
        .expect("create the foreign key tables");
    client
        .exec("PRAGMA foreign_keys=OFF", Vec::<i64>::new())
        .await
        .expect("foreign keys off for one write");
    let later = client
        .execute(["SELECT 1", "PRAGMA foreign_keys=OFF"])
        .await;
    assert_eq!(
        code(&later),
        Some(Code::PermissionDenied),
        "not first: {later:?}"
    );
    let as_query = client
        .query_with(
            Statement::new("PRAGMA foreign_keys=OFF"),
            Consistency::Stale,
            0,
        )
        .await;
    assert_eq!(code(&as_query), Some(Code::PermissionDenied), "as a query");
    let orphan = client
        .exec("INSERT INTO fk_child VALUES (42)", Vec::<i64>::new())
        .await;
    assert_eq!(
        code(&orphan),
        Some(Code::FailedPrecondition),
        "foreign keys still hold for every client: {orphan:?}"
    );

    info!("phase 5b: a text of 200,000 statements and one long instr call kill and hold nothing");
    // rusqlite refused such a text by preparing its rest recursively (a stack overflow that
    // aborted the node); SQLite's instr ran for tens of seconds as one VM instruction, which
    // no deadline interrupts, and held the executor (the steady writer's gap) that long.
    let many = "SELECT 1;".repeat(200_000);
    let r = client
        .query_with(Statement::new(many.as_str()), Consistency::Stale, 0)
        .await;
    assert_eq!(code(&r), Some(Code::InvalidArgument), "as a query: {r:?}");
    let r = client.exec(many.as_str(), Vec::<i64>::new()).await;
    assert_eq!(code(&r), Some(Code::InvalidArgument), "as a write: {r:?}");
    let long_instr =
        "SELECT instr(printf('%.*c', 1800000, 'a'), printf('%.*c', 900000, 'a') || 'b')";
    client
        .exec(long_instr, Vec::<i64>::new())
        .await
        .expect("a long instr on the executor");
    let r = client
        .query_with(Statement::new(long_instr), Consistency::Stale, 0)
        .await
        .expect("a long instr on a read thread");
    assert_eq!(r.rows.len(), 1);

    info!("phase 6: the steady writer never waited over a second; nothing else moved");
    stop.store(true, Ordering::Relaxed);
    let (writes, worst) = steady.await.expect("steady writer");
    info!(
        writes,
        worst_gap_ms = worst.as_millis() as u64,
        "steady writer"
    );
    assert!(
        worst <= Duration::from_secs(1),
        "the longest gap between the steady writer's acknowledgements was {worst:?}"
    );
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .expect("converged");
    assert_eq!(
        cluster.status_of(leader).await.expect("status").term,
        term,
        "no election"
    );
    for id in cluster.ids() {
        let node = cluster.node(id);
        node.ensure_alive().expect("no node exited");
        let pid = node.pid().expect("running");
        let peak = peak_rss_kib(pid);
        info!(node = id, peak_rss_mib = peak / 1024, "peak RSS");
        assert!(
            peak < RSS_CAP_KIB,
            "node {id} peaked at {} MiB",
            peak / 1024
        );
    }
    cluster.assert_identical_pages().await;
}

/// Values up to the limits are accepted, so they must replicate: three 60 MB values in a row
/// (each a Raft entry that takes longer than one heartbeat interval to send and sync, the
/// time openraft gives an AppendEntries), then a follower that was paused while three more
/// were written catches up. Before transfers (`peer/transfer.rs`) every attempt was cut off
/// at 100 ms and started again from its first byte: the followers never got the entries, and
/// once two were behind the cluster committed nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn values_within_the_limits_replicate_however_long_they_take_to_send() {
    init_tracing();
    let (cluster, leader) = three_nodes_with(&[]).await;
    let client = client_with(&cluster, Duration::from_secs(60));
    client
        .exec(
            "CREATE TABLE blobs (n INTEGER PRIMARY KEY, b BLOB)",
            Vec::<i64>::new(),
        )
        .await
        .expect("create blobs");
    let term = cluster.status_of(leader).await.expect("status").term;
    let big = "INSERT INTO blobs (b) VALUES (randomblob(60000000))";

    info!("phase 1: three 60 MB values in a row");
    for n in 1..=3 {
        let started = Instant::now();
        client
            .exec(big, Vec::<i64>::new())
            .await
            .unwrap_or_else(|e| panic!("60 MB value {n} (within max_value_bytes): {e}"));
        info!(n, ms = started.elapsed().as_millis() as u64, "acknowledged");
    }

    info!("phase 2: a follower paused while three more are written catches up");
    let follower = cluster.ids_except(leader)[0];
    cluster
        .node(follower)
        .send_signal(libc::SIGSTOP)
        .expect("pause the follower");
    for n in 4..=6 {
        client
            .exec(big, Vec::<i64>::new())
            .await
            .unwrap_or_else(|e| panic!("60 MB value {n} with one follower paused: {e}"));
    }
    cluster
        .node(follower)
        .send_signal(libc::SIGCONT)
        .expect("resume the follower");
    cluster
        .wait_converged(Duration::from_secs(60))
        .await
        .expect("the resumed follower applies all six values");
    let totals = client
        .query_with(
            Statement::new("SELECT count(*), sum(length(b)) FROM blobs"),
            Consistency::Linearizable,
            0,
        )
        .await
        .expect("count the values");
    assert_eq!(
        (
            totals.rows[0].get::<i64>(0).expect("count"),
            totals.rows[0].get::<i64>(1).expect("bytes")
        ),
        (6, 360_000_000),
        "all six values, whole"
    );
    let small = client
        .exec("INSERT INTO blobs (b) VALUES (1)", Vec::<i64>::new())
        .await
        .expect("a small write after them");
    // The leader commits a batch in place at its early commit notice, a moment before its
    // commit index shows it: compare pages once every node has applied the small write.
    wait_until(
        "every node to apply the small write",
        Duration::from_secs(20),
        || async {
            let at = cluster.wait_converged(Duration::from_secs(2)).await?;
            Ok((at >= small.log_index).then_some(()))
        },
    )
    .await
    .expect("converged at the small write");
    assert_eq!(
        cluster.status_of(leader).await.expect("status").term,
        term,
        "no election while the values travelled"
    );
    cluster.assert_identical_pages().await;
    for id in cluster.ids() {
        cluster.node(id).ensure_alive().expect("no node exited");
    }
}

/// Runs `call`, a statement that never ends, and checks that the node stopped it at the
/// client's 1 s deadline and said so, and that it ran once (not again under the same id, or
/// on another node).
async fn answered_once_by_the_node<T: std::fmt::Debug>(
    case: &str,
    call: impl std::future::Future<Output = Result<T, Error>>,
) {
    let started = Instant::now();
    let outcome = call.await;
    let took = started.elapsed();
    let Err(Error::Status { code, message, .. }) = &outcome else {
        panic!("{case}: expected the node's status, got {outcome:?} after {took:?}");
    };
    assert_eq!(
        *code,
        Code::DeadlineExceeded,
        "{case}: {message} after {took:?}"
    );
    assert!(
        message.contains("interrupted"),
        "{case}: the node's reason, not a timeout on the way: {message}"
    );
    assert!(
        took < Duration::from_millis(1900),
        "{case}: ran once, not again: {took:?}"
    );
}

/// A write whose statement runs out of time is run once, and the client hears why. With the
/// client's request timeout equal to the node's statement timeout, the client's own timer used
/// to fire first: it reported "no answer within 1s" instead of the node's reason, and sent the
/// write again under the same id (nothing was recorded for it), which ran the statement again
/// and held every other write back once more, until its retry deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_that_runs_out_of_time_runs_once_and_says_so() {
    init_tracing();
    let (cluster, leader) = three_nodes_with(&["--statement-timeout-ms", "1000"]).await;
    let follower = cluster.ids_except(leader)[0];
    // The client's defaults (retries for 10 s) but for a request timeout equal to the node's
    // statement timeout; one client on the leader, one on a follower (which forwards).
    let on = |id: u64| {
        Client::with_options(
            [cluster.node(id).endpoint()],
            ClientOptions {
                request_timeout: Duration::from_secs(1),
                ..ClientOptions::default()
            },
        )
        .expect("client")
    };
    let client = on(leader);
    client
        .exec("CREATE TABLE hc (x INTEGER)", Vec::<i64>::new())
        .await
        .expect("create hc");
    // The same write on the stream, and with a parameter too large for the stream (1 MiB):
    // as a unary call, whose deadline gRPC enforces on both ends.
    let endless = "INSERT INTO hc SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL \
                   SELECT x + 1 FROM c) SELECT x FROM c) WHERE x < 0 AND length(?1) > 0";
    for (node, sender) in [("leader", &client), ("follower", &on(follower))] {
        for (path, param) in [("streamed", vec![1u8]), ("unary", vec![1u8; 1_200_000])] {
            let case = format!("{path} through the {node}");
            answered_once_by_the_node(&case, sender.exec(endless, [param])).await;
        }
    }
    // A query the node stops at the client's deadline is not run again on another node.
    for (node, sender) in [("leader", &client), ("follower", &on(follower))] {
        let case = format!("query on the {node}");
        answered_once_by_the_node(&case, sender.query(ENDLESS, Vec::<i64>::new())).await;
    }
    client
        .exec("INSERT INTO hc VALUES (1)", Vec::<i64>::new())
        .await
        .expect("the next write");
}

/// A result whose rows cannot all reach a client that reads them steadily, but slowly, before
/// its deadline ends with DEADLINE_EXCEEDED saying why. The stream used to just stop, which
/// clients took for a lost node: they ran the query again on every node and reported an
/// outage ("the query stream ended before its last message").
#[tokio::test(flavor = "multi_thread")]
async fn a_result_too_slow_to_read_before_the_deadline_says_so() {
    use cluster_tests::client::proto::v1::{self, sql_client::SqlClient};
    init_tracing();
    let cluster = Cluster::single_node().await;
    let mut sql = SqlClient::connect(cluster.node(1).endpoint())
        .await
        .expect("connect");
    let mut request = tonic::Request::new(v1::QueryRequest {
        statement: Some(
            Statement::new(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < \
                 2000000) SELECT i, 'row ' || i FROM s",
            )
            .into(),
        ),
        ..Default::default()
    });
    // The node's deadline, as the clients send it; no gRPC deadline of the caller's own.
    request.metadata_mut().insert(
        cluster_tests::client::transport::TIMEOUT_KEY,
        "1000m".parse().expect("metadata"),
    );
    let mut stream = sql
        .query(request)
        .await
        .expect("the query starts")
        .into_inner();
    let mut rows = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(message)) => {
                rows += message.rows.len();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    let status = match end {
        Err(status) => status,
        Ok(_) => panic!("the stream ended without a status after {rows} rows"),
    };
    assert!(rows < 2_000_000, "{rows} rows");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status
            .message()
            .contains("before all its rows reached the client"),
        "{status:?}"
    );
}

/// Connections that never read their answers: they open no HTTP/2 receive window (or one of
/// a byte: hyper hands a whole message to h2 once one byte may go, so only an answer sent in
/// slices stays counted) and send `Execute` calls of `SELECT randomblob(4000000)` (4
/// connections with 50 calls at once, then 120 with one call each, 20 ms apart), while a
/// steady writer commits on another connection; every node has one runtime thread, as under
/// `raftlite dev` on two cores. Before: the leader lost its leadership within seconds (an
/// apply waited on its runtime thread for the executor's busy batch, so no heartbeat left),
/// 300 such answers held 1.28 GB, and (with the budget but before closing connections) a
/// reader's 4 MB answer or query was refused for as long as the others left theirs unread.
/// Now the unread answers hold at most their budget (256 MiB, and what one batch returns past
/// it), a reader's 4 MB answer and query are served once the connections that left theirs
/// unread for 2 s are closed to make room, writes without rows go on, the term stays, and once
/// the connections close the node holds nothing. Then the same through a follower.
#[tokio::test(flavor = "multi_thread")]
async fn answers_nobody_reads_neither_depose_the_leader_nor_pile_up() {
    use cluster_tests::metrics_addr;
    init_tracing();
    let (cluster, leader) =
        three_nodes_with(&["--worker-threads", "1", "--metrics-addr", "127.0.0.1:0"]).await;
    let client = cluster.client_for(leader);
    client
        .exec(
            "CREATE TABLE steady (n INTEGER PRIMARY KEY)",
            Vec::<i64>::new(),
        )
        .await
        .expect("create steady");
    let term = cluster.status_of(leader).await.expect("status").term;
    let metrics = metrics_addr(&cluster, leader);
    let stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let stop = stop.clone();
        let client = cluster.client_for(leader);
        tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if let Err(e) = client.exec("INSERT INTO steady VALUES (?1)", [n]).await {
                    panic!("the steady writer failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };

    let mut unread = Vec::new();
    info!("4 connections, 50 calls each at once: batches that run for seconds");
    for _ in 0..4 {
        let sql = sql_connection(cluster.node(leader).endpoint(), Some(0)).await;
        unread.extend((0..50).map(|_| big_answer(&sql)));
    }
    // Most are refused once their batch has returned 64 MiB of rows (each after computing its
    // 4 MB); the rest stay unread. The next calls start once those batches are done.
    wait_until(
        "the calls sent at once are answered",
        Duration::from_secs(60),
        || {
            let answered = unread.iter().filter(|t| t.is_finished()).count();
            async move { Ok((answered >= 150).then_some(())) }
        },
    )
    .await
    .expect("calls refused");
    leave_unread(&cluster.node(leader).endpoint(), [0, 1], &mut unread).await;
    let held = held_when(&metrics, "the unread answers fill their budget", |held| {
        held > ANSWER_BUDGET - 4_100_000.0
    })
    .await;
    info!(held_mib = held / 1048576.0, "held");
    assert!(
        held <= ANSWER_BUDGET + 64.0 * 1048576.0,
        "{held} bytes held"
    );
    info!("a reader's 4 MB answer: connections that left theirs unread for 2 s make room");
    big_answer_served(&cluster, "a 4 MB answer beside the unread ones").await;
    // So does a query's: its rows too wait in the node until they are read.
    let leader_only = Client::with_options(
        [cluster.node(leader).endpoint()],
        ClientOptions {
            retry_deadline: Duration::ZERO,
            ..ClientOptions::default()
        },
    )
    .expect("client");
    let rows = wait_until(
        "a 4 MB query beside the unread ones",
        Duration::from_secs(30),
        || async {
            let rows = leader_only
                .query_with(
                    Statement::new("SELECT randomblob(4000000)"),
                    Consistency::Stale,
                    0,
                )
                .await?;
            Ok(Some(rows))
        },
    )
    .await
    .expect("a 4 MB query beside the unread ones");
    assert_eq!(rows.rows.len(), 1);
    let closed = unread_connections_closed(&metrics).await;
    info!(closed, "connections closed for their unread answers");
    assert!(closed >= 1.0, "no connection was closed");
    let lost = lost_connections(&mut unread).await;
    assert!(lost >= 1, "no unread call ended with its connection");
    let held = held_when(&metrics, "the count after the closes", |_| true).await;
    assert!(
        held <= ANSWER_BUDGET + 64.0 * 1048576.0,
        "{held} bytes held"
    );
    // Writes that return no rows never meet the limit (the steady writer's, too).
    let small = client
        .exec("INSERT INTO steady VALUES (-1)", Vec::<i64>::new())
        .await
        .expect("a write that returns no rows");
    assert_eq!(small.results[0].rows_affected, 1);

    info!("the connections close: their answers go");
    for task in &unread {
        task.abort();
    }
    held_when(&metrics, "the node holds no answers", |held| held == 0.0).await;
    let answered = client
        .execute(["SELECT randomblob(4000000)"])
        .await
        .expect("a 4 MB answer once the others are read");
    assert_eq!(answered.results[0].rows.len(), 1);
    let rows = client
        .query("SELECT randomblob(4000000)", Vec::<i64>::new())
        .await
        .expect("a 4 MB query once the others are read");
    assert_eq!(rows.rows.len(), 1);

    info!("the same through a follower, which holds the answers of the writes it forwards");
    let follower = cluster.ids_except(leader)[0];
    let follower_metrics = metrics_addr(&cluster, follower);
    let mut unread = Vec::new();
    // Every window one byte: the answers stay counted only because they go out in slices.
    leave_unread(&cluster.node(follower).endpoint(), [1, 1], &mut unread).await;
    // Each forward may return an eighth of the room left: 4 MB answers fit until 32 MiB are.
    let held = held_when(&follower_metrics, "the follower's budget fills", |held| {
        held > ANSWER_BUDGET - 40.0 * 1048576.0
    })
    .await;
    info!(held_mib = held / 1048576.0, "held on the follower");
    assert!(held <= ANSWER_BUDGET, "{held} bytes held on the follower");
    let reader = sql_connection(cluster.node(follower).endpoint(), None).await;
    let answered = wait_until(
        "a 4 MB answer through the follower beside the unread ones",
        Duration::from_secs(30),
        || async {
            let answer = big_answer(&reader).await??;
            Ok(Some(answer))
        },
    )
    .await
    .expect("a 4 MB answer through the follower");
    assert_eq!(answered.get_ref().results[0].rows.len(), 1);
    assert!(unread_connections_closed(&follower_metrics).await >= 1.0);
    assert!(lost_connections(&mut unread).await >= 1);
    let held = held_when(&follower_metrics, "the follower's count", |_| true).await;
    assert!(held <= ANSWER_BUDGET, "{held} bytes held on the follower");
    for task in &unread {
        task.abort();
    }
    held_when(&follower_metrics, "the follower holds no answers", |held| {
        held == 0.0
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let writes = steady.await.expect("steady writer");
    info!(writes, "steady writer");
    assert_eq!(
        cluster.status_of(leader).await.expect("status").term,
        term,
        "no election"
    );
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .expect("converged");
    cluster.assert_identical_pages().await;
}

/// One connection that keeps its answers unread on four `ExecuteStream`s (64 calls each of
/// 1.04 MB of rows, a receive window of 0): it fills the node's budget of unread answers.
/// Before, every other client's rows were then refused for as long as it kept the connection
/// open; now, once its answers are 2 s old, a reader's 4 MB answer closes that connection
/// (its streams end with an error) and is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_leaves_its_answers_unread_loses_its_connection_not_others_rows() {
    use cluster_tests::client::proto::v1;
    use cluster_tests::metrics_addr;
    /// Rows of each call: 256 of them fill all but 2.2 MB of the budget (a 4 MB answer does
    /// not fit), and 64 of them (one stream's) fit one group commit's 64 MiB.
    const ROWS: &str = "SELECT randomblob(1040000)";
    init_tracing();
    let (cluster, leader) = three_nodes_with(&["--metrics-addr", "127.0.0.1:0"]).await;
    let metrics = metrics_addr(&cluster, leader);
    let hoarder = sql_connection(cluster.node(leader).endpoint(), Some(0)).await;
    let mut streams = Vec::new();
    for stream in 0..4u64 {
        let calls = (0..64).map(move |i| v1::StreamedExecute {
            call_id: stream * 100 + i,
            request: Some(v1::ExecuteRequest {
                statements: vec![Statement::new(ROWS).into()],
                ..Default::default()
            }),
            timeout_ms: 0,
        });
        // The calls, then a stream that stays open.
        let calls =
            tokio_stream::StreamExt::chain(tokio_stream::iter(calls), tokio_stream::pending());
        let mut sql = hoarder.clone();
        let mut answers = sql
            .execute_stream(calls)
            .await
            .expect("the stream opens")
            .into_inner();
        // Never read: with a window of 0 this waits until the connection ends.
        streams.push(tokio::spawn(async move { answers.message().await }));
        // One stream at a time, so that each group commit returns at most 64 of them.
        let filled = (stream + 1) as f64 * 64.0 * 1_040_000.0;
        held_when(&metrics, "the stream's answers are held", |held| {
            held >= filled
        })
        .await;
    }
    let held = held_when(&metrics, "the budget", |_| true).await;
    info!(held_mib = held / 1048576.0, "held by one connection");
    assert!(
        held > ANSWER_BUDGET - 4_000_100.0,
        "a 4 MB answer would fit: {held}"
    );

    big_answer_served(&cluster, "a 4 MB answer beside the unread streams").await;
    assert_eq!(
        unread_connections_closed(&metrics).await,
        1.0,
        "one connection"
    );
    for stream in streams {
        let ended = tokio::time::timeout(Duration::from_secs(30), stream)
            .await
            .expect("the stream ends with its connection")
            .expect("the stream's task");
        assert!(ended.is_err(), "the stream ended with an error: {ended:?}");
    }
    held_when(&metrics, "the node holds no answers", |held| held == 0.0).await;
}

/// The bytes of unread answers a node holds before writes that return rows are refused.
const ANSWER_BUDGET: f64 = 256.0 * 1024.0 * 1024.0;

type SqlConnection =
    cluster_tests::client::proto::v1::sql_client::SqlClient<tonic::transport::Channel>;

/// A connection of its own to `endpoint` whose streams open `window` bytes of receive window.
async fn sql_connection(endpoint: String, window: Option<u32>) -> SqlConnection {
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .expect("endpoint")
        .initial_stream_window_size(window)
        .connect()
        .await
        .expect("connect");
    SqlConnection::new(channel)
}

type BigAnswer = tokio::task::JoinHandle<
    Result<tonic::Response<cluster_tests::client::proto::v1::ExecuteResponse>, tonic::Status>,
>;

/// An `Execute` of 4 MB of rows on `sql`, as a task.
fn big_answer(sql: &SqlConnection) -> BigAnswer {
    let mut sql = sql.clone();
    let request = cluster_tests::client::proto::v1::ExecuteRequest {
        statements: vec![Statement::new("SELECT randomblob(4000000)").into()],
        ..Default::default()
    };
    tokio::spawn(async move { sql.execute(request).await })
}

/// 120 connections to `endpoint`, 20 ms apart, each with one 4 MB answer it never reads
/// (a receive window of `windows[0]` or `windows[1]` bytes, alternating).
async fn leave_unread(endpoint: &str, windows: [u32; 2], unread: &mut Vec<BigAnswer>) {
    info!(endpoint, "120 connections, one call each, 20 ms apart");
    for i in 0..120 {
        unread.push(big_answer(
            &sql_connection(endpoint.to_string(), Some(windows[i % 2])).await,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bytes of unread answers the node at `metrics` holds, once `enough` says so.
async fn held_when(metrics: &str, what: &str, enough: impl Fn(f64) -> bool) -> f64 {
    wait_until(what, Duration::from_secs(60), || {
        let metrics = metrics.to_string();
        let enough = &enough;
        async move {
            let held = cluster_tests::metric_value(
                &cluster_tests::scrape(&metrics).await,
                "raftlite_sql_answer_bytes_held ",
            );
            Ok(enough(held).then_some(held))
        }
    })
    .await
    .expect(what)
}

/// How many of the `unread` calls ended as their connection did (the node closed it), once
/// one has (within 30 s). The calls that ended leave `unread`: the rest are still unread;
/// those refused (RESOURCE_EXHAUSTED) before do not count.
async fn lost_connections(unread: &mut Vec<BigAnswer>) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut lost = 0;
    loop {
        let (ended, open) = std::mem::take(unread)
            .into_iter()
            .partition::<Vec<_>, _>(|call| call.is_finished());
        *unread = open;
        for call in ended {
            if let Ok(Err(status)) = call.await {
                lost += usize::from(status.code() != Code::ResourceExhausted);
            }
        }
        if lost > 0 {
            return lost;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no unread call ended with its connection within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reader's `Execute` of 4 MB of rows, tried until it is served (within 30 s): refused
/// while unread answers younger than the grace hold the room.
async fn big_answer_served(cluster: &Cluster, what: &str) {
    let answered = wait_until(what, Duration::from_secs(30), || async {
        let answer = client_with(cluster, Duration::from_secs(10))
            .execute(["SELECT randomblob(4000000)"])
            .await?;
        Ok(Some(answer))
    })
    .await
    .expect(what);
    assert_eq!(answered.results[0].rows.len(), 1);
}

/// How many client connections the node at `metrics` closed for leaving answers unread.
async fn unread_connections_closed(metrics: &str) -> f64 {
    cluster_tests::metric_value(
        &cluster_tests::scrape(metrics).await,
        "raftlite_sql_unread_connections_closed_total ",
    )
}
