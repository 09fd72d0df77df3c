//! The fastest quorum-durable write this machine allows, with nothing but threads, blocking
//! loopback TCP and `fdatasync`: what raftlite's write path is measured against in
//! BENCHMARKS.md ("What the machine allows").
//!
//! A leader and two followers (threads of this process, each with its own log file in
//! `--dir`) and `N` clients, each on its own connection, as `raftlite bench` runs them:
//! - a client sends a 128-byte request (about the size of a one-row INSERT) and waits for
//!   its 8-byte answer;
//! - the leader reads each connection on a thread of its own and queues the request; one
//!   batcher thread takes everything queued as one batch (group commit, one batch in flight
//!   as raftlite's default), sends it to both followers and hands it to the leader's own
//!   flush thread, waits until two of the three logs have it on disk (`pwrite` + `fdatasync`
//!   into a preallocated file), and answers the batch's clients;
//! - a follower reads a batch, appends and flushes it, and acknowledges it.
//!
//! No SQL, no Raft terms or elections, no encoding, no async runtime: every hand-off left is
//! one a replicated write cannot do without (client → leader → followers' disks → leader →
//! client), each a thread woken by a socket or a condition variable.
//!
//! ```sh
//! cargo run --release --manifest-path bench/quorum-floor/Cargo.toml -- --dir DIR \
//!     [--seconds 3] [--clients 1,16,64]
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes of one client request.
const REQUEST: usize = 128;
/// Each log file is preallocated to this size and written round.
const LOG_BYTES: u64 = 64 << 20;
/// Log writes start on a 4 KiB boundary, as a log engine's pages do.
const BLOCK: u64 = 4096;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let mut dir = None;
    let mut seconds = 3.0;
    let mut clients = vec![1, 16, 64];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--seconds" => seconds = value()?.parse()?,
            "--clients" => {
                clients = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()?
            }
            _ => {
                return Err(format!("unknown argument {arg} (--dir, --seconds, --clients)").into())
            }
        }
    }
    let dir = dir.ok_or("--dir DIR is required: a directory on the disk to measure")?;
    let phase = Duration::from_secs_f64(seconds);

    println!("| clients | writes/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for n in clients {
        let mut latencies = run(&dir, n, phase)?;
        latencies.sort_unstable();
        let ms = |p: f64| {
            let i = ((latencies.len() as f64 - 1.0) * p / 100.0).round() as usize;
            latencies
                .get(i)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "| {n} | {:.0} | {:.3} | {:.3} |",
            latencies.len() as f64 / phase.as_secs_f64(),
            ms(50.0),
            ms(99.0)
        );
    }
    Ok(())
}

/// One phase: a fresh leader and followers, `n` clients for `phase`; every client's latencies.
fn run(dir: &Path, n: usize, phase: Duration) -> Result<Vec<Duration>> {
    let mut followers = Vec::new();
    for i in 1..=2 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let log = Log::create(&dir.join(format!("quorum-floor-follower-{i}.log")))?;
        thread::spawn(move || follower(listener, log));
        followers.push(connect(addr)?);
    }
    let log = Log::create(&dir.join("quorum-floor-leader.log"))?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let deadline = Instant::now() + phase;
    let client_threads: Vec<_> = (0..n)
        .map(|_| thread::spawn(move || client(addr, deadline)))
        .collect();
    let mut answers = Vec::with_capacity(n);
    let leader = Arc::new(Leader::default());
    for i in 0..n {
        let (conn, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        answers.push(conn.try_clone()?);
        let leader = Arc::clone(&leader);
        thread::spawn(move || leader.read_requests(i, conn));
    }
    for (k, f) in followers.iter().enumerate() {
        let (leader, conn) = (Arc::clone(&leader), f.try_clone()?);
        thread::spawn(move || leader.read_acks(k + 1, conn));
    }
    {
        let leader = Arc::clone(&leader);
        thread::spawn(move || leader.flush_own(log));
    }
    let batcher = {
        let leader = Arc::clone(&leader);
        thread::spawn(move || leader.batches(followers, answers))
    };
    let mut latencies = Vec::new();
    for t in client_threads {
        latencies.extend(t.join().map_err(|_| "a client panicked")??);
    }
    leader.stop();
    batcher.join().map_err(|_| "the batcher panicked")??;
    for name in ["leader", "follower-1", "follower-2"] {
        let _ = std::fs::remove_file(dir.join(format!("quorum-floor-{name}.log")));
    }
    Ok(latencies)
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let conn = TcpStream::connect(addr)?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// A client: one request at a time until `deadline`.
fn client(addr: SocketAddr, deadline: Instant) -> Result<Vec<Duration>> {
    let mut conn = connect(addr)?;
    let request = [7u8; REQUEST];
    let mut answer = [0u8; 8];
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let t0 = Instant::now();
        conn.write_all(&request)?;
        conn.read_exact(&mut answer)?;
        latencies.push(t0.elapsed());
    }
    Ok(latencies)
}

/// A follower: append and flush each batch, then acknowledge its sequence number.
fn follower(listener: TcpListener, mut log: Log) -> Result<()> {
    let (mut conn, _) = listener.accept()?;
    conn.set_nodelay(true)?;
    let mut head = [0u8; 12];
    let mut batch = Vec::new();
    loop {
        if conn.read_exact(&mut head).is_err() {
            return Ok(()); // the leader is done
        }
        let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
        batch.resize(len, 0);
        conn.read_exact(&mut batch)?;
        log.append(&batch)?;
        conn.write_all(&head[..8])?;
    }
}

#[derive(Default)]
struct Leader {
    queue: Mutex<Queue>,
    arrived: Condvar,
    /// The last batch on disk in each log: the leader's own, then the followers'.
    durable: Mutex<[u64; 3]>,
    durable_changed: Condvar,
    own: Mutex<Option<(u64, Vec<u8>)>>,
    own_wanted: Condvar,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<usize>,
    stopped: bool,
}

impl Leader {
    fn read_requests(&self, client: usize, mut conn: TcpStream) {
        let mut request = [0u8; REQUEST];
        while conn.read_exact(&mut request).is_ok() {
            self.queue.lock().unwrap().waiting.push(client);
            self.arrived.notify_one();
        }
    }

    fn read_acks(&self, voter: usize, mut conn: TcpStream) {
        let mut seq = [0u8; 8];
        while conn.read_exact(&mut seq).is_ok() {
            self.durable.lock().unwrap()[voter] = u64::from_le_bytes(seq);
            self.durable_changed.notify_one();
        }
    }

    fn flush_own(&self, mut log: Log) -> Result<()> {
        loop {
            let (seq, batch) = {
                let mut own = self.own.lock().unwrap();
                loop {
                    if let Some(next) = own.take() {
                        break next;
                    }
                    if self.queue.lock().unwrap().stopped {
                        return Ok(());
                    }
                    own = self.own_wanted.wait(own).unwrap();
                }
            };
            log.append(&batch)?;
            self.durable.lock().unwrap()[0] = seq;
            self.durable_changed.notify_one();
        }
    }

    fn batches(&self, mut followers: Vec<TcpStream>, mut answers: Vec<TcpStream>) -> Result<()> {
        let mut seq = 0u64;
        let mut batch = Vec::new();
        loop {
            {
                let mut queue = self.queue.lock().unwrap();
                while queue.waiting.is_empty() && !queue.stopped {
                    queue = self.arrived.wait(queue).unwrap();
                }
                if queue.stopped {
                    break;
                }
                std::mem::swap(&mut batch, &mut queue.waiting);
            }
            seq += 1;
            let payload = vec![seq as u8; batch.len() * REQUEST];
            let mut head = [0u8; 12];
            head[..8].copy_from_slice(&seq.to_le_bytes());
            head[8..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            for f in &mut followers {
                f.write_all(&[&head[..], &payload].concat())?;
            }
            *self.own.lock().unwrap() = Some((seq, payload));
            self.own_wanted.notify_one();
            {
                let mut durable = self.durable.lock().unwrap();
                while durable.iter().filter(|&&s| s >= seq).count() < 2 {
                    durable = self.durable_changed.wait(durable).unwrap();
                }
            }
            for &client in &batch {
                answers[client].write_all(&seq.to_le_bytes())?;
            }
            batch.clear();
        }
        for f in &followers {
            let _ = f.shutdown(Shutdown::Both);
        }
        Ok(())
    }

    fn stop(&self) {
        self.queue.lock().unwrap().stopped = true;
        self.arrived.notify_all();
        let _own = self.own.lock().unwrap();
        self.own_wanted.notify_all();
    }
}

/// A preallocated log file written round, each append flushed with `fdatasync`.
struct Log {
    file: File,
    offset: u64,
}

impl Log {
    fn create(path: &Path) -> Result<Log> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..LOG_BYTES / zeros.len() as u64 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        Ok(Log { file, offset: 0 })
    }

    fn append(&mut self, data: &[u8]) -> Result<()> {
        if self.offset + data.len() as u64 > LOG_BYTES {
            self.offset = 0;
        }
        self.file.write_all_at(data, self.offset)?;
        self.file.sync_data()?;
        self.offset += (data.len() as u64).div_ceil(BLOCK) * BLOCK;
        Ok(())
    }
}
