//! t20: the leader is SIGKILLed, or paused and resumed, in the middle of a write load; nothing
//! acknowledged is lost. A leader killed and started again at once leads only after winning an
//! election.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::{
    init_tracing, metric_value, metrics_addr, scrape, three_nodes_with, wait_until, CheckReport,
    Checker, Cluster, ClusterOptions,
};
use tracing::info;

/// Concurrent writers, each with its own client that knows every node.
const WRITERS: usize = 8;
/// Acknowledged writes wanted before the kill, and again after it.
const WRITES_PER_PHASE: usize = 100;

#[tokio::test(flavor = "multi_thread")]
async fn leader_sigkill_under_write_load_loses_nothing() {
    init_tracing();

    info!("phase 1: start three nodes, wait for a leader, create the audited table");
    let (cluster, old_leader, checker) =
        three_nodes_with("failover_kv", ClusterOptions::default()).await;

    info!(
        WRITERS,
        "phase 2: start concurrent writers through clients that know every node"
    );
    let writers = Writers::start(&cluster, &checker, WRITERS);
    wait_until(
        "the first acknowledged writes",
        Duration::from_secs(20),
        || async { Ok((checker.acked_count() >= WRITES_PER_PHASE).then_some(())) },
    )
    .await
    .expect("writes are acknowledged before the kill");

    let acked_at_kill = checker.acked_count();
    info!(
        old_leader,
        acked_at_kill, "phase 3: SIGKILL the leader while the writers run"
    );
    let killed_at = Instant::now();
    cluster.node(old_leader).kill().expect("kill the leader");

    info!("phase 4: the two survivors elect a new leader");
    let new_leader = cluster
        .wait_for_leader(Duration::from_secs(15))
        .await
        .expect("a new leader among the survivors");
    assert_ne!(
        new_leader, old_leader,
        "the killed node cannot be the leader"
    );
    let elected_after = killed_at.elapsed();

    info!(
        new_leader,
        ?elected_after,
        "phase 5: writes continue under the new leader"
    );
    wait_until(
        "acknowledged writes after the kill",
        Duration::from_secs(30),
        || async { Ok((checker.acked_count() >= acked_at_kill + WRITES_PER_PHASE).then_some(())) },
    )
    .await
    .expect("the writers make progress after the failover");

    info!("phase 6: stop the writers");
    let failures = writers.stop().await;
    info!(
        sent = checker.sent_count(),
        acked = checker.acked_count(),
        failed = failures.len(),
        "writers stopped"
    );
    assert!(
        failures.is_empty(),
        "with a 20 s retry deadline no write should fail for good across one failover: {failures:?}"
    );

    info!(
        old_leader,
        "phase 7: restart the old leader; it rejoins as a follower and catches up"
    );
    cluster
        .node(old_leader)
        .restart()
        .await
        .expect("restart the old leader");
    cluster
        .wait_converged(Duration::from_secs(30))
        .await
        .expect("all three nodes converge");

    info!(
        "phase 8: audit every node, the old leader included, and compare the replicas page by page"
    );
    let report = audit(&cluster, &checker).await;
    info!(?report, ?elected_after, "t20 done");
}

/// Every acknowledged write exactly once on all three nodes, and the replicas byte-identical.
async fn audit(cluster: &Cluster, checker: &Checker) -> CheckReport {
    let report = checker
        .verify(cluster)
        .await
        .expect("no acknowledged write lost or doubled");
    assert_eq!(report.nodes.len(), 3);
    assert_eq!(report.acked, checker.acked_count());
    cluster.assert_identical_pages().await;
    report
}

/// Concurrent writers, each with its own client that knows every node, writing new keys
/// until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<Vec<String>>,
}

impl Writers {
    fn start(cluster: &Cluster, checker: &Checker, count: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..count {
            let (checker, client, stop) = (checker.clone(), cluster.client(), stop.clone());
            tasks.spawn(async move {
                let mut failures = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{writer}-{n}");
                    n += 1;
                    // A failure is an unknown outcome (the checker allows the key at most
                    // once); the client already retried it under the same request id until
                    // its deadline.
                    if let Err(e) = checker
                        .write(&client, &key, &format!("{key} by writer {writer}"))
                        .await
                    {
                        failures.push(format!("{key}: {e}"));
                    }
                }
                failures
            });
        }
        Writers { stop, tasks }
    }

    /// Stops the writers; returns the writes that failed for good.
    async fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        while let Some(done) = self.tasks.join_next().await {
            failures.extend(done.expect("writer task"));
        }
        failures
    }
}

/// Waits for [`WRITES_PER_PHASE`] more acknowledged writes than now.
async fn more_acked(checker: &Checker, what: &str) {
    let count = checker.acked_count() + WRITES_PER_PHASE;
    wait_until(what, Duration::from_secs(30), || async {
        Ok((checker.acked_count() >= count).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The write pipeline across a leadership change without a crash: the leader, which has been
/// executing batches on top of deltas in flight, is paused (SIGSTOP) with deltas in flight;
/// the others elect a new leader and go on writing, and the old leader resumes with its chain
/// still in memory. Its deltas in flight are committed by the new leader or lost, its clients
/// retry elsewhere under the same request ids, and it follows: every acknowledged write is
/// there exactly once, and the replicas are byte-identical.
/// With the write pipeline (depth 3) the paused leader holds deltas in flight and batches
/// executed on top of them.
#[tokio::test(flavor = "multi_thread")]
async fn leader_paused_under_write_load_loses_nothing_when_it_resumes() {
    leader_paused_under_write_load(
        3,
        "raftlite_write_batches_total{base=\"in_flight\"} ",
        "paused_kv",
    )
    .await;
}

/// Without it (the default) the paused leader holds a batch's transaction open for its commit
/// in place; resumed, it must roll it back for the new leader's deltas, not wait on it.
#[tokio::test(flavor = "multi_thread")]
async fn leader_paused_with_a_batch_open_loses_nothing_when_it_resumes() {
    leader_paused_under_write_load(
        1,
        "raftlite_write_batches_committed_in_place_total ",
        "paused_open_kv",
    )
    .await;
}

/// SIGSTOP the leader under 8 writers, let a new leader take 100 writes, SIGCONT it; `used`
/// names the metric that shows the leader's write path at `depth` was exercised.
async fn leader_paused_under_write_load(depth: usize, used: &str, table: &str) {
    init_tracing();
    info!(
        depth,
        "phase 1: three nodes, a leader, the audited table, {WRITERS} writers"
    );
    let metrics = ClusterOptions {
        extra_args: vec![
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--write-pipeline-depth".into(),
            depth.to_string(),
        ],
        ..ClusterOptions::default()
    };
    let (cluster, old_leader, checker) = three_nodes_with(table, metrics).await;
    let writers = Writers::start(&cluster, &checker, WRITERS);
    more_acked(&checker, "writes before the pause").await;
    let text = scrape(&metrics_addr(&cluster, old_leader)).await;
    assert!(
        metric_value(&text, used) >= 1.0,
        "the leader's write path at depth {depth} was not used ({used}):\n{text}"
    );

    info!(
        old_leader,
        "phase 2: SIGSTOP the leader while the writers run"
    );
    let paused = cluster.node(old_leader);
    paused
        .send_signal(libc::SIGSTOP)
        .expect("SIGSTOP the leader");
    // Only a new leader among the other two can acknowledge these.
    more_acked(&checker, "writes under a new leader").await;

    info!("phase 3: the old leader resumes with its chain in memory");
    paused
        .send_signal(libc::SIGCONT)
        .expect("SIGCONT the old leader");
    more_acked(&checker, "writes after the resume").await;
    let failures = writers.stop().await;
    assert!(
        failures.is_empty(),
        "with a 20 s retry deadline no write should fail for good: {failures:?}"
    );

    info!("phase 4: converge and audit every node, the old leader included");
    cluster
        .wait_converged(Duration::from_secs(30))
        .await
        .expect("all three nodes converge");
    let report = audit(&cluster, &checker).await;
    for id in cluster.ids() {
        cluster.node(id).ensure_alive().expect("no node exited");
    }
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    info!(?report, leader, "paused leader audited");
}

/// Writers in the burst that precedes the double kill.
const BURST_WRITERS: usize = 8;
/// Acknowledged writes in that burst.
const BURST_WRITES: usize = 300;

#[tokio::test(flavor = "multi_thread")]
async fn two_of_three_sigkilled_right_after_a_burst_lose_nothing() {
    init_tracing();

    info!("phase 1: start three nodes, wait for a leader, create the audited table");
    // At the default depth: the leader commits its batches in place.
    let default_depth = ClusterOptions {
        extra_args: vec!["--write-pipeline-depth".into(), "1".into()],
        ..ClusterOptions::default()
    };
    let (cluster, leader, checker) = three_nodes_with("double_kill_kv", default_depth).await;

    info!(
        BURST_WRITERS,
        BURST_WRITES,
        "phase 2: a burst of concurrent writes (group commits) until enough are acknowledged"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..BURST_WRITERS {
        let (checker, client, stop) = (checker.clone(), cluster.client(), stop.clone());
        writers.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("b{writer}-{n}");
                n += 1;
                // An error is an unknown outcome: the audit allows such a key at most once.
                let _ = checker.write(&client, &key, "burst").await;
            }
        });
    }
    wait_until("the burst", Duration::from_secs(60), || async {
        Ok((checker.acked_count() >= BURST_WRITES).then_some(()))
    })
    .await
    .expect("the burst is acknowledged");

    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let acked = checker.acked_count();
    info!(
        leader,
        follower, acked, "phase 3: SIGKILL the leader and a follower at once, writes in flight"
    );
    cluster.node(leader).kill().expect("kill the leader");
    cluster.node(follower).kill().expect("kill a follower");
    stop.store(true, Ordering::Relaxed);
    // The clients retry against a cluster without a quorum until their deadline: stop them.
    writers.abort_all();
    while writers.join_next().await.is_some() {}

    info!("phase 4: restart both; the cluster elects a leader and converges");
    cluster
        .node(leader)
        .start()
        .expect("restart the old leader");
    cluster
        .node(follower)
        .start()
        .expect("restart the follower");
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader after the restarts");
    cluster
        .wait_converged(Duration::from_secs(30))
        .await
        .expect("all three nodes converge");

    info!("phase 5: every write acknowledged before the kill is on every node, exactly once");
    let report = checker
        .verify(&cluster)
        .await
        .expect("no acknowledged write lost or doubled");
    assert_eq!(report.nodes.len(), 3);
    assert!(
        report.acked >= acked,
        "{} acknowledged writes audited, {acked} acknowledged before the kill",
        report.acked
    );
    cluster.assert_identical_pages().await;
    for id in cluster.ids() {
        assert!(
            cluster.node(id).panics().is_empty(),
            "node {id} panicked: {:?}",
            cluster.node(id).panics()
        );
    }
    info!(?report, "double kill audited");
}

/// A leader SIGKILLed and started again at once, before the followers miss it, must not go on
/// leading its old term: the followers may hold a committed entry its own disk lost, and it
/// would write a different one under the same log id. It leads again, if at all, only through
/// an election in a later term.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_restarted_at_once_leads_only_through_an_election() {
    init_tracing();
    info!("phase 1: three nodes, writes acknowledged");
    let cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let client = cluster.client();
    let checker = Checker::new("restart_kv");
    checker.create_table(&client).await.expect("create");
    checker
        .write_many(&client, "before", 20)
        .await
        .expect("writes before the kill");
    let term = cluster.status_of(leader).await.expect("status").term;

    info!("phase 2: SIGKILL the leader and start it again at once");
    cluster.node(leader).kill().expect("kill the leader");
    cluster.node(leader).start().expect("start it again");
    let new_leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader after the restart");
    let status = cluster.status_of(new_leader).await.expect("status");
    assert!(
        status.term > term,
        "node {new_leader} leads term {} after the restart, the term of before",
        status.term
    );
    assert!(
        cluster
            .node(leader)
            .log_since_start()
            .contains("it leads again only by winning an election"),
        "the restarted node says it gave up its old leadership"
    );

    info!("phase 3: writes go on; nothing acknowledged is lost; replicas identical");
    checker
        .write_many(&client, "after", 20)
        .await
        .expect("writes after the restart");
    checker
        .verify(&cluster)
        .await
        .expect("every acknowledged write");
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .expect("converged");
    cluster.assert_identical_pages().await;
}
