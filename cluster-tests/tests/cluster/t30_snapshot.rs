//! t30: a follower that missed writes catches up from the log; a follower whose data is gone,
//! after the log was purged behind snapshots, comes back through a snapshot install.

use std::time::Duration;

use cluster_tests::{init_tracing, Checker, Cluster, ClusterOptions};
use tracing::info;

/// Small, so that a few hundred writes purge the log several times over.
const SNAPSHOT_EVERY: u64 = 50;

#[tokio::test(flavor = "multi_thread")]
async fn lagging_and_wiped_followers_catch_up() {
    init_tracing();

    info!(
        SNAPSHOT_EVERY,
        "phase 1: start three nodes with frequent snapshots, write 30 rows"
    );
    let options = ClusterOptions {
        snapshot_every: Some(SNAPSHOT_EVERY),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let followers = cluster.ids_except(leader);
    let (lagging, wiped) = (followers[0], followers[1]);
    let client = cluster.client();
    let checker = Checker::new("snapshot_kv");
    checker
        .create_table(&client)
        .await
        .expect("create the table");
    checker
        .write_many(&client, "before", 30)
        .await
        .expect("first writes");

    info!(
        lagging,
        "phase 2: stop a follower (SIGTERM) and write 150 rows without it"
    );
    cluster
        .node(lagging)
        .stop()
        .await
        .expect("stop the follower cleanly");
    let applied_when_stopped = cluster
        .status_of(leader)
        .await
        .expect("leader status")
        .applied_index;
    checker
        .write_many(&client, "while-down", 150)
        .await
        .expect("writes with one node down");

    info!(
        lagging,
        "phase 3: restart it; it catches up with everything written meanwhile"
    );
    cluster
        .node(lagging)
        .restart()
        .await
        .expect("restart the follower");
    let report = checker
        .verify(&cluster)
        .await
        .expect("the restarted follower has every row");
    assert!(report.applied_index > applied_when_stopped);

    info!(wiped, "phase 4: SIGKILL the other follower, then write 200 rows one by one (200 log entries, four snapshot intervals) so the log is purged behind snapshots");
    cluster.node(wiped).kill().expect("kill the follower");
    let applied_at_kill = cluster
        .status_of(leader)
        .await
        .expect("leader status")
        .applied_index;
    for i in 0..200 {
        let key = format!("before-wipe-{i}");
        checker
            .write(&client, &key, &format!("value of {key}"))
            .await
            .expect("write with one node down");
    }
    let leader = cluster.leader_id().await.expect("a leader is established");
    let leader_status = cluster.status_of(leader).await.expect("leader status");
    assert!(
        leader_status.snapshot_index >= applied_at_kill + SNAPSHOT_EVERY,
        "with --snapshot-every {SNAPSHOT_EVERY} the leader must have snapshotted past the killed \
         follower's position {applied_at_kill}: {leader_status:?}"
    );

    info!(wiped, snapshot_index = leader_status.snapshot_index, "phase 5: wipe its data directory and restart it: it must come back by itself through a snapshot install");
    cluster.node(wiped).wipe().expect("wipe the data directory");
    cluster
        .node(wiped)
        .restart()
        .await
        .expect("restart the wiped follower");
    cluster
        .wait_converged(Duration::from_secs(40))
        .await
        .expect("the wiped follower re-syncs without a manual step");
    let rejoined = cluster
        .status_of(wiped)
        .await
        .expect("status of the wiped follower");
    assert_eq!(
        rejoined.cluster_id, leader_status.cluster_id,
        "the wiped follower rejoins the same cluster"
    );
    // The node's log is the only witness of how it caught up: had the leader still held the
    // whole log, the blank node would have replayed it entry by entry instead.
    let log = cluster.node(wiped).log_since_start();
    assert!(
        log.contains("snapshot installed"),
        "the wiped follower must catch up through a snapshot install (the log should be purged \
         behind snapshots taken every {SNAPSHOT_EVERY} entries), but its log since the restart \
         shows none:\n{log}"
    );

    info!("phase 6: audit every node and compare the replicas page by page");
    let report = checker
        .verify(&cluster)
        .await
        .expect("every node has every row");
    assert_eq!(report.acked, 380, "30 + 150 + 200 writes");
    cluster.assert_identical_pages().await;
    info!(?report, "t30 done");
}
