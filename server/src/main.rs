//! The `raftlite` binary: parse the command line, initialize tracing, run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(raftlite::config::ServeArgs),
    /// Run SQL against a cluster.
    Sql(raftlite::cli::sql::SqlArgs),
    /// Show the cluster's status.
    Status(raftlite::cli::status::StatusArgs),
    /// Change membership or take a snapshot.
    Cluster(raftlite::cli::cluster::ClusterArgs),
    /// Run a local cluster until Ctrl-C.
    Dev(raftlite::cli::dev::DevArgs),
    /// Benchmark a local cluster.
    Bench(raftlite::cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let config = raftlite::config::load(&args)?;
                init_tracing(
                    &config.log_level,
                    config.log_format == raftlite::config::LogFormat::Json,
                );
                raftlite::serve::run(config)
                    .await
                    .map(|_| ExitCode::SUCCESS)
            }
            Command::Sql(args) => raftlite::cli::sql::run(args).await,
            Command::Status(args) => raftlite::cli::status::run(args).await,
            Command::Cluster(args) => raftlite::cli::cluster::run(args).await,
            Command::Dev(args) => raftlite::cli::dev::run(args).await,
            Command::Bench(args) => raftlite::cli::bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    // openraft logs every vote and append at info; keep it at warn unless asked for.
    let filter = EnvFilter::try_new(format!("openraft=warn,{level}"))
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
