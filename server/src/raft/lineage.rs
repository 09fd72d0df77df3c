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
//! database where that walk reaches its version with its tag. It also accepts:
//! - a database no newer than the recorded state (the power-loss rewind handles an older one);
//! - the state of a snapshot image in the snapshot directory (a node that stopped while
//!   installing a snapshot sent by the leader, whose log may end far before it);
//! - for now, a database at most [`UNFLUSHED`] versions past the walk's end: a node can apply
//!   an entry before its own log flush reaches it (a leader once two followers hold it, a
//!   follower from the entries it just appended) and stop before the flush. Those entries are
//!   committed, so they reach the node again: the state machine goes on walking as it applies
//!   them ([`Pending`]), records the walk's state rather than the database's meanwhile, and
//!   refuses the database when the walk reaches its version with another tag, or when an
//!   entry of a term after the node's vote is applied first (a leader elected since has every
//!   committed entry before its own). A refusal there stops Raft on the node and is recorded,
//!   so that the next start refuses the same file at once.
//!
//! Anything else stops the start with what to do (move the file away; the node rebuilds it
//! from its snapshot and log): the node never deletes or overwrites a file it cannot place.
//! A store written before the tag was recorded starts the walk without one; where a delta
//! names a parent tag there, the walk cannot tell and accepts.

use crate::db::Lineage;

use super::log_store::LogStore;
use super::types::Command;
use openraft::EntryPayload;

/// How many versions a database may be past what this node's log leads to (see the module).
pub const UNFLUSHED: u64 = 64;

/// Entries read from the log at a time.
const CHUNK: u64 = 16;

/// The database's version and tag as the node found them.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    pub version: u64,
    pub tag: u64,
}

/// The deltas of this node's log from index `from` on, in order (their headers only).
/// Entries that are not deltas do not move the database, and are left out.
pub async fn deltas_from(log: &LogStore, from: u64) -> anyhow::Result<Vec<Lineage>> {
    let mut deltas = Vec::new();
    let mut next = from;
    loop {
        let entries = log.read_entries(next..next.saturating_add(CHUNK)).await?;
        let Some(last) = entries.last() else {
            return Ok(deltas);
        };
        next = last.log_id.index + 1;
        deltas.extend(entries.iter().filter_map(|e| match &e.payload {
            EntryPayload::Normal(Command::Delta(bytes)) => crate::db::peek_lineage(bytes),
            _ => None,
        }));
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

/// What the start check concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The database is one the log leads to (or the walk cannot tell otherwise).
    Accepted,
    /// The database is a few versions past where this node's log ends (see [`UNFLUSHED`]):
    /// the state machine goes on walking the entries it applies from the walk's end
    /// ([`Pending`]).
    Past(Walk),
}

/// Checks `found` against the walk of `deltas` from `recorded`; the rules are in the module
/// docs. `images`: the (version, tag) of each snapshot image on this node.
pub fn check(
    recorded: Walk,
    found: Found,
    deltas: &[Lineage],
    images: &[(u64, u64)],
) -> Result<Verdict, String> {
    let mut walk = recorded;
    if found.version < walk.version || images.contains(&(found.version, found.tag)) {
        return Ok(Verdict::Accepted);
    }
    if found.version == walk.version {
        return walk.compare(found).map(|()| Verdict::Accepted);
    }
    for delta in deltas {
        match walk.step(delta) {
            Step::Moved if walk.version == found.version => {
                return walk.compare(found).map(|()| Verdict::Accepted)
            }
            Step::Moved | Step::Skipped => {}
            Step::Unknown => return Ok(Verdict::Accepted),
        }
    }
    if found.version <= walk.version + UNFLUSHED {
        return Ok(Verdict::Past(walk));
    }
    Err(format!(
        "it is at version {}, and the log leads from version {} to version {}",
        found.version, recorded.version, walk.version
    ))
}

/// A database accepted at start a few versions past the log's end, checked as entries are
/// applied: it is refused once the walk reaches its version with another tag, or once an entry
/// of a term after the node's vote at start is applied without the walk having reached it
/// (every entry committed before the node stopped precedes such an entry in the log).
#[derive(Debug)]
pub struct Pending {
    pub walk: Walk,
    pub found: Found,
    /// The term of the node's vote at start.
    pub term: u64,
}

impl Pending {
    /// Takes the entry of `term` (with its delta's lineage, if it is a delta): `Ok(true)` once
    /// the database is verified, `Ok(false)` while it is still ahead, `Err` when refused.
    pub fn entry(&mut self, term: u64, delta: Option<&Lineage>) -> Result<bool, String> {
        if let Some(delta) = delta {
            match self.walk.step(delta) {
                Step::Moved if self.walk.version == self.found.version => {
                    return self.walk.compare(self.found).map(|()| true)
                }
                Step::Moved | Step::Skipped => {}
                Step::Unknown => return Ok(true),
            }
        }
        if term > self.term {
            return Err(format!(
                "it is at version {}, and the log went from version {} into term {term} without \
                 reaching it",
                self.found.version, self.walk.version
            ));
        }
        Ok(false)
    }
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
                Ok(Verdict::Accepted),
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
    fn a_database_far_past_the_log_is_refused_and_one_just_past_it_is_checked_later() {
        let just = 6 + UNFLUSHED;
        assert_eq!(
            check(at(3, Some(30)), found(just, 1), &log(), &[]),
            Ok(Verdict::Past(at(6, Some(60))))
        );
        let refused = check(at(3, Some(30)), found(just + 1, 1), &log(), &[]);
        assert!(
            refused
                .as_ref()
                .is_err_and(|why| why.contains("leads from version 3 to version 6")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_snapshot_image_on_this_node_is_accepted() {
        assert_eq!(
            check(at(3, Some(30)), found(1000, 7), &log(), &[(1000, 7)]),
            Ok(Verdict::Accepted)
        );
        assert!(check(at(3, Some(30)), found(1000, 7), &log(), &[(1000, 8)]).is_err());
    }

    #[test]
    fn without_a_recorded_tag_the_walk_checks_what_it_can() {
        let untagged_parents = [delta(4, 50, 0), delta(5, 60, 0)];
        assert!(check(at(4, None), found(6, 61), &untagged_parents, &[]).is_err());
        // A delta naming a parent the store did not record: cannot tell, accepted.
        assert_eq!(
            check(at(4, None), found(6, 61), &log()[1..], &[]),
            Ok(Verdict::Accepted)
        );
        // At the recorded version itself nothing is known to compare with.
        assert_eq!(
            check(at(4, None), found(4, 5), &log(), &[]),
            Ok(Verdict::Accepted)
        );
    }

    /// A database two versions past the log's end (version 6): verified by the entries that
    /// reach it with its tag, refused by ones that reach it with another, or by an entry of
    /// a newer term than the node's vote at start before they do.
    #[test]
    fn a_database_just_past_the_log_is_decided_by_the_entries_applied_next() {
        let pending = |tag| Pending {
            walk: at(6, Some(60)),
            found: found(8, tag),
            term: 2,
        };
        let mut ours = pending(80);
        assert_eq!(ours.entry(2, Some(&delta(6, 70, 60))), Ok(false));
        assert_eq!(ours.entry(2, None), Ok(false), "a blank entry");
        assert_eq!(ours.entry(2, Some(&delta(7, 80, 70))), Ok(true));

        let mut theirs = pending(81);
        assert_eq!(theirs.entry(2, Some(&delta(6, 70, 60))), Ok(false));
        let refused = theirs.entry(2, Some(&delta(7, 80, 70)));
        assert!(
            refused
                .as_ref()
                .is_err_and(|why| why.contains("where the log leads to tag 50")),
            "{refused:?}"
        );

        let mut theirs = pending(81);
        let refused = theirs.entry(3, None);
        assert!(
            refused
                .as_ref()
                .is_err_and(|why| why.contains("into term 3 without reaching it")),
            "{refused:?}"
        );
    }
}
