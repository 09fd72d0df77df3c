//! The floor of `raftlite bench`: what the same machine does without raftlite, measured in
//! the same run, in the cluster's own data directory (so on the same filesystem and disk).
//!
//! - **fsync**: a 4 KiB `pwrite` into a preallocated file, then `fdatasync`. Each sample
//!   writes the next block, as a log with preallocated segments does (etcd's WAL). Also
//!   measured, as extras: the same with the file growing (append + `fdatasync`, which
//!   also commits the new size), and the same on [`SHARED_FILES`] files at once, one thread
//!   each, every round started together: what each node's log flush costs when the three
//!   nodes of the bench's local cluster flush the same write on one disk.
//! - **SQLite commit**: a fresh database in WAL mode with `synchronous=FULL`; each sample is one
//!   autocommit 1-row INSERT (the same row shape the bench writes).
//! - **gRPC round trip**: `grpc.health.v1.Health/Check` on one node's client port over one
//!   connection, on the client library's own transport (`raftlite_client::transport::Direct`,
//!   TLS when the cluster uses TLS). The health service needs no token.
//! - **Thread wake round trip**, an extra: two threads that sleep in a blocking read until the
//!   other writes a byte to a socket pair, one round trip being two wake-ups, measured with
//!   both threads pinned to one CPU and to two different CPUs (when the process may use two).
//!   A write crosses several threads (the node's runtime, its batcher, its log writer, and the
//!   other nodes'), and how much each such hand-off costs is a property of the machine: a
//!   virtual machine that halts an idle virtual CPU pays the host's wake-up of it every time.
//! - **CPU idle policy**, read, not measured: the kernel's `cpuidle` driver and, under the
//!   `haltpoll` driver of a KVM guest, how long an idle virtual CPU polls for work before it
//!   halts (`guest_halt_poll_ns`; Linux's default is 200,000). With 0 every wake-up of an idle
//!   CPU goes through the host; on this project's 2-core test machine that moved the one-row
//!   p50 by ~0.2 ms (BENCHMARKS.md "Session 31"), so results are compared with it in view.
//!
//! Each is measured for at most [`BUDGET`] and [`MAX_SAMPLES`], after [`WARMUP`] unrecorded
//! samples; the files are deleted afterwards.

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::bench::percentile;

/// Longest time spent on one floor measurement.
pub const BUDGET: Duration = Duration::from_secs(1);
/// Most samples kept of one floor measurement.
pub const MAX_SAMPLES: usize = 5_000;
/// Samples taken and thrown away before measuring (first-touch, connection set-up).
pub const WARMUP: usize = 20;
const BLOCK: usize = 4096;
/// Files flushed at once by [`fsync_shared`]: one per node of the bench's cluster.
pub const SHARED_FILES: usize = 3;

/// Sorted durations of one measurement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Samples {
        samples.sort_unstable();
        Samples(samples)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Percentile `p` (0..=100) in milliseconds; `None` without samples.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.0, p).map(|d| d.as_secs_f64() * 1000.0)
    }
}

/// The three floor measurements (and the growing-file fsync).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Floor {
    pub fsync: Samples,
    pub fsync_append: Samples,
    /// Each file's flush while [`SHARED_FILES`] flush at once.
    pub fsync_shared: Samples,
    pub sqlite_commit: Samples,
    pub grpc_rtt: Samples,
    /// Whether the gRPC round trip used TLS.
    pub grpc_tls: bool,
    /// [`wake_rtt`] with both threads on one CPU, and on two (empty with one CPU).
    pub wake_same_cpu: Samples,
    pub wake_cross_cpu: Samples,
    pub cpu_idle: CpuIdle,
}

/// The kernel's CPU idle policy, as `/sys` shows it (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuIdle {
    /// `devices/system/cpu/cpuidle/current_driver`, e.g. `haltpoll`, `intel_idle`.
    pub driver: Option<String>,
    /// `module/haltpoll/parameters/guest_halt_poll_ns`, read only while `haltpoll` is the
    /// driver: the module's parameter says nothing when another driver idles the CPUs.
    pub halt_poll_ns: Option<u64>,
}

impl CpuIdle {
    /// Read under `sys` (`/sys` on a running machine); what is missing or unreadable is `None`.
    pub fn read(sys: &Path) -> CpuIdle {
        let text = |rel: &str| {
            std::fs::read_to_string(sys.join(rel))
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        };
        let driver = text("devices/system/cpu/cpuidle/current_driver");
        let halt_poll_ns = match driver.as_deref() {
            Some("haltpoll") => {
                text("module/haltpoll/parameters/guest_halt_poll_ns").and_then(|t| t.parse().ok())
            }
            _ => None,
        };
        CpuIdle {
            driver,
            halt_poll_ns,
        }
    }

    fn describe(&self) -> String {
        let driver = self.driver.as_deref().unwrap_or("unknown");
        match self.halt_poll_ns {
            Some(0) => format!("{driver}, guest_halt_poll_ns 0 (an idle CPU halts at once)"),
            Some(ns) => format!("{driver}, guest_halt_poll_ns {ns} (polls before it halts)"),
            None => driver.to_owned(),
        }
    }
}

impl Floor {
    pub fn fsync_p50_ms(&self) -> Option<f64> {
        self.fsync.percentile_ms(50.0)
    }

    pub fn sqlite_commit_p50_ms(&self) -> Option<f64> {
        self.sqlite_commit.percentile_ms(50.0)
    }

    pub fn grpc_rtt_p50_ms(&self) -> Option<f64> {
        self.grpc_rtt.percentile_ms(50.0)
    }

    /// The `floor` object of `raftlite bench --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let p = |s: &Samples, q: f64| s.percentile_ms(q);
        json!({
            "fsync_p50_ms": p(&self.fsync, 50.0),
            "fsync_p99_ms": p(&self.fsync, 99.0),
            "fsync_samples": self.fsync.len(),
            "fsync_append_p50_ms": p(&self.fsync_append, 50.0),
            "fsync_append_p99_ms": p(&self.fsync_append, 99.0),
            "fsync_append_samples": self.fsync_append.len(),
            "fsync_shared_files": SHARED_FILES,
            "fsync_shared_p50_ms": p(&self.fsync_shared, 50.0),
            "fsync_shared_p99_ms": p(&self.fsync_shared, 99.0),
            "fsync_shared_samples": self.fsync_shared.len(),
            "sqlite_commit_p50_ms": p(&self.sqlite_commit, 50.0),
            "sqlite_commit_p99_ms": p(&self.sqlite_commit, 99.0),
            "sqlite_commit_samples": self.sqlite_commit.len(),
            "grpc_rtt_p50_ms": p(&self.grpc_rtt, 50.0),
            "grpc_rtt_p99_ms": p(&self.grpc_rtt, 99.0),
            "grpc_rtt_samples": self.grpc_rtt.len(),
            "grpc_tls": self.grpc_tls,
            "wake_rtt_same_cpu_p50_ms": p(&self.wake_same_cpu, 50.0),
            "wake_rtt_same_cpu_samples": self.wake_same_cpu.len(),
            "wake_rtt_cross_cpu_p50_ms": p(&self.wake_cross_cpu, 50.0),
            "wake_rtt_cross_cpu_samples": self.wake_cross_cpu.len(),
            "cpuidle_driver": self.cpu_idle.driver,
            "guest_halt_poll_ns": self.cpu_idle.halt_poll_ns,
        })
    }

    /// Lines printed under the table.
    pub fn describe(&self) -> String {
        let ms = |s: &Samples, q: f64| {
            s.percentile_ms(q)
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
        };
        let line = |label: &str, s: &Samples| {
            format!(
                "  {label:<44} p50 {} ms  p99 {} ms  ({} samples)\n",
                ms(s, 50.0),
                ms(s, 99.0),
                s.len()
            )
        };
        let rtt = if self.grpc_tls {
            "gRPC health check round trip (TLS)"
        } else {
            "gRPC health check round trip (plaintext)"
        };
        [
            line("4 KiB write + fdatasync (preallocated)", &self.fsync),
            line(
                "4 KiB append + fdatasync (growing file)",
                &self.fsync_append,
            ),
            line(
                &format!("4 KiB write + fdatasync, {SHARED_FILES} files at once"),
                &self.fsync_shared,
            ),
            line(
                "SQLite WAL synchronous=FULL 1-row commit",
                &self.sqlite_commit,
            ),
            line(rtt, &self.grpc_rtt),
            line("thread wake round trip, same CPU", &self.wake_same_cpu),
            line("thread wake round trip, two CPUs", &self.wake_cross_cpu),
            format!("  {:<44} {}\n", "CPU idle driver", self.cpu_idle.describe()),
        ]
        .concat()
    }
}

/// Runs `op` after [`WARMUP`] unrecorded calls until `budget` or `max` samples.
pub fn sample_blocking<E>(
    budget: Duration,
    max: usize,
    mut op: impl FnMut(usize) -> Result<(), E>,
) -> Result<Samples, E> {
    for i in 0..WARMUP {
        op(i)?;
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < max && started.elapsed() < budget {
        let t0 = Instant::now();
        op(WARMUP + samples.len())?;
        samples.push(t0.elapsed());
    }
    Ok(Samples::new(samples))
}

/// A file of `blocks` real 4 KiB blocks (not a sparse file), written and synced.
fn preallocated(path: &Path, blocks: usize) -> anyhow::Result<std::fs::File> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let zeros = vec![0u8; BLOCK * 256];
    let mut left = blocks * BLOCK;
    let mut writer = std::io::BufWriter::new(&file);
    while left > 0 {
        let n = left.min(zeros.len());
        writer.write_all(&zeros[..n])?;
        left -= n;
    }
    writer.flush()?;
    drop(writer);
    file.sync_all()?;
    Ok(file)
}

/// Writes block `i` (wrapping around at `blocks`) of a [`preallocated`] file and syncs it.
fn write_block(file: &std::fs::File, i: usize, blocks: usize) -> std::io::Result<()> {
    file.write_all_at(&[0x5au8; BLOCK], ((i % blocks) * BLOCK) as u64)?;
    file.sync_data()
}

/// 4 KiB `pwrite` + `fdatasync` into a preallocated file in `dir`, one block after another
/// (wrapping around at the end of the file).
pub fn fsync_preallocated(dir: &Path, budget: Duration, max: usize) -> anyhow::Result<Samples> {
    let path = dir.join("floor-fsync.dat");
    let blocks = max + WARMUP;
    let samples = preallocated(&path, blocks).and_then(|file| {
        sample_blocking(budget, max, |i| write_block(&file, i, blocks))
            .with_context(|| format!("write and fdatasync {}", path.display()))
    });
    let _ = std::fs::remove_file(&path);
    samples
}

/// [`fsync_preallocated`] on `files` files in `dir` at once, a thread each: every round
/// starts on all of them together and ends when all are done. Each file's flush is a sample;
/// at most `max` in all. The rounds are counted, warmed up and timed by [`sample_blocking`].
pub fn fsync_shared(
    dir: &Path,
    files: usize,
    budget: Duration,
    max: usize,
) -> anyhow::Result<Samples> {
    use std::sync::mpsc;
    let rounds = (max / files.max(1)).max(1);
    let blocks = rounds + WARMUP;
    let paths: Vec<_> = (0..files)
        .map(|k| dir.join(format!("floor-shared-{k}.dat")))
        .collect();
    let samples = std::thread::scope(|scope| {
        // Each file's thread flushes the block it is sent and answers with how long it took;
        // it ends when this side drops its sender.
        let (done_tx, done) = mpsc::channel();
        let mut starts = Vec::with_capacity(files);
        for path in &paths {
            let file = preallocated(path, blocks)?;
            let (start, blocks_to_write) = mpsc::channel::<usize>();
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                for i in blocks_to_write {
                    let t0 = Instant::now();
                    let flushed = write_block(&file, i, blocks).map(|()| t0.elapsed());
                    if done_tx.send(flushed).is_err() {
                        break;
                    }
                }
            });
            starts.push(start);
        }
        drop(done_tx);
        let mut samples = Vec::with_capacity(rounds * files);
        sample_blocking(budget, rounds, |i| -> anyhow::Result<()> {
            for start in &starts {
                start
                    .send(i)
                    .map_err(|_| anyhow::anyhow!("a flush thread stopped"))?;
            }
            for _ in 0..files {
                let flushed = done
                    .recv()
                    .map_err(|_| anyhow::anyhow!("a flush thread stopped"))?
                    .with_context(|| format!("write and fdatasync in {}", dir.display()))?;
                if i >= WARMUP {
                    samples.push(flushed);
                }
            }
            Ok(())
        })?;
        Ok::<_, anyhow::Error>(samples)
    });
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    Ok(Samples::new(samples?))
}

/// 4 KiB append + `fdatasync` to a file in `dir` that grows with every sample.
pub fn fsync_append(dir: &Path, budget: Duration, max: usize) -> anyhow::Result<Samples> {
    let path = dir.join("floor-append.dat");
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let block = [0x5au8; BLOCK];
    let samples = sample_blocking(budget, max, |_| {
        file.write_all(&block)?;
        file.sync_data()
    });
    drop(file);
    let _ = std::fs::remove_file(&path);
    samples.with_context(|| format!("append and fdatasync {}", path.display()))
}

/// One autocommit 1-row INSERT per sample into a fresh WAL database in `dir` with
/// `synchronous=FULL`.
pub fn sqlite_commit(
    dir: &Path,
    payload: &str,
    budget: Duration,
    max: usize,
) -> anyhow::Result<Samples> {
    let path = dir.join("floor.db");
    let samples = (|| {
        let db = rusqlite::Connection::open(&path)?;
        let mode: String = db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            anyhow::bail!("SQLite did not switch to WAL (journal_mode={mode})");
        }
        db.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE bench (id INTEGER PRIMARY KEY, client INTEGER NOT NULL, payload TEXT NOT NULL);",
        )?;
        let mut insert = db.prepare("INSERT INTO bench (client, payload) VALUES (?1, ?2)")?;
        let samples = sample_blocking(budget, max, |i| {
            insert
                .execute(rusqlite::params![i as i64, payload])
                .map(drop)
        })?;
        Ok(samples)
    })();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("floor.db{suffix}")));
    }
    samples.with_context(|| format!("SQLite commits in {}", path.display()))
}

/// The CPUs this process may run on, in order.
pub fn usable_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set that sched_getaffinity fills in.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: as above; 0 is the calling thread.
    let failed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
    };
    match failed {
        true => Err(std::io::Error::last_os_error()),
        false => Ok(()),
    }
}

/// Round trips of one byte between two threads over a socket pair, the first pinned to
/// `cpus.0` and the second to `cpus.1`: each round trip wakes each of them once from a
/// blocking read. The threads are the caller's and one it starts.
pub fn wake_rtt(cpus: (usize, usize), budget: Duration, max: usize) -> anyhow::Result<Samples> {
    use std::io::Read as _;
    use std::os::unix::net::UnixStream;
    let (mut near, mut far) = UnixStream::pair().context("make a socket pair")?;
    std::thread::scope(|scope| {
        let echo = scope.spawn(move || -> std::io::Result<()> {
            pin_to(cpus.1)?;
            let mut byte = [0u8; 1];
            // Ends when the other side closes the pair.
            while far.read(&mut byte)? == 1 {
                far.write_all(&byte)?;
            }
            Ok(())
        });
        let samples = (|| {
            pin_to(cpus.0).with_context(|| format!("pin a thread to CPU {}", cpus.0))?;
            let mut byte = [0u8; 1];
            sample_blocking(budget, max, |_| {
                near.write_all(&byte)?;
                near.read_exact(&mut byte)
            })
            .context("a byte to the other thread and back")
        })();
        drop(near);
        let echoed = echo
            .join()
            .map_err(|_| anyhow::anyhow!("the echo thread panicked"))?;
        echoed.with_context(|| format!("the echo thread on CPU {}", cpus.1))?;
        samples
    })
}

/// [`wake_rtt`] on one CPU and on two (the first two this process may use); the second is
/// empty on a single CPU. Runs on a thread of its own, which it pins.
pub fn wake_rtts(budget: Duration, max: usize) -> anyhow::Result<(Samples, Samples)> {
    let cpus = usable_cpus();
    let Some(&first) = cpus.first() else {
        anyhow::bail!("this process may run on no CPU it can name (sched_getaffinity)");
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let same = wake_rtt((first, first), budget, max)?;
                let cross = match cpus.get(1) {
                    Some(&second) => wake_rtt((first, second), budget, max)?,
                    None => Samples::default(),
                };
                Ok((same, cross))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the wake measurement panicked"))?
    })
}

/// `grpc.health.v1.Health/Check` round trips to `addr` (`http://` or `https://`) over one
/// connection, the client library's; `tls_ca` is the CA for `https://`.
pub async fn grpc_rtt(
    addr: &str,
    tls_ca: Option<&[u8]>,
    budget: Duration,
    max: usize,
) -> anyhow::Result<Samples> {
    let mut health = super::health::health_client(addr, tls_ca)?;
    for _ in 0..WARMUP {
        health_check(&mut health, addr).await?;
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < max && started.elapsed() < budget {
        let t0 = Instant::now();
        health_check(&mut health, addr).await?;
        samples.push(t0.elapsed());
    }
    Ok(Samples::new(samples))
}

async fn health_check(
    health: &mut HealthClient<raftlite_client::transport::Direct>,
    addr: &str,
) -> anyhow::Result<()> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(5));
    health
        .check(request)
        .await
        .map(drop)
        .with_context(|| format!("health check on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEW: Duration = Duration::from_secs(5);

    #[test]
    fn sampling_stops_at_the_sample_cap_after_the_warmup() {
        let mut calls = Vec::new();
        let samples = sample_blocking(FEW, 7, |i| {
            calls.push(i);
            Ok::<(), ()>(())
        })
        .expect("no error");
        assert_eq!(samples.len(), 7);
        assert_eq!(calls, (0..WARMUP + 7).collect::<Vec<_>>());
    }

    #[test]
    fn sampling_stops_at_the_first_error() {
        let result = sample_blocking(FEW, 100, |i| if i == 3 { Err(i) } else { Ok(()) });
        assert_eq!(result, Err(3));
    }

    #[test]
    fn samples_are_sorted_for_percentiles() {
        let ms = Duration::from_millis;
        let s = Samples::new(vec![ms(3), ms(1), ms(2), ms(4)]);
        assert_eq!(s.percentile_ms(50.0), Some(2.0));
        assert_eq!(s.percentile_ms(99.0), Some(4.0));
        assert_eq!(Samples::default().percentile_ms(50.0), None);
    }

    #[test]
    fn disk_measurements_leave_no_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fsync = fsync_preallocated(dir.path(), FEW, 30).expect("fsync");
        let append = fsync_append(dir.path(), FEW, 30).expect("append");
        let shared = fsync_shared(dir.path(), 3, FEW, 30).expect("shared");
        let commit = sqlite_commit(dir.path(), "payload", FEW, 30).expect("sqlite");
        for s in [&fsync, &append, &shared, &commit] {
            assert_eq!(s.len(), 30);
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn shared_flushes_stop_together_when_a_file_cannot_be_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-such-dir");
        let err = fsync_shared(&missing, 3, FEW, 30).expect_err("no directory to write in");
        assert!(format!("{err:#}").contains("floor-shared-"), "{err:#}");
    }

    #[test]
    fn the_floor_object_has_the_three_p50s() {
        let ms = Duration::from_millis;
        let floor = Floor {
            fsync: Samples::new(vec![ms(1)]),
            fsync_append: Samples::new(vec![ms(2)]),
            fsync_shared: Samples::new(vec![ms(5)]),
            sqlite_commit: Samples::new(vec![ms(3)]),
            grpc_rtt: Samples::new(vec![ms(4)]),
            grpc_tls: true,
            wake_same_cpu: Samples::new(vec![ms(6)]),
            wake_cross_cpu: Samples::default(),
            cpu_idle: CpuIdle {
                driver: Some("haltpoll".into()),
                halt_poll_ns: Some(0),
            },
        };
        let json = floor.to_json();
        assert_eq!(json["fsync_p50_ms"], 1.0);
        assert_eq!(json["sqlite_commit_p50_ms"], 3.0);
        assert_eq!(json["grpc_rtt_p50_ms"], 4.0);
        assert_eq!(json["fsync_shared_p50_ms"], 5.0);
        assert_eq!(json["fsync_shared_files"], 3);
        assert!(floor.describe().contains("3 files at once"));
        assert_eq!(json["grpc_tls"], true);
        assert!(floor.describe().contains("(TLS)"));
        assert_eq!(json["wake_rtt_same_cpu_p50_ms"], 6.0);
        assert!(
            json["wake_rtt_cross_cpu_p50_ms"].is_null(),
            "one CPU: no cross-CPU number"
        );
        assert_eq!(json["cpuidle_driver"], "haltpoll");
        assert_eq!(json["guest_halt_poll_ns"], 0);
        assert!(floor.describe().contains("halts at once"));
    }

    #[test]
    fn the_idle_policy_is_read_from_sys_and_what_is_missing_is_none() {
        let sys = tempfile::tempdir().expect("dir");
        assert_eq!(CpuIdle::read(sys.path()), CpuIdle::default());
        assert_eq!(CpuIdle::default().describe(), "unknown");
        let write = |rel: &str, text: &str| {
            let path = sys.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        };
        write("devices/system/cpu/cpuidle/current_driver", "intel_idle\n");
        // The module loaded, but another driver idles the CPUs: its parameter is not shown.
        write("module/haltpoll/parameters/guest_halt_poll_ns", "200000\n");
        let idle = CpuIdle::read(sys.path());
        assert_eq!(idle.driver.as_deref(), Some("intel_idle"));
        assert_eq!(idle.halt_poll_ns, None);
        assert_eq!(idle.describe(), "intel_idle");
        write("devices/system/cpu/cpuidle/current_driver", "haltpoll\n");
        let idle = CpuIdle::read(sys.path());
        assert_eq!(idle.halt_poll_ns, Some(200_000));
        assert!(idle.describe().contains("polls before it halts"));
        write(
            "module/haltpoll/parameters/guest_halt_poll_ns",
            "not a number",
        );
        assert_eq!(CpuIdle::read(sys.path()).halt_poll_ns, None);
    }

    #[test]
    fn wake_round_trips_are_measured_on_the_cpus_asked_for() {
        let cpus = usable_cpus();
        assert!(
            !cpus.is_empty(),
            "sched_getaffinity names this process's CPUs"
        );
        let (same, cross) = wake_rtts(FEW, 50).expect("wake round trips");
        assert_eq!(same.len(), 50);
        assert_eq!(cross.len(), if cpus.len() > 1 { 50 } else { 0 });
        // A round trip is two wake-ups and four system calls: never instant, never seconds.
        let p50 = same.percentile_ms(50.0).expect("samples");
        assert!(p50 > 0.0 && p50 < 1_000.0, "{p50} ms");
        // A CPU this process may not use is an error, not a silent unpinned measurement.
        let err = wake_rtt((libc::CPU_SETSIZE as usize - 1, cpus[0]), FEW, 5)
            .expect_err("pinning to a CPU outside the affinity set fails");
        assert!(format!("{err:#}").contains("pin a thread"), "{err:#}");
    }
}
