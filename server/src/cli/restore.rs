//! `raftlite restore`: rebuild a plain SQLite file from the archive.
//!
//! ```text
//! raftlite restore [-o PATH] [-if-db-not-exists] [-if-replica-exists]
//!                  [-timestamp RFC3339 | -index N] [-generation G] [-cluster-id ID]
//!                  [-force] [-v] <URL | --config FILE [PATH]>
//! ```
//! Litestream's semantics, so its Kubernetes init container works unchanged:
//! `-if-db-not-exists` exits 0 without doing anything when the output exists;
//! `-if-replica-exists` exits 0 when the archive holds nothing; otherwise the restore runs and
//! never overwrites an existing file without `-force`. Long flags take one dash or two.
//! With `--config FILE` the archive comes from the node's config file (`archive`,
//! `archive_endpoint`, `archive_region`), and the output defaults to `<data_dir>/restored.db`.
//!
//! Output: one line `restored PATH: index N (cluster C, generation G, B bytes)` on stdout, or
//! `skipped: ...`; with `-v`, each snapshot and segment downloaded and applied on stderr with
//! elapsed times. Errors name the archive object at fault; the output is never left
//! half-written (the file is built under a temporary name and renamed into place).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::archive::{
    restore, Archive, ArchiveLocation, ArchiveUrl, RestoreRequest, RestoreTarget,
};

/// Rebuild a SQLite database from the archive (latest state or a point in time).
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The archive URL (s3://BUCKET/PREFIX or file:///DIR); with --config, the output path.
    pub source: Option<String>,

    /// Output database path.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Take the archive from this node config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Do nothing (exit 0) if the output database already exists.
    #[arg(long)]
    pub if_db_not_exists: bool,

    /// Do nothing (exit 0) if the archive holds no database.
    #[arg(long)]
    pub if_replica_exists: bool,

    /// Restore the state as of this time (RFC 3339, e.g. 2024-05-01T12:00:00Z).
    #[arg(long, value_name = "RFC3339", conflicts_with = "index")]
    pub timestamp: Option<String>,

    /// Restore the state right after this log index.
    #[arg(long, value_name = "N")]
    pub index: Option<u64>,

    /// Archive generation [default: the newest that fits].
    #[arg(long, value_name = "G")]
    pub generation: Option<u64>,

    /// Cluster id [default: the only (or most recently written) cluster in the archive].
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,

    /// Overwrite the output database if it exists.
    #[arg(long)]
    pub force: bool,

    /// S3 endpoint [default: AWS_ENDPOINT_URL].
    #[arg(long, value_name = "URL", env = "RAFTLITE_ARCHIVE_ENDPOINT")]
    pub endpoint: Option<String>,

    /// S3 region [default: AWS_REGION].
    #[arg(long, value_name = "REGION", env = "RAFTLITE_ARCHIVE_REGION")]
    pub region: Option<String>,

    /// Log each snapshot and segment downloaded and applied, with elapsed times.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
}

/// Long flags accepted with a single dash, as Litestream writes them.
const SINGLE_DASH_LONG: &[&str] = &[
    "output",
    "config",
    "if-db-not-exists",
    "if-replica-exists",
    "timestamp",
    "index",
    "generation",
    "cluster-id",
    "force",
    "endpoint",
    "region",
    "verbose",
];

/// Rewrites `-if-db-not-exists` (and the other long flags of `restore`) to `--...`, so the
/// Litestream spelling parses. Only arguments after the `restore` subcommand are touched.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut in_restore = false;
    for arg in args {
        let text = arg.to_str().unwrap_or_default();
        if !in_restore {
            in_restore = !out.is_empty() && text == "restore";
            out.push(arg);
            continue;
        }
        if let Some(rest) = text.strip_prefix('-').filter(|r| !r.starts_with('-')) {
            let name = rest.split('=').next().unwrap_or_default();
            if SINGLE_DASH_LONG.contains(&name) {
                out.push(OsString::from(format!("-{text}")));
                continue;
            }
        }
        out.push(arg);
    }
    out
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let (location, output) = resolve(&args)?;
    if args.if_db_not_exists && output.exists() {
        println!("skipped: database {} already exists", output.display());
        return Ok(ExitCode::SUCCESS);
    }
    if output.exists() && !args.force {
        bail!(
            "database {} already exists: pass -force to overwrite it (or -if-db-not-exists to skip)",
            output.display()
        );
    }
    let target = match (&args.timestamp, args.index) {
        (Some(t), _) => RestoreTarget::Time(
            chrono::DateTime::parse_from_rfc3339(t)
                .with_context(|| format!("-timestamp {t:?} is not an RFC 3339 time"))?
                .with_timezone(&chrono::Utc),
        ),
        (None, Some(n)) => RestoreTarget::Index(n),
        (None, None) => RestoreTarget::Latest,
    };
    let archive = Archive::open(&location)?;
    let request = RestoreRequest {
        cluster_id: args.cluster_id.clone(),
        generation: args.generation,
        target,
    };
    let started = Instant::now();
    let verbose = args.verbose;
    let progress = move |line: String| {
        if verbose {
            eprintln!(
                "{} {line}",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            );
        }
    };
    let Some(plan) = restore::plan(&archive, &request).await? else {
        if args.if_replica_exists {
            println!("skipped: no database in the archive at {}", location.url);
            return Ok(ExitCode::SUCCESS);
        }
        bail!(
            "the archive at {} holds no database (pass -if-replica-exists to make this a no-op)",
            location.url
        );
    };
    progress(format!(
        "restoring cluster {} generation {} from snapshot {} and {} segments",
        plan.cluster_id,
        plan.generation,
        plan.snapshot.index,
        plan.segments.len()
    ));
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let temp = restore::with_suffix(&output, ".restoring");
    let restored = match restore::execute(&archive, &plan, &temp, &progress).await {
        Ok(r) => r,
        Err(e) => {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(restore::with_suffix(&temp, suffix));
            }
            return Err(e);
        }
    };
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(restore::with_suffix(&output, suffix));
    }
    std::fs::rename(&temp, &output)
        .with_context(|| format!("move the restored database to {}", output.display()))?;
    println!(
        "restored {}: index {} (cluster {}, generation {}, {} bytes, {:.3}s)",
        output.display(),
        restored.index,
        restored.cluster_id,
        restored.generation,
        restored.db_bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The archive and the output path from the arguments (or the config file).
fn resolve(args: &RestoreArgs) -> anyhow::Result<(ArchiveLocation, PathBuf)> {
    if let Some(config) = &args.config {
        let file = crate::config::FileConfig::read(config)?;
        let data_dir = file.data_dir.clone();
        let Some(archive) = file.archive_config()? else {
            bail!("{}: archiving is off (archive: none)", config.display());
        };
        let output = match (&args.output, &args.source) {
            (Some(o), _) => o.clone(),
            (None, Some(path)) => PathBuf::from(path),
            (None, None) => match data_dir {
                Some(d) => d.join("restored.db"),
                None => bail!("name the output database with -o PATH"),
            },
        };
        let mut location = archive.location;
        if args.endpoint.is_some() {
            location.endpoint = args.endpoint.clone();
        }
        if args.region.is_some() {
            location.region = args.region.clone();
        }
        return Ok((location, output));
    }
    let Some(source) = &args.source else {
        bail!("give the archive URL (s3://BUCKET/PREFIX or file:///DIR) or --config FILE");
    };
    let url = ArchiveUrl::parse(source).map_err(anyhow::Error::msg)?;
    let Some(output) = args.output.clone() else {
        bail!("name the output database with -o PATH");
    };
    Ok((
        ArchiveLocation {
            url,
            endpoint: args.endpoint.clone(),
            region: args.region.clone(),
        },
        output,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap_or_default()).collect()
    }

    #[test]
    fn single_dash_long_flags_become_double_dash_after_restore_only() {
        let args = [
            "raftlite",
            "restore",
            "-if-db-not-exists",
            "-if-replica-exists",
            "-v",
            "-o",
            "/db",
            "-index=5",
            "--force",
            "-timestamp",
            "x",
            "s3://b/p",
        ]
        .map(OsString::from);
        assert_eq!(
            strings(&normalize_args(args)),
            [
                "raftlite",
                "restore",
                "--if-db-not-exists",
                "--if-replica-exists",
                "-v",
                "-o",
                "/db",
                "--index=5",
                "--force",
                "--timestamp",
                "x",
                "s3://b/p"
            ]
        );
        let other = ["raftlite", "sql", "-index"].map(OsString::from);
        assert_eq!(
            strings(&normalize_args(other)),
            ["raftlite", "sql", "-index"]
        );
    }
}
