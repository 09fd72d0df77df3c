//! t25: a leader cut off from its quorum (both followers paused with SIGSTOP, so the leader
//! keeps running and keeps thinking it leads) must not serve `bounded` reads from data that
//! may already be old; once the followers are back it serves them again.

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
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
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
    for pid in &followers {
        signal(*pid, libc::SIGCONT);
    }
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
