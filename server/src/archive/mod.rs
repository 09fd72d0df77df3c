//! The archive: continuous shipping of the Raft log and periodic snapshots to an object store
//! (S3 or a local directory), and restore from it — to a file (`raftlite restore`, point in
//! time by log index or timestamp) or into a whole new cluster after every node was lost.
//!
//! Files, one job each: `format` (the bytes of an object: header, checksum, zstd, optional
//! AES-256-GCM), `store` (the object store and the layout of names), `archiver` (the leader's
//! upload loop, the purge floor, status), `restore` (plan and rebuild a database file).
//!
//! # Key decisions and trade-offs
//! - **The log is the archive.** Segments hold the committed entries exactly as Raft
//!   replicated them (page deltas), keyed by log index, so restore replays the same deltas
//!   every replica applied, through the same applier, and any index is a restore point.
//! - **Listing, not a manifest.** A new leader lists the archive and resumes after the highest
//!   index a snapshot plus continuous segments reach. Nothing can disagree with the objects.
//!   Object names sort numerically (zero-padded), so the listing is in order.
//! - **Generations.** A cluster restored after losing every node restarts its log at index 0;
//!   it archives into the next generation of the same cluster id instead of colliding with
//!   the old indexes.
//! - **Idempotent uploads.** A range always has the same name, and its entries are the same
//!   bytes whoever uploads them (Raft's committed log is the same on every node); encryption
//!   uses a synthetic IV so re-encrypting the same body gives the same bytes. The commit times
//!   recorded with the entries are the uploader's observation (within a flush interval).
//! - **Bounded log retention.** Every node keeps at most `max_held_entries` of log beyond what
//!   Raft needs; an archive behind by more is caught up with a fresh snapshot (leaving a gap
//!   for point-in-time restore before it) rather than filling the disk while S3 is down.
//! - **Timestamps are commit observations.** Entries carry the time the leader's archiver saw
//!   them committed, so a restore "at T" includes nothing committed after T; entries archived
//!   by a new leader after a failover carry the time they were read, which errs the same way.

pub mod archiver;
pub mod format;
pub mod restore;
pub mod store;

pub use archiver::{ArchiveStatus, ArchiveStatusHandle, ArchiverSettings};
pub use format::{ArchiveKey, FormatError};
pub use restore::{RestorePlan, RestoreRequest, RestoreTarget, Restored};
pub use store::{Archive, ArchiveLocation, ArchiveUrl};

/// Whole-cluster recovery, run by the bootstrapping node before it initializes a new cluster:
/// when the archive holds a cluster, rebuild its latest state into `db` and return the cluster
/// id to keep and the new generation (already marked in the archive). `Ok(None)`: the archive
/// is empty, start fresh.
pub async fn restore_for_bootstrap(
    archive: &Archive,
    data_dir: &std::path::Path,
    db: &crate::db::Database,
) -> anyhow::Result<Option<(Restored, u64)>> {
    use anyhow::Context;
    let request = RestoreRequest {
        cluster_id: None,
        generation: None,
        target: RestoreTarget::Latest,
    };
    let Some(plan) = restore::plan(archive, &request).await? else {
        return Ok(None);
    };
    tracing::info!(
        cluster_id = %plan.cluster_id,
        generation = plan.generation,
        snapshot = plan.snapshot.index,
        segments = plan.segments.len(),
        "every member is empty and the archive holds a cluster: restoring its latest state"
    );
    let temp = data_dir.join("archive-restore.db");
    let progress = |line: String| tracing::info!("restore: {line}");
    let restored = restore::execute(archive, &plan, &temp, &progress).await?;
    db.install_image(temp.clone())
        .await
        .context("install the restored database")?;
    let _ = std::fs::remove_file(&temp);
    let generations = archive.generations(&plan.cluster_id).await?;
    let next = generations.last().copied().unwrap_or(plan.generation) + 1;
    archive
        .put(
            &archive.started_path(&plan.cluster_id, next),
            format!(
                "raftlite archive generation, restored from generation {} index {}\n",
                restored.generation, restored.index
            )
            .into_bytes(),
        )
        .await?;
    Ok(Some((restored, next)))
}
