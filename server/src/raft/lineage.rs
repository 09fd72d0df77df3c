//! Whether the database a node finds at start is one its own Raft log leads to.
//!
//! The database file is derived state: the snapshot and the log make it. A node whose
//! `db.sqlite` was replaced (copied from another node of another cluster, from an unrelated
//! backup) used to start on it as if it were its own. A database *older* than the recorded
//! state is reinstalled from the snapshot (`StateMachine::open`), but one *ahead* of it was
//! taken as holding the log's deltas up to its version: the node skipped them, served the
//! other file's rows as its replica, and as leader would have captured deltas on them that
//! every other node skips as stale, while answering their writers.
//!
//! The check walks the deltas of the node's own log from the recorded applied state (version
//! and tag, written together), as the state machine would apply them, and accepts the
//! database where that walk reaches its version with its tag. It also accepts a database no
//! newer than the recorded state (the power-loss rewind handles an older one; without a
//! snapshot to rewind to, the recorded state becomes the empty database's and the walk starts
//! from the log's first entry), the state of a snapshot image in the snapshot directory (a
//! node that stopped while installing a snapshot sent by the leader, whose log may end far
//! before it), and a database that the walk from a snapshot's image reaches (`StateMachine::
//! check_database`: a record behind its snapshot).
//!
//! A database past the end of the walk is refused: no node applies an entry before its own
//! log holds it on disk. openraft's core applies only after its own append is flushed (it
//! waits for the flush before its next command), and the leader's early commit in place
//! (`node::write_path`) waits for its own flush too, although its writers are answered once
//! any quorum holds the entry. A refusal stops the start with what to do (move the file away;
//! the node rebuilds it from its snapshot and log): the node never serves a file it cannot
//! place, nor overwrites it. A store written before the tag was recorded (or by a release
//! that did not record it since) starts the walk without one; where a delta names a parent
//! tag there, the walk cannot tell and accepts. A node with no Raft state (no vote, an empty
//! log) has no log to walk: it refuses any database that holds something (`Node::start`,
//! `cluster::bootstrap::not_a_new_database`).

use crate::db::Lineage;

use super::log_store::LogStore;
use super::types::Command;
use openraft::EntryPayload;

/// Entries read from the log at a time.
const CHUNK: u64 = 16;

/// The database's version and tag as the node found them.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    pub version: u64,
    pub tag: u64,
}

/// The deltas of this node's log from index `from` on, in order (their headers only), up to
/// the first captured on `version` or later: the walk either reached `version` before it or
/// never does (every delta after it is on a later version than the walk). Entries that are
/// not deltas do not move the database, and are left out.
pub async fn deltas_from(log: &LogStore, from: u64, version: u64) -> anyhow::Result<Vec<Lineage>> {
    let mut deltas = Vec::new();
    let mut next = from;
    loop {
        let entries = log.read_entries(next..next.saturating_add(CHUNK)).await?;
        let Some(last) = entries.last() else {
            return Ok(deltas);
        };
        next = last.log_id.index + 1;
        for entry in &entries {
            if let EntryPayload::Normal(Command::Delta(bytes)) = &entry.payload {
                if let Some(delta) = crate::db::peek_lineage(bytes) {
                    deltas.push(delta);
                    if delta.base_version >= version {
                        return Ok(deltas);
                    }
                }
            }
        }
    }
}

/// The database state the log leads to, walked delta by delta as the state machine applies
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub version: u64,
    /// `None`: not known (a store written before the tag was recorded, or untagged deltas).
    pub tag: Option<u64>,
}

/// What one delta does to a [`Walk`].
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Moved,
    /// Not applied at this state (stale, or on another version).
    Skipped,
    /// It names a parent tag where the walk knows none: which delta the state machine applies
    /// here cannot be told.
    Unknown,
}

impl Walk {
    fn step(&mut self, delta: &Lineage) -> Step {
        if delta.base_version != self.version {
            return Step::Skipped;
        }
        match (delta.parent_tag, self.tag) {
            (0, _) => {}
            (parent, Some(tag)) if parent == tag => {}
            (_, Some(_)) => return Step::Skipped,
            (_, None) => return Step::Unknown,
        }
        self.version += 1;
        if delta.tag != 0 {
            self.tag = Some(delta.tag);
        }
        Step::Moved
    }

    /// `Err` when the walk is at `found`'s version with another tag.
    fn compare(&self, found: Found) -> Result<(), String> {
        match self.tag {
            Some(tag) if tag != found.tag => Err(format!(
                "it is at version {} with tag {:x}, where the log leads to tag {tag:x}",
                found.version, found.tag
            )),
            _ => Ok(()),
        }
    }
}

/// Checks `found` against the walk of `deltas` from `recorded`; the rules are in the module
/// docs. `images`: the (version, tag) of each snapshot image on this node.
pub fn check(
    recorded: Walk,
    found: Found,
    deltas: &[Lineage],
    images: &[(u64, u64)],
) -> Result<(), String> {
    let mut walk = recorded;
    if found.version < walk.version || images.contains(&(found.version, found.tag)) {
        return Ok(());
    }
    if found.version == walk.version {
        return walk.compare(found);
    }
    for delta in deltas {
        match walk.step(delta) {
            Step::Moved if walk.version == found.version => return walk.compare(found),
            Step::Moved | Step::Skipped => {}
            Step::Unknown => return Ok(()),
        }
    }
    Err(format!(
        "it is at version {}, and the log leads from version {} only to version {}",
        found.version, recorded.version, walk.version
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(base_version: u64, tag: u64, parent_tag: u64) -> Lineage {
        Lineage {
            base_version,
            tag,
            parent_tag,
        }
    }

    fn found(version: u64, tag: u64) -> Found {
        Found { version, tag }
    }

    fn at(version: u64, tag: Option<u64>) -> Walk {
        Walk { version, tag }
    }

    /// The log from version 3 (tag 30): deltas to 4 (tag 40), a stale one on 4 naming a lost
    /// parent, then 5 (tag 50) and 6 (tag 60).
    fn log() -> Vec<Lineage> {
        vec![
            delta(3, 40, 0),
            delta(4, 99, 77),
            delta(4, 50, 40),
            delta(5, 60, 0),
        ]
    }

    #[test]
    fn a_database_the_log_reaches_is_accepted() {
        for (version, tag) in [(3, 30), (4, 40), (5, 50), (6, 60), (2, 1), (0, 0)] {
            assert_eq!(
                check(at(3, Some(30)), found(version, tag), &log(), &[]),
                Ok(()),
                "version {version}"
            );
        }
    }

    #[test]
    fn a_database_with_another_history_is_refused() {
        for (version, tag) in [(3, 31), (5, 99), (6, 61)] {
            let refused = check(at(3, Some(30)), found(version, tag), &log(), &[]);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|why| why.contains("where the log leads to tag")),
                "version {version}: {refused:?}"
            );
        }
    }

    #[test]
    fn a_database_past_the_log_is_refused() {
        let refused = check(at(3, Some(30)), found(7, 1), &log(), &[]);
        assert!(
            refused
                .as_ref()
                .is_err_and(|why| why.contains("leads from version 3 only to version 6")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_snapshot_image_on_this_node_is_accepted() {
        assert_eq!(
            check(at(3, Some(30)), found(1000, 7), &log(), &[(1000, 7)]),
            Ok(())
        );
        assert!(check(at(3, Some(30)), found(1000, 7), &log(), &[(1000, 8)]).is_err());
    }

    #[test]
    fn without_a_recorded_tag_the_walk_checks_what_it_can() {
        let untagged_parents = [delta(4, 50, 0), delta(5, 60, 0)];
        assert!(check(at(4, None), found(6, 61), &untagged_parents, &[]).is_err());
        // A delta naming a parent the store did not record: cannot tell, accepted.
        assert_eq!(check(at(4, None), found(6, 61), &log()[1..], &[]), Ok(()));
        // At the recorded version itself nothing is known to compare with.
        assert_eq!(check(at(4, None), found(4, 5), &log(), &[]), Ok(()));
    }
}
