//! t12: what apps need beyond one-shot batches: RETURNING rows and `last_insert_rowid` through
//! every path (direct, forwarded, deduplicated retry), and interactive transactions (own
//! writes, isolation, idle timeout, commit through a follower, a leader killed mid-transaction).

use std::time::{Duration, Instant};

use cluster_tests::client::proto::v1;
use cluster_tests::client::{Error, Value};
use cluster_tests::{
    expect_status, init_tracing, raw_sql, Cluster, ClusterOptions, Consistency, Statement,
};
use tonic::Code;
use tracing::info;

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

const CREATE: &str = "CREATE TABLE counter(id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER)";

fn int(v: &Value) -> i64 {
    match v {
        Value::Integer(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn returning_rowids_and_transactions_on_every_path() {
    init_tracing();
    info!("phase 1: a secure 3-node cluster (tokens, TLS); transactions end after 1 s idle or 3 s open");
    let cluster = Cluster::start(
        3,
        ClusterOptions {
            secure: true,
            extra_args: vec![
                "--transaction-idle-timeout-ms".into(),
                "1000".into(),
                "--transaction-max-ms".into(),
                "3000".into(),
                // The default: a transaction's commit is kept open and committed in place.
                "--write-pipeline-depth".into(),
                "1".into(),
            ],
            ..ClusterOptions::default()
        },
    )
    .expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let followers = cluster.ids_except(leader);
    let (f1, f2) = (followers[0], followers[1]);
    let options = |id: u64| cluster.client_with_role([id], Duration::from_secs(5), Some("write"));
    let (on_leader, via_f1, via_f2) = (options(leader), options(f1), options(f2));
    on_leader
        .execute([
            CREATE,
            "INSERT INTO counter(name, n) VALUES('a', 0), ('b', 0)",
        ])
        .await
        .expect("create");

    info!("phase 2: RETURNING rows come back directly and through a follower");
    for (client, expected) in [(&on_leader, 1), (&via_f1, 2)] {
        let r = client
            .execute(["UPDATE counter SET n = n + 1 WHERE name = 'a' RETURNING n, name"])
            .await
            .expect("update returning");
        let s = &r.results[0];
        assert_eq!(s.rows_affected, 1);
        assert_eq!(
            s.columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["n", "name"]
        );
        assert_eq!(s.rows.len(), 1, "{s:?}");
        assert_eq!(int(&s.rows[0].values()[0]), expected);
        assert_eq!(s.rows[0].values()[1], Value::Text("a".into()));
        assert_eq!(s.last_insert_rowid, 0, "an UPDATE inserted nothing: {s:?}");
    }

    info!("phase 3: a retried request id through another follower answers the same rows");
    let insert =
        [Statement::new("INSERT INTO counter(name, n) VALUES(?1, 7) RETURNING id, n").bind("c")];
    let first = via_f1
        .execute_with_id("t12-insert-c", insert.clone())
        .await
        .expect("insert");
    let retry = via_f2
        .execute_with_id("t12-insert-c", insert)
        .await
        .expect("retry");
    assert!(!first.deduplicated && retry.deduplicated);
    assert_eq!(
        first.results, retry.results,
        "the first result, rows included"
    );
    assert_eq!(first.results[0].last_insert_rowid, 3);
    assert_eq!(int(&first.results[0].rows[0].values()[0]), 3);
    let count = on_leader
        .query(
            "SELECT count(*) FROM counter WHERE name = 'c'",
            Vec::<Value>::new(),
        )
        .await
        .expect("count");
    assert_eq!(
        count.rows[0].get::<i64>(0).expect("count"),
        1,
        "applied once"
    );

    info!("phase 4: a transaction through follower f1 reads, decides and writes; others do not see it before the commit");
    let mut tx = via_f1.begin().await.expect("begin through a follower");
    let n = tx
        .query(
            "SELECT n FROM counter WHERE name = 'a'",
            Vec::<Value>::new(),
        )
        .await
        .expect("read in the transaction");
    let n: i64 = n.rows[0].get(0).expect("n");
    let updated = tx
        .exec(
            "UPDATE counter SET n = ?1 WHERE name = 'a' RETURNING n",
            [n * 10],
        )
        .await
        .expect("write in the transaction");
    assert_eq!(int(&updated.rows[0].values()[0]), n * 10);
    let inserted = tx
        .exec(
            "INSERT INTO counter(name, n) VALUES('d', 1)",
            Vec::<Value>::new(),
        )
        .await
        .expect("insert in the transaction");
    assert_eq!(inserted.last_insert_rowid, 4);
    let own = tx
        .query(
            "SELECT n FROM counter WHERE name IN ('a', 'd') ORDER BY name",
            Vec::<Value>::new(),
        )
        .await
        .expect("own writes");
    assert_eq!(own.rows.len(), 2, "the transaction sees its own insert");
    let outside = on_leader
        .query(
            "SELECT n FROM counter WHERE name = 'a'",
            Vec::<Value>::new(),
        )
        .await
        .expect("outside read");
    assert_eq!(
        outside.rows[0].get::<i64>(0).expect("n"),
        n,
        "not visible before the commit"
    );
    // A constraint failure fails that call alone; the transaction goes on.
    let dup = tx
        .exec(
            "INSERT INTO counter(name, n) VALUES('a', 0)",
            Vec::<Value>::new(),
        )
        .await;
    expect_status(
        dup,
        Code::FailedPrecondition,
        "duplicate name in the transaction",
    );

    info!("phase 4b: another valid token that learned the transaction id can neither use, commit nor end it");
    let credentials = cluster.credentials().expect("secure");
    let mut attacker = raw_sql(cluster.node(leader).addr(), credentials.ca_pem());
    let admin = credentials.token("admin");
    let hijack = attacker
        .execute(with_token(
            v1::ExecuteRequest {
                request_id: String::new(),
                statements: vec![v1::Statement::new("DELETE FROM counter", vec![])],
                transaction_id: tx.id().to_string(),
            },
            admin,
        ))
        .await;
    assert_eq!(hijack.map(|_| ()).map_err(|s| s.code()), Err(Code::Aborted));
    let hijack = attacker
        .commit(with_token(
            v1::CommitRequest {
                transaction_id: tx.id().to_string(),
                request_id: "hijack".into(),
            },
            admin,
        ))
        .await;
    assert_eq!(hijack.map(|_| ()).map_err(|s| s.code()), Err(Code::Aborted));
    let ended = attacker
        .rollback(with_token(
            v1::RollbackRequest {
                transaction_id: tx.id().to_string(),
            },
            admin,
        ))
        .await;
    assert!(
        ended.is_ok(),
        "a rollback of an unknown transaction is a no-op: {ended:?}"
    );
    let still = tx
        .query("SELECT count(*) FROM counter", Vec::<Value>::new())
        .await
        .expect("the owner's transaction is untouched");
    assert_eq!(still.rows[0].get::<i64>(0).expect("count"), 4);
    let forged = attacker
        .execute(with_token(
            v1::ExecuteRequest {
                request_id: String::new(),
                statements: vec![v1::Statement::new("SELECT 1", vec![])],
                transaction_id: "../../etc/passwd".into(),
            },
            admin,
        ))
        .await;
    assert_eq!(
        forged.map(|_| ()).map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );

    info!("phase 5: a write from another client waits for the transaction (BEGIN IMMEDIATE), then runs after it");
    let waiting = {
        let client = via_f2.clone();
        tokio::spawn(async move {
            client
                .execute(["UPDATE counter SET n = n + 1 WHERE name = 'a' RETURNING n"])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !waiting.is_finished(),
        "the other write waits for the transaction"
    );
    let committed = tx.commit().await.expect("commit through a follower");
    assert!(committed.log_index > 0 && !committed.deduplicated);
    let after = waiting
        .await
        .expect("join")
        .expect("the waiting write runs");
    assert_eq!(
        int(&after.results[0].rows[0].values()[0]),
        n * 10 + 1,
        "it ran on the committed transaction"
    );
    let seen = via_f2
        .query_with(
            Statement::new("SELECT count(*) FROM counter WHERE name = 'd'"),
            Consistency::AtIndex(committed.log_index),
            0,
        )
        .await
        .expect("read at the commit's index on f2");
    assert_eq!(seen.rows[0].get::<i64>(0).expect("count"), 1);

    info!("phase 6: an idle transaction is rolled back after 1 s; a write waits for it no longer than that");
    let mut idle = on_leader.begin().await.expect("begin");
    idle.exec(
        "INSERT INTO counter(name, n) VALUES('idle', 0)",
        Vec::<Value>::new(),
    )
    .await
    .expect("write");
    let started = Instant::now();
    on_leader
        .execute(["INSERT INTO counter(name, n) VALUES('after-idle', 0)"])
        .await
        .expect("a write after the idle timeout");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(4),
        "the write waited for the idle timeout, not longer: {waited:?}"
    );
    let gone = idle
        .exec(
            "INSERT INTO counter(name, n) VALUES('late', 0)",
            Vec::<Value>::new(),
        )
        .await;
    let message = expect_status(gone, Code::Aborted, "a call after the idle timeout");
    assert!(
        message.contains("run the whole transaction again"),
        "{message}"
    );

    info!("phase 7: rollback discards; a read-only transaction commits nothing and answers the index it read at");
    let mut discarded = via_f2.begin().await.expect("begin");
    discarded
        .exec("DELETE FROM counter", Vec::<Value>::new())
        .await
        .expect("delete");
    discarded.rollback().await.expect("rollback");
    let mut read_only = via_f2.begin().await.expect("begin");
    read_only
        .query("SELECT count(*) FROM counter", Vec::<Value>::new())
        .await
        .expect("read");
    let read_at = read_only.commit().await.expect("commit").log_index;
    assert!(
        read_at >= committed.log_index,
        "the index it read at includes the earlier commit: {read_at} < {}",
        committed.log_index
    );
    let left = on_leader
        .query("SELECT name FROM counter ORDER BY id", Vec::<Value>::new())
        .await
        .expect("rows");
    let names: Vec<String> = left.rows.iter().map(|r| r.get(0).expect("name")).collect();
    assert_eq!(
        names,
        ["a", "b", "c", "d", "after-idle"],
        "idle and rolled back writes are gone"
    );

    info!("phase 8: a client that keeps its transaction busy loses it after 3 s; a waiting write then runs");
    let mut busy = on_leader.begin().await.expect("begin");
    let began = Instant::now();
    let waiting = {
        let client = via_f1.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            client
                .execute(["INSERT INTO counter(name, n) VALUES('behind-busy', 0)"])
                .await
                .map(|_| started.elapsed())
        })
    };
    let ended = loop {
        let r = busy
            .query("SELECT count(*) FROM counter", Vec::<Value>::new())
            .await;
        if r.is_err() || began.elapsed() > Duration::from_secs(10) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    expect_status(
        ended,
        Code::Aborted,
        "a call past the transaction's time limit",
    );
    let held = began.elapsed();
    assert!(
        held >= Duration::from_millis(2800) && held < Duration::from_secs(6),
        "held for the limit: {held:?}"
    );
    let waited = waiting
        .await
        .expect("join")
        .expect("the waiting write runs");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    info!("phase 9: a read-only token may not begin a transaction");
    let reader = cluster.client_as(Some("read"));
    expect_status(
        reader.begin().await.map(|_| ()),
        Code::PermissionDenied,
        "Begin with a read token",
    );
    cluster.assert_identical_pages().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_killed_mid_transaction_applies_nothing() {
    init_tracing();
    info!("phase 1: three nodes; a transaction begun through a follower writes 50 rows");
    let cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let follower = cluster.ids_except(leader)[0];
    let client = cluster.client();
    client.execute([CREATE]).await.expect("create");
    let via_follower = cluster.client_for(follower);
    let mut tx = via_follower.begin().await.expect("begin");
    for i in 0..50 {
        tx.exec(
            "INSERT INTO counter(name, n) VALUES(?1, ?2)",
            [Value::Text(format!("tx-{i}")), Value::Integer(i)],
        )
        .await
        .expect("write in the transaction");
    }

    info!(
        leader,
        "phase 2: SIGKILL the leader; the transaction is aborted, never half-applied"
    );
    cluster.node(leader).kill().expect("kill the leader");
    let new_leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a new leader");
    assert_ne!(new_leader, leader);
    let deadline = Instant::now() + Duration::from_secs(10);
    let outcome = loop {
        let r = tx
            .exec(
                "INSERT INTO counter(name, n) VALUES('after-kill', 0)",
                Vec::<Value>::new(),
            )
            .await;
        match r {
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    match outcome {
        Err(e @ Error::Status { .. }) => assert!(e.is_aborted(), "ABORTED, got {e:?}"),
        other => panic!("the transaction must be aborted, got {other:?}"),
    }
    expect_status(
        tx.commit().await,
        Code::Aborted,
        "commit of the aborted transaction",
    );

    info!("phase 3: nothing of it exists; a new transaction on the new leader commits");
    let rows = client
        .query("SELECT count(*) FROM counter", Vec::<Value>::new())
        .await
        .expect("count");
    assert_eq!(rows.rows[0].get::<i64>(0).expect("count"), 0);
    let mut again = client.begin().await.expect("begin on the new leader");
    again
        .exec(
            "INSERT INTO counter(name, n) VALUES('retried', 1)",
            Vec::<Value>::new(),
        )
        .await
        .expect("write");
    again.commit().await.expect("commit");
    cluster
        .node(leader)
        .restart()
        .await
        .expect("restart the old leader");

    info!(
        new_leader,
        "phase 4: a transaction begun on the leader itself; the leader is killed; the next \
         call is ABORTED by the next leader, through the other nodes"
    );
    let mut ids = vec![new_leader];
    ids.extend(cluster.ids_except(new_leader));
    let leader_first = cluster.client_with(ids, Duration::from_secs(20));
    let mut on_leader = leader_first.begin().await.expect("begin on the leader");
    on_leader
        .exec(
            "INSERT INTO counter(name, n) VALUES('lost', 2)",
            Vec::<Value>::new(),
        )
        .await
        .expect("write in the transaction");
    cluster.node(new_leader).kill().expect("kill the leader");
    let next = on_leader
        .exec(
            "INSERT INTO counter(name, n) VALUES('after', 3)",
            Vec::<Value>::new(),
        )
        .await;
    match next {
        Err(e) => assert!(
            e.is_aborted(),
            "ABORTED, not a connection error from the dead node: {e:?}"
        ),
        Ok(r) => panic!("the transaction must be aborted, got {r:?}"),
    }
    on_leader
        .rollback()
        .await
        .expect("a rollback of a gone transaction is done");
    let rows = client
        .query(
            "SELECT count(*) FROM counter WHERE name IN ('lost', 'after')",
            Vec::<Value>::new(),
        )
        .await
        .expect("count");
    assert_eq!(rows.rows[0].get::<i64>(0).expect("count"), 0);
    cluster
        .node(new_leader)
        .restart()
        .await
        .expect("restart the killed leader");
    cluster.assert_identical_pages().await;
}

/// A write sent through a follower while an interactive transaction holds the leader's write
/// lock waits for it, as a write sent to the leader does. The follower used to give up on the
/// leader after two election timeouts (1.2 s) and answer UNAVAILABLE, although the leader was
/// only busy and ran the write afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_through_a_follower_waits_for_a_transaction_on_the_leader() {
    init_tracing();
    let cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader");
    let follower = cluster.ids_except(leader)[0];
    let client = cluster.client();
    client
        .exec("CREATE TABLE held (n INTEGER)", Vec::<i64>::new())
        .await
        .expect("create held");
    let tx = cluster
        .client_for(leader)
        .begin()
        .await
        .expect("begin on the leader");
    // No retries: a refusal is seen, not retried away.
    let through_follower = cluster.client_with([follower], Duration::ZERO);
    let write = tokio::spawn(async move {
        let started = Instant::now();
        let result = through_follower
            .exec("INSERT INTO held VALUES (1)", Vec::<i64>::new())
            .await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tx.commit().await.expect("commit the idle transaction");
    let (result, took) = write.await.expect("the writer");
    result.unwrap_or_else(|e| panic!("the forwarded write, after {took:?}: {e}"));
    info!(ms = took.as_millis() as u64, "forwarded write answered");
    assert!(
        took >= Duration::from_secs(2),
        "it waited for the transaction: {took:?}"
    );
    let rows = client
        .query_with(
            Statement::new("SELECT count(*) FROM held"),
            Consistency::Linearizable,
            0,
        )
        .await
        .expect("count");
    assert_eq!(int(&rows.rows[0].values()[0]), 1, "written once");
}
