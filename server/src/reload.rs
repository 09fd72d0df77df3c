//! Files a node re-reads when they change (the TLS certificates, the auth file): how a change
//! is noticed, and the loop that looks for one.
//!
//! A change is a new modification time or size. Kubernetes updates a mounted Secret by
//! swapping a symlink, so the metadata of the path (which follows links) changes with it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// When a file was last changed, and its size.
pub type FileStamp = (SystemTime, u64);

pub fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len()))
}

/// Something backed by files that can pick up a new version of them.
pub trait Reloadable: Send + Sync + 'static {
    /// Re-reads the files if they changed; true when the new version is in use. A version
    /// that cannot be used is logged and the previous one stays.
    fn reload_if_changed(&self) -> bool;
}

/// Calls `target.reload_if_changed()` on a blocking thread every `every`, for as long as the
/// node runs.
pub async fn watch<T: Reloadable>(target: Arc<T>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let target = target.clone();
        let _ = tokio::task::spawn_blocking(move || target.reload_if_changed()).await;
    }
}
