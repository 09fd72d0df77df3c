//! Appends to raft-engine (TiKV's Raft log engine) with the workload of `raftlite bench-log`:
//! entries of each size, one appender and 16 concurrent ones, every append synced
//! (`Engine::write(batch, sync = true)`) before it counts. Prints the same Markdown rows.
//!
//! raft-engine stores protobuf (rust-protobuf 2) messages; the entry here is a `BytesValue`
//! whose first 8 bytes are the index. Concurrent appenders each own a Raft group (region):
//! raft-engine groups concurrent `write` calls into one log write and sync (its write queue).

use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::well_known_types::BytesValue;
use raft_engine::{Config, Engine, LogBatch, MessageExt, ReadableSize};

#[derive(Clone)]
struct Entries;

impl MessageExt for Entries {
    type Entry = BytesValue;
    fn index(e: &BytesValue) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&e.value[..8]);
        u64::from_le_bytes(b)
    }
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn measure(engine: Arc<Engine>, size: usize, appenders: usize, seconds: f64, region_base: u64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let region = region_base + t as u64;
                let body: Vec<u8> = (0..size).map(|i| (i * 31 + t) as u8).collect();
                let mut latencies = Vec::new();
                let mut index = 1u64;
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let mut value = index.to_le_bytes().to_vec();
                    value.extend_from_slice(&body[8.min(body.len())..]);
                    let mut entry = BytesValue::new();
                    entry.value = value;
                    let mut batch = LogBatch::default();
                    batch
                        .add_entries::<Entries>(region, &[entry])
                        .expect("add entry");
                    engine.write(&mut batch, true).expect("write");
                    latencies.push(start.elapsed());
                    index += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("appender"))
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
    };
    let ops = latencies.len() as f64 / elapsed.as_secs_f64();
    println!(
        "| raft-engine 0.4 (write, sync) | {} | {} | {:.3} | {:.3} | {:.0} | {:.1} |",
        human(size),
        appenders,
        pct(0.5),
        pct(0.99),
        ops,
        ops * size as f64 / 1e6
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut seconds = 2.0;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next(),
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N")
            }
            other => panic!("unknown argument {other}; usage: --dir DIR [--seconds N]"),
        }
    }
    let dir = dir.expect("--dir DIR");
    let mut run = 0u64;
    for size in [100usize, 4096, 65536, 1 << 20] {
        for appenders in [1usize, 16] {
            run += 1;
            let path = format!("{dir}/raft-engine-{run}");
            let config = Config {
                dir: path.clone(),
                target_file_size: ReadableSize::mb(64),
                // Same bytes on disk as the other candidates: no lz4.
                batch_compression_threshold: ReadableSize(0),
                ..Default::default()
            };
            let engine = Arc::new(Engine::open(config).expect("open raft-engine"));
            measure(engine.clone(), size, appenders, seconds, run * 100);
            drop(engine);
            std::fs::remove_dir_all(&path).ok();
        }
    }
}
