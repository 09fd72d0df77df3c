//! `raftlite dev`: a local cluster in the foreground until Ctrl-C.
//!
//! SIGTERM and SIGHUP stop it the way Ctrl-C does: the nodes are stopped, then the temporary
//! data is removed. If `dev` itself is killed (SIGKILL), its nodes stop too and the last one
//! out removes the temporary data (see [`super::local_cleanup`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::local_cluster::{LocalCluster, LocalClusterOptions, StopSignals};

/// How long the nodes get to elect a leader.
const ELECTION_DEADLINE: Duration = Duration::from_secs(30);

/// Run a local cluster of N nodes on 127.0.0.1 until Ctrl-C.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=99))]
    pub nodes: u64,
    /// Node i serves clients on base-port + i - 1, peers on base-port + nodes + i - 1 and
    /// metrics on base-port + 2 * nodes + i - 1 (3 nodes: clients on 7401-7403, peers on
    /// 7404-7406, metrics on 7407-7409).
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    /// Keep data and logs here (default: a temporary directory, removed on exit).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run as in production: mutual TLS between the nodes, TLS and a token for clients, with
    /// a CA, certificates and a token made for this cluster (in DIR/tls). The banner's URL
    /// carries the token and the CA.
    #[arg(long)]
    pub secure: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let mut signals = StopSignals::install()?;
    let options = LocalClusterOptions {
        nodes: args.nodes,
        base_port: Some(args.base_port),
        data_dir: args.data_dir,
        secure: args.secure,
        ..LocalClusterOptions::default()
    };
    let mut cluster = LocalCluster::start(&options)?;
    let leader = tokio::select! {
        leader = cluster.wait_for_leader(ELECTION_DEADLINE) => leader,
        signal = signals.recv() => {
            note(&format!("{signal}: stopping the nodes"));
            cluster.stop().await?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let leader = match leader {
        Ok(leader) => leader,
        Err(e) => {
            eprintln!("error: {}", crate::error_text(&e));
            cluster.stop().await?;
            return Ok(ExitCode::FAILURE);
        }
    };
    print!("{}", banner(&cluster, leader));

    let mut check = tokio::time::interval(Duration::from_millis(500));
    let mut reported = std::collections::HashSet::new();
    let signal = loop {
        tokio::select! {
            signal = signals.recv() => break signal,
            _ = check.tick() => {
                // A node that dies (say, killed to watch a failover) is reported once; the
                // others keep serving. Only when every node is gone does `dev` give up.
                let exited = cluster.exited()?;
                for (id, status) in &exited {
                    if reported.insert(*id) {
                        note(&format!("node {id} exited ({status}); the other nodes keep serving"));
                    }
                }
                if exited.len() == cluster.nodes().len() {
                    note("error: every node has exited");
                    cluster.stop().await?;
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    };
    note(&format!("{signal}: stopping the nodes"));
    let temporary = cluster.is_temporary();
    cluster.stop().await?;
    if temporary {
        note("removed the temporary data");
    }
    Ok(ExitCode::SUCCESS)
}

/// A line on stderr that may have nowhere to go: after SIGHUP the terminal is gone, and
/// `eprintln!` would panic on the failed write before the nodes are stopped.
fn note(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn banner(cluster: &LocalCluster, leader: u64) -> String {
    let program = std::env::args().next().unwrap_or_else(|| "raftlite".into());
    let security = if cluster.is_secure() {
        "mutual TLS between nodes, TLS and a token for clients"
    } else {
        "plaintext, no tokens"
    };
    let mut out = format!(
        "raftlite dev: {} nodes ({security}), data and logs in {}\n",
        cluster.nodes().len(),
        cluster.dir().display()
    );
    for node in cluster.nodes() {
        let mark = if node.id == leader { "  (leader)" } else { "" };
        out.push_str(&format!(
            "  node {}  {}  metrics http://{}/metrics  log {}{mark}\n",
            node.id,
            node.addr,
            node.metrics_addr,
            node.log.display()
        ));
    }
    out.push_str(&format!("leader: node {leader}\n"));
    // The URL holds the token when secure: it is printed for the user who started the
    // cluster, like the rest of the banner, and dies with the cluster.
    let url = cluster.url().to_url_with_token();
    out.push_str(&format!("url: {url}\n"));
    let addr = shell_quote(&url);
    out.push_str(&format!(
        "try:\n  {program} sql --addr {addr} \"CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v)\"\n  {program} status --addr {addr}\n"
    ));
    // Membership changes and snapshots need the admin role: a token of its own, as in
    // production, so that the one above stays a writer's.
    if let Some(admin) = cluster.admin_url() {
        let admin = shell_quote(&admin.to_url_with_token());
        out.push_str(&format!(
            "admin url (membership changes, snapshots): {admin}\n  {program} cluster --addr {admin} snapshot\n"
        ));
    }
    out.push_str("Ctrl-C stops the cluster.\n");
    out
}

/// `s` as one shell word: single-quoted (a URL's `?` would be a glob, its `&` a background job).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_one_word() {
        assert_eq!(
            shell_quote("raftlite://h:1?tls_ca=/a b"),
            "'raftlite://h:1?tls_ca=/a b'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
