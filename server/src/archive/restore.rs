//! Rebuilding a plain SQLite file from the archive: a snapshot, then the log segments after
//! it, up to the latest entry, a log index, or a point in time.
//!
//! Every object is checked (checksum, index range, continuity) before anything from it is
//! applied, and a gap in the log is an error: a restore either produces exactly the requested
//! state or fails naming the object at fault. The file is built under a temporary name and
//! checked with `PRAGMA quick_check`; the caller moves it into place.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::{DateTime, Utc};

use super::format::{self, EntryBody, ObjectKind, SegmentEntry};
use super::store::{Archive, GenerationListing, SegmentObject, SnapshotObject};
use crate::db::{Applier, ApplyOutcome, PageDelta};

/// Segments downloaded ahead of the one being decoded, at most.
const PREFETCH: usize = 8;
/// Bytes of segment objects (by their listed sizes) downloaded ahead of the one being decoded,
/// at most: a segment may be as large as `SEGMENT_BODY_LIMIT`, and eight of them at once took
/// gigabytes, more than a pod's memory. One larger object downloads alone.
pub const PREFETCH_BYTES: u64 = 64 << 20;

/// Which state to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// Everything the archive holds.
    Latest,
    /// The state right after log index N.
    Index(u64),
    /// The state with every entry committed at or before this time.
    Time(DateTime<Utc>),
}

/// What to restore from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The cluster to restore; `None`: the only one in the archive (or the most recently
    /// written one).
    pub cluster_id: Option<String>,
    /// `None`: the newest generation that fits the target.
    pub generation: Option<u64>,
    pub target: RestoreTarget,
}

/// The objects a restore will read.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub cluster_id: String,
    pub generation: u64,
    pub snapshot: SnapshotObject,
    /// Segments continuing the snapshot, in order (possibly overlapping).
    pub segments: Vec<SegmentObject>,
    pub target: RestoreTarget,
    /// A gap after the chain (missing segment): fatal if the restore runs into it.
    pub hole: Option<String>,
    /// Bytes of segment objects downloaded ahead ([`PREFETCH_BYTES`]).
    pub prefetch_bytes: u64,
}

/// What a restore produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub cluster_id: String,
    pub generation: u64,
    /// Log index the restored database reflects.
    pub index: u64,
    pub snapshot_index: u64,
    pub segments: usize,
    pub deltas_applied: u64,
    /// Size of the restored database file.
    pub db_bytes: u64,
    /// The most bytes of segment objects that were downloaded ahead at once.
    pub most_prefetched_bytes: u64,
}

/// Picks the objects for `request`. `Ok(None)`: the archive holds nothing to restore.
pub async fn plan(
    archive: &Archive,
    request: &RestoreRequest,
) -> anyhow::Result<Option<RestorePlan>> {
    let cluster_id = match &request.cluster_id {
        Some(id) => id.clone(),
        None => {
            let clusters = archive.clusters().await?;
            match clusters.iter().max_by_key(|(_, newest)| **newest) {
                None => return Ok(None),
                Some((id, _)) => {
                    if clusters.len() > 1 {
                        tracing::warn!(
                            clusters = ?clusters.keys().collect::<Vec<_>>(),
                            chosen = %id,
                            "the archive holds several clusters; restoring the most recently written one"
                        );
                    }
                    id.clone()
                }
            }
        }
    };
    let mut generations = archive.generations(&cluster_id).await?;
    if generations.is_empty() && request.cluster_id.is_some() {
        // A mistyped cluster id is not an empty archive (which `-if-replica-exists` skips).
        let clusters = archive.clusters().await?;
        if !clusters.is_empty() {
            bail!(
                "the archive holds no cluster {cluster_id}; it holds {}",
                clusters.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    if let Some(g) = request.generation {
        ensure!(
            generations.contains(&g),
            "the archive has no generation {g} for cluster {cluster_id} (it has {generations:?})"
        );
        generations = vec![g];
    }
    let mut any_snapshot = false;
    let mut short = None;
    for &generation in generations.iter().rev() {
        let listing = archive.list_generation(&cluster_id, generation).await?;
        any_snapshot |= !listing.snapshots.is_empty();
        match plan_generation(&cluster_id, generation, &listing, request.target)? {
            Fit::Plan(plan) => return Ok(Some(*plan)),
            Fit::Nothing => {}
            // Log indexes start again in each generation: an older one may hold this index.
            Fit::ShortOf(why) => {
                short.get_or_insert(why);
            }
        }
        // A generation that had begun by the time asked for is the one that holds it: an
        // older generation ended before it began, and restoring that one's end would leave
        // out every write this generation took by then.
        if let RestoreTarget::Time(t) = request.target {
            let started = archive.generation_started(&cluster_id, generation).await?;
            if let Some(started) = started.filter(|started| *started <= t) {
                let oldest = listing
                    .snapshots
                    .first()
                    .map(|s| {
                        format!(
                            "its oldest snapshot is from {}",
                            s.object.last_modified.to_rfc3339()
                        )
                    })
                    .unwrap_or_else(|| "it has no snapshot yet".into());
                bail!(
                    "the archive of cluster {cluster_id} holds no restore point at {}: \
                     generation {generation}, which began at {}, keeps no snapshot from \
                     before that time ({oldest}; older ones are past the archive's retention)",
                    t.to_rfc3339(),
                    started.to_rfc3339()
                );
            }
        }
    }
    if let Some(why) = short {
        bail!(why);
    }
    if !any_snapshot {
        return Ok(None);
    }
    match request.target {
        RestoreTarget::Time(t) => bail!(
            "the archive of cluster {cluster_id} has no snapshot taken at or before {}",
            t.to_rfc3339()
        ),
        RestoreTarget::Index(n) => {
            bail!("no generation of cluster {cluster_id} holds a snapshot at or before index {n}")
        }
        RestoreTarget::Latest => bail!("the archive of cluster {cluster_id} has no snapshot"),
    }
}

/// What one generation offers a restore target.
enum Fit {
    Plan(Box<RestorePlan>),
    /// No snapshot at or before the target.
    Nothing,
    /// A snapshot at or before the target index, but the log stops short of it (why).
    ShortOf(String),
}

fn plan_generation(
    cluster_id: &str,
    generation: u64,
    listing: &GenerationListing,
    target: RestoreTarget,
) -> anyhow::Result<Fit> {
    let snapshot = match target {
        RestoreTarget::Latest => listing.snapshots.last(),
        RestoreTarget::Index(n) => listing.snapshots.iter().rev().find(|s| s.index <= n),
        RestoreTarget::Time(t) => listing
            .snapshots
            .iter()
            .rev()
            .find(|s| s.object.last_modified <= t),
    };
    let Some(snapshot) = snapshot.cloned() else {
        return Ok(Fit::Nothing);
    };
    let mut end = snapshot.index;
    let mut segments = Vec::new();
    for s in &listing.segments {
        if let RestoreTarget::Index(n) = target {
            if end >= n {
                break;
            }
        }
        if s.first <= end + 1 && s.last > end {
            end = s.last;
            segments.push(s.clone());
        }
    }
    // A segment past the end of the chain means an object in between is missing: restoring
    // only up to the hole would silently lose committed writes.
    let mut hole = None;
    if !matches!(target, RestoreTarget::Index(n) if end >= n) {
        if let Some(after) = listing.segments.iter().find(|s| s.first > end + 1) {
            let message = format!(
                "the archive is missing log entries {}..={} of generation {generation} of \
                 cluster {cluster_id}: the segment holding them is missing (the chain from \
                 snapshot {} ends at {end}; the next object is {})",
                end + 1,
                after.first - 1,
                snapshot.index,
                after.object.name
            );
            match target {
                // A point in time before the hole is still restorable exactly.
                RestoreTarget::Time(_) => hole = Some(message),
                _ => bail!(message),
            }
        }
    }
    if let RestoreTarget::Index(n) = target {
        if end < n {
            return Ok(Fit::ShortOf(format!(
                "generation {generation} of cluster {cluster_id} holds the log up to index \
                 {end} after snapshot {}, not up to {n}",
                snapshot.index
            )));
        }
    }
    Ok(Fit::Plan(Box::new(RestorePlan {
        cluster_id: cluster_id.to_owned(),
        generation,
        snapshot,
        segments,
        target,
        hole,
        prefetch_bytes: PREFETCH_BYTES,
    })))
}

/// Checks and decodes the downloaded segment `s` (on a blocking thread): its display name,
/// object size and entries.
async fn decode_segment(
    archive: &Archive,
    s: &SegmentObject,
    bytes: bytes::Bytes,
) -> anyhow::Result<(String, usize, Vec<SegmentEntry>)> {
    let path = archive.path_of(&s.object);
    let name = archive.display_name(&path);
    let len = bytes.len();
    let key = archive.key().cloned();
    let limits = *archive.limits();
    let decoded_name = name.clone();
    let (first, last) = (s.first, s.last);
    let entries = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let (header, body) =
            format::decode_object(&Archive::object_name(&path), &bytes, key.as_ref(), &limits)
                .with_context(|| format!("restore from {decoded_name}"))?;
        drop(bytes);
        ensure!(
            (header.first_index, header.last_index) == (first, last),
            "archive object {decoded_name} is corrupt: it holds {}..={}, its name says {}..={}",
            header.first_index,
            header.last_index,
            first,
            last
        );
        Ok(format::decode_segment(&decoded_name, &header, &body)?)
    })
    .await
    .context("segment decoder thread")??;
    Ok((name, len, entries))
}

/// A sink for `-v` progress lines.
pub type Progress<'a> = &'a (dyn Fn(String) + Sync);

/// Executes `plan` into `dest` (created or overwritten: pass a temporary path).
pub async fn execute(
    archive: &Archive,
    plan: &RestorePlan,
    dest: &Path,
    progress: Progress<'_>,
) -> anyhow::Result<Restored> {
    let started = Instant::now();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(dest, suffix));
    }

    let snap_path = archive.path_of(&plan.snapshot.object);
    let snap_name = archive.display_name(&snap_path);
    let t = Instant::now();
    let bytes = archive.get(&snap_path, ObjectKind::Snapshot).await?;
    progress(format!(
        "snapshot downloaded: {snap_name} ({} bytes, {})",
        bytes.len(),
        elapsed(t)
    ));
    let t = Instant::now();
    let key = archive.key().cloned();
    let limits = *archive.limits();
    let dest_owned = dest.to_path_buf();
    let (header, image_len) = {
        let snap_name = snap_name.clone();
        let stored_as = Archive::object_name(&snap_path);
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            write_image(&dest_owned, |file| {
                format::decode_object_into(
                    &stored_as,
                    &bytes,
                    key.as_ref(),
                    ObjectKind::Snapshot,
                    &limits,
                    file,
                )
                .with_context(|| format!("restore from {snap_name}"))
            })
        })
        .await
        .context("snapshot writer thread")??
    };
    ensure!(
        header.last_index == plan.snapshot.index,
        "archive object {snap_name} is corrupt: it holds index {}, its name says {}",
        header.last_index,
        plan.snapshot.index
    );
    progress(format!(
        "snapshot applied: index {} ({image_len} bytes, {})",
        header.last_index,
        elapsed(t)
    ));

    // Apply the segments on a dedicated thread while the next one is decoded and the ones
    // after it download: one segment waits decoded, at most.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<SegmentEntry>, Instant)>(1);
    let applier_dest = dest.to_path_buf();
    let stop_time = match plan.target {
        RestoreTarget::Time(t) => Some(t.timestamp_millis().max(0) as u64),
        _ => None,
    };
    let stop_index = match plan.target {
        RestoreTarget::Index(n) => Some(n),
        _ => None,
    };
    let snapshot_index = plan.snapshot.index;
    let apply_thread =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64, Vec<String>, bool)> {
            let applier = Applier::open(&applier_dest, Duration::from_secs(30))
                .context("open the restored database")?;
            let mut applied = snapshot_index;
            let mut deltas = 0u64;
            let mut lines = Vec::new();
            while let Some((name, entries, t)) = rx.blocking_recv() {
                let mut stop = false;
                let before = applied;
                for entry in entries {
                    if entry.index <= applied {
                        continue;
                    }
                    ensure!(
                        entry.index == applied + 1,
                        "archive object {name}: entry {} does not follow {applied}",
                        entry.index
                    );
                    if stop_index.is_some_and(|n| entry.index > n)
                        || stop_time.is_some_and(|ms| entry.time_ms > ms)
                    {
                        stop = true;
                        break;
                    }
                    if let EntryBody::Delta(bytes) = &entry.body {
                        let delta = PageDelta::decode(bytes).map_err(|e| {
                            anyhow::anyhow!("archive object {name}: entry {}: {e}", entry.index)
                        })?;
                        match applier.apply(&delta) {
                            Ok(ApplyOutcome::Applied) => deltas += 1,
                            // Skipped on every node of the cluster too (a stale delta).
                            Ok(ApplyOutcome::Skipped) => {}
                            Err(e) => bail!(
                                "archive object {name}: entry {} does not apply: {e}",
                                entry.index
                            ),
                        }
                    }
                    applied = entry.index;
                }
                lines.push(format!(
                    "segment applied: {name} (entries {}..={applied}, {})",
                    before + 1,
                    elapsed(t)
                ));
                if stop {
                    return Ok((applied, deltas, lines, true));
                }
            }
            Ok((applied, deltas, lines, false))
        });

    // Downloads run on tasks of their own ahead of the segment being decoded: at most
    // PREFETCH of them, and `plan.prefetch_bytes` of objects by their listed sizes (a larger
    // object downloads alone).
    let mut pending = plan.segments.iter().cloned().peekable();
    let mut downloading = std::collections::VecDeque::new();
    let (mut ahead_bytes, mut most_prefetched_bytes) = (0u64, 0u64);
    let mut segments = 0;
    let mut download_error = None;
    loop {
        while let Some(s) = pending.next_if(|next| {
            downloading.is_empty()
                || (downloading.len() < PREFETCH
                    && ahead_bytes + next.object.size <= plan.prefetch_bytes)
        }) {
            ahead_bytes += s.object.size;
            most_prefetched_bytes = most_prefetched_bytes.max(ahead_bytes);
            let archive = archive.clone();
            let object = s.object.clone();
            let download = tokio::spawn(async move {
                let t = Instant::now();
                let bytes = archive
                    .get(&archive.path_of(&object), ObjectKind::Segment)
                    .await?;
                anyhow::Ok((bytes, t))
            });
            downloading.push_back((s, download));
        }
        let Some((s, download)) = downloading.pop_front() else {
            break;
        };
        ahead_bytes -= s.object.size;
        let decoded = match download.await {
            Ok(Ok((bytes, t))) => decode_segment(archive, &s, bytes)
                .await
                .map(|(name, len, entries)| (name, len, entries, t)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("segment download task: {e}")),
        };
        match decoded {
            Ok((name, len, entries, t)) => {
                progress(format!(
                    "segment downloaded: {name} ({len} bytes, {})",
                    elapsed(t)
                ));
                segments += 1;
                if tx.send((name, entries, Instant::now())).await.is_err() {
                    break; // the applier stopped (error or target reached)
                }
            }
            Err(e) => {
                download_error = Some(e);
                break;
            }
        }
    }
    for (_, download) in downloading {
        download.abort();
    }
    drop(tx);
    let applied = apply_thread.await.context("restore applier thread")?;
    let (index, deltas_applied, lines, stopped) = match (applied, download_error) {
        (Err(e), _) => return Err(e),
        // The target was reached: what failed after it is not needed.
        (Ok(done @ (_, _, _, true)), _) | (Ok(done), None) => done,
        (Ok(_), Some(e)) => return Err(e),
    };
    for line in lines {
        progress(line);
    }
    if let (false, Some(hole)) = (stopped, &plan.hole) {
        bail!("{hole}");
    }
    if let Some(n) = stop_index {
        ensure!(
            index >= n,
            "the archive's log ends at index {index}, before the requested index {n}"
        );
    }

    let check_dest = dest.to_path_buf();
    let db_bytes = tokio::task::spawn_blocking(move || finish_file(&check_dest))
        .await
        .context("integrity check thread")??;
    progress(format!(
        "restored cluster {} generation {} to index {index}: {db_bytes} bytes, {} segments, {deltas_applied} deltas, {}",
        plan.cluster_id,
        plan.generation,
        segments,
        elapsed(started)
    ));
    Ok(Restored {
        cluster_id: plan.cluster_id.clone(),
        generation: plan.generation,
        index,
        snapshot_index: plan.snapshot.index,
        segments,
        deltas_applied,
        db_bytes,
        most_prefetched_bytes,
    })
}

fn elapsed(since: Instant) -> String {
    format!("elapsed={:.3}s", since.elapsed().as_secs_f64())
}

pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes the snapshot image as the database file (a WAL-mode SQLite file, fsynced): `image`
/// writes it into the file and returns what it read, and the image's size.
fn write_image<T>(
    dest: &Path,
    image: impl FnOnce(&mut std::fs::File) -> anyhow::Result<(T, u64)>,
) -> anyhow::Result<(T, u64)> {
    let context = || format!("write the restored image to {}", dest.display());
    let mut file = std::fs::File::create(dest).with_context(context)?;
    let (read, len) = match image(&mut file) {
        Ok(done) => done,
        Err(e) => {
            // Up to a limit's worth of a refused image: not left behind on the disk.
            drop(file);
            let _ = std::fs::remove_file(dest);
            return Err(e);
        }
    };
    file.sync_all().with_context(context)?;
    if len == 0 {
        // An archive of a database that was never written: make it a valid empty database.
        let conn = rusqlite::Connection::open(dest).with_context(context)?;
        conn.execute_batch(&format!("PRAGMA page_size = {}", crate::db::PAGE_SIZE))
            .with_context(context)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .with_context(context)?;
    }
    Ok((read, len))
}

/// Checkpoints the WAL into the file, checks the database and returns its size.
fn finish_file(dest: &Path) -> anyhow::Result<u64> {
    let conn = rusqlite::Connection::open(dest).context("open the restored database")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .context("checkpoint the restored database")?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .context("check the restored database")?;
    ensure!(
        check == "ok",
        "the restored database fails PRAGMA quick_check: {check}"
    );
    drop(conn);
    let _ = std::fs::remove_file(with_suffix(dest, "-wal"));
    let _ = std::fs::remove_file(with_suffix(dest, "-shm"));
    Ok(std::fs::metadata(dest)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::format::{BodyLimits, ObjectHeader};

    /// An archive in `dir` whose bodies may be at most `limit` bytes.
    fn archive_in(dir: &std::path::Path, limit: u64) -> Archive {
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).expect("a local store");
        Archive::with_store(std::sync::Arc::new(fs), None).with_limits(BodyLimits {
            snapshot: limit,
            segment: limit,
        })
    }

    /// Restores cluster "c"'s latest state into `dest`, which must fail: the error's text.
    async fn failed_restore(archive: &Archive, dest: &std::path::Path) -> String {
        let request = RestoreRequest {
            cluster_id: Some("c".into()),
            generation: None,
            target: RestoreTarget::Latest,
        };
        let plan = plan(archive, &request)
            .await
            .expect("plan")
            .expect("a snapshot to restore");
        let err = execute(archive, &plan, dest, &|_| {})
            .await
            .expect_err("the restore fails");
        format!("{err:#}")
    }

    /// An image of an empty database as cluster "c"'s snapshot at index 1.
    async fn put_snapshot(archive: &Archive, dir: &std::path::Path) {
        let db =
            crate::db::Database::open(dir.join("live.db"), Default::default()).expect("a database");
        let image = dir.join("image.db");
        db.build_image(image.clone()).await.expect("an image");
        let path = archive.snapshot_path("c", 1, 1);
        let object = format::encode_object(
            &Archive::object_name(&path),
            &header(ObjectKind::Snapshot, 1, 1),
            &std::fs::read(&image).expect("the image"),
            None,
        );
        archive.put(&path, object).await.expect("put");
    }

    fn header(kind: ObjectKind, first_index: u64, last_index: u64) -> ObjectHeader {
        ObjectHeader {
            kind,
            first_index,
            last_index,
            time_ms: 5,
            encrypted: false,
        }
    }

    /// A segment of cluster "c" with no-op entries `first..=last` committed at `time_ms`;
    /// its object's size.
    async fn put_segment(archive: &Archive, first: u64, last: u64, time_ms: u64) -> u64 {
        let entries: Vec<SegmentEntry> = (first..=last)
            .map(|index| SegmentEntry {
                index,
                term: index,
                time_ms,
                body: EntryBody::NoOp,
            })
            .collect();
        let path = archive.segment_path("c", 1, first, last);
        let object = format::encode_object(
            &Archive::object_name(&path),
            &header(ObjectKind::Segment, first, last),
            &format::encode_segment(&entries),
            None,
        );
        let size = object.len() as u64;
        archive.put(&path, object).await.expect("put");
        size
    }

    /// A restore to a point in time stops at the first entry past it: a segment after that one
    /// that fails (here one that is not an archive object) is not needed, and does not fail
    /// the restore, though it was downloaded ahead.
    #[tokio::test]
    async fn a_bad_segment_past_the_target_time_does_not_fail_the_restore() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = archive_in(dir.path(), 64 << 20);
        put_snapshot(&archive, dir.path()).await;
        put_segment(&archive, 2, 101, 5).await;
        put_segment(&archive, 102, 201, u64::MAX / 2).await;
        let bad = archive.segment_path("c", 1, 202, 301);
        archive
            .put(&bad, b"not an archive object".to_vec())
            .await
            .expect("put");
        let request = RestoreRequest {
            cluster_id: Some("c".into()),
            generation: None,
            target: RestoreTarget::Time(chrono::Utc::now() + chrono::Duration::minutes(1)),
        };
        let plan = plan(&archive, &request)
            .await
            .expect("plan")
            .expect("a snapshot to restore");
        assert_eq!(plan.segments.len(), 3, "the bad segment is in the plan");
        let restored = execute(&archive, &plan, &dir.path().join("restored.db"), &|_| {})
            .await
            .expect("the restore");
        assert_eq!(restored.index, 101);
    }

    /// The attack: segments may each be as large as the archiver writes them (hundreds of
    /// MiB), and eight were downloaded and decoded ahead at once, gigabytes in all, more than a
    /// pod's memory: a whole-cluster recovery died, and died again on each restart. What is
    /// downloaded ahead is now bounded by bytes: 40 segments, a budget of two and a half.
    #[tokio::test]
    async fn segments_downloaded_ahead_stay_within_their_byte_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = archive_in(dir.path(), 64 << 20);
        put_snapshot(&archive, dir.path()).await;
        let mut sizes = Vec::new();
        for segment in 0..40u64 {
            let (first, last) = (2 + segment * 100, 101 + segment * 100);
            sizes.push(put_segment(&archive, first, last, 5).await);
        }
        let largest = sizes.iter().copied().max().unwrap_or(0);
        let request = RestoreRequest {
            cluster_id: Some("c".into()),
            generation: None,
            target: RestoreTarget::Latest,
        };
        let mut plan = plan(&archive, &request)
            .await
            .expect("plan")
            .expect("a snapshot to restore");
        assert_eq!(plan.prefetch_bytes, PREFETCH_BYTES);
        plan.prefetch_bytes = largest * 5 / 2;
        let restored = execute(&archive, &plan, &dir.path().join("restored.db"), &|_| {})
            .await
            .expect("the restore");
        assert_eq!((restored.index, restored.segments), (4001, 40));
        assert!(
            restored.most_prefetched_bytes >= largest
                && restored.most_prefetched_bytes <= plan.prefetch_bytes,
            "{} bytes were downloaded ahead at once, against a budget of {} (segments of {sizes:?} bytes)",
            restored.most_prefetched_bytes,
            plan.prefetch_bytes
        );
    }

    /// An object larger than any of its kind within the limits (here 3 MiB named as a snapshot
    /// under a 1 MiB limit) is refused by its listed size, before it is downloaded, with an
    /// error naming it.
    #[tokio::test]
    async fn an_object_too_large_for_its_kind_is_refused_before_downloading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = archive_in(dir.path(), 1 << 20);
        let path = archive.snapshot_path("c", 1, 42);
        archive.put(&path, vec![7u8; 3 << 20]).await.expect("put");
        let dest = dir.path().join("restored.db");
        let text = failed_restore(&archive, &dest).await;
        for part in [
            path.as_ref(),
            "3145728 bytes",
            "refused without downloading",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        assert!(!dest.exists(), "no partial image left");
        let small = archive.segment_path("c", 1, 43, 44);
        archive.put(&small, vec![7u8; 1000]).await.expect("put");
        let read = archive
            .get(&small, ObjectKind::Segment)
            .await
            .map(|b| b.len());
        assert_eq!(
            read.ok(),
            Some(1000),
            "an object within the bound is read whole"
        );
    }

    /// A snapshot object that decompresses far past the limit fails the restore with an error
    /// naming the object and the limit, and leaves no partial file behind.
    #[tokio::test]
    async fn a_decompression_bomb_fails_the_restore_naming_the_object_and_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = archive_in(dir.path(), 1 << 20);
        let path = archive.snapshot_path("c", 1, 42);
        let header = ObjectHeader {
            kind: ObjectKind::Snapshot,
            first_index: 42,
            last_index: 42,
            time_ms: 5,
            encrypted: false,
        };
        for declare in [true, false] {
            let bomb =
                format::zeros_object(&Archive::object_name(&path), &header, 64 << 20, declare);
            archive.put(&path, bomb).await.expect("put");
            let dest = dir.path().join("restored.db");
            let text = failed_restore(&archive, &dest).await;
            for part in [path.as_ref(), "1048576 bytes", "max_snapshot_bytes"] {
                assert!(
                    text.contains(part),
                    "declare {declare}: {part:?} missing from: {text}"
                );
            }
            assert!(!dest.exists(), "declare {declare}: no partial image left");
        }
    }
}
