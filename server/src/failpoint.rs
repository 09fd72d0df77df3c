//! Fail points: named places in crash-sensitive code where a test can make the process die.
//!
//! Compiled in only with the `failpoints` cargo feature; without it `fail_point!` expands to
//! nothing. With it, the point named by the environment variable `RAFTLITE_FAILPOINT` aborts
//! the process (`std::process::abort`, as abrupt as a SIGKILL for the files: no destructor,
//! no flush) when it is reached. `name@N` aborts at the N-th time the point is reached, so a
//! test can let some appends succeed first.
//!
//! Tests arm a point in a child process they start (the test binary running itself), never in
//! their own process.

/// Aborts the process here if the test armed this point (see the module docs).
#[macro_export]
macro_rules! fail_point {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        {
            if $crate::failpoint::armed($name) {
                eprintln!("fail point {} reached: aborting", $name);
                std::process::abort();
            }
        }
    };
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// The environment variable that arms one point: `name` or `name@N`.
    pub const ENV: &str = "RAFTLITE_FAILPOINT";

    struct Armed {
        name: String,
        at_hit: u64,
        hits: AtomicU64,
    }

    fn parse() -> Option<Armed> {
        let value = std::env::var(ENV).ok()?;
        let (name, at_hit) = match value.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (value, 1),
        };
        Some(Armed {
            name,
            at_hit,
            hits: AtomicU64::new(0),
        })
    }

    /// True when `name` is armed and this is the hit it is armed for.
    pub fn armed(name: &str) -> bool {
        static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
        match ARMED.get_or_init(parse) {
            Some(a) if a.name == name => a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.at_hit,
            _ => false,
        }
    }
}

#[cfg(feature = "failpoints")]
pub use armed::{armed, ENV};
