//! t10: a healthy three-node cluster: replication, writes through a follower, every read
//! consistency on a follower, rejected input, and exactly-once writes under a repeated id.

use std::time::Duration;

use cluster_tests::client::proto::v1::{self, sql_client::SqlClient};
use cluster_tests::{
    expect_status, init_tracing, Checker, Cluster, ClusterOptions, Consistency, Statement,
};
use tonic::Code;
use tracing::info;

/// The server's default `--max-request-bytes`.
const DEFAULT_MAX_REQUEST_BYTES: usize = 16 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn replication_reads_rejections_and_dedup() {
    init_tracing();

    info!("phase 1: start three nodes and wait for them to elect a leader by themselves");
    let cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let followers = cluster.ids_except(leader);
    let (f1, f2) = (followers[0], followers[1]);
    let via_f1 = cluster.client_for(f1);

    info!(leader, f1, "phase 2: create a table and write 20 rows through follower f1, which forwards them to the leader");
    let checker = Checker::new("basic_kv");
    let created = checker
        .create_table(&via_f1)
        .await
        .expect("CREATE TABLE through a follower");
    assert!(
        created.log_index > 0,
        "a write returns its Raft log index: {created:?}"
    );
    let warned_before = cluster.node(leader).warnings().len();
    let mut previous = created.log_index;
    for i in 0..20 {
        let key = format!("row-{i}");
        let written = checker
            .write(&via_f1, &key, &format!("value {i}"))
            .await
            .expect("write through a follower");
        assert!(
            written.log_index > previous,
            "log indexes grow: {} after {previous}",
            written.log_index
        );
        assert_eq!(written.results.len(), 1, "one result per statement");
        assert_eq!(written.results[0].rows_affected, 1);
        // `deduplicated` may be true here: on a starved machine the client can time out and
        // retry under the same request id, and the first result comes back. Exactly-once is
        // what the audit below checks; dedup itself is checked with fixed ids in phase 6.
        previous = written.log_index;
    }

    // A healthy cluster's log does not grow with its writes (openraft's responder warned once
    // per write while nobody waited for its answer).
    let warnings = cluster.node(leader).warnings();
    assert!(
        warnings.len() - warned_before < 10,
        "the leader logged {} warnings during 20 healthy writes:\n{}",
        warnings.len() - warned_before,
        warnings[warned_before..].join("\n")
    );

    info!("phase 3: every node holds all 21 writes (stale reads on each node after convergence)");
    let report = checker
        .verify(&cluster)
        .await
        .expect("replicated to every node");
    assert_eq!((report.acked, report.nodes.len()), (20, 3));

    info!(
        f2,
        "phase 4: a write through f1 is visible on follower f2 at every consistency level"
    );
    let written = checker
        .write(&via_f1, "fresh", "just written")
        .await
        .expect("write through f1");
    let on_f2 = cluster.client_for(f2);
    let select = Statement::new("SELECT v FROM basic_kv WHERE k = ?1").bind("fresh");
    // at_index first: it must wait for f2 to apply the write, so the levels after it that only
    // promise bounded staleness have the row too.
    for consistency in [
        Consistency::AtIndex(written.log_index),
        Consistency::Linearizable,
        Consistency::Bounded { max_lag: 0 },
        Consistency::Stale,
    ] {
        let rows = on_f2
            .query_with(select.clone(), consistency, 0)
            .await
            .unwrap_or_else(|e| panic!("{consistency:?} read on follower {f2}: {e}"));
        assert_eq!(
            rows.rows.len(),
            1,
            "{consistency:?} read on f2 sees the write: {rows:?}"
        );
        assert_eq!(rows.rows[0].get::<String>(0).expect("text"), "just written");
        assert!(
            rows.applied_index >= written.log_index,
            "{consistency:?}: f2 answered at applied index {} before the write's {}",
            rows.applied_index,
            written.log_index
        );
        assert_eq!(rows.columns.len(), 1);
        assert_eq!(rows.columns[0].name, "v");
    }
    // A read at an index not written yet answers before the caller's deadline, saying what
    // this node has applied (it used to wait past the deadline: "no answer within 2s").
    let once = cluster_tests::Client::with_options(
        [cluster.node(f2).endpoint()],
        cluster_tests::ClientOptions {
            request_timeout: Duration::from_secs(2),
            retry_deadline: Duration::ZERO,
            ..cluster_tests::ClientOptions::default()
        },
    )
    .expect("client");
    let future = written.log_index + 1_000_000;
    let refused = once
        .query_with(select.clone(), Consistency::AtIndex(future), 0)
        .await;
    let message = expect_status(refused, Code::Unavailable, "a read at a future index");
    assert!(
        message.contains(&format!("did not reach index {future}"))
            && message.contains("may not be written yet"),
        "{message}"
    );
    // max_rows cuts a result short and says so.
    let limited = on_f2
        .query_with(
            Statement::new("SELECT k FROM basic_kv ORDER BY k"),
            Consistency::Linearizable,
            5,
        )
        .await
        .expect("limited read");
    assert_eq!(limited.rows.len(), 5);
    assert!(
        limited.truncated,
        "max_rows=5 of 22 rows must report truncation"
    );
    // Read-your-writes through a client that knows every node.
    let all = cluster.client();
    let mine = checker
        .write(&all, "ryw", "mine")
        .await
        .expect("write through any node");
    let rows = all
        .query_with(
            Statement::new("SELECT v FROM basic_kv WHERE k = 'ryw'"),
            Consistency::ReadYourWrites,
            0,
        )
        .await
        .expect("read-your-writes");
    assert_eq!(
        rows.rows.len(),
        1,
        "read-your-writes sees the client's own write"
    );
    assert!(rows.applied_index >= mine.log_index);

    info!("phase 5: bad input gets the documented code and SQLite's own message, on follower f1");
    let message = expect_status(
        via_f1
            .exec(
                "INSERT INTO basic_kv VALUS ('a', 'b')",
                Vec::<String>::new(),
            )
            .await,
        Code::InvalidArgument,
        "a write with a syntax error",
    );
    assert!(
        message.contains("near \"VALUS\": syntax error"),
        "SQLite's message: {message:?}"
    );
    let message = expect_status(
        via_f1
            .query("SELECT * FROM no_such_table", Vec::<String>::new())
            .await,
        Code::InvalidArgument,
        "a query of a missing table",
    );
    assert!(
        message.contains("no such table: no_such_table"),
        "SQLite's message: {message:?}"
    );
    let elsewhere = cluster.dir().join("attached.db");
    for forbidden in [
        format!("ATTACH DATABASE '{}' AS other", elsewhere.display()),
        "PRAGMA journal_mode=DELETE".to_string(),
        "BEGIN".to_string(),
    ] {
        expect_status(
            via_f1.execute([forbidden.as_str()]).await,
            Code::PermissionDenied,
            &forbidden,
        );
    }
    assert!(
        !elsewhere.exists(),
        "a refused ATTACH must not create {}",
        elsewhere.display()
    );
    let internal = via_f1
        .query_with(
            Statement::new(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, 10) = '_raftlite_'",
            ),
            Consistency::Linearizable,
            0,
        )
        .await
        .expect("list the internal tables");
    assert!(
        !internal.rows.is_empty(),
        "request ids are recorded in a _raftlite_* table of the same database"
    );
    for row in &internal.rows {
        let table: String = row.get(0).expect("table name");
        expect_status(
            via_f1.execute([format!("DELETE FROM {table}")]).await,
            Code::PermissionDenied,
            &format!("a write to internal table {table}"),
        );
    }
    via_f1
        .execute([
            "CREATE TABLE basic_unique (id INTEGER PRIMARY KEY)",
            "INSERT INTO basic_unique VALUES (1)",
        ])
        .await
        .expect("create a table with a primary key");
    expect_status(
        via_f1
            .exec("INSERT INTO basic_unique VALUES (?1)", [1])
            .await,
        Code::FailedPrecondition,
        "a duplicate primary key",
    );
    // All or nothing: the first statement of a failing request leaves no trace. Its key is
    // not in the checker's ledger, so the final audit fails if it shows up anywhere.
    expect_status(
        via_f1
            .execute([
                checker.insert("rolled-back", "must not exist"),
                Statement::new("INSERT INTO basic_unique VALUES (1)"),
            ])
            .await,
        Code::FailedPrecondition,
        "a request whose second statement violates a constraint",
    );
    expect_status(
        via_f1
            .execute([oversized(DEFAULT_MAX_REQUEST_BYTES + (1 << 20))])
            .await,
        Code::ResourceExhausted,
        "a request 1 MiB over the default --max-request-bytes",
    );
    info!("phase 5b: the follower still serves after all that");
    checker
        .write(&via_f1, "after-bad-input", "still fine")
        .await
        .expect("f1 still takes writes");
    let count = via_f1
        .query("SELECT count(*) FROM basic_kv", Vec::<String>::new())
        .await
        .expect("f1 still serves reads");
    assert_eq!(count.rows[0].get::<i64>(0).expect("count"), 23);

    info!("phase 6: one request id sent to f1, then to the leader, then to f2: applied once, then answered as duplicate");
    let request = v1::ExecuteRequest {
        request_id: "t10-exactly-once".into(),
        statements: vec![checker.insert("exactly-once", "one").into()],
        transaction_id: String::new(),
    };
    checker.record_sent("exactly-once", "one");
    let mut answers = Vec::new();
    for node in [f1, leader, f2] {
        let mut sql = SqlClient::connect(cluster.node(node).endpoint())
            .await
            .expect("connect to a node");
        let answer = sql
            .execute(request.clone())
            .await
            .unwrap_or_else(|e| panic!("execute on node {node}: {e}"))
            .into_inner();
        answers.push(answer);
    }
    checker.record_acked("exactly-once");
    assert!(
        !answers[0].deduplicated,
        "the first send applies: {:?}",
        answers[0]
    );
    for (node, answer) in [(leader, &answers[1]), (f2, &answers[2])] {
        assert!(
            answer.deduplicated,
            "resend to node {node} must be deduplicated: {answer:?}"
        );
        assert_eq!(
            answer.log_index, answers[0].log_index,
            "the first result is returned"
        );
        assert_eq!(
            answer.results, answers[0].results,
            "the first result is returned"
        );
    }
    let again = all
        .execute_with_id("t10-exactly-once", [checker.insert("exactly-once", "one")])
        .await
        .expect("the client resends the same id");
    assert!(
        again.deduplicated && again.log_index == answers[0].log_index,
        "{again:?}"
    );

    info!("phase 7: audit every node (each acknowledged key exactly once) and compare the replicas page by page");
    let report = checker.verify(&cluster).await.expect("audit");
    assert_eq!(report.acked, 24);
    assert_eq!(report.unacked_applied, 0, "no rejected write left a row");
    cluster.assert_identical_pages().await;

    info!("phase 8: a request far over the limit (40 MiB) is RESOURCE_EXHAUSTED too, and the node still serves");
    expect_status(
        via_f1.execute([oversized(40 << 20)]).await,
        Code::ResourceExhausted,
        "a request of 40 MiB, over the default --max-request-bytes",
    );
    checker
        .write(&via_f1, "after-huge-request", "still fine")
        .await
        .expect("f1 still takes writes after a huge request");

    info!("phase 8b: 300 writes at once from one client share its stream to f1 (64 unanswered at a time); each applied once");
    via_f1
        .execute(["CREATE TABLE many (n INTEGER PRIMARY KEY)"])
        .await
        .expect("create");
    let mut writes = tokio::task::JoinSet::new();
    for n in 0..300_i64 {
        let client = via_f1.clone();
        writes.spawn(async move { client.exec("INSERT INTO many (n) VALUES (?1)", [n]).await });
    }
    while let Some(done) = writes.join_next().await {
        done.expect("the task ran")
            .expect("every write is acknowledged");
    }
    let many = via_f1
        .query("SELECT count(*), sum(n) FROM many", Vec::<i64>::new())
        .await
        .expect("count");
    assert_eq!(
        (
            many.rows[0].get::<i64>(0).expect("count"),
            many.rows[0].get::<i64>(1).expect("sum")
        ),
        (300, 299 * 300 / 2)
    );

    info!("phase 9: idle for 12 s, no follower polls for votes (openraft's idle heartbeats come every 150 ms)");
    let polls = |f: u64| cluster.node(f).log_lines_with("pre-vote refused");
    let polled_before: Vec<usize> = followers.iter().map(|&f| polls(f).len()).collect();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let new_polls: Vec<String> = followers
        .iter()
        .zip(&polled_before)
        .flat_map(|(&f, &before)| polls(f).split_off(before))
        .collect();
    assert!(
        new_polls.is_empty(),
        "followers of a healthy, idle leader polled for votes:\n{}",
        new_polls.join("\n")
    );
    info!(?report, "t10 done");
}

/// A write of one row whose value is a `size`-byte blob; never recorded by the checker, so the
/// audit fails if it is ever applied.
fn oversized(size: usize) -> Statement {
    Statement::new("INSERT INTO basic_kv (k, v) VALUES (?1, ?2)")
        .bind("too-big")
        .bind(vec![7u8; size])
}
