//! t25: a leader cut off from its quorum (both followers paused with SIGSTOP, so the leader
//! keeps running and keeps thinking it leads) must not serve `bounded` reads from data that
//! may already be old; once the followers are back it serves them again. Nor linearizable
//! reads: its read lease runs out when the quorum's acknowledgements get old, and a paused
//! leader that resumes after a new one took over never answers from its old data. The other
//! way round, followers that stall for a moment do not cost a healthy leader its leadership.

use std::time::Duration;

use cluster_tests::client::Error;
use cluster_tests::{init_tracing, wait_until, Cluster, ClusterOptions, Consistency, Statement};
use tracing::info;

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid of a child process this harness started; no memory involved.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "signal {sig} to {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_reads_on_a_leader_cut_off_from_its_quorum() {
    init_tracing();
    info!("phase 1: three nodes, one row");
    let cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let client = cluster.client_for(leader);
    client
        .exec("CREATE TABLE t (x)", Vec::<i64>::new())
        .await
        .expect("create");
    let bounded = Consistency::Bounded { max_lag: 0 };
    let read = || {
        let c = cluster.client_with([leader], Duration::ZERO);
        async move {
            c.query_with(Statement::new("SELECT count(*) FROM t"), bounded, 0)
                .await
        }
    };
    read().await.expect("a bounded read on a healthy leader");

    info!("phase 2: pause both followers; within 3 election timeouts the leader refuses bounded reads");
    let followers: Vec<u32> = cluster
        .ids_except(leader)
        .into_iter()
        .map(|id| cluster.node(id).pid().expect("running"))
        .collect();
    for pid in &followers {
        signal(*pid, libc::SIGSTOP);
    }
    let refused = wait_until(
        "the cut-off leader to refuse bounded reads",
        Duration::from_secs(10),
        || {
            let r = read();
            async move {
                match r.await {
                    Err(Error::Status {
                        code: tonic::Code::Unavailable,
                        message,
                        ..
                    }) => Ok(Some(message)),
                    other => Err(anyhow::anyhow!("still answered: {other:?}")),
                }
            }
        },
    )
    .await;
    // Nor linearizable ones: its read lease ended with the acknowledgements' age, and the
    // quorum round it falls back to gets no answer.
    let linearizable = cluster
        .client_with([leader], Duration::ZERO)
        .query_with(
            Statement::new("SELECT count(*) FROM t"),
            Consistency::Linearizable,
            0,
        )
        .await;
    for pid in &followers {
        signal(*pid, libc::SIGCONT);
    }
    assert!(
        linearizable.is_err(),
        "a leader cut off from its quorum served a linearizable read: {linearizable:?}"
    );
    let message = refused.expect("UNAVAILABLE instead of possibly old data");
    assert!(message.contains("quorum"), "says why: {message}");

    info!("phase 3: the followers are back; bounded reads are served again");
    wait_until(
        "bounded reads to be served again",
        Duration::from_secs(20),
        || {
            let r = read();
            async move { Ok(r.await.ok().map(|_| ())) }
        },
    )
    .await
    .expect("bounded reads after the followers returned");
    for id in cluster.ids() {
        cluster.node(id).ensure_alive().expect("no node exited");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_through_a_follower_move_on_from_a_paused_leader() {
    init_tracing();
    info!("phase 1: three nodes, a table");
    let cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let through_follower = cluster.client_for(follower);
    through_follower
        .exec("CREATE TABLE t (x)", Vec::<i64>::new())
        .await
        .expect("create through the follower");

    info!("phase 2: pause the leader; a write through a follower is forwarded to the new leader within about two election timeouts");
    let pid = cluster.node(leader).pid().expect("running");
    signal(pid, libc::SIGSTOP);
    let started = std::time::Instant::now();
    let written = through_follower
        .exec("INSERT INTO t VALUES (1)", Vec::<i64>::new())
        .await;
    let took = started.elapsed();
    signal(pid, libc::SIGCONT);
    written.expect("the write commits on the new leader");
    info!(
        took_ms = took.as_millis() as u64,
        "forwarded write acknowledged"
    );
    // Election timeouts are 300-600 ms here: the forward gives up after 2 × 600 ms, a new
    // leader is there by then or soon after. The client's own timeout is 5 s.
    assert!(
        took < Duration::from_secs(3),
        "the forward waited {took:?} for a leader that could not answer"
    );

    info!("phase 3: the old leader is back; the write is there exactly once on every node");
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .expect("converged");
    for id in cluster.ids() {
        let rows = cluster
            .client_for(id)
            .query_with(
                Statement::new("SELECT count(*) FROM t"),
                Consistency::Stale,
                0,
            )
            .await
            .expect("count");
        assert_eq!(
            rows.rows[0].get::<i64>(0).expect("count"),
            1,
            "node {id}: the write once"
        );
        cluster.node(id).ensure_alive().expect("no node exited");
    }
}

/// The read lease's bound. A paused leader resumes believing it leads, with the quorum's last
/// acknowledgements in hand; a new leader committed a write meanwhile. Its linearizable reads
/// must fail or show that write, never the old count. They would show the old count if the
/// lease ignored how long ago those acknowledgements were sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_old_leader_never_answers_linearizable_reads_from_old_data() {
    init_tracing();
    info!("phase 1: three nodes, one row, linearizable reads on the leader");
    let cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let old = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let follower = cluster.ids_except(old)[0];
    let through_follower = cluster.client_for(follower);
    through_follower
        .execute(["CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"])
        .await
        .expect("create");
    let on_old = cluster.client_with([old], Duration::ZERO);
    let count = |c: cluster_tests::client::Client| async move {
        c.query_with(
            Statement::new("SELECT count(*) FROM t"),
            Consistency::Linearizable,
            0,
        )
        .await
        .map(|rows| rows.rows[0].get::<i64>(0).expect("a count"))
    };
    for _ in 0..10 {
        assert_eq!(count(on_old.clone()).await.expect("read on the leader"), 1);
    }

    info!("phase 2: pause the leader; a new leader commits a second row");
    let pid = cluster.node(old).pid().expect("running");
    signal(pid, libc::SIGSTOP);
    let written = through_follower
        .exec("INSERT INTO t VALUES (2)", Vec::<i64>::new())
        .await;
    if written.is_err() {
        signal(pid, libc::SIGCONT);
    }
    written.expect("the write commits on the new leader");

    info!("phase 3: resume the old leader and read from it at once, 40 reads in parallel");
    signal(pid, libc::SIGCONT);
    let reads: Vec<_> = (0..40)
        .map(|_| tokio::spawn(count(on_old.clone())))
        .collect();
    let (mut stale, mut fresh, mut refused) = (0, 0, 0);
    for read in reads {
        match read.await.expect("read task") {
            Ok(1) => stale += 1,
            Ok(_) => fresh += 1,
            Err(_) => refused += 1,
        }
    }
    info!(stale, fresh, refused, "reads on the resumed old leader");
    assert_eq!(
        stale, 0,
        "{stale} linearizable reads answered from old data"
    );
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .expect("converged");
}

/// Followers that stall for a moment (a slow disk, a paused VM) time out one AppendEntries.
/// That must not pause replication to them: with openraft's 500 ms back-off on top of the
/// stall, both would hear nothing for longer than an election timeout and depose a healthy
/// leader.
#[tokio::test(flavor = "multi_thread")]
async fn followers_stalling_for_a_moment_keep_the_leader() {
    init_tracing();
    info!("phase 1: three nodes");
    let cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let term = cluster.status_of(leader).await.expect("status").term;
    let followers: Vec<u32> = cluster
        .ids_except(leader)
        .into_iter()
        .map(|id| cluster.node(id).pid().expect("running"))
        .collect();

    info!("phase 2: three times, both followers stall for 300 ms; no election follows");
    for round in 0..3 {
        for pid in &followers {
            signal(*pid, libc::SIGSTOP);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for pid in &followers {
            signal(*pid, libc::SIGCONT);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let status = cluster.status_of(leader).await.expect("status");
        assert_eq!(
            (status.leader, status.term),
            (leader, term),
            "round {round}: the leader changed after a 300 ms stall of its followers"
        );
    }
}
