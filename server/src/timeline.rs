//! Timeline stamps: where a write is, and when, for measuring where its time goes.
//!
//! Compiled in only with the `timeline` cargo feature; without it `stamp!` expands to nothing.
//! With it, and `RAFTLITE_TIMELINE=DIR` set, every `stamp!(point, index)` records the point's
//! name, a log index (0 where none is known yet) and the monotonic clock in nanoseconds. A
//! thread appends them to `DIR/timeline-PID.tsv` every 200 ms. All processes on a host share
//! that clock, so the files of a leader, its followers and the load generator line up.
//! `bench/timeline.py` matches them by index and prints each step's percentiles.

/// Records that the write with log index `index` (0: not known yet) reached `point`.
#[macro_export]
macro_rules! stamp {
    ($point:expr, $index:expr) => {
        #[cfg(feature = "timeline")]
        {
            $crate::timeline::stamp($point, $index as u64);
        }
    };
}

#[cfg(feature = "timeline")]
mod recording {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};

    type Stamp = (&'static str, u64, u64);

    struct Recorder {
        stamps: Mutex<Vec<Stamp>>,
    }

    fn now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn recorder() -> Option<&'static Recorder> {
        static RECORDER: OnceLock<Option<Recorder>> = OnceLock::new();
        RECORDER
            .get_or_init(|| {
                let dir = std::env::var_os("RAFTLITE_TIMELINE")?;
                let path =
                    std::path::Path::new(&dir).join(format!("timeline-{}.tsv", std::process::id()));
                std::thread::Builder::new()
                    .name("timeline".into())
                    .spawn(move || loop {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        let Some(r) = recorder() else { return };
                        let taken = std::mem::take(
                            &mut *r.stamps.lock().unwrap_or_else(|p| p.into_inner()),
                        );
                        if taken.is_empty() {
                            continue;
                        }
                        let Ok(mut f) = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                        else {
                            return;
                        };
                        let mut out = String::new();
                        for (point, index, ns) in taken {
                            out.push_str(&format!("{point}\t{index}\t{ns}\n"));
                        }
                        let _ = f.write_all(out.as_bytes());
                    })
                    .ok()?;
                Some(Recorder {
                    stamps: Mutex::new(Vec::with_capacity(1 << 16)),
                })
            })
            .as_ref()
    }

    pub fn stamp(point: &'static str, index: u64) {
        if let Some(r) = recorder() {
            let ns = now_ns();
            r.stamps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((point, index, ns));
        }
    }
}

#[cfg(feature = "timeline")]
pub use recording::stamp;
