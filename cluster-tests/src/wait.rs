//! Waiting for a condition, never for a fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Ok(Some(value))` or `within` has passed.
///
/// `Ok(None)` and `Err(_)` both mean "not yet"; the last error is kept so that a timeout says
/// what was still wrong (`waiting for a leader: ...: node 2 knows no leader`). An error that
/// carries [`Fatal`] ends the wait at once (a node crashed: waiting longer cannot help). Every
/// poll runs to completion: a check that can hang must bound itself (the harness's clients
/// carry request timeouts).
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    let mut last_problem = String::from("the condition never held");
    loop {
        match check().await {
            Ok(Some(value)) => {
                tracing::debug!(what, elapsed = ?started.elapsed(), "condition met");
                return Ok(value);
            }
            Ok(None) => {}
            Err(e) if e.downcast_ref::<Fatal>().is_some() => {
                return Err(e.context(format!("waiting for {what}")));
            }
            Err(e) => last_problem = format!("{e:#}"),
        }
        if started.elapsed() >= within {
            anyhow::bail!("waiting for {what}: still not true after {within:?}: {last_problem}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Marks an error that no amount of waiting can cure, such as a node that crashed.
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}
