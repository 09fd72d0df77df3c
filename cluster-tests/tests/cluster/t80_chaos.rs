//! t80: chaos in Docker. Three raftlite pods in containers laid out like the chart (see
//! `cluster_tests::docker`), the example counter app in its own container, a background write
//! load from the host and a visitor of the counter, while a scenario kills, deletes, wipes,
//! partitions and restarts pods. Each scenario ends with the same audit: every acknowledged
//! write present exactly once on every pod, the counter never went back and keeps counting,
//! and the pods' databases are byte-identical (read from the volumes).
//!
//! The soak (`soak_random_faults`) draws its faults from all of these, and from freezing the
//! leader (`docker pause`) and killing every pod at once, under a load that also churns a
//! table of its own (large values, deletes, an index, VACUUM). It runs 4 random faults in
//! every test run and hundreds with
//! `just soak`, or `RAFTLITE_SOAK_FAULTS=N RAFTLITE_SOAK_MINUTES=M` with
//! `cargo test -p cluster-tests -- --nocapture t80_chaos::soak`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster_tests::docker::{Counter, Visits};
use cluster_tests::{
    init_tracing, wait_until, Checker, Client, DockerCluster, DockerOptions, LoadLimits, WriteLoad,
};
use tracing::info;

/// Time allowed for an election or a pod to come back: a 2-core machine running containers
/// and the test together.
const WITHIN: Duration = Duration::from_secs(60);
/// Pause between two visits of the counter.
const VISIT_PAUSE: Duration = Duration::from_millis(100);
const MAX_VISITS: usize = 5_000;

/// A running scenario: the cluster, its clients, the load and the visitor.
struct Chaos {
    cluster: DockerCluster,
    client: Client,
    checker: Checker,
    counter: Counter,
    load: Option<WriteLoad>,
    visits: Option<Visits>,
    limits: LoadLimits,
}

impl Chaos {
    /// Starts the pods, waits for a leader, creates the audited table, starts the counter app,
    /// then the background load and visits.
    async fn start(table: &str, options: DockerOptions) -> Chaos {
        Chaos::start_with(table, options, LoadLimits::default()).await
    }

    /// [`Chaos::start`] with a load of `limits`.
    async fn start_with(table: &str, options: DockerOptions, limits: LoadLimits) -> Chaos {
        init_tracing();
        let mut cluster = DockerCluster::start(options).await.expect("start the pods");
        let leader = cluster
            .wait_for_leader(WITHIN)
            .await
            .expect("the pods elect a leader");
        info!(leader = %cluster.pod_name(leader), "leader elected");
        let client = cluster.client();
        let checker = Checker::new(table);
        checker
            .create_table(&client)
            .await
            .expect("create the audited table");
        let counter = cluster
            .start_counter()
            .await
            .expect("start the counter app");
        let mut chaos = Chaos {
            cluster,
            client,
            checker,
            counter,
            load: None,
            visits: None,
            limits,
        };
        chaos.start_load("load");
        chaos
    }

    fn start_load(&mut self, prefix: &str) {
        self.load = Some(WriteLoad::start(
            &self.client,
            &self.checker,
            prefix,
            self.limits.clone(),
        ));
        self.visits = Some(self.counter.visit_in_background(MAX_VISITS, VISIT_PAUSE));
    }

    /// Waits until the load got `writes` more acknowledgements: the cluster serves writes.
    async fn progress(&self, writes: usize, what: &str) {
        let target = self.checker.acked_count() + writes;
        wait_until(what, WITHIN, || async {
            Ok((self.checker.acked_count() >= target).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Stops the load and the visitor; fails on a count that went back, and (if `strict`) on
    /// any write or visit that failed despite the clients' retries. Returns the last count.
    async fn stop_load(&mut self, strict: bool) -> u64 {
        let load = self
            .load
            .take()
            .expect("load running")
            .stop()
            .await
            .expect("stop the load");
        let visits = self
            .visits
            .take()
            .expect("visitor running")
            .stop()
            .await
            .expect("stop the visitor");
        info!(
            acked = load.acked,
            failed = load.failed,
            transactions_aborted = load.aborted,
            churned = load.churned,
            churn_failed = load.churn_failed,
            visits_ok = visits.ok,
            visits_failed = visits.failed,
            count_first = ?visits.first,
            count_last = ?visits.last,
            "load stopped"
        );
        assert!(
            visits.regressions.is_empty(),
            "the counter lost increments: {:?}",
            visits.regressions
        );
        assert!(load.acked > 0, "the load wrote nothing");
        assert!(visits.ok > 0, "no visit succeeded");
        if !load.errors.is_empty() || !visits.errors.is_empty() {
            tracing::warn!(writes = ?load.errors, visits = ?visits.errors, "failures beyond the clients' retries");
        }
        if strict {
            assert_eq!(
                load.failed, 0,
                "writes failed beyond the client's retries: {:?}",
                load.errors
            );
            assert_eq!(
                visits.failed, 0,
                "visits failed beyond the counter's retries: {:?}",
                visits.errors
            );
        }
        visits.last.expect("at least one visit counted")
    }

    /// The end of every scenario: the counter continues, every acknowledged write is present
    /// exactly once on every pod, and the pods are byte-identical.
    async fn audit(&self, last_count: u64) {
        let next = self
            .counter
            .visit()
            .await
            .expect("the counter still counts");
        assert!(
            next > last_count,
            "the counter continues: {next} after {last_count}"
        );
        let report = self
            .cluster
            .verify(&self.checker)
            .await
            .unwrap_or_else(|e| panic!("audit: {e:#}"));
        self.cluster
            .ensure_no_crash()
            .await
            .unwrap_or_else(|e| panic!("a node crashed during the scenario: {e:#}"));
        let (pages, index) = self
            .cluster
            .ensure_identical_pages()
            .await
            .unwrap_or_else(|e| panic!("page comparison: {e:#}"));
        info!(
            acked = report.acked,
            unacked_applied = report.unacked_applied,
            unacked_absent = report.unacked_absent,
            pods = report.nodes.len(),
            pages,
            index,
            count = next,
            "audit passed: every acknowledged write exactly once, replicas byte-identical"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_deleted_comes_back_with_its_volume() {
    let mut chaos = Chaos::start("chaos_delete_pod", DockerOptions::default()).await;
    chaos.progress(50, "writes before the fault").await;

    let leader = chaos.cluster.wait_for_leader(WITHIN).await.expect("leader");
    let victim = chaos
        .cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let before = chaos.cluster.status_of(victim).await.expect("status");
    info!(pod = %chaos.cluster.pod_name(victim), applied = before.applied_index,
        "phase 2: delete a follower pod (SIGKILL, container removed); writes go on");
    chaos
        .cluster
        .delete_pod(victim)
        .await
        .expect("delete the pod");
    chaos.progress(50, "writes with a pod gone").await;

    info!("phase 3: the pod is created again on its volume and catches up");
    chaos
        .cluster
        .create_pod(victim)
        .await
        .expect("create the pod");
    chaos
        .cluster
        .wait_ready(victim, WITHIN)
        .await
        .expect("the pod is ready again");
    let after = chaos.cluster.status_of(victim).await.expect("status");
    assert_eq!(
        after.cluster_id, before.cluster_id,
        "same cluster after the restart"
    );
    let logs = chaos.cluster.logs(victim, 200).await.expect("logs");
    assert!(
        !logs.contains("re-sync:"),
        "the pod came back with its volume, no re-sync needed:\n{logs}"
    );
    chaos.progress(50, "writes after the pod came back").await;

    info!("phase 4: stop the load and audit");
    let count = chaos.stop_load(true).await;
    chaos.audit(count).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_killed_repeatedly_under_load() {
    const ROUNDS: usize = 3;
    let mut chaos = Chaos::start("chaos_kill_leader", DockerOptions::default()).await;
    chaos.progress(50, "writes before the faults").await;

    for round in 1..=ROUNDS {
        let leader = chaos.cluster.wait_for_leader(WITHIN).await.expect("leader");
        info!(round, leader = %chaos.cluster.pod_name(leader), "phase 2: SIGKILL the leader pod");
        chaos.cluster.kill(leader).await.expect("kill the leader");
        // From the moment the container is gone (`docker kill` itself takes a while here).
        let killed_at = Instant::now();
        let others: Vec<u64> = chaos
            .cluster
            .running_ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let new_leader = chaos
            .cluster
            .wait_for_leader_among(&others, WITHIN)
            .await
            .expect("the survivors elect a new leader");
        info!(round, new_leader = %chaos.cluster.pod_name(new_leader),
            failover = ?killed_at.elapsed(), "new leader");
        chaos.progress(30, "writes under the new leader").await;

        info!(
            round,
            "phase 3: the killed pod's container restarts with its volume"
        );
        chaos
            .cluster
            .start_pod(leader)
            .await
            .expect("restart the pod");
        chaos
            .cluster
            .wait_ready(leader, WITHIN)
            .await
            .expect("the old leader is ready again");
    }

    info!("phase 4: stop the load and audit");
    let count = chaos.stop_load(true).await;
    chaos.audit(count).await;
}

/// The pods' election timeouts (docker/raftlite.yaml: `election_timeout_max_ms: 600`).
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(600);
/// How long a node serves `bounded` reads without hearing from a quorum (README: three
/// election timeouts).
const BOUNDED_WINDOW: Duration = Duration::from_millis(3 * 600);
/// One retry of a client: its first backoff (20 ms) and a round trip on a loaded machine.
const ONE_RETRY: Duration = Duration::from_millis(500);

/// Writes one key at a time through the pods `ids` only and records when each was
/// acknowledged: the gaps show how long writes through those pods stalled.
struct PacedWriter {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Instant>>,
}

impl PacedWriter {
    fn start(chaos: &Chaos, ids: &[u64], prefix: &str) -> PacedWriter {
        let client = chaos.cluster.client_with(ids, Duration::from_secs(20));
        let checker = chaos.checker.clone();
        let prefix = prefix.to_string();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0.. {
                if *stopped.borrow() {
                    break;
                }
                if checker
                    .write(&client, &format!("{prefix}-{i}"), "paced")
                    .await
                    .is_ok()
                {
                    acks.push(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acks
        });
        PacedWriter { stop, task }
    }

    /// Stops writing; returns the longest time without an acknowledgement around `at`.
    async fn gap_around(self, at: Instant) -> Duration {
        let _ = self.stop.send(true);
        let acks = self.task.await.expect("paced writer");
        let before = acks.iter().rev().find(|t| **t <= at).copied();
        let after = acks.iter().find(|t| **t > at).copied();
        match (before, after) {
            (Some(b), Some(a)) => a - b,
            _ => panic!(
                "no write acknowledged on both sides of the fault ({} acks)",
                acks.len()
            ),
        }
    }
}

/// Sends `bounded` reads with `max_lag = 0` to pod `id` until `until`; returns how many were
/// sent after `window_end` and how many of those were served.
async fn bounded_reads(
    chaos: &Chaos,
    id: u64,
    window_end: Instant,
    until: Instant,
) -> (usize, usize) {
    let client = chaos.cluster.client_with(&[id], Duration::ZERO);
    let statement =
        cluster_tests::Statement::new(format!("SELECT count(*) FROM {}", chaos.checker.table()));
    let (mut late, mut served_late) = (0, 0);
    while Instant::now() < until {
        let sent = Instant::now();
        let result = client
            .query_with(
                statement.clone(),
                cluster_tests::Consistency::Bounded { max_lag: 0 },
                0,
            )
            .await;
        if sent.elapsed() > Duration::from_millis(500) {
            tracing::warn!(took = ?sent.elapsed(), ?result, "a slow bounded read");
        }
        if sent > window_end {
            late += 1;
            if result.is_ok() {
                served_late += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (late, served_late)
}

/// How many lines of pod `id`'s whole log contain `text`.
async fn log_count(chaos: &Chaos, id: u64, text: &str) -> usize {
    let logs = chaos.cluster.logs(id, 1_000_000).await.expect("logs");
    logs.lines().filter(|l| l.contains(text)).count()
}

/// Partitions keep the promises of the README: a cut-off leader stops serving `bounded`
/// reads after the window, writes through the other pods resume within about one election,
/// nothing written to the isolated leader survives, and an isolated follower cannot depose a
/// healthy leader when it returns (pre-vote).
#[tokio::test(flavor = "multi_thread")]
async fn leader_partitioned_then_healed() {
    let mut chaos = Chaos::start("chaos_partition", DockerOptions::default()).await;
    chaos.progress(50, "writes before the partition").await;

    let old = chaos.cluster.wait_for_leader(WITHIN).await.expect("leader");
    let old_term = chaos.cluster.status_of(old).await.expect("status").term;
    let others: Vec<u64> = chaos
        .cluster
        .ids()
        .into_iter()
        .filter(|id| *id != old)
        .collect();
    let writers: Vec<(u64, PacedWriter)> = others
        .iter()
        .map(|&id| {
            (
                id,
                PacedWriter::start(&chaos, &[id], &format!("paced-{id}")),
            )
        })
        .collect();
    chaos
        .progress(20, "paced writes through the followers")
        .await;
    let became_leader: usize = {
        let mut n = 0;
        for id in chaos.cluster.ids() {
            n += log_count(&chaos, id, "became leader").await;
        }
        n
    };
    info!(leader = %chaos.cluster.pod_name(old), term = old_term,
        "phase 2: cut the leader off from its peers (disconnect it from the pods network)");
    chaos.cluster.partition(old).await.expect("partition");
    let cut_at = Instant::now();
    let reads_until = cut_at + BOUNDED_WINDOW + Duration::from_secs(2);
    let (late, served_late) =
        bounded_reads(&chaos, old, cut_at + BOUNDED_WINDOW, reads_until).await;
    info!(
        late,
        served_late, "bounded reads on the cut-off leader after the window"
    );
    assert!(
        late >= 10,
        "only {late} bounded reads were tried after the window"
    );
    assert_eq!(
        served_late, 0,
        "the cut-off leader served {served_late} of {late} bounded reads later than {BOUNDED_WINDOW:?} after losing its quorum"
    );
    let majority = chaos.cluster.connected_ids();
    let new_leader = chaos
        .cluster
        .wait_for_leader_among(&majority, WITHIN)
        .await
        .expect("the majority elects a new leader");
    info!(new_leader = %chaos.cluster.pod_name(new_leader), "the majority has a new leader");
    chaos.progress(50, "writes through the majority").await;
    let bound = ELECTION_TIMEOUT_MAX * 2 + ONE_RETRY;
    for (id, writer) in writers {
        let gap = writer.gap_around(cut_at).await;
        info!(through = %chaos.cluster.pod_name(id), ?gap, ?bound, "write gap through a follower");
        assert!(
            gap <= bound,
            "writes through {} stalled {gap:?} when the leader was cut off (bound: two election timeouts and one retry, {bound:?})",
            chaos.cluster.pod_name(id)
        );
    }

    info!("phase 3: writes sent only to the isolated old leader must all fail");
    let isolated = chaos.cluster.client_with(&[old], Duration::from_secs(3));
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..5 {
        let (checker, client) = (chaos.checker.clone(), isolated.clone());
        attempts.spawn(async move {
            let key = format!("isolated-{i}");
            (key.clone(), checker.write(&client, &key, "isolated").await)
        });
    }
    while let Some(attempt) = attempts.join_next().await {
        let (key, result) = attempt.expect("isolated writer");
        assert!(
            result.is_err(),
            "{key}: the isolated old leader acknowledged a write without a quorum: {result:?}"
        );
    }
    let seen = chaos
        .cluster
        .status_of(old)
        .await
        .expect("status of the old leader");
    info!(
        leader = seen.leader,
        term = seen.term,
        commit = seen.commit_index,
        "what the isolated old leader reports"
    );

    info!("phase 4: heal; the old leader steps down and rejoins");
    chaos.cluster.heal(old).await.expect("heal");
    let leader = chaos
        .cluster
        .wait_for_leader_among(&chaos.cluster.ids(), WITHIN)
        .await
        .expect("all three agree on a leader");
    let rejoined = chaos.cluster.status_of(old).await.expect("status");
    assert!(
        rejoined.term > old_term,
        "the old leader moved past its term {old_term}: {rejoined:?}"
    );
    info!(leader = %chaos.cluster.pod_name(leader), term = rejoined.term, "healed");
    chaos.progress(30, "writes after healing").await;
    let mut became_leader_after = 0;
    for id in chaos.cluster.ids() {
        became_leader_after += log_count(&chaos, id, "became leader").await;
    }
    assert_eq!(
        became_leader_after - became_leader,
        1,
        "one leadership event, one 'became leader' line"
    );
    assert!(
        log_count(&chaos, old, "stepped down").await >= 1,
        "the old leader logs that it stepped down"
    );

    info!("phase 5: cut a follower off for many election timeouts; its term must not move");
    let (leader, term) = {
        let l = chaos.cluster.wait_for_leader(WITHIN).await.expect("leader");
        (l, chaos.cluster.status_of(l).await.expect("status").term)
    };
    let follower = chaos
        .cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    chaos.cluster.partition(follower).await.expect("partition");
    let cut_at = Instant::now();
    let (late, served_late) = bounded_reads(
        &chaos,
        follower,
        cut_at + BOUNDED_WINDOW,
        cut_at + BOUNDED_WINDOW + Duration::from_secs(3),
    )
    .await;
    assert!(
        late >= 10,
        "only {late} bounded reads were tried after the window"
    );
    assert_eq!(
        served_late, 0,
        "the isolated follower served {served_late} bounded reads"
    );
    let isolated = chaos.cluster.status_of(follower).await.expect("status");
    info!(follower = %chaos.cluster.pod_name(follower), term = isolated.term,
        isolated_for = ?cut_at.elapsed(), "the isolated follower's term");
    assert_eq!(
        isolated.term, term,
        "an isolated follower raised its term (no pre-vote?)"
    );
    assert!(
        log_count(&chaos, follower, "pre-vote refused").await >= 1,
        "the isolated follower logs why it does not start an election"
    );

    info!("phase 6: heal the follower; no election, same leader, same term");
    chaos.cluster.heal(follower).await.expect("heal");
    chaos
        .progress(30, "writes after the follower returned")
        .await;
    wait_until("the follower to catch up", WITHIN, || async {
        let l = chaos.cluster.status_of(leader).await?;
        let f = chaos.cluster.status_of(follower).await?;
        Ok((f.applied_index >= l.commit_index.saturating_sub(5)).then_some(()))
    })
    .await
    .expect("caught up");
    for id in chaos.cluster.ids() {
        let s = chaos.cluster.status_of(id).await.expect("status");
        assert_eq!(
            (s.leader, s.term),
            (leader, term),
            "{} after the isolated follower returned",
            chaos.cluster.pod_name(id)
        );
    }

    info!("phase 7: stop the load and audit; none of the isolated writes survived");
    let count = chaos.stop_load(true).await;
    chaos.audit(count).await;
    for id in chaos.cluster.ids() {
        let rows = chaos
            .cluster
            .client_with(&[id], Duration::from_secs(5))
            .query_with(
                cluster_tests::Statement::new(format!(
                    "SELECT count(*) FROM {} WHERE k LIKE 'isolated-%'",
                    chaos.checker.table()
                )),
                cluster_tests::Consistency::Stale,
                0,
            )
            .await
            .expect("count isolated writes");
        let n: i64 = rows.rows[0].get(0).expect("count");
        assert_eq!(
            n,
            0,
            "{}: a write accepted without quorum survived",
            chaos.cluster.pod_name(id)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_and_volume_deleted_resyncs_from_peers() {
    let mut chaos = Chaos::start("chaos_delete_volume", DockerOptions::default()).await;
    chaos.progress(100, "writes before the fault").await;

    // raftlite-0 is the node that bootstrapped the cluster: the most delicate one to lose.
    let victim = 1;
    info!(pod = %chaos.cluster.pod_name(victim),
        "phase 2: delete the pod and its volume (the seed's `kubectl delete pvc` + pod)");
    chaos
        .cluster
        .delete_pod(victim)
        .await
        .expect("delete the pod");
    chaos
        .cluster
        .delete_volume(victim)
        .await
        .expect("delete the volume");
    let survivors: Vec<u64> = chaos.cluster.running_ids();
    chaos
        .cluster
        .wait_for_leader_among(&survivors, WITHIN)
        .await
        .expect("the survivors have a leader");
    chaos.progress(50, "writes with the pod gone").await;

    info!("phase 3: the pod comes back on an empty volume and re-syncs from its peers");
    chaos
        .cluster
        .create_pod(victim)
        .await
        .expect("create the pod");
    chaos
        .cluster
        .wait_ready(victim, WITHIN)
        .await
        .expect("the pod is ready again");
    let logs = chaos.cluster.logs(victim, 200).await.expect("logs");
    assert!(
        logs.contains("joined cluster"),
        "the pod started empty and adopted the cluster's identity from its peers:\n{logs}"
    );
    chaos.progress(50, "writes after the re-sync").await;

    info!("phase 4: stop the load and audit");
    let count = chaos.stop_load(true).await;
    chaos.audit(count).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pod_and_volume_deleted_restores_from_the_archive() {
    let options = DockerOptions {
        archive: true,
        ..DockerOptions::default()
    };
    let mut chaos = Chaos::start("chaos_archive", options).await;
    chaos.progress(100, "writes before the loss").await;
    let count = chaos.stop_load(true).await;

    info!(
        count,
        "phase 2: wait until the S3 archive holds every acknowledged write"
    );
    let last = chaos
        .checker
        .write(&chaos.client, "archived-last", "last before the loss")
        .await
        .expect("a last write")
        .log_index;
    let archived = wait_until("the archive to catch up", WITHIN, || async {
        let (archived, _, error) = chaos.cluster.archive_view().await?;
        anyhow::ensure!(
            archived >= last,
            "archived {archived} < {last} (last error {error:?})"
        );
        Ok(Some(archived))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let cluster_id = chaos.cluster.status_of(1).await.expect("status").cluster_id;

    info!(
        archived,
        "phase 3: delete every pod and every volume, then create the pods again"
    );
    for id in chaos.cluster.ids() {
        chaos.cluster.delete_pod(id).await.expect("delete the pod");
        chaos
            .cluster
            .delete_volume(id)
            .await
            .expect("delete the volume");
    }
    // Pods come back in any order (podManagementPolicy: Parallel). raftlite-0 last is the
    // harder case: its peers are already up, waiting to join, while it restores the archive.
    for id in chaos.cluster.ids().into_iter().rev() {
        chaos.cluster.create_pod(id).await.expect("create the pod");
    }
    chaos
        .cluster
        .wait_for_leader(Duration::from_secs(120))
        .await
        .expect("a leader after the restore");
    chaos
        .cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .expect("every pod rejoins the restored cluster");
    let status = chaos.cluster.status_of(1).await.expect("status");
    assert_eq!(
        status.cluster_id, cluster_id,
        "the archived cluster id is kept"
    );

    info!("phase 4: the counter continues from the archived value");
    let next = chaos
        .counter
        .visit()
        .await
        .expect("the counter counts again");
    assert_eq!(next, count + 1, "the count continues from the archive");
    chaos.start_load("after-restore");
    chaos.progress(50, "writes after the restore").await;

    info!("phase 5: stop the load and audit (writes from before the loss included)");
    let count = chaos.stop_load(true).await;
    chaos.audit(count).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_under_load() {
    let mut chaos = Chaos::start("chaos_rolling", DockerOptions::default()).await;
    chaos.progress(50, "writes before the upgrade").await;

    // A StatefulSet RollingUpdate: highest ordinal first, each pod terminated gracefully,
    // created again, and Ready before the next one goes.
    for id in chaos.cluster.ids().into_iter().rev() {
        info!(pod = %chaos.cluster.pod_name(id), "phase 2: replace the pod (SIGTERM, delete, create, wait until ready)");
        let started = Instant::now();
        chaos.cluster.stop(id).await.expect("stop the pod");
        chaos.cluster.delete_pod(id).await.expect("delete the pod");
        chaos.cluster.create_pod(id).await.expect("create the pod");
        chaos
            .cluster
            .wait_ready(id, WITHIN)
            .await
            .expect("the new pod is ready");
        info!(pod = %chaos.cluster.pod_name(id), took = ?started.elapsed(), "pod replaced");
        chaos
            .progress(20, "writes after the pod was replaced")
            .await;
    }

    info!("phase 3: stop the load; no write or visit may have failed");
    let count = chaos.stop_load(true).await;
    chaos.audit(count).await;
}

/// One kind of fault the soak draws at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillPod,
    KillLeader,
    DeletePod,
    DeletePodAndVolume,
    PartitionLeader,
    PartitionFollower,
    GracefulRestart,
    /// The leader frozen (`docker pause`) while the others elect a new one, then let go: it
    /// wakes up believing it still leads, with its batches and transactions open.
    PauseLeader,
    /// Every pod SIGKILLed at once and started again: the whole cluster restarts.
    KillAll,
}

const FAULTS: [Fault; 9] = [
    Fault::KillPod,
    Fault::KillLeader,
    Fault::DeletePod,
    Fault::DeletePodAndVolume,
    Fault::PartitionLeader,
    Fault::PartitionFollower,
    Fault::GracefulRestart,
    Fault::PauseLeader,
    Fault::KillAll,
];

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Injects `fault`, waits until the rest of the cluster serves writes, repairs it and waits
/// until the pod is ready again. A whole-cluster restart is repaired first: no rest is left.
async fn inject(chaos: &mut Chaos, fault: Fault, pick: u64) -> anyhow::Result<()> {
    let cluster = &mut chaos.cluster;
    let leader = cluster.wait_for_leader(WITHIN).await?;
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let victim = match fault {
        Fault::KillLeader | Fault::PartitionLeader | Fault::PauseLeader => leader,
        Fault::PartitionFollower => followers[pick as usize % followers.len()],
        _ => cluster.ids()[pick as usize % cluster.ids().len()],
    };
    match fault {
        Fault::KillPod | Fault::KillLeader => cluster.kill(victim).await?,
        Fault::DeletePod => cluster.delete_pod(victim).await?,
        Fault::DeletePodAndVolume => {
            cluster.delete_pod(victim).await?;
            cluster.delete_volume(victim).await?;
        }
        Fault::PartitionLeader | Fault::PartitionFollower => cluster.partition(victim).await?,
        Fault::GracefulRestart => cluster.stop(victim).await?,
        Fault::PauseLeader => cluster.pause(victim).await?,
        Fault::KillAll => {
            for id in cluster.ids() {
                cluster.kill(id).await?;
            }
            // The kubelet restarts them at about the same time, in no particular order.
            tokio::time::sleep(Duration::from_millis(500 + pick % 1_500)).await;
            for id in cluster.ids() {
                cluster.start_pod(id).await?;
            }
        }
    }
    let rest: Vec<u64> = cluster.connected_ids();
    cluster.wait_for_leader_among(&rest, WITHIN).await?;
    let target = chaos.checker.acked_count() + 10;
    wait_until("writes during the fault", WITHIN, || async {
        Ok((chaos.checker.acked_count() >= target).then_some(()))
    })
    .await?;
    let cluster = &mut chaos.cluster;
    match fault {
        Fault::KillPod | Fault::KillLeader | Fault::GracefulRestart => {
            cluster.start_pod(victim).await?
        }
        Fault::DeletePod | Fault::DeletePodAndVolume => cluster.create_pod(victim).await?,
        Fault::PartitionLeader | Fault::PartitionFollower => cluster.heal(victim).await?,
        Fault::PauseLeader => cluster.unpause(victim).await?,
        Fault::KillAll => {}
    }
    for id in cluster.ids() {
        cluster.wait_ready(id, WITHIN).await?;
    }
    cluster
        .wait_for_leader_among(&cluster.ids(), WITHIN)
        .await?;
    Ok(())
}

/// Pauses the load, compares every pod's pages once they applied the same log, and starts
/// the load again: a replica that diverged is named with the fault that made it.
async fn compare_pages_under_pause(chaos: &mut Chaos, n: u64, fault: Fault) {
    chaos.stop_load(false).await;
    let (pages, index) = chaos
        .cluster
        .ensure_identical_pages()
        .await
        .unwrap_or_else(|e| panic!("soak: pages after fault {n} ({fault:?}): {e:#}"));
    info!(n, pages, index, "soak: replicas byte-identical");
    chaos.start_load(&format!("soak-after-{n}"));
}

/// A short soak in every run (a few random faults); `just soak` runs hundreds.
#[tokio::test(flavor = "multi_thread")]
async fn soak_random_faults() {
    let faults = env_number("RAFTLITE_SOAK_FAULTS", 4);
    let minutes = env_number("RAFTLITE_SOAK_MINUTES", 60);
    // Pages compared after every this many faults (0: only at the end): a divergence is then
    // found at the fault that caused it, not at the end of a long run.
    let pages_every = env_number("RAFTLITE_SOAK_PAGES_EVERY", 1);
    // (The last fault's are the final audit's.)
    let compares_after = |n: u64| pages_every > 0 && n.is_multiple_of(pages_every) && n < faults;
    let seed = env_number("RAFTLITE_SOAK_SEED", rand::random::<u32>() as u64);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let limits = LoadLimits {
        churn: true,
        ..LoadLimits::default()
    };
    let mut chaos = Chaos::start_with("chaos_soak", DockerOptions::default(), limits).await;
    info!(
        faults,
        minutes,
        seed,
        "soak: random faults under load (RAFTLITE_SOAK_SEED={seed} repeats this sequence)"
    );
    let until = Instant::now() + Duration::from_secs(minutes * 60);
    let mut counts: BTreeMap<Fault, (usize, Duration)> = BTreeMap::new();
    let mut done = 0;
    for n in 1..=faults {
        if Instant::now() >= until {
            info!(done, "soak: time is up");
            break;
        }
        // The load has bounds of its own; start a fresh one when it ran out (unless the last
        // page comparison just did).
        if n % 50 == 0 && !compares_after(n - 1) {
            let count = chaos.stop_load(false).await;
            info!(
                n,
                count,
                acked = chaos.checker.acked_count(),
                "soak: checkpoint"
            );
            chaos.start_load(&format!("soak-{n}"));
        }
        let fault = FAULTS[rand::Rng::gen_range(&mut rng, 0..FAULTS.len())];
        let pick = rand::Rng::gen::<u64>(&mut rng);
        let started = Instant::now();
        if let Err(e) = inject(&mut chaos, fault, pick).await {
            panic!("soak: fault {n} ({fault:?}) did not heal: {e:#}\nfaults so far: {counts:?}");
        }
        let entry = counts.entry(fault).or_default();
        entry.0 += 1;
        entry.1 += started.elapsed();
        done = n;
        info!(n, ?fault, took = ?started.elapsed(), acked = chaos.checker.acked_count(), "soak: fault healed");
        if compares_after(n) {
            compare_pages_under_pause(&mut chaos, n, fault).await;
        }
    }
    let count = chaos.stop_load(false).await;
    chaos.audit(count).await;
    for (fault, (times, total)) in &counts {
        info!(?fault, times, mean = ?(*total / *times as u32), "soak: fault count");
    }
    info!(
        done,
        acked = chaos.checker.acked_count(),
        sent = chaos.checker.sent_count(),
        count,
        "soak passed"
    );
}
