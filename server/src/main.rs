//! The `raftlite` binary: parse the command line, initialize tracing, run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raftlite::cli;

/// mimalloc rather than glibc's allocator: at 64 clients `malloc` and `free` were about 16 % of
/// a leader's CPU; with it, writes ran 3–10 % faster (BENCHMARKS.md, session 16). See
/// [`no_transparent_huge_pages`] for its memory.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (and the nodes it starts). On a host whose
/// THP setting is `always`, the kernel backed mimalloc's arenas with 2 MiB pages: an idle node
/// held 37–45 MB instead of 23–26, and each page mimalloc purged and touched again cost a
/// 2 MiB clear (1–2 % of a loaded leader's CPU). Without them, writes ran as fast
/// (BENCHMARKS.md, session 17).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integers only and touches no memory of the process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "raftlite",
    version,
    about = "Highly available SQLite over Raft"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        #[command(flatten)]
        args: Box<raftlite::config::ServeArgs>,
        #[command(flatten)]
        local: cli::local_cleanup::LocalNodeArgs,
    },
    /// Run SQL on a cluster: rows for a read, rows affected and log index for a write.
    Sql(cli::sql::SqlArgs),
    /// Interactive SQL shell: line editing, history, multi-line statements, .help.
    Shell(cli::shell::ShellArgs),
    /// Show the cluster: leader, term, and every node's role and applied index.
    Status(cli::status::StatusArgs),
    /// Change the membership, move the leader, or take a snapshot.
    Cluster(cli::cluster::ClusterArgs),
    /// Check a node's health (readiness by default): exit 0 only if SERVING.
    Health(cli::health::HealthArgs),
    /// Apply the numbered .sql files of a directory in order, each once (safe to run from
    /// every pod or app replica at the same time).
    Migrate(cli::migrate::MigrateArgs),
    /// Rebuild a SQLite database from the archive (latest state, or a point in time).
    Restore(cli::restore::RestoreArgs),
    /// Start a local cluster on loopback with temporary data, until Ctrl-C.
    Dev(cli::dev::DevArgs),
    /// Start a local cluster and measure write/read latency and throughput.
    Bench(cli::bench::BenchArgs),
    /// Micro-benchmark of Raft log append engines on the disk of DIR (BENCHMARKS.md).
    #[command(hide = true)]
    BenchLog(cli::bench_log::BenchLogArgs),
    /// Make client tokens: `raftlite token new --role write --name app`.
    Token(cli::token::TokenArgs),
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse_from(cli::restore::normalize_args(std::env::args_os()));
    // A node's settings come first: they size its runtime.
    let serve_config = match &cli.command {
        Command::Serve { args, .. } => match raftlite::config::load(args) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(config) = &serve_config {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { local, .. } => {
                let Some(config) = serve_config else {
                    anyhow::bail!("the node's settings were not loaded");
                };
                let cleanup = cli::local_cleanup::NodeCleanup::start(&local, &config.data_dir)?;
                let telemetry = raftlite::telemetry::init(
                    &config.log_level,
                    config.log_format == raftlite::config::LogFormat::Json,
                    config.otlp_endpoint.as_deref(),
                    Some(format!("node-{}", config.node_id)),
                )?;
                let result = raftlite::serve::run(config).await;
                telemetry.shutdown().await;
                if let Some(cleanup) = cleanup {
                    cleanup.finish();
                }
                result.map(|_| ExitCode::SUCCESS)
            }
            Command::Sql(args) => cli::sql::run(args).await,
            Command::Shell(args) => cli::shell::run(args).await,
            Command::Status(args) => cli::status::run(args).await,
            Command::Cluster(args) => cli::cluster::run(args).await,
            Command::Health(args) => cli::health::run(args).await,
            Command::Migrate(args) => cli::migrate::run(args).await,
            Command::Restore(args) => {
                let telemetry = raftlite::telemetry::init("warn", false, None, None)?;
                let result = cli::restore::run(args).await;
                telemetry.shutdown().await;
                result
            }
            Command::Dev(args) => cli::dev::run(args).await,
            Command::Bench(args) => cli::bench::run(args).await,
            Command::BenchLog(args) => cli::bench_log::run(args).await,
            Command::Token(args) => Ok(cli::token::run(args)),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", raftlite::error_text(&e));
            ExitCode::FAILURE
        }
    }
}
