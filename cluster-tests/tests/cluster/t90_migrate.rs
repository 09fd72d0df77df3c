//! t90: `raftlite migrate` against real nodes, the way Kubernetes runs it — from every pod's
//! init container and every app replica at once. Each file is applied exactly once, a second
//! run changes nothing, an edited applied file is refused with both checksums, and a failing
//! migration leaves nothing behind and stops the run. And a script piped into `raftlite
//! shell`, as a job or a CI step runs one.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cluster_tests::{init_tracing, raftlite_binary, Cluster, ClusterOptions, Consistency};
use cluster_tests::{Client, Statement};
use tracing::info;

const CREATE: &str = "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n\
                      CREATE TABLE events (note TEXT);\n";
/// Not idempotent: applied twice, it would leave two rows.
const SEED: &str = "INSERT INTO events VALUES ('seeded; once');\n\
                    INSERT INTO accounts (name) VALUES ('alice'), ('bob');\n";
/// SQLite's twelve steps for a change ALTER TABLE cannot make, on a table others reference.
const REBUILD: &str = "PRAGMA foreign_keys = OFF;\n\
    CREATE TABLE accounts_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL, \
    active INTEGER NOT NULL DEFAULT 1);\n\
    INSERT INTO accounts_new (id, name) SELECT id, name FROM accounts;\n\
    DROP TABLE accounts;\n\
    ALTER TABLE accounts_new RENAME TO accounts;\n\
    CREATE INDEX accounts_name ON accounts (name);\n\
    PRAGMA foreign_key_check;\n\
    PRAGMA foreign_keys = ON;\n";
const INDEX: &str =
    "-- names are looked up often\nCREATE INDEX accounts_name ON accounts (name);\n";

async fn migrate(addrs: &str, dir: &Path) -> Output {
    tokio::process::Command::new(raftlite_binary())
        .args(["migrate", "--addr", addrs, "--wait-s", "20"])
        .arg(dir)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run raftlite migrate")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[track_caller]
fn assert_success(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "migrate failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    stdout_lines(out)
}

async fn scalar(client: &Client, sql: &str) -> i64 {
    let rows = client
        .query_with(Statement::new(sql), Consistency::Linearizable, 0)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.rows[0].get(0).expect("an integer")
}

async fn table_exists(client: &Client, name: &str) -> bool {
    scalar(
        client,
        &format!("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{name}'"),
    )
    .await
        == 1
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_apply_once_from_everywhere() {
    init_tracing();
    let cluster = Cluster::start(3, ClusterOptions::default()).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let client = cluster.client();
    let dir = tempfile::tempdir().expect("migrations dir");
    let write = |name: &str, sql: &str| {
        std::fs::write(dir.path().join(name), sql).expect("write a migration file");
    };
    write("0001_create.sql", CREATE);
    write("0002_seed.sql", SEED);
    write("0003_add_index.sql", INDEX);
    let addr = |id: u64| cluster.node(id).addr().to_string();

    info!(
        "phase 1: four concurrent runs against different nodes (init containers starting together)"
    );
    let ids = cluster.ids();
    let targets: Vec<String> = (0..4).map(|i| addr(ids[i % ids.len()])).collect();
    let handles: Vec<_> = targets
        .into_iter()
        .map(|a| {
            let d = dir.path().to_path_buf();
            tokio::spawn(async move { migrate(&a, &d).await })
        })
        .collect();
    let mut runs = Vec::new();
    for handle in handles {
        runs.push(handle.await.expect("migrate task"));
    }
    let mut applied = std::collections::BTreeMap::<String, usize>::new();
    for out in &runs {
        let lines = assert_success(out);
        assert_eq!(lines.len(), 3, "one line per file: {lines:?}");
        for line in lines {
            if let Some(rest) = line.strip_prefix("applied ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                *applied.entry(name.to_owned()).or_default() += 1;
            } else {
                assert!(line.starts_with("already applied "), "{line}");
            }
        }
    }
    info!(?applied, "runs finished");
    assert!(
        applied.values().all(|&n| n <= 1),
        "a file applied twice: {applied:?}"
    );
    assert_eq!(scalar(&client, "SELECT count(*) FROM events").await, 1);
    assert_eq!(scalar(&client, "SELECT count(*) FROM accounts").await, 2);
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM raftlite_migrations").await,
        3
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM sqlite_master WHERE name = 'accounts_name'"
        )
        .await,
        1
    );

    info!("phase 2: running again changes nothing");
    let follower = *ids.iter().find(|&&id| id != leader).expect("a follower");
    let lines = assert_success(&migrate(&addr(follower), dir.path()).await);
    assert_eq!(
        lines,
        [
            "already applied 0001_create.sql",
            "already applied 0002_seed.sql",
            "already applied 0003_add_index.sql"
        ]
    );
    assert_eq!(scalar(&client, "SELECT count(*) FROM events").await, 1);

    info!("phase 3: a new file is applied alone, through a follower");
    write("0004_audit.sql", "CREATE TABLE audit (at TEXT);");
    let lines = assert_success(&migrate(&addr(follower), dir.path()).await);
    assert_eq!(lines.len(), 4);
    assert!(
        lines[3].starts_with("applied 0004_audit.sql log_index="),
        "{lines:?}"
    );
    assert!(table_exists(&client, "audit").await);

    info!("phase 4: an applied file that was edited is refused, naming it and both checksums");
    write("0002_seed.sql", &format!("{SEED}-- edited\n"));
    write("0005_later.sql", "CREATE TABLE later (x);");
    let out = migrate(&addr(leader), dir.path()).await;
    assert!(!out.status.success(), "an edited file must be refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0002_seed.sql was changed after it was applied"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("sha256 ").count(),
        2,
        "both checksums: {stderr}"
    );
    assert!(!table_exists(&client, "later").await, "nothing applied");
    write("0002_seed.sql", SEED);
    std::fs::remove_file(dir.path().join("0005_later.sql")).expect("remove");

    info!("phase 5: a failing migration leaves nothing behind and stops the run");
    write(
        "0005_broken.sql",
        "CREATE TABLE half (x);\nINSERT INTO half VALUES (1);\nINSERT INTO missing VALUES (1);\n",
    );
    write("0006_after.sql", "CREATE TABLE after_broken (x);");
    let out = migrate(&addr(follower), dir.path()).await;
    assert!(!out.status.success(), "a failing migration fails the run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0005_broken.sql failed"), "{stderr}");
    assert!(stderr.contains("missing"), "SQLite's message: {stderr}");
    assert!(
        !table_exists(&client, "half").await,
        "rolled back as a whole"
    );
    assert!(
        !table_exists(&client, "after_broken").await,
        "the run stopped"
    );
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM raftlite_migrations").await,
        4
    );

    info!("phase 6: the fixed migration and the next one apply");
    write(
        "0005_broken.sql",
        "CREATE TABLE half (x);\nINSERT INTO half VALUES (1);\n",
    );
    let lines = assert_success(&migrate(&addr(follower), dir.path()).await);
    assert!(lines[4].starts_with("applied 0005_broken.sql"), "{lines:?}");
    assert!(lines[5].starts_with("applied 0006_after.sql"), "{lines:?}");
    assert_eq!(scalar(&client, "SELECT count(*) FROM half").await, 1);

    info!("phase 7: SQLite's table rebuild of a referenced table, with foreign keys off");
    write(
        "0007_orders.sql",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, account INTEGER REFERENCES accounts(id));\n\
         INSERT INTO orders (account) SELECT id FROM accounts;\n",
    );
    write("0008_rebuild_accounts.sql", REBUILD);
    let lines = assert_success(&migrate(&addr(follower), dir.path()).await);
    assert!(
        lines[7].starts_with("applied 0008_rebuild_accounts.sql"),
        "{lines:?}"
    );
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM accounts WHERE active = 1").await,
        2,
        "rebuilt with its rows"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM orders JOIN accounts ON accounts.id = orders.account"
        )
        .await,
        2,
        "the orders still reference their accounts"
    );
    // One that would leave orders without their account is refused, whole.
    write(
        "0009_orphans.sql",
        "PRAGMA foreign_keys = OFF;\nDELETE FROM accounts;\n",
    );
    let out = migrate(&addr(leader), dir.path()).await;
    assert!(!out.status.success(), "an orphaning migration must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FOREIGN KEY constraint failed"), "{stderr}");
    assert_eq!(scalar(&client, "SELECT count(*) FROM accounts").await, 2);
    std::fs::remove_file(dir.path().join("0009_orphans.sql")).expect("remove");
    // Foreign keys are enforced again for everyone else.
    let deleted = client
        .execute(vec![Statement::new("DELETE FROM accounts")])
        .await;
    assert!(deleted.is_err(), "foreign keys are back on: {deleted:?}");

    info!("phase 8: every replica holds the same pages");
    cluster.assert_identical_pages().await;
}

/// `raftlite shell` with a script on stdin: comment lines do not swallow the dot command after
/// them (they used to: `near ".": syntax error`), and a failed statement makes the exit status
/// 1 while the rest of the script still runs (it used to exit 0), as with `sqlite3`.
#[tokio::test(flavor = "multi_thread")]
async fn a_script_piped_into_the_shell_runs_and_reports_failure() {
    init_tracing();
    let cluster = Cluster::single_node().await;
    let addr = cluster.node(1).addr().to_string();
    let shell = |script: &'static str| {
        let addr = addr.clone();
        async move {
            let mut child = tokio::process::Command::new(raftlite_binary())
                .args(["shell", "--addr", &addr])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("run raftlite shell");
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(script.as_bytes())
                .await
                .expect("write the script");
            drop(stdin);
            tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
                .await
                .expect("the shell ends with its input")
                .expect("the shell's output")
        }
    };
    let out = shell(
        "-- make a table\nCREATE TABLE piped (x);\nINSERT INTO piped VALUES (1), (2);\n\
         -- list the tables\n.tables\nSELECT count(*) AS n FROM piped;\n",
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(stdout.lines().any(|l| l.trim() == "piped"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim() == "2"), "{stdout}");

    let out = shell("SELECT * FROM missing;\nSELECT 40 + 2;\n").await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{stdout}");
    assert!(stderr.contains("no such table: missing"), "{stderr}");
    assert!(
        stdout.lines().any(|l| l.trim() == "42"),
        "the rest of the script ran: {stdout}"
    );
}
