//! t35: a node whose data belongs to ANOTHER cluster (a reused volume, LiteFS' "cannot stream
//! from primary with a different cluster id") wipes itself and re-syncs, with no manual step.

use std::time::Duration;

use cluster_tests::{
    init_tracing, raftlite_binary, three_nodes_with, wait_until, Cluster, ClusterOptions,
};
use raftlite_client::{Client, Consistency, Statement};
use tracing::info;

#[tokio::test(flavor = "multi_thread")]
async fn node_with_foreign_cluster_data_resyncs_by_itself() {
    init_tracing();

    info!("phase 1: start three nodes (re-sync on: without TLS it is off by default) and write 30 rows");
    let options = ClusterOptions {
        extra_args: vec!["--auto-resync".into(), "true".into()],
        ..ClusterOptions::default()
    };
    let (cluster, leader, checker) = three_nodes_with("resync_kv", options).await;
    let client = cluster.client();
    checker
        .write_many(&client, "before", 30)
        .await
        .expect("first writes");
    let cluster_id = cluster.status_of(leader).await.expect("status").cluster_id;

    let stray = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    info!(
        stray,
        "phase 2: give the follower's volume to a different, single-node cluster"
    );
    let node = cluster.node(stray);
    node.stop().await.expect("stop the follower");
    node.wipe().expect("wipe it");
    let addr = node.addr().to_string();
    let peer_addr = cluster.peer_addr(stray).to_string();
    let mut foreign = std::process::Command::new(raftlite_binary())
        .args(["serve", "--node-id", &stray.to_string(), "--listen", &addr])
        .args(["--peer-listen", &peer_addr])
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["--peers", &format!("{stray}={peer_addr}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a foreign single-node cluster on the volume");
    let foreign_client = Client::connect([addr.as_str()]).expect("client");
    wait_until(
        "the foreign cluster to accept a write",
        Duration::from_secs(20),
        || {
            let c = foreign_client.clone();
            async move {
                c.exec("CREATE TABLE foreign_only (x)", Vec::<i64>::new())
                    .await
                    .map(|_| Some(()))
                    .map_err(|e| anyhow::anyhow!("{e}"))
            }
        },
    )
    .await
    .expect("foreign cluster writable");
    let foreign_id = foreign_client
        .status()
        .await
        .expect("foreign status")
        .cluster_id;
    assert_ne!(foreign_id, cluster_id, "a second, different cluster");
    foreign.kill().expect("kill the foreign node");
    foreign.wait().expect("reap the foreign node");

    info!("phase 3: start the follower with its original arguments: it must notice and re-sync");
    node.start().expect("start the follower again");
    checker
        .write_many(&client, "after", 20)
        .await
        .expect("writes meanwhile");
    cluster
        .wait_converged(Duration::from_secs(40))
        .await
        .expect("the stray node re-syncs");
    let status = cluster
        .status_of(stray)
        .await
        .expect("status of the re-synced node");
    assert_eq!(
        status.cluster_id, cluster_id,
        "it joined the real cluster again"
    );
    let log = node.log_since_start();
    assert!(
        log.contains("re-sync"),
        "one clear log line says what happened:\n{log}"
    );
    let foreign_tables = cluster
        .client_for(stray)
        .query_with(
            Statement::new("SELECT count(*) FROM sqlite_master WHERE name = 'foreign_only'"),
            Consistency::Stale,
            0,
        )
        .await
        .expect("query the re-synced node");
    assert_eq!(
        foreign_tables.rows[0].get::<i64>(0).expect("count"),
        0,
        "nothing of the foreign cluster's data survives"
    );

    info!("phase 4: audit every node and compare pages");
    let report = checker
        .verify(&cluster)
        .await
        .expect("every node has every row");
    assert_eq!(report.acked, 50);
    cluster.assert_identical_pages().await;
}

/// A node whose `db.sqlite` was replaced by another cluster's (copied in by hand, a backup
/// restored into the wrong volume) used to start on it: it skipped its log's deltas as
/// already held and served the other cluster's rows as its replica. It now refuses to start
/// and names the file; the other nodes keep serving; once the file is moved away the node
/// rebuilds its database from its snapshot, its log and the leader, and matches its peers.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_database_file_was_replaced_refuses_it() {
    init_tracing();

    info!("phase 1: three nodes and 30 rows; another cluster of one node and 121 writes");
    let (cluster, leader, checker) =
        three_nodes_with("replaced_kv", ClusterOptions::default()).await;
    let client = cluster.client();
    checker
        .write_many(&client, "before", 30)
        .await
        .expect("first writes");
    let other = Cluster::single_node().await;
    let other_client = other.client();
    other_client
        .exec("CREATE TABLE other_only (x)", Vec::<i64>::new())
        .await
        .expect("the other cluster's table");
    for i in 0..120i64 {
        other_client
            .exec("INSERT INTO other_only VALUES (?1)", vec![i])
            .await
            .expect("the other cluster's write");
    }
    other.node(1).stop().await.expect("stop the other cluster");

    let stray = cluster.ids_except(leader)[0];
    info!(
        stray,
        "phase 2: the follower's db.sqlite replaced by the other cluster's"
    );
    let node = cluster.node(stray);
    node.stop().await.expect("stop the follower");
    let files = |db: &std::path::Path| {
        ["", "-wal", "-shm"]
            .map(|suffix| std::path::PathBuf::from(format!("{}{suffix}", db.display())))
    };
    let ours = files(&node.db_path());
    for (theirs, ours) in files(&other.node(1).db_path()).iter().zip(&ours) {
        let _ = std::fs::remove_file(ours);
        if theirs.exists() {
            std::fs::copy(theirs, ours).expect("copy the other cluster's file");
        }
    }
    node.start().expect("start the follower");
    let status = wait_until(
        "the follower to refuse its database",
        Duration::from_secs(30),
        || {
            let status = node.exit_status();
            async move { status }
        },
    )
    .await
    .expect("the follower stops");
    assert!(!status.success(), "a refusal is a failed start: {status}");
    let log = node.log_since_start();
    let db = node.db_path().display().to_string();
    assert!(
        log.contains(&format!(
            "{db} is not the database this node's Raft log leads to"
        )) && log.contains("Move db.sqlite"),
        "the log names the file and what to do:\n{log}"
    );
    checker
        .write_many(&client, "meanwhile", 10)
        .await
        .expect("the two other nodes go on serving");

    info!("phase 3: the file moved away, the follower rebuilds its database");
    node.kill().expect("reap the follower");
    let aside = tempfile::tempdir().expect("a directory for the moved file");
    for file in ours.iter().filter(|f| f.exists()) {
        let name = file.file_name().expect("a file name");
        std::fs::rename(file, aside.path().join(name)).expect("move the file away");
    }
    node.start().expect("start the follower again");
    cluster
        .wait_converged(Duration::from_secs(40))
        .await
        .expect("the follower catches up");
    let others_rows = cluster
        .client_for(stray)
        .query_with(
            Statement::new("SELECT count(*) FROM sqlite_master WHERE name = 'other_only'"),
            Consistency::Stale,
            0,
        )
        .await
        .expect("query the rebuilt node");
    assert_eq!(
        others_rows.rows[0].get::<i64>(0).expect("count"),
        0,
        "nothing of the other cluster's file is served"
    );
    let report = checker
        .verify(&cluster)
        .await
        .expect("every node has every row");
    assert_eq!(report.acked, 40);
    cluster.assert_identical_pages().await;
}

/// A new node (no Raft state) whose data directory already holds a database file (a volume
/// reused, an existing SQLite file dropped in) used to join and take the file as holding the
/// cluster's first writes. It now refuses to start, naming the file (moved away, the node
/// starts as any new node: the scenarios of t40 add those).
#[tokio::test(flavor = "multi_thread")]
async fn a_new_node_with_a_database_file_in_place_refuses_it() {
    init_tracing();
    let (mut cluster, _, checker) =
        three_nodes_with("new_node_kv", ClusterOptions::default()).await;
    let client = cluster.client();
    checker
        .write_many(&client, "before", 20)
        .await
        .expect("first writes");

    info!("a database file in the fourth node's data directory before its first start");
    let other = Cluster::single_node().await;
    other
        .client()
        .exec("CREATE TABLE other_only (x)", Vec::<i64>::new())
        .await
        .expect("the other cluster's table");
    other.node(1).stop().await.expect("stop the other cluster");
    let data_dir = cluster.dir().join("node-4");
    std::fs::create_dir_all(&data_dir).expect("create the data directory");
    for suffix in ["", "-wal", "-shm"] {
        let theirs = format!("{}{suffix}", other.node(1).db_path().display());
        if std::path::Path::new(&theirs).exists() {
            let ours = data_dir.join(format!("db.sqlite{suffix}"));
            std::fs::copy(&theirs, ours).expect("copy the file");
        }
    }
    let id = cluster.start_extra_node().expect("start a fourth node");
    assert_eq!(id, 4);
    let node = cluster.node(id);
    let status = wait_until(
        "the new node to refuse the file",
        Duration::from_secs(30),
        || {
            let status = node.exit_status();
            async move { status }
        },
    )
    .await
    .expect("the new node stops");
    assert!(!status.success(), "a refusal is a failed start: {status}");
    let log = node.log_since_start();
    assert!(
        log.contains(&format!(
            "{} holds data, but this node has no Raft state",
            node.db_path().display()
        )),
        "the log names the file:\n{log}"
    );
}
