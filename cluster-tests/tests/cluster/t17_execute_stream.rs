//! t17: `Sql.ExecuteStream`, the long-lived stream every client write goes on. Against a TLS +
//! token cluster of real processes, on a raw stream: calls are answered by number, a failed
//! call fails alone, each call is limited like a unary `Execute` (size, the node's concurrency
//! limit, the role of the token, checked again when the auth file changes), and a hostile
//! stream (no token, a read token, a message over the decode limit, answers never read) is
//! refused or contained while another client's writes go on. Then the client library: its
//! writes on streams through every node, across a leader kill, each applied once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster_tests::client::proto::v1::{self, sql_client::SqlClient};
use cluster_tests::{init_tracing, raw_sql, Cluster, ClusterOptions, Consistency, Statement};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;
use tracing::info;

/// `--max-request-bytes` of the cluster: the decode limit is then 8 MiB.
const MAX_REQUEST: usize = 64 << 10;
/// `--max-concurrent-requests` of the cluster.
const LIMIT: usize = 4;
/// Calls a hoarding stream sends without reading an answer.
const HOARD: u64 = 400;
/// The server's limit of unanswered calls per stream.
const MAX_STREAM_CALLS: usize = raftlite::grpc::execute_stream::MAX_STREAM_CALLS;
/// A write that takes the executor a while (about 0.1–1 s here): a recursive count inserted.
const SLOW_WRITE: &str = "INSERT INTO slow(v) SELECT count(*) FROM (WITH RECURSIVE c(x) AS \
                          (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) SELECT x FROM c)";

/// A raw stream: send calls with [`RawStream::send`], read answers with [`RawStream::next`].
struct RawStream {
    calls: mpsc::Sender<v1::StreamedExecute>,
    answers: tonic::Streaming<v1::StreamedExecuteAnswer>,
}

impl RawStream {
    async fn open(
        sql: &mut SqlClient<Channel>,
        token: Option<&str>,
    ) -> Result<Self, tonic::Status> {
        let (calls, rx) = mpsc::channel(1024);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii token"),
            );
        }
        let answers = sql.execute_stream(request).await?.into_inner();
        Ok(RawStream { calls, answers })
    }

    async fn send(&self, call_id: u64, request: Option<v1::ExecuteRequest>) {
        let call = v1::StreamedExecute {
            call_id,
            request,
            timeout_ms: 20_000,
        };
        self.calls.send(call).await.expect("the stream takes calls");
    }

    async fn next(&mut self) -> Result<Option<v1::StreamedExecuteAnswer>, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(30), self.answers.message())
            .await
            .expect("an answer within 30 s")
    }

    /// The answers to `n` calls, by call id.
    async fn answers(&mut self, n: usize) -> HashMap<u64, v1::StreamedExecuteAnswer> {
        let mut got = HashMap::new();
        while got.len() < n {
            let answer = self
                .next()
                .await
                .expect("the stream goes on")
                .expect("an answer");
            assert!(
                got.insert(answer.call_id, answer).is_none(),
                "one answer per call"
            );
        }
        got
    }
}

fn write(sql: &str) -> Option<v1::ExecuteRequest> {
    Some(v1::ExecuteRequest {
        request_id: String::new(),
        statements: vec![v1::Statement {
            sql: sql.into(),
            ..Default::default()
        }],
        transaction_id: String::new(),
    })
}

/// Rows in `table`, read linearizably.
async fn count_of(cluster: &Cluster, table: &str) -> i64 {
    cluster
        .client()
        .query_with(
            Statement::new(format!("SELECT count(*) FROM {table}")),
            Consistency::Linearizable,
            0,
        )
        .await
        .expect("count")
        .rows[0]
        .get::<i64>(0)
        .expect("an integer")
}

/// The error code of an answer, or `Ok` for a response.
fn code(answer: &v1::StreamedExecuteAnswer) -> Code {
    match (&answer.response, &answer.error) {
        (Some(_), None) => Code::Ok,
        (None, Some(e)) => Code::from_i32(e.code),
        other => panic!("an answer carries a response or an error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_stream_calls_are_limited_alone_and_hostile_streams_are_contained() {
    init_tracing();
    let cluster = Cluster::start(
        3,
        ClusterOptions {
            secure: true,
            max_request_bytes: Some(MAX_REQUEST),
            extra_args: vec!["--max-concurrent-requests".into(), LIMIT.to_string()],
            ..ClusterOptions::default()
        },
    )
    .expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let credentials = cluster.credentials().expect("a secure cluster");
    let writer = credentials.token("write").to_owned();
    let mut sql = raw_sql(cluster.node(leader).addr(), credentials.ca_pem());

    info!("phase 1: calls answered by number; a failed call fails alone, the stream goes on");
    let mut stream = RawStream::open(&mut sql, Some(&writer))
        .await
        .expect("open");
    stream
        .send(
            1,
            write("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER UNIQUE)"),
        )
        .await;
    assert_eq!(code(&stream.answers(1).await[&1]), Code::Ok);
    stream.send(2, write("INSERT INTO t(v) VALUES (1)")).await;
    stream.send(3, write("INSERT INTO t(v) VALUES (1)")).await;
    stream.send(4, write("INSERT INTO t(v) VALUES (2)")).await;
    let answers = stream.answers(3).await;
    assert_eq!(code(&answers[&2]), Code::Ok);
    let log_index = answers[&2].response.as_ref().expect("response").log_index;
    assert!(log_index > 0, "a write answers its log index");
    let unique = &answers[&3];
    assert_eq!(code(unique), Code::FailedPrecondition, "{unique:?}");
    assert!(
        unique
            .error
            .as_ref()
            .expect("error")
            .message
            .contains("UNIQUE"),
        "{unique:?}"
    );
    assert_eq!(code(&answers[&4]), Code::Ok);
    assert_eq!(
        count_of(&cluster, "t").await,
        2,
        "the failed call changed nothing"
    );

    info!("phase 2: per-call checks: no request, over max_request_bytes; the stream goes on");
    stream.send(5, None).await;
    let big = format!(
        "INSERT INTO t(v) SELECT length('{}')",
        "x".repeat(MAX_REQUEST)
    );
    stream.send(6, write(&big)).await;
    stream.send(7, write("INSERT INTO t(v) VALUES (3)")).await;
    let answers = stream.answers(3).await;
    assert_eq!(
        code(&answers[&5]),
        Code::InvalidArgument,
        "{:?}",
        answers[&5]
    );
    assert_eq!(
        code(&answers[&6]),
        Code::ResourceExhausted,
        "{:?}",
        answers[&6]
    );
    assert!(
        answers[&6]
            .error
            .as_ref()
            .expect("error")
            .message
            .contains("max_request_bytes"),
        "{:?}",
        answers[&6]
    );
    assert_eq!(code(&answers[&7]), Code::Ok);
    assert_eq!(count_of(&cluster, "t").await, 3);

    info!("phase 3: the node's concurrency limit counts every call on the stream");
    stream.send(9, write("CREATE TABLE slow(v INTEGER)")).await;
    assert_eq!(code(&stream.answers(1).await[&9]), Code::Ok);
    for id in 10..10 + LIMIT as u64 + 2 {
        stream.send(id, write(SLOW_WRITE)).await;
    }
    let answers = stream.answers(LIMIT + 2).await;
    let codes: Vec<Code> = (10..10 + LIMIT as u64 + 2)
        .map(|id| code(&answers[&id]))
        .collect();
    let shed = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    let ok = codes.iter().filter(|c| **c == Code::Ok).count();
    assert!(
        shed >= 2 && ok >= 1 && ok + shed == codes.len(),
        "{codes:?}"
    );
    assert_eq!(count_of(&cluster, "slow").await, ok as i64);
    let rows = 3;

    info!("phase 4: no token, or a read token: the stream is refused");
    let refused = RawStream::open(&mut sql, None).await.map(|_| ());
    assert_eq!(refused.expect_err("refused").code(), Code::Unauthenticated);
    let reader = credentials.token("read").to_owned();
    let refused = RawStream::open(&mut sql, Some(&reader)).await.map(|_| ());
    assert_eq!(refused.expect_err("refused").code(), Code::PermissionDenied);

    info!("phase 5: a message over the decode limit ends its stream; others go on");
    let mut hostile = RawStream::open(&mut sql, Some(&writer))
        .await
        .expect("open");
    let huge = format!("SELECT '{}'", "x".repeat(9 << 20));
    hostile.send(1, write(&huge)).await;
    let ended = hostile.next().await.expect_err("the stream ends");
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    stream.send(20, write("INSERT INTO t(v) VALUES (4)")).await;
    assert_eq!(code(&stream.answers(1).await[&20]), Code::Ok);

    info!("phase 6: a stream whose answers are never read stops being read, and holds no permit");
    let other = cluster.client_with_role([leader], Duration::from_secs(5), Some("write"));
    other
        .exec(
            "CREATE TABLE h(id INTEGER PRIMARY KEY, b)",
            Vec::<i64>::new(),
        )
        .await
        .expect("create");
    // A connection of its own: its unread answers fill that connection's flow-control window.
    let mut hoard_sql = raw_sql(cluster.node(leader).addr(), credentials.ca_pem());
    let hoarder = RawStream::open(&mut hoard_sql, Some(&writer))
        .await
        .expect("open");
    // One call every 5 ms, so that each finds a permit free: only the stream's room stops them.
    for id in 0..HOARD {
        let call = "INSERT INTO h(b) VALUES (1) RETURNING zeroblob(200000)";
        hoarder.send(id, write(call)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..(2 * LIMIT) {
        other
            .exec("INSERT INTO t(v) VALUES (?1)", [100 + i as i64])
            .await
            .expect("another client's writes go on");
    }
    let hoarded = count_of(&cluster, "h").await;
    info!(
        hoarded,
        sent = HOARD,
        "calls the node took from the hoarder"
    );
    // Room for 64 answers, plus the ~10 that fit the client's 2 MiB stream window and the
    // node's send buffer.
    assert!(
        (MAX_STREAM_CALLS as i64 / 2..=MAX_STREAM_CALLS as i64 + 36).contains(&hoarded),
        "the node ran {hoarded} of the {HOARD} calls of a stream nobody reads"
    );
    drop(hoarder);
    let rows = rows + 1 + 2 * LIMIT as i64;
    assert_eq!(count_of(&cluster, "t").await, rows);

    info!("phase 7: the write token is removed from the auth file: its open stream ends");
    credentials
        .write_auth_file(&[
            ("r", &reader, "read"),
            ("a", credentials.token("admin"), "admin"),
        ])
        .expect("rewrite the auth file");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut id = 30;
    let ended = loop {
        assert!(Instant::now() < deadline, "the stream outlived its token");
        id += 1;
        stream.send(id, write("UPDATE t SET v = v WHERE 0")).await;
        match stream.next().await {
            Ok(Some(answer)) => assert_eq!(code(&answer), Code::Ok, "{answer:?}"),
            other => break other.expect_err("the stream ends with the refusal"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let refused = RawStream::open(&mut sql, Some(&writer)).await.map(|_| ());
    assert_eq!(refused.expect_err("refused").code(), Code::Unauthenticated);
    assert_eq!(count_of(&cluster, "t").await, rows);

    info!("phase 8: streams held open up to the node's limit; the client library's writes go unary past it");
    let admin = credentials.token("admin").to_owned();
    let mut held = Vec::new();
    let refused = loop {
        assert!(
            held.len() <= LIMIT,
            "the node keeps more than {LIMIT} streams open"
        );
        match RawStream::open(&mut sql, Some(&admin)).await {
            Ok(stream) => held.push(stream),
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_concurrent_requests"),
        "{refused:?}"
    );
    let fresh = cluster.client_for(leader);
    fresh
        .exec("INSERT INTO t(v) VALUES (?1)", [200_i64])
        .await
        .expect("a write while no stream can open");
    drop(held);
    drop(other);
    // Their streams end with their clients, and give their places back.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = loop {
        match RawStream::open(&mut sql, Some(&admin)).await {
            Ok(stream) => break stream,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    Instant::now() < deadline,
                    "closed streams kept their places"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("opening a stream: {status:?}"),
        }
    };
    let rows = rows + 1;
    assert_eq!(count_of(&cluster, "t").await, rows);

    info!("nothing else changed: same leader and term, replicas identical, every node up");
    assert_eq!(cluster.leader_id().await, Some(leader));
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .expect("converged");
    cluster.assert_identical_pages().await;
    for id in cluster.ids() {
        cluster.node(id).ensure_alive().expect("no node exited");
    }

    info!("phase 9: SIGTERM with a stream open: the node ends it UNAVAILABLE and stops at once");
    last.send(40, write("UPDATE t SET v = v WHERE 0")).await;
    assert_eq!(code(&last.answers(1).await[&40]), Code::Ok);
    let started = Instant::now();
    cluster.node(leader).stop().await.expect("a clean stop");
    let took = started.elapsed();
    info!(?took, "stopped");
    assert!(
        took < Duration::from_secs(5),
        "an open stream held up the node's stop for {took:?}"
    );
    let ended = last.next().await.expect_err("the stream ends");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
}
