//! t50: the archive. Real nodes ship their log to a real S3 server (`moto_server` on loopback,
//! behind a proxy the test can take down) or to a shared directory, and `raftlite restore`
//! rebuilds databases from it: latest state, a log index in the middle, the Litestream flag
//! cases, an S3 outage, a whole lost cluster, a 100 MB database, and corrupted or missing
//! objects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::{
    init_tracing, wait_until, Checker, Client, Cluster, ClusterOptions, MotoServer, S3Proxy,
};
use tracing::info;

const BUCKET: &str = "raftlite-archive";

fn s3_env() {
    // moto accepts any credentials; the nodes and the CLI inherit these.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
}

fn s3_options(prefix: &str, endpoint: &str, extra: &[&str]) -> ClusterOptions {
    let mut extra_args: Vec<String> = vec![
        "--archive".into(),
        format!("s3://{BUCKET}/{prefix}"),
        "--archive-endpoint".into(),
        endpoint.into(),
        "--archive-flush-ms".into(),
        "100".into(),
    ];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    ClusterOptions {
        extra_args,
        ..ClusterOptions::default()
    }
}

/// Runs `raftlite restore ARGS...`.
fn restore(args: &[&str]) -> Output {
    restore_with(&[], args)
}

/// Runs `raftlite restore ARGS...` with the environment variables `env`.
fn restore_with(env: &[(&str, &str)], args: &[&str]) -> Output {
    std::process::Command::new(cluster_tests::raftlite_binary())
        .arg("restore")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run raftlite restore")
}

/// The encryption key of the archive in the whole-cluster scenario (64 hex digits).
const ARCHIVE_KEY: &str = "5e1f0c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn restore_ok(args: &[&str]) -> String {
    let out = restore(args);
    assert!(
        out.status.success(),
        "restore {args:?} failed: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `SELECT k, v FROM table ORDER BY k` of a database file, and its integrity check.
fn rows_of(db: &Path, table: &str) -> (Vec<(String, String)>, String) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    let mut stmt = conn
        .prepare(&format!("SELECT k, v FROM {table} ORDER BY k"))
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<Vec<(String, String)>, _>>()
        .expect("rows");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    (rows, check)
}

/// The archive's view on the leader: (archived index, snapshot index, last error).
async fn archive_view(cluster: &Cluster) -> anyhow::Result<(u64, u64, String)> {
    let leader = cluster
        .leader_id()
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let status = cluster.status_of(leader).await?;
    let a = status
        .archive
        .ok_or_else(|| anyhow::anyhow!("status has no archive"))?;
    anyhow::ensure!(a.uploading, "the leader does not upload (yet)");
    Ok((a.archived_index, a.snapshot_index, a.last_error))
}

async fn wait_archived(cluster: &Cluster, index: u64, within: Duration) -> u64 {
    wait_until(
        "the archive to hold every acknowledged write",
        within,
        || async {
            let (archived, _, err) = archive_view(cluster).await?;
            anyhow::ensure!(
                archived >= index,
                "archived {archived} < {index} (last error: {err:?})"
            );
            Ok(Some(archived))
        },
    )
    .await
    .expect("the archive catches up")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Writes from `lanes` tasks for `duration`; returns (key, log index, ack time) of every
/// acknowledged write.
async fn write_load(
    client: &Client,
    checker: &Checker,
    prefix: &str,
    lanes: usize,
    duration: Duration,
) -> Vec<(String, u64, Instant)> {
    let acks = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let until = Instant::now() + duration;
    for lane in 0..lanes {
        let (client, checker, acks, prefix) = (
            client.clone(),
            checker.clone(),
            acks.clone(),
            prefix.to_string(),
        );
        tasks.spawn(async move {
            let mut i = 0;
            while Instant::now() < until {
                let key = format!("{prefix}-{lane}-{i:06}");
                let written = checker
                    .write(&client, &key, &format!("value of {key}"))
                    .await
                    .expect("the cluster keeps serving writes");
                acks.lock()
                    .expect("lock")
                    .push((key, written.log_index, Instant::now()));
                i += 1;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer task");
    }
    let acks = acks.lock().expect("lock").clone();
    acks
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_archive_lag_restore_point_in_time_flags_outage_and_corruption() {
    init_tracing();
    s3_env();
    info!("phase 1: start moto_server, a bucket, a proxy in front of it, and three nodes archiving to it");
    let moto = MotoServer::start().expect("start moto_server");
    moto.create_bucket(BUCKET).expect("create the bucket");
    let proxy = S3Proxy::start(moto.addr())
        .await
        .expect("start the S3 proxy");
    let cluster =
        Cluster::start(3, s3_options("main", &proxy.endpoint(), &[])).expect("start the cluster");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let client = cluster.client();
    let checker = Checker::new("archive_kv");
    checker
        .create_table(&client)
        .await
        .expect("create the table");

    info!("phase 2: write under load from 8 clients for 4 s while sampling the leader's archived index");
    let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (samples, sampling) = (samples.clone(), sampling.clone());
        let probe = cluster.client();
        tokio::spawn(async move {
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(s) = probe.status().await {
                    if let Some(a) = s.archive.filter(|a| a.uploading) {
                        samples
                            .lock()
                            .expect("lock")
                            .push((Instant::now(), a.archived_index));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let acks = write_load(&client, &checker, "load", 8, Duration::from_secs(4)).await;
    let last = acks.iter().map(|a| a.1).max().expect("some writes");
    wait_archived(&cluster, last, Duration::from_secs(30)).await;
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    sampler.await.expect("sampler");
    let samples = samples.lock().expect("lock").clone();
    let mut lags: Vec<Duration> = acks
        .iter()
        .filter_map(|(_, index, acked)| {
            samples
                .iter()
                .find(|(_, archived)| archived >= index)
                .map(|(at, _)| at.saturating_duration_since(*acked))
        })
        .collect();
    lags.sort();
    let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    info!(
        writes = acks.len(),
        measured = lags.len(),
        p50_ms = p50.as_millis() as u64,
        p99_ms = p99.as_millis() as u64,
        "commit-to-archive lag under load (status polled every 20 ms)"
    );
    assert!(
        lags.len() * 10 >= acks.len() * 9,
        "most writes must be seen archived by the sampler"
    );

    info!("phase 3: restore the latest state and compare it with the live database");
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .expect("converged");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("s3://{BUCKET}/main");
    let endpoint = proxy.endpoint();
    let latest = dir.path().join("latest.db");
    let latest_s = latest.to_str().expect("utf-8 path");
    let out = restore_ok(&["-v", "-endpoint", &endpoint, "-o", latest_s, &url]);
    assert!(out.contains("restored"), "{out}");
    let leader = cluster.leader_id().await.expect("leader");
    let (live, _) = rows_of(&cluster.node(leader).db_path(), checker.table());
    let (restored, check) = rows_of(&latest, checker.table());
    assert_eq!(check, "ok");
    assert_eq!(
        restored.len(),
        acks.len(),
        "every acknowledged write is restored"
    );
    assert_eq!(restored, live, "the restored database has the live rows");

    info!("phase 4: point-in-time restore to a log index in the middle of the load");
    let mut by_index: Vec<&(String, u64, Instant)> = acks.iter().collect();
    by_index.sort_by_key(|a| a.1);
    let middle = by_index[by_index.len() / 2].1;
    let pit = dir.path().join("middle.db");
    let pit_s = pit.to_str().expect("utf-8 path");
    restore_ok(&[
        "--endpoint",
        &endpoint,
        "-index",
        &middle.to_string(),
        "-o",
        pit_s,
        &url,
    ]);
    let (rows, check) = rows_of(&pit, checker.table());
    assert_eq!(check, "ok");
    let expected: BTreeMap<&str, ()> = acks
        .iter()
        .filter(|a| a.1 <= middle)
        .map(|a| (a.0.as_str(), ()))
        .collect();
    let got: BTreeMap<&str, ()> = rows.iter().map(|r| (r.0.as_str(), ())).collect();
    assert_eq!(got, expected, "exactly the writes up to index {middle}");

    info!("phase 5: the seed's restore flags: -if-db-not-exists, -if-replica-exists, -force");
    let before = std::fs::read(&pit).expect("read");
    let out = restore_ok(&[
        "-if-db-not-exists",
        "-if-replica-exists",
        "-endpoint",
        &endpoint,
        "-o",
        pit_s,
        &url,
    ]);
    assert!(out.contains("skipped"), "{out}");
    assert_eq!(
        std::fs::read(&pit).expect("read"),
        before,
        "an existing database is left alone"
    );
    let empty_url = format!("s3://{BUCKET}/nothing-here");
    let fresh = dir.path().join("fresh.db");
    let fresh_s = fresh.to_str().expect("utf-8 path");
    let out = restore_ok(&[
        "-if-db-not-exists",
        "-if-replica-exists",
        "-endpoint",
        &endpoint,
        "-o",
        fresh_s,
        &empty_url,
    ]);
    assert!(out.contains("skipped"), "{out}");
    assert!(!fresh.exists());
    let out = restore(&["-endpoint", &endpoint, "-o", fresh_s, &empty_url]);
    assert!(
        !out.status.success(),
        "an empty archive without -if-replica-exists fails: {}",
        text(&out)
    );
    let out = restore(&["-endpoint", &endpoint, "-o", pit_s, &url]);
    assert!(
        !out.status.success(),
        "no overwrite without -force: {}",
        text(&out)
    );
    assert!(text(&out).contains("-force"), "{}", text(&out));
    restore_ok(&["-force", "-endpoint", &endpoint, "-o", pit_s, &url]);
    assert_eq!(rows_of(&pit, checker.table()).0.len(), acks.len());

    info!("phase 6: S3 goes down for 4 s under write load; the cluster keeps serving; S3 comes back and the archive completes");
    proxy.down();
    let during = write_load(&client, &checker, "outage", 4, Duration::from_secs(4)).await;
    let (archived, _, err) = archive_view(&cluster).await.expect("archive status");
    let last = during
        .iter()
        .map(|a| a.1)
        .max()
        .expect("writes during the outage");
    info!(archived, last, error = %err, "archive status while S3 is down");
    assert!(archived < last, "nothing can be archived while S3 is down");
    proxy.up().await.expect("bring S3 back");
    wait_archived(&cluster, last, Duration::from_secs(60)).await;
    let after = dir.path().join("after-outage.db");
    let after_s = after.to_str().expect("utf-8 path");
    restore_ok(&["-endpoint", &endpoint, "-o", after_s, &url]);
    let (rows, check) = rows_of(&after, checker.table());
    assert_eq!(check, "ok");
    assert_eq!(
        rows.len(),
        acks.len() + during.len(),
        "nothing written during the outage is missing"
    );

    info!("phase 7: S3 hangs (connections accepted, never answered); the lag the leader reports grows");
    proxy.stall().await.expect("stall S3");
    let stalled = write_load(&client, &checker, "stalled", 2, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader_id().await.expect("a leader");
    let archive = cluster
        .status_of(leader)
        .await
        .expect("status")
        .archive
        .expect("archive status");
    info!(?archive, "archive status while S3 hangs");
    assert!(
        archive.lag_entries >= 1 && archive.lag_ms >= 2500,
        "the lag keeps growing while an upload hangs (it used to stay at what it was when \
         the upload started): {archive:?}"
    );
    proxy.up().await.expect("bring S3 back");
    let last = stalled
        .iter()
        .map(|a| a.1)
        .max()
        .expect("writes while S3 hung");
    wait_archived(&cluster, last, Duration::from_secs(60)).await;

    info!("t50 S3 scenario done");
}

/// Options of three nodes archiving to `url` every 50 ms, a snapshot every second.
fn archiving_to(url: &str, env: Vec<(String, String)>) -> ClusterOptions {
    ClusterOptions {
        extra_args: vec![
            "--archive".into(),
            url.into(),
            "--archive-flush-ms".into(),
            "50".into(),
            "--archive-snapshot-interval-s".into(),
            "1".into(),
        ],
        env,
        ..ClusterOptions::default()
    }
}

/// A cluster archiving to a directory of its own, with a table of writes all archived.
struct ArchivedCluster {
    dir: tempfile::TempDir,
    /// The archive's URL (`file://` the directory).
    url: String,
    cluster: Cluster,
    client: Client,
    checker: Checker,
    /// The archived index the writes reached.
    archived: u64,
}

/// Starts `nodes` nodes archiving to a fresh directory, creates `table` and writes `writes`
/// keys `before-N` to it, and waits until the archive holds them.
async fn archived_cluster(nodes: u64, table: &str, writes: usize) -> ArchivedCluster {
    let dir = tempfile::tempdir().expect("archive dir");
    let url = format!("file://{}", dir.path().display());
    let cluster = Cluster::start(nodes, archiving_to(&url, Vec::new())).expect("start the cluster");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let client = cluster.client();
    let checker = Checker::new(table);
    checker
        .create_table(&client)
        .await
        .expect("create the table");
    let last = checker
        .write_many(&client, "before", writes)
        .await
        .expect("writes");
    let archived = wait_archived(&cluster, last, Duration::from_secs(30)).await;
    ArchivedCluster {
        dir,
        url,
        cluster,
        client,
        checker,
        archived,
    }
}

/// SIGKILL every node, wipe every volume, start them all again.
async fn lose_every_node_and_restart(cluster: &Cluster) {
    for id in cluster.ids() {
        cluster.node(id).kill().expect("kill");
        cluster.node(id).wipe().expect("wipe");
    }
    for id in cluster.ids() {
        cluster.node(id).restart().await.expect("restart");
    }
}

/// Waits until `node`'s log has a line with `text`.
async fn logged(node: &cluster_tests::NodeProcess, text: &str, within: Duration) {
    wait_until(&format!("the log line {text:?}"), within, || async {
        Ok((!node.log_lines_with(text).is_empty()).then_some(()))
    })
    .await
    .expect("the node logs it");
}

/// A crash of the node that restores the cluster from the archive, after it made itself a
/// one-member cluster and before the restored state was a snapshot with the log behind it
/// purged: its restart found Raft state and took it for an ordinary restart, so the other
/// members joined a log that does not carry the restored state and replayed it onto empty
/// databases. A durable mark of the recovery has the restart finish it first.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_in_the_middle_of_recovery_is_finished_by_the_restart() {
    init_tracing();
    info!("phase 1: three nodes archiving to a shared directory; 50 writes");
    let ArchivedCluster {
        dir: _archive_dir,
        cluster,
        client,
        checker,
        ..
    } = archived_cluster(3, "mid_recovery_kv", 50).await;

    info!("phase 2: lose every node and volume; restart; SIGKILL the restoring node as soon as it initializes");
    lose_every_node_and_restart(&cluster).await;
    // The lowest id restores the archive and initializes.
    let node = cluster.node(cluster.ids()[0]);
    let initialized = "recovered the cluster from the archive";
    logged(node, initialized, Duration::from_secs(60)).await;
    node.kill().expect("kill the restoring node");
    node.restart().await.expect("restart the restoring node");
    // Adding the members alone takes longer than the harness's look at the log: the kill
    // comes before the recovery is finished.
    let resumed = "restarting in the middle of the cluster's recovery";
    logged(node, resumed, Duration::from_secs(20)).await;

    info!("phase 3: every member holds the restored state, and the cluster takes writes");
    cluster
        .wait_converged(Duration::from_secs(60))
        .await
        .expect("all members join the recovered cluster");
    checker
        .write_many(&client, "after-recovery", 10)
        .await
        .expect("the recovered cluster takes writes");
    let report = checker
        .verify(&cluster)
        .await
        .expect("every acknowledged write is back on every node");
    assert_eq!(report.acked, 60);
    cluster.assert_identical_pages().await;
}

/// A segment object whose name claims entries far past the cluster's log (a stray copy, or
/// another cluster's object under this one's name) was taken for the archive's end: archiving
/// stopped for good while the status showed no lag. A new leader now leaves such objects out,
/// archives on, and names them in the status, since a restore that reaches one fails on it,
/// until they are removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_stray_object_past_the_log_does_not_stop_the_archive() {
    init_tracing();
    let ArchivedCluster {
        dir: archive_dir,
        url,
        cluster,
        client,
        checker,
        archived,
    } = archived_cluster(1, "stray_kv", 20).await;

    info!(
        archived,
        "a stray segment continuing the chain up to index 10^12; a new leadership"
    );
    let generation = walkdir(archive_dir.path())
        .into_iter()
        .find(|p| p.ends_with("snapshots"))
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("the archive has a snapshot");
    let segments = generation.join("segments");
    std::fs::create_dir_all(&segments).expect("the segments directory");
    let stray = segments.join(format!(
        "{:020}-{:020}.seg.zst",
        archived + 1,
        1_000_000_000_000u64
    ));
    std::fs::write(&stray, b"not an archive object").expect("write the stray object");
    let id = cluster.ids()[0];
    cluster.node(id).kill().expect("kill");
    cluster.node(id).restart().await.expect("restart");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected again");
    let after = checker
        .write_many(&client, "after", 20)
        .await
        .expect("writes after the stray object");
    let name = stray
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a name")
        .to_owned();
    wait_until(
        "the archive to go on past the stray object",
        Duration::from_secs(30),
        || async {
            let (archived, _, error) = archive_view(&cluster).await?;
            anyhow::ensure!(
                (after..1_000_000_000_000).contains(&archived) && error.contains(&name),
                "archived {archived} (writes up to {after}), error {error:?}"
            );
            Ok(Some(()))
        },
    )
    .await
    .expect("the leader archives on and names the stray object");

    info!("with the stray object removed, the status clears and a restore holds every write");
    std::fs::remove_file(&stray).expect("remove the stray object");
    wait_until(
        "the status to stop naming the stray object",
        Duration::from_secs(30),
        || async {
            let (_, _, error) = archive_view(&cluster).await?;
            anyhow::ensure!(error.is_empty(), "error {error:?}");
            Ok(Some(()))
        },
    )
    .await
    .expect("the next snapshot's retention pass sees it gone");
    let restored = archive_dir.path().join("restored.db");
    let restored_s = restored.to_str().expect("utf-8 path");
    restore_ok(&["-o", restored_s, &url]);
    let (rows, check) = rows_of(&restored, checker.table());
    assert_eq!(check, "ok");
    assert_eq!(rows.len(), 40, "every acknowledged write is restored");
}

/// Every path under `dir`, depth first.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            paths.push(path.clone());
            paths.extend(walkdir(&path));
        } else {
            paths.push(path);
        }
    }
    paths
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_lost_is_restored_from_the_archive() {
    init_tracing();
    let archive_dir = tempfile::tempdir().expect("archive dir");
    let url = format!("file://{}", archive_dir.path().display());
    info!(%url, "phase 1: three nodes archiving to a shared directory, encrypted; 200 writes");
    let key = vec![("RAFTLITE_ARCHIVE_KEY".into(), ARCHIVE_KEY.into())];
    let cluster = Cluster::start(3, archiving_to(&url, key)).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let cluster_id = cluster.status_of(leader).await.expect("status").cluster_id;
    let client = cluster.client();
    let checker = Checker::new("dr_kv");
    checker
        .create_table(&client)
        .await
        .expect("create the table");
    let last = checker
        .write_many(&client, "before-loss", 200)
        .await
        .expect("writes");
    wait_archived(&cluster, last, Duration::from_secs(30)).await;
    // A healthy start archives without a failed upload (the leader used to ask for its first
    // snapshot before it had applied anything, and warned that none was on disk).
    let failed: Vec<String> = cluster
        .node(leader)
        .warnings()
        .into_iter()
        .filter(|line| line.contains("archive"))
        .collect();
    assert!(
        failed.is_empty(),
        "the archiver warned on a healthy cluster:\n{}",
        failed.join("\n")
    );

    info!("phase 2: lose every node and every volume (SIGKILL, wipe), then start them again");
    lose_every_node_and_restart(&cluster).await;

    info!("phase 3: the cluster restores the archived state by itself and serves it");
    cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .expect("a leader after recovery");
    cluster
        .wait_converged(Duration::from_secs(60))
        .await
        .expect("all members rejoin the recovered cluster");
    let leader = cluster.leader_id().await.expect("leader");
    let status = cluster.status_of(leader).await.expect("status");
    assert_eq!(
        status.cluster_id, cluster_id,
        "the archived cluster id is kept"
    );
    checker
        .write_many(&client, "after-recovery", 20)
        .await
        .expect("the recovered cluster takes writes");
    let report = checker
        .verify(&cluster)
        .await
        .expect("every acknowledged write is back");
    assert_eq!(report.acked, 220);
    cluster.assert_identical_pages().await;
    let generation = wait_until(
        "the recovered cluster archives into a new generation",
        Duration::from_secs(30),
        || async {
            let a = cluster
                .status_of(cluster.leader_id().await.unwrap_or(1))
                .await?
                .archive;
            Ok(a.filter(|a| a.uploading && a.snapshot_index > 0)
                .map(|a| a.generation))
        },
    )
    .await
    .expect("archive status");
    assert_eq!(generation, 2);

    info!("phase 4: an idle cluster uploads no snapshot again; restores that must pick the right generation, or say why none fits");
    let gen2_snapshots = archive_dir
        .path()
        .join(&cluster_id)
        .join("generations/00000002/snapshots");
    let snapshot_times = || -> Vec<(PathBuf, std::time::SystemTime)> {
        let mut times: Vec<_> = std::fs::read_dir(&gen2_snapshots)
            .expect("list generation 2's snapshots")
            .map(|e| {
                let path = e.expect("entry").path();
                let modified = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .expect("mtime");
                (path, modified)
            })
            .collect();
        times.sort();
        times
    };
    // The snapshot of the last writes comes within an interval or two; then nothing more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before_idle = snapshot_times();
    // Three snapshot intervals with nothing written: the same snapshot uploaded again would
    // move its time past the restore points it serves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        snapshot_times(),
        before_idle,
        "no snapshot uploaded while idle"
    );
    let key = [("RAFTLITE_ARCHIVE_KEY", ARCHIVE_KEY)];
    let picks = tempfile::tempdir().expect("temp dir");
    let rows_in = |db: &Path| -> i64 {
        rusqlite::Connection::open(db)
            .expect("open the restored database")
            .query_row("SELECT count(*) FROM dr_kv", [], |r| r.get(0))
            .expect("count")
    };
    // Log indexes start again in generation 2: an index past its end, which generation 1
    // holds, restores from generation 1 (it used to fail, naming generation 2 only).
    let tip_of = |generation: &str| -> u64 {
        let dir = archive_dir.path().join(&cluster_id).join(generation);
        ["snapshots", "segments"]
            .iter()
            .flat_map(|kind| std::fs::read_dir(dir.join(kind)).expect("list the generation"))
            .filter_map(|e| {
                let name = e.expect("entry").file_name().into_string().ok()?;
                let stem = name.split('.').next()?.to_string();
                stem.rsplit('-').next()?.parse::<u64>().ok()
            })
            .max()
            .expect("objects in the generation")
    };
    let (gen1_tip, gen2_tip) = (
        tip_of("generations/00000001"),
        tip_of("generations/00000002"),
    );
    assert!(
        gen1_tip > gen2_tip,
        "generation 1 ({gen1_tip}) is longer than 2 ({gen2_tip})"
    );
    let by_index = picks.path().join("by-index.db");
    let by_index_s = by_index.to_str().expect("utf-8 path");
    let index = gen1_tip.to_string();
    let out = restore_with(&key, &["-index", &index, "-o", by_index_s, url.as_str()]);
    assert!(
        out.status.success(),
        "index {index} of generation 1: {}",
        text(&out)
    );
    assert!(text(&out).contains("generation 1"), "{}", text(&out));
    assert_eq!(
        rows_in(&by_index),
        200,
        "generation 1's end holds the 200 writes"
    );
    // A time after generation 2 began, when generation 2 keeps no snapshot from before it
    // (here: its snapshots look re-uploaded later; in use: older ones past retention), has no
    // restore point. It used to restore generation 1's end, without the writes of generation
    // 2 acknowledged by then.
    let now = chrono::Utc::now();
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    for entry in std::fs::read_dir(&gen2_snapshots).expect("list generation 2's snapshots") {
        std::fs::File::options()
            .write(true)
            .open(entry.expect("entry").path())
            .and_then(|f| f.set_modified(later))
            .expect("set the snapshot's time");
    }
    let by_time = picks.path().join("by-time.db");
    let by_time_s = by_time.to_str().expect("utf-8 path");
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let out = restore_with(&key, &["-timestamp", &stamp, "-o", by_time_s, url.as_str()]);
    assert!(
        !out.status.success() && text(&out).contains("no restore point"),
        "no silent restore of generation 1 for a time in generation 2: {}",
        text(&out)
    );
    assert!(!by_time.exists());
    // A mistyped cluster id is not an empty archive (which -if-replica-exists would skip).
    let out = restore_with(
        &key,
        &[
            "-if-replica-exists",
            "--cluster-id",
            "bogus",
            "-o",
            by_time_s,
            url.as_str(),
        ],
    );
    assert!(
        !out.status.success() && text(&out).contains(&cluster_id),
        "names the clusters the archive holds: {}",
        text(&out)
    );

    info!("phase 5: a corrupted segment and a missing segment make the restore fail, naming the object");
    let gen1 = archive_dir
        .path()
        .join(&cluster_id)
        .join("generations/00000001/segments");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&gen1)
        .expect("list the segments")
        .map(|e| e.expect("entry").path())
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "several segments: {segments:?}");
    let victim = segments[segments.len() / 2].clone();
    let victim_name = victim
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.db");
    let bad_s = bad.to_str().expect("utf-8 path");
    let gen1_args = ["-generation", "1", "-o", bad_s, url.as_str()];
    let out = restore_with(&key, &gen1_args);
    assert!(out.status.success(), "restore with the key: {}", text(&out));
    assert_eq!(
        rows_in(&bad),
        200,
        "generation 1 holds the 200 writes before the loss"
    );
    std::fs::remove_file(&bad).expect("remove");
    let out = restore(&gen1_args);
    assert!(
        !out.status.success() && text(&out).contains("RAFTLITE_ARCHIVE_KEY"),
        "an encrypted archive needs the key: {}",
        text(&out)
    );
    assert!(!bad.exists());
    let mut bytes = std::fs::read(&victim).expect("read the segment");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&victim, &bytes).expect("corrupt the segment");
    let out = restore_with(&key, &gen1_args);
    assert!(
        !out.status.success(),
        "a corrupted object fails the restore: {}",
        text(&out)
    );
    assert!(
        text(&out).contains(&victim_name),
        "the error names {victim_name}: {}",
        text(&out)
    );
    assert!(!bad.exists(), "no half-restored database is left behind");
    std::fs::remove_file(&victim).expect("delete the segment");
    let out = restore_with(&key, &gen1_args);
    assert!(
        !out.status.success(),
        "a missing object fails the restore: {}",
        text(&out)
    );
    assert!(text(&out).contains("missing"), "{}", text(&out));
    assert!(!bad.exists());
    info!(?report, "t50 whole-cluster recovery done");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_database_restores_from_s3_and_matches() {
    init_tracing();
    s3_env();
    const MB: usize = 1 << 20;
    const BLOBS: usize = 110;
    info!("phase 1: one node archiving to moto_server, snapshots every 5 s; write {BLOBS} rows of 1 MiB");
    let moto = MotoServer::start().expect("start moto_server");
    moto.create_bucket(BUCKET).expect("create the bucket");
    let endpoint = format!("http://{}", moto.addr());
    let cluster = Cluster::start(
        1,
        s3_options("big", &endpoint, &["--archive-snapshot-interval-s", "5"]),
    )
    .expect("start the node");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let client = cluster.client();
    client
        .exec(
            "CREATE TABLE big (k TEXT PRIMARY KEY, v BLOB NOT NULL)",
            Vec::<String>::new(),
        )
        .await
        .expect("create");
    let mut last = 0;
    for i in 0..BLOBS {
        let w = client
            .exec(
                format!("INSERT INTO big VALUES ('k{i:04}', randomblob({MB}))"),
                Vec::<String>::new(),
            )
            .await
            .expect("insert a blob");
        last = w.log_index;
    }

    info!("phase 2: wait for a snapshot that holds every row, then restore with -v and time it");
    wait_until(
        "a snapshot of the whole database in the archive",
        Duration::from_secs(90),
        || async {
            let (archived, snapshot, _) = archive_view(&cluster).await?;
            Ok((snapshot >= last && archived >= last).then_some(()))
        },
    )
    .await
    .expect("snapshot archived");
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path: PathBuf = dir.path().join("big.db");
    let out_s = out_path.to_str().expect("utf-8 path");
    let url = format!("s3://{BUCKET}/big");
    let started = Instant::now();
    restore_ok(&["-v", "-endpoint", &endpoint, "-o", out_s, &url]);
    let elapsed = started.elapsed();
    let size = std::fs::metadata(&out_path).expect("restored file").len();
    assert!(
        size >= 100 * MB as u64,
        "a database of at least 100 MB: {size}"
    );
    info!(
        bytes = size,
        elapsed_ms = elapsed.as_millis() as u64,
        mb_per_s = format!("{:.0}", size as f64 / MB as f64 / elapsed.as_secs_f64()),
        "restore throughput of the whole command from moto_server"
    );

    info!("phase 3: the restored database matches the live one row for row");
    let live_path = cluster.node(1).db_path();
    let read = |p: &Path| {
        let conn =
            rusqlite::Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open");
        let rows: Vec<(String, Vec<u8>)> = conn
            .prepare("SELECT k, v FROM big ORDER BY k")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        (rows, check)
    };
    let (restored, check) = read(&out_path);
    assert_eq!(check, "ok");
    let (live, _) = read(&live_path);
    assert_eq!(restored.len(), BLOBS);
    assert!(restored == live, "the restored rows equal the live rows");
    info!("t50 large restore done");
}
