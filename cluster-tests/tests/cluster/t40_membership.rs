//! t40: a learner added with AddLearner receives the data but never counts toward a quorum.

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_tests::{
    expect_status, health, init_tracing, wait_until, Checker, Client, ClientOptions, Cluster,
    ClusterOptions, Consistency, Statement,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tracing::info;

#[tokio::test(flavor = "multi_thread")]
async fn learner_gets_data_but_no_vote() {
    init_tracing();

    info!("phase 1: start three voters and write 50 rows");
    let mut cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let client = cluster.client();
    let checker = Checker::new("membership_kv");
    checker
        .create_table(&client)
        .await
        .expect("create the table");
    checker
        .write_many(&client, "before-learner", 50)
        .await
        .expect("first writes");

    info!("phase 1b: a node that does not answer, or answers as another node, is not added");
    // It used to become a voter at once (openraft counted a learner it never reached as
    // caught up on a short log), so that one more failure cost the quorum.
    let once = Client::with_options(
        [cluster.node(leader).endpoint()],
        ClientOptions {
            retry_deadline: Duration::ZERO,
            ..ClientOptions::default()
        },
    )
    .expect("client");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let dead_addr = dead.local_addr().expect("addr").to_string();
    drop(dead);
    let started = std::time::Instant::now();
    let refused = once.add_voter(9, dead_addr.clone(), Some(dead_addr)).await;
    let message = expect_status(refused, Code::Unavailable, "add-voter of a dead address");
    assert!(message.contains("does not answer"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let other = leader % 3 + 1;
    let impostor = once
        .add_voter(
            9,
            cluster.node(other).addr().to_string(),
            Some(cluster.peer_addr(other).to_string()),
        )
        .await;
    let message = expect_status(impostor, Code::InvalidArgument, "add-voter of another node");
    assert!(
        message.contains(&format!("is node {other}, not node 9")),
        "{message}"
    );
    let status = cluster.status_of(leader).await.expect("status");
    let members: BTreeSet<u64> = status.nodes.iter().map(|n| n.id).collect();
    assert_eq!(members, BTreeSet::from([1, 2, 3]), "membership unchanged");

    info!("phase 2: start a fourth node and add it with AddLearner");
    let learner = cluster.start_extra_node().expect("start a fourth node");
    let added = client
        .add_learner(
            learner,
            cluster.node(learner).addr().to_string(),
            Some(cluster.peer_addr(learner).to_string()),
        )
        .await
        .expect("AddLearner");
    assert_eq!(added.learners, vec![learner], "{added:?}");
    assert_eq!(
        added.voters.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 3])
    );

    info!(
        learner,
        "phase 3: the learner receives every row and Status shows it as a non-voter"
    );
    checker
        .write_many(&client, "after-learner", 20)
        .await
        .expect("writes after the learner joined");
    let report = checker
        .verify(&cluster)
        .await
        .expect("the learner holds every row");
    assert_eq!(report.nodes.len(), 4);
    for asked in [leader, learner] {
        let status = cluster.status_of(asked).await.expect("status");
        let entry = status
            .nodes
            .iter()
            .find(|n| n.id == learner)
            .unwrap_or_else(|| panic!("node {asked} lists the learner: {status:?}"));
        assert!(
            !entry.voter,
            "node {asked} reports the learner as a voter: {entry:?}"
        );
        assert_eq!(entry.role, "learner", "as seen by node {asked}: {entry:?}");
        let voters: BTreeSet<u64> = status
            .nodes
            .iter()
            .filter(|n| n.voter)
            .map(|n| n.id)
            .collect();
        assert_eq!(voters, BTreeSet::from([1, 2, 3]), "as seen by node {asked}");
    }

    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    info!(
        ?followers,
        leader, "phase 4: SIGKILL two of the three voters; the leader and the learner stay up"
    );
    let before = cluster.status_of(leader).await.expect("status");
    let applied_before = |id: u64| {
        before
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map_or(0, |n| n.applied_index)
    };
    for id in &followers {
        cluster.node(*id).kill().expect("kill a voter");
    }
    // The leader still knows how much of the log a voter that does not answer holds (it
    // used to show 0).
    let leader_view = cluster
        .status_of(leader)
        .await
        .expect("the leader answers Status");
    for id in &followers {
        let entry = leader_view
            .nodes
            .iter()
            .find(|n| n.id == *id)
            .expect("the leader lists the stopped voter");
        assert_eq!(entry.role, "unreachable", "{entry:?}");
        assert!(
            entry.applied_index >= applied_before(*id) && entry.applied_index > 0,
            "node {id} held {} before it stopped: {entry:?}",
            applied_before(*id)
        );
    }
    // Each survivor must refuse the write with UNAVAILABLE within the client's 5 s request
    // timeout. The outcomes are checked after the rest of the scenario, so that one failure
    // here still shows whether the cluster recovers.
    let mut no_quorum_outcomes = Vec::new();
    for via in [leader, learner] {
        let key = format!("no-quorum-via-{via}");
        // Sent but never acknowledged: the audit allows it at most once (an entry the leader
        // appended may still commit once the voters are back, as Raft permits).
        let result = checker
            .write(&cluster.client_for(via), &key, "no quorum")
            .await;
        no_quorum_outcomes.push((via, result));
    }
    let learner_view = cluster
        .status_of(learner)
        .await
        .expect("the learner answers Status");
    let own = learner_view
        .nodes
        .iter()
        .find(|n| n.id == learner)
        .expect("lists itself");
    assert!(
        !own.voter && own.role == "learner",
        "the learner must stay a learner without a quorum: {own:?}"
    );

    info!(
        ?followers,
        "phase 5: restart the two voters; writes work again and reach all four nodes"
    );
    for id in &followers {
        cluster.node(*id).restart().await.expect("restart a voter");
    }
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader once the quorum is back");
    checker
        .write_many(&client, "quorum-back", 20)
        .await
        .expect("writes with the quorum back");

    info!("phase 6: audit all four nodes and compare the replicas page by page");
    let report = checker
        .verify(&cluster)
        .await
        .expect("every node has every acknowledged row");
    assert_eq!((report.nodes.len(), report.acked), (4, 90));
    assert!(report.unacked_applied <= 2);
    cluster.assert_identical_pages().await;

    info!("phase 7: the writes sent without a quorum were refused with UNAVAILABLE");
    for (via, result) in no_quorum_outcomes {
        expect_status(
            result,
            Code::Unavailable,
            &format!(
                "a write through node {via} while one voter of three was up (the learner does \
                 not make a quorum)"
            ),
        );
    }
    info!(?report, "t40 done");
}

/// Phase 1 of the scenarios below: three voters elect a leader, and 20 rows are written
/// into `table` through a client of every node.
async fn three_voters_with_rows(table: &str) -> (Cluster, u64, Client, Checker) {
    info!("phase 1: start three voters and write 20 rows");
    let cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let client = cluster.client();
    let checker = Checker::new(table);
    checker
        .create_table(&client)
        .await
        .expect("create the table");
    checker
        .write_many(&client, "before", 20)
        .await
        .expect("first writes");
    (cluster, leader, client, checker)
}

/// Leadership transfer (openraft 0.9 has none built in): the target becomes leader, every node
/// agrees, and writes go on without loss.
#[tokio::test(flavor = "multi_thread")]
async fn leadership_transfer_moves_the_leader() {
    init_tracing();
    let (cluster, leader, client, checker) = three_voters_with_rows("transfer_kv").await;

    let target = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    info!(
        leader,
        target, "phase 2: transfer leadership through the other follower"
    );
    let via = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != target)
        .expect("a second follower");
    cluster
        .client_for(via)
        .transfer_leadership(target)
        .await
        .expect("TransferLeadership");
    for id in cluster.ids() {
        let status = cluster.status_of(id).await.expect("status");
        assert_eq!(
            status.leader, target,
            "node {id} must see node {target} as leader: {status:?}"
        );
    }

    info!("phase 3: writes continue under the new leader; nothing lost");
    checker
        .write_many(&client, "after", 20)
        .await
        .expect("writes after the transfer");
    let report = checker
        .verify(&cluster)
        .await
        .expect("every node has every row");
    assert_eq!(report.acked, 40);
    cluster.assert_identical_pages().await;
}

/// A node removed while it runs finds out: it reports itself `removed`, is not ready, and
/// refuses requests with UNAVAILABLE saying why, so that clients use the other nodes. It used
/// to call itself a voter and answer "no leader; retry" for good. Added back, it serves again.
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_node_says_so_and_serves_again_once_added_back() {
    init_tracing();
    let (cluster, leader, client, checker) = three_voters_with_rows("removed_kv").await;

    let removed = *cluster.ids_except(leader).last().expect("a follower");
    info!(
        removed,
        "phase 2: remove a follower while it runs; the other two go on"
    );
    let membership = client.remove_node(removed).await.expect("RemoveNode");
    assert!(
        !membership.voters.contains(&removed) && !membership.learners.contains(&removed),
        "{membership:?}"
    );
    checker
        .write_many(&client, "after-removal", 10)
        .await
        .expect("writes on the two remaining voters");

    info!(
        removed,
        "phase 3: the removed node says so: status, readiness, refusals"
    );
    let own = wait_until(
        "the removed node to report it",
        Duration::from_secs(20),
        || async {
            let status = cluster.status_of(removed).await?;
            Ok(status
                .nodes
                .into_iter()
                .find(|n| n.id == removed && n.role == "removed"))
        },
    )
    .await
    .expect("the removed node reports itself removed");
    assert!(!own.voter, "{own:?}");
    let ready = health(&cluster.node(removed).addr().to_string(), "")
        .await
        .expect("health answers");
    assert_eq!(ready, ServingStatus::NotServing);
    let only_removed = Client::with_options(
        [cluster.node(removed).endpoint()],
        ClientOptions {
            retry_deadline: Duration::ZERO,
            ..ClientOptions::default()
        },
    )
    .expect("client");
    let count = Statement::new("SELECT count(*) FROM removed_kv");
    let started = std::time::Instant::now();
    for consistency in [Consistency::Linearizable, Consistency::Stale] {
        let refused = only_removed.query_with(count.clone(), consistency, 0).await;
        let message = expect_status(refused, Code::Unavailable, "a read there");
        assert!(message.contains("no longer a member"), "{message}");
    }
    let refused = only_removed
        .execute([Statement::new("CREATE TABLE IF NOT EXISTS never (x)")])
        .await;
    let message = expect_status(refused, Code::Unavailable, "a write there");
    assert!(message.contains("no longer a member"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after a wait: {:?}",
        started.elapsed()
    );
    // An application that lists every node goes on: the refusal sends it elsewhere.
    let rows = client
        .query_with(count.clone(), Consistency::Linearizable, 0)
        .await
        .expect("a read through a client that knows every node");
    assert_eq!(rows.rows[0].get::<i64>(0).expect("count"), 30);

    info!(
        removed,
        "phase 4: add it back as a voter: it serves again and holds every row"
    );
    client
        .add_voter(
            removed,
            cluster.node(removed).addr().to_string(),
            Some(cluster.peer_addr(removed).to_string()),
        )
        .await
        .expect("AddVoter of the removed node");
    let rows = wait_until(
        "the node to serve again",
        Duration::from_secs(20),
        || async {
            Ok(only_removed
                .query_with(count.clone(), Consistency::Linearizable, 0)
                .await
                .ok())
        },
    )
    .await
    .expect("a linearizable read on the node added back");
    assert_eq!(rows.rows[0].get::<i64>(0).expect("count"), 30);
    let status = cluster.status_of(removed).await.expect("status");
    let own = status
        .nodes
        .iter()
        .find(|n| n.id == removed)
        .expect("lists itself");
    assert!(own.voter && own.role == "follower", "{own:?}");
    checker
        .write_many(&client, "added-back", 10)
        .await
        .expect("writes with three voters again");
    let report = checker
        .verify(&cluster)
        .await
        .expect("every node has every row");
    assert_eq!((report.nodes.len(), report.acked), (3, 40));
    cluster.assert_identical_pages().await;
}
