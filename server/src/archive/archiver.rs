//! The archiver: on the leader, ships every committed log entry to the archive in segments
//! and uploads periodic snapshots; on every node, keeps the Raft log from being purged past
//! what the archive may still need.
//!
//! A leader never trusts what it remembers: when it gains leadership it lists the archive and
//! resumes after the highest index a snapshot plus continuous segments reach. If the entries
//! after that are no longer in its log (it was a follower that purged them, or the archive was
//! down for longer than `max_held_entries`), it uploads a fresh snapshot instead and continues
//! from there. Upload errors are retried with exponential backoff; SQL keeps being served, and
//! the lag shows in `raftlite status`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use openraft::EntryPayload;

use super::format::{self, EntryBody, ObjectHeader, ObjectKind, SegmentEntry};
use super::store::Archive;
use crate::node::Node;
use crate::raft::types::{Command, SnapshotMeta};

/// How the archiver runs (from the node's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiverSettings {
    /// Time between full snapshots.
    pub snapshot_interval: Duration,
    /// Snapshots older than this are deleted (the newest one always stays), with the segments
    /// before the oldest snapshot kept, and older generations that ended before it.
    pub retention: Duration,
    /// How long new entries wait to be batched into one segment.
    pub flush: Duration,
    /// The most log entries a node keeps on disk for the archive beyond what Raft needs.
    pub max_held_entries: u64,
}

/// Largest segment: entries and bytes.
const SEGMENT_MAX_ENTRIES: u64 = 4096;
const SEGMENT_MAX_BYTES: usize = 64 << 20;
/// The largest segment body the archiver writes: it stops adding entries once their deltas
/// reach `SEGMENT_MAX_BYTES`, so the last one can take it over by one entry (which fits a peer
/// message, or no follower would hold it), plus the entries' headers and the count.
pub const SEGMENT_BODY_LIMIT: u64 = (SEGMENT_MAX_BYTES + crate::peer::PEER_MESSAGE_LIMIT) as u64
    + SEGMENT_MAX_ENTRIES * format::SEGMENT_ENTRY_HEADER
    + 4;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What `raftlite status` shows about the archive, as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveStatus {
    /// The archive URL; empty when archiving is off.
    pub url: String,
    /// True on the leader, which is responsible for uploading (even while uploads fail).
    pub uploading: bool,
    pub generation: u64,
    /// Highest log index the archive holds without a gap (as this node last saw it).
    pub archived_index: u64,
    /// Index of the newest snapshot in the archive.
    pub snapshot_index: u64,
    /// Committed entries not archived yet (leader only).
    pub lag_entries: u64,
    /// Age of the oldest committed entry not archived yet, in ms (leader only).
    pub lag_ms: u64,
    /// The last upload error, empty after a success.
    pub last_error: String,
}

impl ArchiveStatus {
    /// The lag behind `applied`, the oldest entry not archived having been applied at
    /// `oldest_ms`.
    fn note_lag(&mut self, applied: u64, oldest_ms: u64) {
        self.lag_entries = applied.saturating_sub(self.archived_index);
        self.lag_ms = if self.lag_entries > 0 {
            now_ms().saturating_sub(oldest_ms)
        } else {
            0
        };
    }
}

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ArchiveStatusHandle(Arc<Mutex<ArchiveStatus>>);

impl ArchiveStatusHandle {
    pub fn get(&self) -> ArchiveStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records (or, empty, clears) the archive's last error.
    pub fn set_error(&self, error: String) {
        self.update(|s| s.last_error = error);
    }

    fn update(&self, f: impl FnOnce(&mut ArchiveStatus)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// When each applied index was first seen committed, as (index, ms) steps.
#[derive(Default)]
struct CommitTimes {
    steps: VecDeque<(u64, u64)>,
}

impl CommitTimes {
    fn observe(&mut self, applied: u64) {
        if self.steps.back().is_none_or(|(i, _)| applied > *i) {
            let ms = now_ms().max(self.steps.back().map(|s| s.1).unwrap_or(0));
            self.steps.push_back((applied, ms));
        }
    }

    /// The time of `index`: that of the first step reaching it; entries seen before this node
    /// started observing get the oldest known time, or now.
    fn time_of(&self, index: u64) -> u64 {
        self.steps
            .iter()
            .find(|(i, _)| *i >= index)
            .map(|s| s.1)
            .unwrap_or_else(now_ms)
    }

    fn forget_through(&mut self, index: u64) {
        while self.steps.front().is_some_and(|(i, _)| *i <= index) {
            self.steps.pop_front();
        }
    }
}

/// Runs for the life of the node.
pub async fn run(node: Node, archive: Archive, settings: ArchiverSettings) {
    let status = node.archive_status();
    status.update(|s| s.url = archive.url().to_string());
    let mut backoff = BACKOFF_MIN;
    loop {
        if node.is_leader() && node.identity().get().is_some() {
            match lead(&node, &archive, &settings).await {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) => {
                    tracing::warn!(error = %crate::error_text(&e), retry_in_ms = backoff.as_millis() as u64, "archive: upload failed");
                    status.update(|s| s.last_error = crate::error_text(&e));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        }
        status.update(|s| {
            s.uploading = false;
            s.lag_entries = 0;
            s.lag_ms = 0;
        });
        // Followers keep `max_held_entries` of log so that, once leader, they can continue
        // the archive where the previous leader left off.
        let applied = node.applied_index();
        node.purge_floor()
            .set(applied.saturating_sub(settings.max_held_entries));
        // A clone of openraft's receiver inherits a "seen" version that is never updated:
        // mark the current metrics seen, or `changed()` returns at once and the loop spins.
        // At most once per `METRICS_GAP`: the metrics change several times per write.
        let mut metrics = node.raft().metrics();
        metrics.borrow_and_update();
        let _ = tokio::time::timeout(Duration::from_secs(1), metrics.changed()).await;
        tokio::time::sleep(crate::node::METRICS_GAP).await;
    }
}

/// Leader state, rebuilt from the archive at every leadership.
struct Session {
    cluster: String,
    generation: u64,
    /// Highest index reached without a gap; `None` until the generation has a snapshot.
    tip: Option<u64>,
    snapshot_index: u64,
    last_snapshot: Option<Instant>,
    /// Objects the archiver leaves out because they claim entries past the leader's log
    /// (see [`discover`]).
    stray: Vec<String>,
    /// What `raftlite status` shows as the archive's error while all is well otherwise: the
    /// stray objects, if any.
    standing_error: String,
}

/// One leadership: discover, then ship until leadership ends. Returns `Ok` when this node is
/// no longer the leader; an error to retry after a backoff.
async fn lead(node: &Node, archive: &Archive, settings: &ArchiverSettings) -> anyhow::Result<()> {
    let status = node.archive_status();
    let cluster = node
        .identity()
        .get()
        .context("the node has no cluster id yet")?;
    // This node is responsible from now on, whether or not the archive answers.
    status.update(|s| s.uploading = true);
    let log_end = node.raft().metrics().borrow().last_log_index.unwrap_or(0);
    let mut session = discover(archive, &cluster, log_end).await?;
    tracing::info!(
        generation = session.generation,
        archived_index = ?session.tip,
        "archive: leader resumes from what the archive holds"
    );
    status.update(|s| {
        s.uploading = true;
        s.snapshot_index = session.snapshot_index;
        s.generation = session.generation;
        s.archived_index = session.tip.unwrap_or(0);
        s.last_error.clone_from(&session.standing_error);
    });
    let mut applied_rx = node.applied_watch();
    let mut times = CommitTimes::default();
    times.observe(*applied_rx.borrow());
    loop {
        if !node.is_leader() {
            status.update(|s| s.uploading = false);
            return Ok(());
        }
        // Marked seen here, so the wait at the bottom of the loop sleeps until the next apply.
        let applied = *applied_rx.borrow_and_update();
        times.observe(applied);
        let tip = session.tip.unwrap_or(0);
        node.purge_floor()
            .set(tip.max(applied.saturating_sub(settings.max_held_entries)));
        status.update(|s| {
            s.archived_index = tip;
            s.note_lag(applied, times.time_of(tip + 1));
        });

        let snapshot_due = session.tip.is_none()
            || applied.saturating_sub(tip) > settings.max_held_entries
            || session
                .last_snapshot
                .is_none_or(|t| t.elapsed() >= settings.snapshot_interval);
        if applied > tip && session.tip.is_some() && !snapshot_due {
            // Let a burst of commits gather into one segment.
            tokio::time::sleep(settings.flush).await;
            let applied = *applied_rx.borrow();
            times.observe(applied);
            let upload = ship_segment(node, archive, &session, &times, tip, applied);
            match keeping_lag(upload, &status, &applied_rx, times.time_of(tip + 1)).await? {
                Some(last) => {
                    session.tip = Some(last);
                    times.forget_through(last.saturating_sub(1));
                    status.update(|s| {
                        s.archived_index = last;
                        s.last_error.clone_from(&session.standing_error);
                    });
                }
                None => {
                    tracing::warn!(
                        from = tip + 1,
                        "archive: the log no longer holds the entries after the archive's end; uploading a fresh snapshot"
                    );
                    session.tip = None;
                }
            }
            continue;
        }
        if snapshot_due {
            if session.tip.is_some() && applied > tip && applied - tip <= settings.max_held_entries
            {
                // Segments first, so the older snapshot's chain stays unbroken.
                let upload = ship_segment(node, archive, &session, &times, tip, applied);
                if let Some(last) =
                    keeping_lag(upload, &status, &applied_rx, times.time_of(tip + 1)).await?
                {
                    session.tip = Some(last);
                    continue;
                }
            }
            if session.tip.is_some() && applied <= session.snapshot_index {
                // Nothing applied since the archived snapshot: the same snapshot again would
                // overwrite it, moving its time forward past the restore points it serves.
                session.last_snapshot = Some(Instant::now());
                continue;
            }
            let upload = ship_snapshot(node, archive, &session);
            let index = keeping_lag(upload, &status, &applied_rx, times.time_of(tip + 1)).await?;
            session.last_snapshot = Some(Instant::now());
            session.snapshot_index = index;
            status.update(|s| s.snapshot_index = index);
            // A snapshot past the segments restarts the chain from it (the entries between
            // are gone from the log); otherwise the segments continue where they were.
            if session.tip.is_none_or(|t| index > t) {
                session.tip = Some(index);
            }
            status.update(|s| {
                s.archived_index = session.tip.unwrap_or(0);
                s.last_error.clone_from(&session.standing_error);
            });
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(settings.retention).unwrap_or_default();
            let log_end = node.raft().metrics().borrow().last_log_index.unwrap_or(0);
            let retained = apply_retention(
                archive,
                &session.cluster,
                session.generation,
                cutoff,
                log_end,
            );
            match retained.await {
                // Strays removed (or new ones) show from now on, not at the next leadership.
                Ok(stray) if stray != session.stray => {
                    session.standing_error = stray_error(&stray, log_end);
                    session.stray = stray;
                    status.update(|s| s.last_error.clone_from(&session.standing_error));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::error_text(&e), "archive: retention cleanup failed");
                }
            }
            continue;
        }
        // Nothing to do: wait for a commit, or a leadership change (checked every second).
        let _ = tokio::time::timeout(Duration::from_secs(1), applied_rx.changed()).await;
    }
}

/// Runs an upload, keeping the lag in `status` current while it runs: an upload that hangs
/// (S3 not answering) shows as a growing lag, which is what an RPO alert watches, rather than
/// as the lag seen when it started. `oldest_ms`: when the oldest entry not archived yet was
/// applied.
async fn keeping_lag<T>(
    upload: impl std::future::Future<Output = T>,
    status: &ArchiveStatusHandle,
    applied: &tokio::sync::watch::Receiver<u64>,
    oldest_ms: u64,
) -> T {
    tokio::pin!(upload);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            done = &mut upload => return done,
            _ = tick.tick() => {
                let applied = *applied.borrow();
                status.update(|s| s.note_lag(applied, oldest_ms));
            }
        }
    }
}

/// Lists the archive: the generation to write and where it ends.
///
/// Objects that claim entries past `log_end` (the leader's last log index; 0: unknown, none
/// are checked) are left out: taken for the archive's end, one such stray object stopped
/// archiving for good while the status showed no lag. They are left in place (the archiver
/// deletes nothing it did not write) and named in an error line and in the status, since a
/// restore that reaches one fails on it.
async fn discover(archive: &Archive, cluster: &str, log_end: u64) -> anyhow::Result<Session> {
    let generations = archive.generations(cluster).await?;
    let generation = match generations.last() {
        Some(g) => *g,
        None => {
            archive
                .put(
                    &archive.started_path(cluster, 1),
                    b"raftlite archive generation\n".to_vec(),
                )
                .await?;
            1
        }
    };
    let mut listing = archive.list_generation(cluster, generation).await?;
    let stray = listing.take_past(log_end);
    let standing_error = stray_error(&stray, log_end);
    Ok(Session {
        cluster: cluster.to_owned(),
        generation,
        tip: listing.tip(),
        snapshot_index: listing.snapshots.last().map(|s| s.index).unwrap_or(0),
        last_snapshot: listing.snapshots.last().and_then(|s| {
            let age = chrono::Utc::now()
                .signed_duration_since(s.object.last_modified)
                .to_std()
                .unwrap_or_default();
            Instant::now().checked_sub(age)
        }),
        stray,
        standing_error,
    })
}

/// The error that names the `stray` objects (none: no error), logged when there are some.
fn stray_error(stray: &[String], log_end: u64) -> String {
    if stray.is_empty() {
        return String::new();
    }
    let text = format!(
        "archive objects claim entries past this leader's log (it ends at index {log_end}): \
         no leader of this cluster wrote them, unless this node was deposed without hearing of \
         it; archiving goes on without them, but a restore that reaches one fails on it or \
         restores it: check them, then remove them ({})",
        stray.join(", ")
    );
    tracing::error!("archive: {text}");
    text
}

/// Uploads entries `tip+1 ..= applied` (capped in size). `Ok(None)` when the log no longer
/// holds `tip + 1`.
async fn ship_segment(
    node: &Node,
    archive: &Archive,
    session: &Session,
    times: &CommitTimes,
    tip: u64,
    applied: u64,
) -> anyhow::Result<Option<u64>> {
    let end = applied.min(tip + SEGMENT_MAX_ENTRIES);
    let raw = node
        .log_store()
        .read_entries(tip + 1..end + 1)
        .await
        .map_err(|e| anyhow::anyhow!("read log entries {}..={end}: {e}", tip + 1))?;
    if raw.first().map(|e| e.log_id.index) != Some(tip + 1) {
        return Ok(None);
    }
    let mut entries = Vec::with_capacity(raw.len());
    let mut bytes = 0;
    for e in raw {
        let expected = tip + 1 + entries.len() as u64;
        if e.log_id.index != expected {
            bail!(
                "the log has entry {} where {expected} was expected",
                e.log_id.index
            );
        }
        let body = match e.payload {
            EntryPayload::Normal(Command::Delta(b)) => EntryBody::Delta(b),
            EntryPayload::Blank | EntryPayload::Membership(_) => EntryBody::NoOp,
        };
        bytes += match &body {
            EntryBody::Delta(b) => b.len(),
            EntryBody::NoOp => 0,
        };
        entries.push(SegmentEntry {
            index: e.log_id.index,
            term: e.log_id.leader_id.term,
            time_ms: times.time_of(e.log_id.index),
            body,
        });
        if bytes >= SEGMENT_MAX_BYTES {
            break;
        }
    }
    let (first, last) = (tip + 1, tip + entries.len() as u64);
    let header = ObjectHeader {
        kind: ObjectKind::Segment,
        first_index: first,
        last_index: last,
        time_ms: entries.last().map(|e| e.time_ms).unwrap_or(0),
        encrypted: archive.key().is_some(),
    };
    let path = archive.segment_path(&session.cluster, session.generation, first, last);
    let name = Archive::object_name(&path);
    let key = archive.key().cloned();
    let object = tokio::task::spawn_blocking(move || {
        format::encode_object(
            &name,
            &header,
            &format::encode_segment(&entries),
            key.as_ref(),
        )
    })
    .await
    .context("segment encoder thread")?;
    let started = Instant::now();
    let size = object.len();
    archive.put(&path, object).await?;
    tracing::debug!(
        first,
        last,
        size,
        upload_ms = started.elapsed().as_millis() as u64,
        "archive: segment uploaded"
    );
    Ok(Some(last))
}

/// Takes a Raft snapshot now and uploads its image. Returns its index.
async fn ship_snapshot(node: &Node, archive: &Archive, session: &Session) -> anyhow::Result<u64> {
    let started = Instant::now();
    node.trigger_snapshot()
        .await
        .map_err(|e| anyhow::anyhow!("take a snapshot: {e}"))?;
    let dir = node.config().data_dir.join("snapshots");
    let (meta, image) = tokio::task::spawn_blocking(move || read_newest_snapshot(&dir))
        .await
        .context("snapshot reader thread")??;
    let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
    let header = ObjectHeader {
        kind: ObjectKind::Snapshot,
        first_index: index,
        last_index: index,
        time_ms: now_ms(),
        encrypted: archive.key().is_some(),
    };
    let path = archive.snapshot_path(&session.cluster, session.generation, index);
    let name = Archive::object_name(&path);
    let key = archive.key().cloned();
    let image_len = image.len();
    let object = tokio::task::spawn_blocking(move || {
        format::encode_object(&name, &header, &image, key.as_ref())
    })
    .await
    .context("snapshot encoder thread")?;
    let size = object.len();
    archive.put(&path, object).await?;
    tracing::info!(
        index,
        generation = session.generation,
        image_bytes = image_len,
        object_bytes = size,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "archive: snapshot uploaded"
    );
    Ok(index)
}

/// The newest complete Raft snapshot on disk: its metadata and image. The image file is opened
/// before it is read, so a concurrent cleanup of older snapshots cannot cut it short.
fn read_newest_snapshot(dir: &std::path::Path) -> anyhow::Result<(SnapshotMeta, Vec<u8>)> {
    use std::io::Read;
    let mut best: Option<SnapshotMeta> = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("meta") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(meta) = crate::raft::codec::decode::<SnapshotMeta>(&bytes) else {
            continue;
        };
        if best
            .as_ref()
            .is_none_or(|b| meta.last_log_id > b.last_log_id)
        {
            best = Some(meta);
        }
    }
    let meta = best.context("no snapshot on disk")?;
    let image_path = dir.join(format!("{}.db", meta.snapshot_id));
    let mut file = std::fs::File::open(&image_path)
        .with_context(|| format!("open snapshot image {}", image_path.display()))?;
    let mut image = Vec::new();
    file.read_to_end(&mut image)?;
    Ok((meta, image))
}

/// Deletes what no restore point within the retention needs (`cutoff`: now minus it). In the
/// current generation: snapshots older than the cutoff (never the newest) and the segments
/// that end before the oldest snapshot kept. Of older generations (each recovery from a total
/// loss starts one): each whose successor began before the cutoff, since every time it covers
/// ended when its successor began. Runs after a snapshot upload, so the current generation
/// always keeps one. Objects claiming entries past `log_end` (0: unknown) are not weighed:
/// their names are returned.
async fn apply_retention(
    archive: &Archive,
    cluster: &str,
    generation: u64,
    cutoff: chrono::DateTime<chrono::Utc>,
    log_end: u64,
) -> anyhow::Result<Vec<String>> {
    let mut listing = archive.list_generation(cluster, generation).await?;
    // Objects past the log are not this cluster's (see `discover`): none of them decides
    // what is old.
    let stray = listing.take_past(log_end);
    let Some(newest) = listing.snapshots.last() else {
        return Ok(stray);
    };
    let expired: Vec<_> = listing
        .snapshots
        .iter()
        .filter(|s| s.index < newest.index && s.object.last_modified < cutoff)
        .collect();
    let oldest_kept = listing
        .snapshots
        .iter()
        .find(|s| !expired.contains(s))
        .map(|s| s.index)
        .unwrap_or(newest.index);
    for s in &expired {
        archive.delete(&archive.path_of(&s.object)).await?;
    }
    let mut deleted_segments = 0;
    for s in listing.segments.iter().filter(|s| s.last <= oldest_kept) {
        archive.delete(&archive.path_of(&s.object)).await?;
        deleted_segments += 1;
    }
    if !expired.is_empty() || deleted_segments > 0 {
        tracing::info!(
            snapshots = expired.len(),
            segments = deleted_segments,
            oldest_kept,
            "archive: retention removed old objects"
        );
    }
    let generations = archive.generations(cluster).await?;
    for pair in generations.windows(2) {
        let (old, next) = (pair[0], pair[1]);
        if next > generation {
            break;
        }
        // Without its successor's start time, nobody can tell which times it still serves.
        match archive.generation_started(cluster, next).await? {
            Some(began) if began < cutoff => {}
            _ => break,
        }
        let objects = archive.delete_generation(cluster, old).await?;
        tracing::info!(
            generation = old,
            objects,
            "archive: retention removed a generation that ended before the retention window"
        );
    }
    Ok(stray)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    async fn generation_of(
        archive: &Archive,
        cluster: &str,
        g: u64,
    ) -> (Vec<u64>, Vec<(u64, u64)>) {
        let listing = archive
            .list_generation(cluster, g)
            .await
            .expect("list a generation");
        (
            listing.snapshots.iter().map(|s| s.index).collect(),
            listing.segments.iter().map(|s| (s.first, s.last)).collect(),
        )
    }

    /// Three generations of one cluster, on a real directory: retention keeps what a restore
    /// within the window needs, and drops a generation only once its successor began before
    /// the window.
    #[tokio::test]
    async fn retention_keeps_the_window_and_drops_generations_that_ended_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path())
            .expect("a local store")
            .with_automatic_cleanup(true);
        let archive = Archive::with_store(Arc::new(fs), None);
        // Per generation: its snapshots' indexes, its segments' ranges.
        type Objects = (u64, &'static [u64], &'static [(u64, u64)]);
        let generations: [Objects; 3] = [
            (1, &[5], &[(1, 5), (6, 10)]),
            (2, &[3, 8], &[(1, 3), (4, 8), (9, 9)]),
            (3, &[2, 9], &[(1, 2), (3, 9), (10, 12)]),
        ];
        for cluster in ["a", "b"] {
            for (g, snapshots, segments) in generations {
                // Cluster b's generation 2 lost its marker: nobody can tell when it began.
                if cluster == "a" || g != 2 {
                    let started = archive.started_path(cluster, g);
                    archive.put(&started, b"x".to_vec()).await.expect("put");
                }
                for &i in snapshots {
                    let path = archive.snapshot_path(cluster, g, i);
                    archive.put(&path, b"x".to_vec()).await.expect("put");
                }
                for &(first, last) in segments {
                    let path = archive.segment_path(cluster, g, first, last);
                    archive.put(&path, b"x".to_vec()).await.expect("put");
                }
            }
        }
        let now = Utc::now();
        let days = |d: i64| chrono::Duration::days(d);
        for (g, began) in [(2, now - days(3)), (3, now - days(1))] {
            let marker = dir.path().join(archive.started_path("a", g).as_ref());
            std::fs::File::options()
                .write(true)
                .open(&marker)
                .and_then(|f| f.set_modified(began.into()))
                .expect("date the marker");
        }

        // Two days: generation 2 began before them, so generation 1 serves no time in them;
        // generation 3 began within them, so generation 2 still does.
        apply_retention(&archive, "a", 3, now - days(2), 0)
            .await
            .expect("retention");
        assert_eq!(archive.generations("a").await.expect("list"), vec![2, 3]);
        assert_eq!(
            generation_of(&archive, "a", 2).await,
            (vec![3, 8], vec![(1, 3), (4, 8), (9, 9)])
        );
        assert_eq!(
            generation_of(&archive, "a", 3).await,
            (vec![2, 9], vec![(3, 9), (10, 12)]),
            "every snapshot of the current generation is within the window (the log before \
             the oldest is not needed)"
        );

        // A window that ends in the future: of the current generation, only the newest
        // snapshot and the log after it stay; generation 2 ended before the window.
        apply_retention(&archive, "a", 3, now + chrono::Duration::hours(1), 0)
            .await
            .expect("retention");
        assert_eq!(archive.generations("a").await.expect("list"), vec![3]);
        assert_eq!(
            generation_of(&archive, "a", 3).await,
            (vec![9], vec![(10, 12)])
        );
        assert!(
            !dir.path().join("a/generations/00000002").exists(),
            "no empty directories are left behind"
        );

        // Without generation 2's start time, generation 1 and 2 stay.
        apply_retention(&archive, "b", 3, now + chrono::Duration::hours(1), 0)
            .await
            .expect("retention");
        assert_eq!(archive.generations("b").await.expect("list"), vec![1, 2, 3]);
        assert_eq!(generation_of(&archive, "b", 1).await.0, vec![5]);
    }
}
