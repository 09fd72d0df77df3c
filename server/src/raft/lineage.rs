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
//! - a database at most [`UNFLUSHED`] versions past the walk's end: a leader can apply an
//!   entry that two followers hold before its own log flush reaches it, and stop before it
//!   does; the leader sends those entries again, and the applier matches their tags then.
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

/// Accepts `found` when the walk of `deltas` from `recorded` (version, tag if recorded)
/// reaches it, or one of the rules of the module holds; otherwise says why not. `images`:
/// the (version, tag) of each snapshot image on this node.
pub fn check(
    recorded: (u64, Option<u64>),
    found: Found,
    deltas: &[Lineage],
    images: &[(u64, u64)],
) -> Result<(), String> {
    let (mut version, mut tag) = recorded;
    if found.version < version || images.contains(&(found.version, found.tag)) {
        return Ok(());
    }
    let reached = |tag: Option<u64>| match tag {
        Some(tag) if tag != found.tag => Err(format!(
            "it is at version {} with tag {:x}, where the log leads to tag {tag:x}",
            found.version, found.tag
        )),
        _ => Ok(()),
    };
    if found.version == version {
        return reached(tag);
    }
    for delta in deltas {
        if delta.base_version != version {
            continue;
        }
        match (delta.parent_tag, tag) {
            (0, _) => {}
            (parent, Some(tag)) if parent == tag => {}
            (_, Some(_)) => continue,
            // Which delta the state machine applies here depends on a tag not recorded.
            (_, None) => return Ok(()),
        }
        version += 1;
        if delta.tag != 0 {
            tag = Some(delta.tag);
        }
        if version == found.version {
            return reached(tag);
        }
    }
    if found.version <= version + UNFLUSHED {
        return Ok(());
    }
    Err(format!(
        "it is at version {}, and the log leads from version {} to version {version}",
        found.version, recorded.0
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
                check((3, Some(30)), found(version, tag), &log(), &[]),
                Ok(()),
                "version {version}"
            );
        }
    }

    #[test]
    fn a_database_with_another_history_is_refused() {
        for (version, tag) in [(3, 31), (5, 99), (6, 61)] {
            let refused = check((3, Some(30)), found(version, tag), &log(), &[]);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|why| why.contains("where the log leads to tag")),
                "version {version}: {refused:?}"
            );
        }
    }

    #[test]
    fn a_database_far_past_the_log_is_refused_and_one_just_past_it_is_not() {
        let just = 6 + UNFLUSHED;
        assert_eq!(check((3, Some(30)), found(just, 1), &log(), &[]), Ok(()));
        let refused = check((3, Some(30)), found(just + 1, 1), &log(), &[]);
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
            check((3, Some(30)), found(1000, 7), &log(), &[(1000, 7)]),
            Ok(())
        );
        assert!(check((3, Some(30)), found(1000, 7), &log(), &[(1000, 8)]).is_err());
    }

    #[test]
    fn without_a_recorded_tag_the_walk_checks_what_it_can() {
        // Untagged parents: the walk goes on and finds the tag of version 6.
        assert!(check(
            (4, None),
            found(6, 61),
            &[delta(4, 50, 0), delta(5, 60, 0)],
            &[]
        )
        .is_err());
        // A delta naming a parent the store did not record: cannot tell, accepted.
        assert_eq!(check((4, None), found(6, 61), &log()[1..], &[]), Ok(()));
        // At the recorded version itself nothing is known to compare with.
        assert_eq!(check((4, None), found(4, 5), &log(), &[]), Ok(()));
    }
}
