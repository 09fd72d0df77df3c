//! `raftlite bench-log --dir DIR` (hidden): the micro-benchmark that chose the Raft log's
//! engine. It appends entries of several sizes to each candidate in `DIR` — redb as the log
//! store used it (one write transaction per group, default durability) and the WAL
//! (`raft::wal`, one write per group: with direct I/O and `O_DSYNC` as nodes write it where
//! the file system allows, and through the page cache with an `fdatasync`) — with one
//! appender and with 16 concurrent ones, each append done only when durable, and prints a
//! Markdown table: p50/p99 append latency, appends/s and MB/s. It also times the redb
//! metadata commits the log store still makes (vote: durable; committed: lazy).
//! BENCHMARKS.md, "Raft log append", has the numbers and the one candidate measured outside
//! this binary (raft-engine).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::raft::wal::{Done, Wal, WalOptions, WalWriter};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchLogArgs {
    /// Directory on the disk to measure (a fresh subdirectory per run is made and removed).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Duration of each row.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Entry sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 4096, 65536, 1 << 20])]
    pub sizes: Vec<usize>,
    /// Concurrent appenders of the group-commit rows.
    #[arg(long, default_value_t = 16)]
    pub appenders: usize,
}

pub async fn run(args: BenchLogArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || bench(&args))
        .await
        .context("benchmark thread")??;
    Ok(ExitCode::SUCCESS)
}

/// A log engine under test: queues one durable append and calls `done` when it is durable.
trait Candidate: Send + Sync {
    fn append(&self, index: u64, payload: Vec<u8>, done: Done) -> anyhow::Result<()>;
}

struct WalCandidate(WalWriter);

impl Candidate for WalCandidate {
    fn append(&self, index: u64, payload: Vec<u8>, done: Done) -> anyhow::Result<()> {
        Ok(self.0.append(vec![(index, payload)], done)?)
    }
}

const LOGS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("logs");

/// The log store's redb write path before the WAL: a writer thread commits every queued
/// append in one write transaction with redb's default (immediate, fsync) durability.
struct RedbCandidate(mpsc::Sender<(u64, Vec<u8>, Done)>);

impl RedbCandidate {
    fn start(path: &Path) -> anyhow::Result<Self> {
        let db = redb::Database::create(path).context("create redb file")?;
        let (tx, rx) = mpsc::channel::<(u64, Vec<u8>, Done)>();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                group.extend(rx.try_iter());
                let result = (|| -> anyhow::Result<()> {
                    let tx = db.begin_write()?;
                    {
                        let mut table = tx.open_table(LOGS)?;
                        for (index, payload, _) in &group {
                            table.insert(*index, payload.as_slice())?;
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })();
                for (_, _, done) in group {
                    done(
                        result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| std::io::Error::other(e.to_string())),
                    );
                }
            }
        });
        Ok(Self(tx))
    }
}

impl Candidate for RedbCandidate {
    fn append(&self, index: u64, payload: Vec<u8>, done: Done) -> anyhow::Result<()> {
        self.0
            .send((index, payload, done))
            .map_err(|_| anyhow::anyhow!("redb writer gone"))
    }
}

struct Row {
    engine: &'static str,
    size: usize,
    appenders: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Row {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let at = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[at].as_secs_f64() * 1000.0
    }

    fn print(&self) {
        let ops = self.latencies.len() as f64 / self.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.0} | {:.1} |",
            self.engine,
            human(self.size),
            self.appenders,
            self.percentile_ms(0.5),
            self.percentile_ms(0.99),
            ops,
            ops * self.size as f64 / 1e6
        );
    }
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// `appenders` threads each append one entry at a time and wait until it is durable.
fn measure(
    engine: &'static str,
    candidate: Arc<dyn Candidate>,
    size: usize,
    appenders: usize,
    seconds: f64,
) -> anyhow::Result<Row> {
    let next_index = Arc::new(Mutex::new(1u64));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|t| {
            let (candidate, next_index) = (candidate.clone(), next_index.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let payload: Vec<u8> = (0..size).map(|i| (i * 31 + t) as u8).collect();
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let (tx, rx) = mpsc::channel();
                    let start = Instant::now();
                    {
                        // Indexes are queued in order, as openraft queues them.
                        let mut next = next_index.lock().unwrap_or_else(|p| p.into_inner());
                        let done: Done = Box::new(move |r| {
                            let _ = tx.send(r);
                        });
                        candidate.append(*next, payload.clone(), done)?;
                        *next += 1;
                    }
                    rx.recv().context("append never completed")??;
                    latencies.push(start.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in threads {
        let joined = t.join().map_err(|_| anyhow::anyhow!("appender panicked"))?;
        latencies.extend(joined?);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Row {
        engine,
        size,
        appenders,
        latencies,
        elapsed,
    })
}

/// Times one metadata commit of the redb file, as the log store makes them.
fn measure_meta(dir: &Path, sync: crate::raft::store::Sync, seconds: f64) -> anyhow::Result<Row> {
    let store = crate::raft::store::RaftStore::open(dir)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut i = 0u64;
    while Instant::now() < deadline {
        let start = Instant::now();
        store.write_meta("bench", &i, sync)?;
        latencies.push(start.elapsed());
        i += 1;
    }
    latencies.sort();
    Ok(Row {
        engine: match sync {
            crate::raft::store::Sync::Durable => "redb meta commit, durable (save_vote)",
            crate::raft::store::Sync::Lazy => "redb meta commit, lazy (save_committed)",
        },
        size: 8,
        appenders: 1,
        latencies,
        elapsed: started.elapsed(),
    })
}

fn bench(args: &BenchLogArgs) -> anyhow::Result<()> {
    let root = tempfile::Builder::new()
        .prefix("raftlite-bench-log-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("make a directory in {}", args.dir.display()))?;
    println!("| engine | entry | appenders | p50 ms | p99 ms | appends/s | MB/s |");
    println!("|---|---|---|---|---|---|---|");
    let mut run = 0;
    for &size in &args.sizes {
        for appenders in [1, args.appenders] {
            run += 1;
            let path = root.path().join(format!("redb-{run}.redb"));
            let redb: Arc<dyn Candidate> = Arc::new(RedbCandidate::start(&path)?);
            measure("redb (txn per group)", redb, size, appenders, args.seconds)?.print();
            std::fs::remove_file(&path).ok();

            for direct_io in [true, false] {
                let dir = root.path().join(format!("wal-{run}-{direct_io}"));
                let options = WalOptions {
                    direct_io,
                    ..WalOptions::default()
                };
                let wal = Wal::open(&dir, options).context("open WAL")?;
                let writer = WalWriter::start(wal)?;
                let reader = writer.reader().clone();
                let wal: Arc<dyn Candidate> = Arc::new(WalCandidate(writer));
                let mut row = measure("WAL", wal, size, appenders, args.seconds)?;
                row.engine = match (direct_io, reader.direct_io()) {
                    (true, true) => "WAL, direct I/O (O_DSYNC write per group)",
                    (true, false) => "WAL, direct I/O refused here: page cache + fdatasync",
                    (false, _) => "WAL, page cache (write + fdatasync per group)",
                };
                row.print();
                std::fs::remove_dir_all(&dir).ok();
            }
        }
    }
    for sync in [
        crate::raft::store::Sync::Durable,
        crate::raft::store::Sync::Lazy,
    ] {
        let dir = root.path().join(format!("meta-{sync:?}"));
        measure_meta(&dir, sync, args.seconds)?.print();
    }
    Ok(())
}
