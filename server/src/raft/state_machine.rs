//! `RaftStateMachine`: the state machine IS the SQLite database.
//!
//! Applying an entry writes its page delta through the database's dedicated applier
//! connection. A snapshot is a consistent image of the database file (all pages read inside
//! one read transaction), kept as a plain SQLite file under `snapshots/` and streamed to
//! followers in chunks; installing one overwrites the database through the same page-write
//! path, so open readers keep their snapshot.
//!
//! ## Key decisions and trade-offs
//! - `last_applied` and the membership are stored in redb *lazily* after applies (no fsync
//!   on the commit path) and durably when a snapshot is built or installed. A lazy write
//!   reaches the file only with redb's next durable commit (a snapshot, a vote, a purge) or a
//!   clean close (see `store::Sync::Lazy`), so after a process crash or a power loss the
//!   recorded `last_applied` is behind the database, by up to every entry since the last
//!   snapshot; openraft then re-applies that suffix of the log, which is still there (a
//!   snapshot is recorded durably before the log is purged up to it). That is safe because
//!   every delta carries the database version it was captured on, and the applier skips a
//!   delta whose version the database has already passed.
//! - The image is built while the state-machine task waits, so it matches `last_applied`
//!   exactly. Applies pause for the copy (about a second per 100 MB here); they never see a
//!   half-built image.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError,
};
use tokio::sync::watch;

use super::store::{encode, LazyClock, RaftStore, Sync};
use super::types::{
    ApplyResult, Command, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::db::{ApplyOutcome, Database, PageDelta};

const KEY_STATE: &str = "sm_state";
/// The database's tag at the recorded state, with that state (`RecordedTag`), written in the
/// same transaction: a key of its own, so `AppliedState`'s encoding stays readable by the
/// releases before it, and a release that does not write it leaves one that no longer matches.
const KEY_STATE_TAG: &str = "sm_state_tag";

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct RecordedTag {
    last_applied: Option<LogId>,
    db_version: u64,
    tag: u64,
}

/// What the state machine records in redb after applying: the last applied log id, the
/// membership, and the database version that goes with them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    db_version: u64,
}

pub struct StateMachine {
    db: Arc<Database>,
    store: RaftStore,
    snapshot_dir: PathBuf,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Database version after the last applied entry.
    db_version: u64,
    /// The database's tag after the last applied entry (see `db::delta`).
    db_tag: u64,
    /// Path of the file `begin_receiving_snapshot` handed out.
    receiving: Option<PathBuf>,
    applied_tx: watch::Sender<u64>,
    proposals: Proposals,
    /// Held while the snapshot directory changes (a snapshot built or installed: new meta
    /// file, the others removed) and while the current snapshot is looked up and opened.
    /// openraft runs the builder on a task of its own, concurrently with
    /// `get_current_snapshot`; without it the lookup could find a snapshot the builder is
    /// removing (ENOENT on open) or none at all, and either is a storage error that stops
    /// raft.
    snapshot_files: SnapshotFilesLock,
    /// When the applied state was last written lazily (after applies; see
    /// [`LAZY_EVERY`](super::store::LAZY_EVERY)).
    state_written: LazyClock,
}

type SnapshotFilesLock = Arc<std::sync::Mutex<()>>;

fn lock_files(lock: &SnapshotFilesLock) -> std::sync::MutexGuard<'_, ()> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
}

/// This leader's proposals in flight, by their delta's tag: the span their apply joins
/// (tracing), and who waits to hear that the entry is committed. Only a leader registers; a
/// follower's applies have nobody waiting. By tag, not by base version: a delta of another
/// leader on the same version (after this one's was lost) must not answer for it.
///
/// A proposal hears of its commit from the state machine as it applies the entry, or earlier
/// from [`Proposals::commit_early`] (early replication saw a quorum hold it): whichever comes
/// first runs its notice, once.
#[derive(Clone, Default)]
pub struct Proposals(Arc<std::sync::Mutex<Registry>>);

#[derive(Default)]
struct Registry {
    by_tag: std::collections::HashMap<u64, Proposal>,
    /// Log index of each registered proposal the log store took, not yet applied.
    at_index: std::collections::BTreeMap<u64, u64>,
    /// The state machine after its last applied entry: (log index, database version, tag).
    applied: (u64, u64, u64),
}

struct Proposal {
    span: tracing::Span,
    committed: Option<Committed>,
    /// The state the delta applies to (see `PageDelta::applies_to`).
    base_version: u64,
    parent_tag: u64,
}

/// What a proposal's commit notice runs, on the state machine's task (or early replication's):
/// it must not block.
pub type Committed = Box<dyn FnOnce(u64) + Send>;

impl Proposals {
    /// Registers the proposal of the delta tagged `tag`, captured on `base_version` (and on top
    /// of `parent_tag`, when not 0). `committed` runs with its log index when the entry is
    /// committed and will be applied: the write path answers its clients then, without waiting
    /// for the apply (durability is the quorum's: it is on their disks), and without a hop to
    /// another task first. It never runs when the delta turns out stale (a leadership change
    /// raced it).
    pub fn register(
        &self,
        tag: u64,
        base_version: u64,
        parent_tag: u64,
        span: tracing::Span,
        committed: Committed,
    ) {
        self.lock().by_tag.insert(
            tag,
            Proposal {
                span,
                committed: Some(committed),
                base_version,
                parent_tag,
            },
        );
    }

    pub fn forget(&self, tag: u64) {
        let mut registry = self.lock();
        registry.by_tag.remove(&tag);
        registry.at_index.retain(|_, t| *t != tag);
    }

    /// The log from `index` on was replaced (truncated, or overwritten by entries appended
    /// there): a proposal recorded at such an index is no longer there, and early commit must
    /// never find it by that index. (openraft answers its proposer with ForwardToLeader.)
    pub fn replaced_from(&self, index: u64) {
        drop(self.lock().at_index.split_off(&index));
    }

    /// The log store took the leader's entry `index`, the delta tagged `tag`.
    pub fn appended(&self, index: u64, tag: u64) {
        let mut registry = self.lock();
        if registry.by_tag.contains_key(&tag) {
            registry.at_index.insert(index, tag);
        }
    }

    /// A quorum holds every entry up to `upto` (early replication's count): runs the notice
    /// of each proposal among them that will be applied, in log order, as long as that is
    /// certain — the entries before it are applied or are such proposals themselves, so the
    /// state it will be applied to is known now. Anything less certain (an entry that is not
    /// a registered proposal, such as a membership change) stops here and leaves the rest to
    /// the state machine's own notice.
    /// Returns how many it answered.
    pub fn commit_early(&self, upto: u64) -> usize {
        let mut ready = Vec::new();
        {
            let mut registry = self.lock();
            let Registry {
                by_tag,
                at_index,
                applied,
            } = &mut *registry;
            let (mut index, mut version, mut tag) = *applied;
            while index < upto {
                let next = index + 1;
                let Some(&next_tag) = at_index.get(&next) else {
                    break;
                };
                let Some(p) = by_tag.get_mut(&next_tag) else {
                    break;
                };
                if !crate::db::follows(p.base_version, p.parent_tag, version, tag) {
                    break;
                }
                if let Some(committed) = p.committed.take() {
                    ready.push((committed, next));
                }
                (index, version, tag) = (next, p.base_version + 1, next_tag);
            }
        }
        let answered = ready.len();
        for (committed, index) in ready {
            committed(index);
        }
        answered
    }

    /// The state machine applied entry `index` and is now at `version` holding `tag`. A
    /// proposal at or before it that was answered is done (one whose entry a snapshot
    /// installed without applying it; the others the apply removed).
    fn applied(&self, index: u64, version: u64, tag: u64) {
        let mut registry = self.lock();
        registry.applied = (index, version, tag);
        while let Some(entry) = registry.at_index.first_entry() {
            if *entry.key() > index {
                break;
            }
            let tag = entry.remove();
            if registry
                .by_tag
                .get(&tag)
                .is_some_and(|p| p.committed.is_none())
            {
                registry.by_tag.remove(&tag);
            }
        }
    }

    /// The proposal's span, and its commit notice when the delta will be applied; the
    /// proposal is done either way. (Its task, answered early, keeps it registered until
    /// now so that the apply joins its trace.)
    fn committing(&self, tag: u64, will_apply: bool) -> (Option<tracing::Span>, Option<Committed>) {
        match self.lock().by_tag.remove(&tag) {
            None => (None, None),
            Some(mut p) => (
                Some(p.span),
                if will_apply { p.committed.take() } else { None },
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snap_err(meta: Option<&SnapshotMeta>, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::error(e.to_string()))
        .into()
}

impl StateMachine {
    /// Where the write path registers its proposals (see [`Proposals`]).
    pub fn proposals(&self) -> Proposals {
        self.proposals.clone()
    }

    /// Opens the state machine over `db`. `applied_tx` publishes the applied log index for reads
    /// that wait for it.
    ///
    /// Reconciles the recorded state with the database. The recorded state is that of redb's
    /// last durable commit (the lazy writes after it are lost by a crash), so it is usually
    /// behind the database: the log is replayed from it and the deltas the database already
    /// holds are skipped by their version. Only a power loss can leave the database *older*
    /// than the recorded state (applies run with `synchronous=NORMAL`; a process crash loses
    /// none of them): then the newest snapshot is installed again and the log is replayed from
    /// it (it is never purged past a snapshot).
    pub async fn open(
        db: Arc<Database>,
        store: RaftStore,
        snapshot_dir: PathBuf,
        applied_tx: watch::Sender<u64>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(&snapshot_dir)?;
        let recorded: AppliedState = store.read_meta(KEY_STATE)?.unwrap_or_default();
        let (db_version, db_tag) = db.state().await.context("read the database version")?;
        let mut sm = Self {
            db,
            store,
            snapshot_dir,
            last_applied: recorded.last_applied,
            membership: recorded.membership,
            db_version,
            db_tag,
            receiving: None,
            applied_tx,
            proposals: Proposals::default(),
            snapshot_files: SnapshotFilesLock::default(),
            state_written: LazyClock::default(),
        };
        if db_version < recorded.db_version {
            tracing::warn!(
                database = db_version,
                recorded = recorded.db_version,
                "the database is older than the recorded applied state (power loss?); replaying from the last snapshot"
            );
            sm.rewind_to_snapshot().await?;
        }
        sm.applied_tx
            .send_replace(sm.last_applied.map(|l| l.index).unwrap_or(0));
        sm.publish_applied();
        Ok(sm)
    }

    /// Tells the proposals where the state machine stands (see [`Proposals::commit_early`]).
    fn publish_applied(&self) {
        self.proposals.applied(
            self.last_applied.map_or(0, |l| l.index),
            self.db_version,
            self.db_tag,
        );
    }

    /// Resets the database and the applied state to the newest snapshot (or to nothing).
    async fn rewind_to_snapshot(&mut self) -> anyhow::Result<()> {
        use anyhow::Context;
        let snapshot = Self::newest_snapshot(&self.snapshot_dir)?;
        match &snapshot {
            Some(meta) => {
                self.db
                    .install_image(Self::image_path(&self.snapshot_dir, meta))
                    .await
                    .context("reinstall the last snapshot")?;
                self.last_applied = meta.last_log_id;
                self.membership = meta.last_membership.clone();
            }
            None => {
                self.last_applied = None;
                self.membership = StoredMembership::default();
            }
        }
        (self.db_version, self.db_tag) =
            self.db.state().await.context("read the database version")?;
        match snapshot {
            Some(_) => self.persist(Sync::Durable)?,
            // The database is kept and replayed from the log's first entry, which skips the
            // deltas it holds: recorded as the empty database, which the start's check
            // (`lineage`) walks from, so a file the log does not lead to is not taken as one.
            None => self.record(0, 0, Sync::Durable)?,
        }
        Ok(())
    }

    fn persist(&self, sync: Sync) -> Result<(), StorageError> {
        self.record(self.db_version, self.db_tag, sync)
    }

    /// Records the applied state with the database at `db_version` holding `tag`.
    fn record(&self, db_version: u64, tag: u64, sync: Sync) -> Result<(), StorageError> {
        let state = AppliedState {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            db_version,
        };
        let tag = RecordedTag {
            last_applied: self.last_applied,
            db_version,
            tag,
        };
        self.store.write_encoded(
            &[(KEY_STATE, encode(&state)?), (KEY_STATE_TAG, encode(&tag)?)],
            sync,
        )
    }

    /// Whether the database this node found at start is one its own log leads to (see
    /// [`super::lineage`]): an error, naming the file and what to do, when it is not.
    pub async fn check_database(&self, log: &super::log_store::LogStore) -> anyhow::Result<()> {
        use super::lineage::{Found, Walk};
        let recorded: AppliedState = self.store.read_meta(KEY_STATE)?.unwrap_or_default();
        let tag = self
            .store
            .read_meta::<RecordedTag>(KEY_STATE_TAG)?
            .filter(|t| {
                (t.last_applied, t.db_version) == (recorded.last_applied, recorded.db_version)
            });
        let walk = Walk {
            version: recorded.db_version,
            tag: tag.map(|t| t.tag),
        };
        let found = Found {
            version: self.db_version,
            tag: self.db_tag,
        };
        let from = recorded.last_applied.map_or(1, |l| l.index + 1);
        let deltas = super::lineage::deltas_from(log, from, found.version).await?;
        let images = Self::images(&self.snapshot_dir);
        let states: Vec<(u64, u64)> = images.iter().map(|(state, _)| *state).collect();
        let mut checked = super::lineage::check(walk, found, &deltas, &states);
        // A record older than a snapshot's (one a recovery from the archive wrote before the
        // state machine knew the restored version): the walk from that snapshot decides too.
        for ((version, tag), index) in images {
            let Some(index) = index.filter(|_| checked.is_err()) else {
                continue;
            };
            let walk = Walk {
                version,
                tag: Some(tag),
            };
            let deltas = super::lineage::deltas_from(log, index + 1, found.version).await?;
            if super::lineage::check(walk, found, &deltas, &[]).is_ok() {
                checked = Ok(());
            }
        }
        checked.map_err(|why| {
            anyhow::anyhow!(
                "{} is not the database this node's Raft log leads to: {why}. It was copied \
                 here from another node or cluster, or from a backup, or the log lost records \
                 on disk? Move db.sqlite, db.sqlite-wal and db.sqlite-shm out of the data \
                 directory and start the node again: it rebuilds the database from its \
                 snapshot and its log, and from the leader",
                self.db.path().display()
            )
        })
    }

    /// The version and tag of every snapshot image in `dir`, with the last log index of its
    /// snapshot when its metadata is there (an image without it: a node that stopped while
    /// installing one has the image and the database, and no metadata yet).
    fn images(dir: &Path) -> Vec<((u64, u64), Option<u64>)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "db"))
            .filter_map(|image| {
                let state = crate::db::image_state(&image).ok()?;
                let index = std::fs::read(image.with_extension("meta"))
                    .ok()
                    .and_then(|bytes| super::codec::decode::<SnapshotMeta>(&bytes).ok())
                    .map(|meta| meta.last_log_id.map_or(0, |l| l.index));
                Some((state, index))
            })
            .collect()
    }

    fn image_path(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
        dir.join(format!("{}.db", meta.snapshot_id))
    }

    fn meta_path(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
        dir.join(format!("{}.meta", meta.snapshot_id))
    }

    /// The newest complete snapshot on disk, if any.
    fn newest_snapshot(dir: &Path) -> Result<Option<SnapshotMeta>, StorageError> {
        let mut best: Option<SnapshotMeta> = None;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snap_err(None, e)),
        };
        for entry in entries {
            let path = entry.map_err(|e| snap_err(None, e))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("meta") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| snap_err(None, e))?;
            let Ok(meta) = super::codec::decode::<SnapshotMeta>(&bytes) else {
                tracing::warn!(path = %path.display(), "ignoring unreadable snapshot metadata");
                continue;
            };
            if !Self::image_path(dir, &meta).exists() {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| meta.last_log_id > b.last_log_id)
            {
                best = Some(meta);
            }
        }
        Ok(best)
    }

    /// Keeps the snapshot `keep` and removes every other image and metadata file (and snapshots
    /// being received only when `also_receiving`).
    fn remove_other_snapshots(dir: &Path, keep: &SnapshotMeta, also_receiving: bool) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if stem != keep.snapshot_id && (also_receiving || !stem.starts_with("receiving-")) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Writes `meta`'s metadata file durably: its bytes, its name and the image's name are on
    /// disk when this returns, so the older snapshots that callers remove next (and the log
    /// purged past this one) are never the only copy a power loss leaves.
    fn write_meta_file(dir: &Path, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let bytes = super::codec::encode(meta).map_err(|e| snap_err(Some(meta), e))?;
        let tmp = dir.join(format!("{}.meta.tmp", meta.snapshot_id));
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, Self::meta_path(dir, meta))?;
            super::wal::sync_dir(dir)
        })();
        written.map_err(|e| snap_err(Some(meta), e))
    }

    /// Opens snapshot `meta`'s image (under the snapshot files lock: once open, it stays
    /// readable even if a newer snapshot removes the file).
    fn open_snapshot(dir: &Path, meta: SnapshotMeta) -> Result<Snapshot<TypeConfig>, StorageError> {
        let file = std::fs::File::open(Self::image_path(dir, &meta))
            .map_err(|e| snap_err(Some(&meta), e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

/// Builds a snapshot from an image made while the state machine was paused.
pub struct SnapshotBuilder {
    dir: PathBuf,
    meta: SnapshotMeta,
    built: Result<(), String>,
    files: SnapshotFilesLock,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        if let Err(e) = &self.built {
            return Err(snap_err(Some(&self.meta), e));
        }
        let snapshot = {
            let _files = lock_files(&self.files);
            StateMachine::write_meta_file(&self.dir, &self.meta)?;
            StateMachine::remove_other_snapshots(&self.dir, &self.meta, false);
            StateMachine::open_snapshot(&self.dir, self.meta.clone())?
        };
        tracing::info!(index = ?self.meta.last_log_id.map(|l| l.index), "snapshot built");
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut results = Vec::new();
        let mut membership_changed = false;
        for entry in entries {
            let result = match entry.payload {
                EntryPayload::Blank => ApplyResult::NoOp,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    membership_changed = true;
                    ApplyResult::NoOp
                }
                EntryPayload::Normal(Command::Delta(bytes)) => {
                    let delta = PageDelta::decode(&bytes).map_err(|e| {
                        sm_err(format!(
                            "decode delta at log index {}: {e}",
                            entry.log_id.index
                        ))
                    })?;
                    let base_version = delta.base_version;
                    let next_version = base_version + 1;
                    let tag = delta.tag;
                    // The applier's check (`db::apply`), on the state it keeps here.
                    let will_apply = delta.applies_to(self.db_version, self.db_tag);
                    let (span, committed) = self.proposals.committing(tag, will_apply);
                    crate::stamp!("sm.apply", entry.log_id.index);
                    if let Some(committed) = committed {
                        committed(entry.log_id.index);
                    }
                    let apply = self.db.apply(Arc::new(delta));
                    let outcome = match span {
                        Some(parent) => {
                            use tracing::Instrument;
                            let index = entry.log_id.index;
                            apply
                                .instrument(
                                    tracing::info_span!(parent: &parent, "raft.apply", index),
                                )
                                .await
                        }
                        None => apply.await,
                    };
                    match outcome {
                        Ok(ApplyOutcome::Applied) => {
                            crate::stamp!("sm.applied", entry.log_id.index);
                            self.db_version = next_version;
                            if tag != 0 {
                                self.db_tag = tag;
                            }
                            ApplyResult::Applied
                        }
                        Ok(ApplyOutcome::Skipped) => {
                            if will_apply {
                                // Its writer was told it committed; the database disagrees.
                                return Err(sm_err(format!(
                                    "log index {}: the delta on version {base_version} was skipped although the state machine is at that version",
                                    entry.log_id.index
                                )));
                            }
                            ApplyResult::Stale
                        }
                        Err(e) => {
                            return Err(sm_err(format!(
                                "apply log index {}: {e}",
                                entry.log_id.index
                            )))
                        }
                    }
                }
            };
            self.last_applied = Some(entry.log_id);
            self.publish_applied();
            results.push(result);
        }
        let applied_us = started.elapsed().as_micros() as u64;
        // Published before the applied state is recorded: the database already holds these
        // entries, and the leader's next batch waits for exactly this.
        if let Some(applied) = self.last_applied {
            self.applied_tx.send_replace(applied.index);
        }
        // Lazily, at most once per `LAZY_EVERY` but for a new membership: a restart replays
        // the log from what was recorded and skips the deltas the database holds already.
        if self.state_written.due() || membership_changed {
            self.persist(Sync::Lazy)?;
        }
        tracing::debug!(
            applied_us,
            total_us = started.elapsed().as_micros() as u64,
            "applied"
        );
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let snapshot_id = format!(
            "{}-{}-{}",
            self.last_applied.map(|l| l.leader_id.term).unwrap_or(0),
            self.last_applied.map(|l| l.index).unwrap_or(0),
            uuid::Uuid::new_v4().simple()
        );
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        // Built here, while no entry is being applied, so the image matches `last_applied`.
        let dest = Self::image_path(&self.snapshot_dir, &meta);
        let built = match self.db.build_image(dest).await {
            Ok(_) => self.persist(Sync::Durable).map_err(|e| e.to_string()),
            Err(e) => Err(format!("build database image: {e}")),
        };
        SnapshotBuilder {
            dir: self.snapshot_dir.clone(),
            meta,
            built,
            files: self.snapshot_files.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self
            .snapshot_dir
            .join(format!("receiving-{}.db", uuid::Uuid::new_v4().simple()));
        // Read-write: `install_snapshot` reads the received data back from this handle.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(None, e))?;
        self.receiving = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        // The id names files in the snapshot directory: never a path (the peer service names
        // received snapshots itself; this is the last line of defence).
        if !is_plain_file_name(&meta.snapshot_id) {
            return Err(snap_err(
                Some(meta),
                format!(
                    "snapshot id {:?} is not a plain file name",
                    meta.snapshot_id
                ),
            ));
        }
        // Copy from the handle we were given (not from the path we handed out): openraft
        // only promises that this handle holds the snapshot.
        let image = Self::image_path(&self.snapshot_dir, meta);
        let mut source = snapshot;
        let copied = async {
            use tokio::io::AsyncSeekExt;
            source.seek(std::io::SeekFrom::Start(0)).await?;
            let mut dest = tokio::fs::File::create(&image).await?;
            tokio::io::copy(&mut source, &mut dest).await?;
            dest.sync_all().await
        }
        .await;
        drop(source);
        if let Some(received) = self.receiving.take() {
            let _ = std::fs::remove_file(received);
        }
        copied.map_err(|e| snap_err(Some(meta), format!("store received snapshot: {e}")))?;
        self.db
            .install_image(image.clone())
            .await
            .map_err(|e| snap_err(Some(meta), format!("install snapshot image: {e}")))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        (self.db_version, self.db_tag) =
            self.db.state().await.map_err(|e| snap_err(Some(meta), e))?;
        self.publish_applied();
        self.persist(Sync::Durable)?;
        {
            let _files = lock_files(&self.snapshot_files);
            Self::write_meta_file(&self.snapshot_dir, meta)?;
            Self::remove_other_snapshots(&self.snapshot_dir, meta, true);
        }
        self.applied_tx
            .send_replace(self.last_applied.map(|l| l.index).unwrap_or(0));
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let _files = lock_files(&self.snapshot_files);
        match Self::newest_snapshot(&self.snapshot_dir)? {
            None => Ok(None),
            Some(meta) => Ok(Some(Self::open_snapshot(&self.snapshot_dir, meta)?)),
        }
    }
}

/// Letters, digits, `-` and `_` only, 1 to 128 of them: safe to use as a file name.
fn is_plain_file_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_proposal_whose_entry_was_replaced_is_never_committed_early() {
        use super::Proposals;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let notices = Arc::new(AtomicUsize::new(0));
        let register = |proposals: &Proposals, tag: u64| {
            let notices = notices.clone();
            proposals.register(
                tag,
                0,
                0,
                tracing::Span::none(),
                Box::new(move |_| {
                    notices.fetch_add(1, Ordering::SeqCst);
                }),
            );
            proposals.appended(1, tag);
        };
        // Recorded at index 1: a quorum holding index 1 answers it.
        let proposals = Proposals::default();
        register(&proposals, 7);
        assert_eq!(proposals.commit_early(1), 1);
        // Recorded at index 1, then another leader's entry replaced index 1 (or the log was
        // truncated there): a quorum holding index 1 holds that entry, not this proposal.
        let proposals = Proposals::default();
        register(&proposals, 8);
        proposals.replaced_from(1);
        assert_eq!(proposals.commit_early(1), 0);
        assert_eq!(notices.load(Ordering::SeqCst), 1);
    }

    use super::*;
    use crate::db::{DbOptions, Statement, WriteRequest};
    use openraft::{CommittedLeaderId, RaftSnapshotBuilder};

    fn entry(index: u64, delta: &PageDelta) -> Entry {
        openraft::Entry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Delta(bytes::Bytes::from(delta.encode()))),
        }
    }

    async fn open_sm(db: Arc<Database>, dir: &Path) -> StateMachine {
        let store = RaftStore::open(&dir.join("raft")).expect("open raft store");
        let (applied_tx, _) = watch::channel(0);
        StateMachine::open(db, store, dir.join("snapshots"), applied_tx)
            .await
            .expect("open state machine")
    }

    fn request(sql: &str) -> WriteRequest {
        WriteRequest {
            request_id: String::new(),
            statements: vec![Statement::new(sql)],
            deadline: None,
            max_result_bytes: None,
        }
    }

    /// The delta of `sql` run alone on `executor`.
    async fn execute(executor: &crate::db::ExecutorHandle, sql: &str) -> PageDelta {
        executor
            .execute_batch(vec![request(sql)])
            .await
            .expect("execute")
            .delta
            .expect("a delta")
    }

    /// On a leader without a write pipeline, an entry whose delta is the batch still open on
    /// the executor is committed in place (Applied, the version moves on); an entry from
    /// another leader on the same version rolls the open batch back and is applied, and the
    /// open batch's own entry then is stale.
    #[tokio::test]
    async fn entries_of_the_open_batch_are_committed_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(
            Database::open(dir.path().join("leader.sqlite"), DbOptions::default()).expect("open"),
        );
        let executor = db.open_executor_with_links(false).expect("executor");
        let mut sm = open_sm(db.clone(), dir.path()).await;
        let create = execute(&executor, "CREATE TABLE t(x)").await;
        let results = sm.apply(vec![entry(1, &create)]).await.expect("apply 1");
        assert!(matches!(results[..], [ApplyResult::Applied]), "{results:?}");
        assert_eq!(db.committed_in_place(), 1);
        assert_eq!(db.version().await.expect("version"), 1);

        let lost = execute(&executor, "INSERT INTO t VALUES ('lost')").await;
        let other_db =
            Database::open(dir.path().join("other.sqlite"), DbOptions::default()).expect("open");
        other_db
            .apply(Arc::new(create.clone()))
            .await
            .expect("apply on the other");
        let other_executor = other_db.open_executor().expect("executor");
        let other = execute(&other_executor, "INSERT INTO t VALUES ('other')").await;
        assert_eq!(other.base_version, lost.base_version);
        let results = sm
            .apply(vec![entry(2, &other), entry(3, &lost)])
            .await
            .expect("apply 2..3");
        assert!(
            matches!(results[..], [ApplyResult::Applied, ApplyResult::Stale]),
            "{results:?}"
        );
        assert_eq!(db.committed_in_place(), 1);
        let conn = rusqlite::Connection::open(db.path()).expect("open");
        let rows: Vec<String> = conn
            .prepare("SELECT x FROM t")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("rows");
        assert_eq!(rows, ["other"]);
    }

    /// A database that lost its last applies (power loss with synchronous=NORMAL) is detected
    /// at open: the last snapshot is reinstalled and replaying the log makes it whole again.
    #[tokio::test]
    async fn database_behind_recorded_state_rewinds_to_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leader = Arc::new(
            Database::open(dir.path().join("leader.sqlite"), DbOptions::default()).expect("open"),
        );
        let executor = leader.open_executor().expect("executor");
        let mut deltas = Vec::new();
        for sql in [
            "CREATE TABLE t(x)",
            "INSERT INTO t VALUES (1)",
            "INSERT INTO t VALUES (2)",
        ] {
            let request = WriteRequest {
                request_id: String::new(),
                statements: vec![Statement::new(sql)],
                deadline: None,
                max_result_bytes: None,
            };
            let batch = executor
                .execute_batch(vec![request])
                .await
                .expect("execute");
            let delta = batch.delta.expect("a delta");
            leader
                .apply(Arc::new(delta.clone()))
                .await
                .expect("apply on the leader");
            deltas.push(delta);
        }

        // A node applies entries 1 and 2, snapshots, applies 3: recorded db_version 3.
        let node_dir = dir.path().join("node");
        std::fs::create_dir_all(&node_dir).expect("create node dir");
        let db = Arc::new(
            Database::open(node_dir.join("db.sqlite"), DbOptions::default()).expect("open"),
        );
        let mut sm = open_sm(db, &node_dir).await;
        sm.apply(vec![entry(1, &deltas[0]), entry(2, &deltas[1])])
            .await
            .expect("apply 1..2");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot at 2");
        sm.apply(vec![entry(3, &deltas[2])]).await.expect("apply 3");
        drop(sm);

        // "Power loss": the node's database is only at version 1.
        let lost = Arc::new(
            Database::open(node_dir.join("lost.sqlite"), DbOptions::default()).expect("open"),
        );
        lost.apply(Arc::new(deltas[0].clone()))
            .await
            .expect("apply 1");
        let mut sm = open_sm(lost.clone(), &node_dir).await;
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|l| l.index), Some(2), "rewound to the snapshot");
        assert_eq!(
            lost.version().await.expect("version"),
            2,
            "snapshot image reinstalled"
        );

        sm.apply(vec![entry(3, &deltas[2])])
            .await
            .expect("replay 3");
        let want = crate::db::dump_pages(leader.path()).expect("leader pages");
        let got = crate::db::dump_pages(lost.path()).expect("node pages");
        assert!(
            want == got,
            "after the replay the node matches the leader page for page"
        );
    }

    /// A Raft log in `log_dir` holding `entries`, as the log store writes them.
    fn write_log(log_dir: &Path, entries: &[Entry]) {
        let mut wal = super::super::wal::Wal::open(log_dir, Default::default()).expect("wal");
        let records: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| {
                (
                    e.log_id.index,
                    super::super::codec::encode(e).expect("encode"),
                )
            })
            .collect();
        wal.append(records.iter().map(|(i, r)| (*i, r.as_slice())))
            .expect("append");
    }

    /// `count` one-row writes on a new database at `path`, each applied there: their deltas.
    async fn writes(path: PathBuf, count: usize) -> (Arc<Database>, Vec<PageDelta>) {
        let db = Arc::new(Database::open(path, DbOptions::default()).expect("open"));
        let executor = db.open_executor().expect("executor");
        let mut deltas = vec![execute(&executor, "CREATE TABLE t(x)").await];
        while deltas.len() < count {
            db.apply(Arc::new(deltas[deltas.len() - 1].clone()))
                .await
                .expect("apply");
            let sql = format!("INSERT INTO t VALUES ({})", deltas.len());
            deltas.push(execute(&executor, &sql).await);
        }
        db.apply(Arc::new(deltas[count - 1].clone()))
            .await
            .expect("apply");
        (db, deltas)
    }

    /// A node's database replaced by another cluster's is refused at start, naming the file:
    /// where its log reaches the file's version (another tag there), where the file is past
    /// the log, and where it is older than the recorded state and there is no snapshot to
    /// rewind to. Its own database is accepted, also when it holds entries of the log that the
    /// recorded state does not (the lazy record, behind after a crash), and when it is older
    /// (a power loss).
    #[tokio::test]
    async fn a_database_its_log_does_not_lead_to_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, ours) = writes(dir.path().join("leader.sqlite"), 3).await;
        let (near, _) = writes(dir.path().join("near.sqlite"), 3).await;
        let (far, _) = writes(dir.path().join("far.sqlite"), 5).await;

        // The node applied entry 1 and recorded it; entries 1..=3 are in its log.
        let node_dir = dir.path().join("node");
        std::fs::create_dir_all(&node_dir).expect("create node dir");
        let log_dir = node_dir.join(super::super::RAFT_LOG_DIR);
        write_log(
            &log_dir,
            &[1, 2, 3].map(|i| entry(i, &ours[i as usize - 1])),
        );
        let own = Arc::new(
            Database::open(node_dir.join("db.sqlite"), DbOptions::default()).expect("open"),
        );
        let mut sm = open_sm(own.clone(), &node_dir).await;
        sm.apply(vec![entry(1, &ours[0])]).await.expect("apply 1");
        let store = sm.store.clone();
        drop(sm);
        let log = super::super::log_store::LogStore::open(store.clone(), &log_dir).expect("log");
        let check = |db: Arc<Database>| {
            let (snapshots, store, log) = (node_dir.join("snapshots"), store.clone(), &log);
            async move {
                let sm = StateMachine::open(db, store, snapshots, watch::channel(0).0)
                    .await
                    .expect("open state machine");
                sm.check_database(log).await.map_err(|e| format!("{e:#}"))
            }
        };
        assert_eq!(check(own.clone()).await, Ok(()), "at the recorded state");
        // The tag is compared only while it goes with the recorded state: a release that does
        // not record it (rolled back to, then upgraded again) leaves one that no longer does.
        let tag_with = |db_version: u64| {
            let recorded = RecordedTag {
                last_applied: Some(entry(1, &ours[0]).log_id),
                db_version,
                tag: 12345,
            };
            store
                .write_meta(KEY_STATE_TAG, &recorded, Sync::Durable)
                .expect("write the tag");
        };
        tag_with(1);
        let refused = check(own.clone()).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("where the log leads to tag 3039")),
            "{refused:?}"
        );
        tag_with(0);
        assert_eq!(check(own.clone()).await, Ok(()), "a tag of another state");
        for delta in &ours[1..] {
            own.apply(Arc::new(delta.clone())).await.expect("apply");
        }
        assert_eq!(
            check(own.clone()).await,
            Ok(()),
            "ahead of the record, on the log"
        );

        let refused = check(near).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("near.sqlite is not the database")
                    && e.contains("at version 3 with tag")),
            "{refused:?}"
        );
        let refused = check(far).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("far.sqlite is not the database")
                    && e.contains("leads from version 1 only to version 3")
                    && e.contains("Move db.sqlite")),
            "{refused:?}"
        );

        // Recorded at version 3 (entries 2 and 3 applied, skipped as held); a power loss may
        // leave the database older, and with no snapshot the log is replayed onto it.
        let mut sm = StateMachine::open(
            own,
            store.clone(),
            node_dir.join("snapshots"),
            watch::channel(0).0,
        )
        .await
        .expect("open state machine");
        sm.apply(vec![entry(2, &ours[1]), entry(3, &ours[2])])
            .await
            .expect("apply 2..=3");
        drop(sm);
        let (older, _) = writes(dir.path().join("older.sqlite"), 2).await;
        let refused = check(older).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("older.sqlite is not the database")
                    && e.contains("at version 2 with tag")),
            "{refused:?}"
        );
        let own_older = Arc::new(
            Database::open(dir.path().join("own-older.sqlite"), DbOptions::default())
                .expect("open"),
        );
        for delta in &ours[..2] {
            own_older
                .apply(Arc::new(delta.clone()))
                .await
                .expect("apply");
        }
        assert_eq!(check(own_older).await, Ok(()), "its own, older");
    }

    /// A whole-cluster recovery restores the database outside the state machine, whose
    /// snapshot then records the state machine's version (0), not the restored one (the first
    /// delta applied corrects the state machine; the record waits for the next durable write):
    /// the start walks from that snapshot's image too, so a node that recovered the cluster
    /// accepts its own database after a crash.
    #[tokio::test]
    async fn a_record_behind_its_snapshot_is_walked_from_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, ours) = writes(dir.path().join("leader.sqlite"), 4).await;
        let node_dir = dir.path().join("node");
        std::fs::create_dir_all(&node_dir).expect("create node dir");
        let blank = |index: u64| openraft::Entry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::<TypeConfig>::Blank,
        };
        // The log: the recovered cluster's first two entries, then two deltas on the restored
        // version 2.
        let log_dir = node_dir.join(super::super::RAFT_LOG_DIR);
        write_log(
            &log_dir,
            &[blank(1), blank(2), entry(3, &ours[2]), entry(4, &ours[3])],
        );

        // Restored to version 2 behind the state machine's back, then its snapshot.
        let db = Arc::new(
            Database::open(node_dir.join("db.sqlite"), DbOptions::default()).expect("open"),
        );
        let mut sm = open_sm(db.clone(), &node_dir).await;
        sm.apply(vec![blank(1), blank(2)])
            .await
            .expect("apply 1..=2");
        for delta in &ours[..2] {
            db.apply(Arc::new(delta.clone())).await.expect("restore");
        }
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("the recovery's snapshot");
        let recorded: AppliedState = sm.store.read_meta(KEY_STATE).expect("read").expect("state");
        assert_eq!(
            recorded.db_version, 0,
            "the state machine's version, not the restored one"
        );
        // Entries 3 and 4 applied, and a crash before the next durable record.
        for delta in &ours[2..] {
            db.apply(Arc::new(delta.clone())).await.expect("apply");
        }
        let store = sm.store.clone();
        drop(sm);
        let log = super::super::log_store::LogStore::open(store.clone(), &log_dir).expect("log");
        let sm = StateMachine::open(db, store, node_dir.join("snapshots"), watch::channel(0).0)
            .await
            .expect("open state machine");
        let checked = sm.check_database(&log).await.map_err(|e| format!("{e:#}"));
        assert_eq!(
            checked,
            Ok(()),
            "its own database, walked from the snapshot"
        );
    }

    /// A process crash loses the applied state written lazily since redb's last durable
    /// commit, not the applies in the database (committed SQLite transactions survive a crash):
    /// at restart the recorded state is the snapshot's, behind the database, which is not
    /// rewound, and replaying the log from it skips every delta the database holds.
    #[tokio::test]
    async fn after_a_crash_the_lost_lazy_state_is_replayed_and_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leader = Arc::new(
            Database::open(dir.path().join("leader.sqlite"), DbOptions::default()).expect("open"),
        );
        let executor = leader.open_executor().expect("executor");
        let mut entries = Vec::new();
        for sql in [
            "CREATE TABLE t(x)",
            "INSERT INTO t VALUES (1)",
            "INSERT INTO t VALUES (2)",
            "INSERT INTO t VALUES (3)",
        ] {
            let delta = execute(&executor, sql).await;
            leader
                .apply(Arc::new(delta.clone()))
                .await
                .expect("apply on the leader");
            entries.push(entry(entries.len() as u64 + 1, &delta));
        }

        // A node applies 1..2, snapshots (recorded durably), then applies 3..4 (recorded
        // lazily: the write is due again after `LAZY_EVERY`).
        let node_dir = dir.path().join("node");
        let db = Arc::new(
            Database::open(dir.path().join("node.sqlite"), DbOptions::default()).expect("open"),
        );
        let mut sm = open_sm(db.clone(), &node_dir).await;
        sm.apply(entries[..2].to_vec()).await.expect("apply 1..2");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot at 2");
        tokio::time::sleep(super::super::store::LAZY_EVERY).await;
        sm.apply(entries[2..].to_vec()).await.expect("apply 3..4");
        let recorded: AppliedState = sm.store.read_meta(KEY_STATE).expect("read").expect("state");
        assert_eq!(
            recorded.last_applied.map(|l| l.index),
            Some(4),
            "written lazily"
        );

        // The process dies: the redb file is what the OS has now (a clean close would write
        // the lazy state, so the copy replaces it); the database keeps every apply.
        let redb_file = node_dir.join("raft").join("raft.redb");
        let at_crash = dir.path().join("raft.redb.at-crash");
        std::fs::copy(&redb_file, &at_crash).expect("copy the redb file");
        drop(sm);
        std::fs::rename(&at_crash, &redb_file).expect("put the crashed file back");

        let mut sm = open_sm(db.clone(), &node_dir).await;
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|l| l.index), Some(2), "the lazy state is lost");
        assert_eq!(db.version().await.expect("version"), 4, "not rewound");
        let results = sm.apply(entries[2..].to_vec()).await.expect("replay 3..4");
        assert!(
            matches!(results[..], [ApplyResult::Stale, ApplyResult::Stale]),
            "the database holds them: {results:?}"
        );
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|l| l.index), Some(4));
        let want = crate::db::dump_pages(leader.path()).expect("leader pages");
        let got = crate::db::dump_pages(db.path()).expect("node pages");
        assert!(want == got, "the node matches the leader page for page");
    }

    /// openraft builds a snapshot on a task of its own while the state machine worker serves
    /// `get_current_snapshot` (e.g. to send a snapshot to a learner): the builder replacing the
    /// previous snapshot meanwhile must not make the lookup fail or find nothing (either is a
    /// storage error that stops raft, and the node exits).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn current_snapshot_while_a_new_one_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(
            Database::open(dir.path().join("db.sqlite"), DbOptions::default()).expect("open"),
        );
        let mut sm = open_sm(db, dir.path()).await;
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("first snapshot");
        for round in 0..200 {
            let mut builder = sm.get_snapshot_builder().await;
            let build = tokio::spawn(async move { builder.build_snapshot().await.map(|_| ()) });
            let current = sm.get_current_snapshot().await;
            build
                .await
                .expect("builder task")
                .unwrap_or_else(|e| panic!("round {round}: build: {e}"));
            let current = current.unwrap_or_else(|e| panic!("round {round}: current: {e}"));
            assert!(current.is_some(), "round {round}: no current snapshot");
        }
    }
}
