//! The write pipeline's chain: deltas the leader has captured and proposed but not yet
//! applied, and the executor's view on top of them.
//!
//! A batch executed only after the previous delta is applied waits a whole Raft round trip
//! plus the apply. Instead, the executor may run the next batch on top of deltas still in
//! flight: after `BEGIN IMMEDIATE` it writes their pages into its own (never committed)
//! transaction through `sqlite_dbpage` ([`Chain::lay`]), so the batch sees the state they
//! lead to, and the new delta is captured against that state. Each delta of a chain names
//! its parent's tag, so it applies only right after it (see `delta.rs`): if one is lost in a
//! leadership change, the rest are skipped as stale on every node.
//!
//! Writing raw pages beneath a btree is safe here only because of three rules:
//! * **No page decoded before it was written.** A cached page keeps its decoded cell index
//!   when `sqlite_dbpage` overwrites its bytes. The pages a chain writes were all written (so
//!   dirty) in the executor's previous transaction, and its rollback dropped them from the
//!   cache; on top of that the connection drops every clean cached page before writing
//!   (`sqlite3_db_release_memory`; only page 1 stays, pinned by the transaction).
//! * **The page count re-read.** The pages are written inside a savepoint; its `RELEASE`
//!   makes the btree re-read the database size from page 1, so pages the chain added are not
//!   allocated twice. Checked afterwards against `PRAGMA page_count`.
//! * **Only plain deltas are stacked on.** A delta that changed the schema or any of page 1's
//!   header fields the connection keeps in memory, or that shrank the file, is not a link
//!   ([`Link::stackable`]): the next batch waits for it to be applied.

use super::capture::read_page;
use super::delta::{follows, PageDelta};
use super::error::{DbError, Result};
use super::internal::{self, internal_sql};
use rusqlite::config::DbConfig;
use rusqlite::{ffi, Connection};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Largest delta another batch is executed on top of (its full pages stay in memory until it
/// is applied); a larger one is waited for.
pub(crate) const MAX_LINK_BYTES: usize = 4 << 20;
/// Page 1 bytes that may differ between a stackable delta and its base: the change counter
/// and size (24..32), the free-list head and count (32..40), version-valid-for and the SQLite
/// version (92..100). The btree reads these from the page itself; the rest of the header
/// (schema cookie, encoding, auto-vacuum ...) and the schema table's own cells it keeps in
/// memory, or they change only with the schema.
const PAGE1_MUTABLE: [std::ops::Range<usize>; 2] = [24..40, 92..100];

/// A captured delta the next batch may be executed on top of: its full page images.
pub struct Link {
    base_version: u64,
    tag: u64,
    parent_tag: u64,
    db_pages: u32,
    pages: Vec<(u32, Arc<Vec<u8>>)>,
}

impl Link {
    /// The link for a delta, if the next batch may be executed on top of it. `images` are the
    /// full new images of the delta's pages (in its order); `page1_before` is page 1 as the
    /// transaction found it, `pages_before` the database size it started from.
    pub(crate) fn stackable(
        delta: &PageDelta,
        images: Vec<(u32, Vec<u8>)>,
        page1_before: Option<&[u8]>,
        pages_before: u32,
    ) -> Option<Link> {
        let bytes: usize = images.iter().map(|(_, p)| p.len()).sum();
        if bytes > MAX_LINK_BYTES || delta.db_pages < pages_before || delta.tag == 0 {
            return None;
        }
        if let Some((1, page1)) = images.first() {
            if !only_mutable_header_changed(page1_before?, page1) {
                return None;
            }
        }
        Some(Link {
            base_version: delta.base_version,
            tag: delta.tag,
            parent_tag: delta.parent_tag,
            db_pages: delta.db_pages,
            pages: images.into_iter().map(|(p, d)| (p, Arc::new(d))).collect(),
        })
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("base_version", &self.base_version)
            .field("tag", &self.tag)
            .field("parent_tag", &self.parent_tag)
            .field("db_pages", &self.db_pages)
            .field("pgnos", &self.pages.iter().map(|p| p.0).collect::<Vec<_>>())
            .finish()
    }
}

fn only_mutable_header_changed(before: &[u8], after: &[u8]) -> bool {
    if before.len() != after.len() || before.len() < 100 {
        return false;
    }
    let mut masked = before.to_vec();
    for range in PAGE1_MUTABLE {
        masked[range.clone()].copy_from_slice(&after[range]);
    }
    masked == after
}

/// The executor's deltas in flight, oldest first.
#[derive(Default)]
pub(crate) struct Chain {
    links: VecDeque<Link>,
}

/// What [`Chain::lay`] put beneath the transaction: the newest image of each page the chain
/// wrote (the base a new delta's patches are computed against), the chain's last tag, and the
/// database size it leaves (`None`: nothing laid).
#[derive(Default)]
pub(crate) struct Overlay {
    pub pages: BTreeMap<u32, Arc<Vec<u8>>>,
    pub parent_tag: u64,
    pub db_pages: Option<u32>,
}

impl Chain {
    pub(crate) fn clear(&mut self) {
        self.links.clear();
    }

    pub(crate) fn extend(&mut self, link: Option<Link>) {
        self.links.extend(link);
    }

    /// Right after `BEGIN IMMEDIATE`, before anything else reads the database: forget the
    /// links already applied and write the pages of the rest into the transaction.
    pub(crate) fn lay(&mut self, conn: &Connection) -> Result<Overlay> {
        if self.links.is_empty() {
            return Ok(Overlay::default());
        }
        let version = internal::read_version(conn)?;
        while self.links.front().is_some_and(|l| l.base_version < version) {
            self.links.pop_front();
        }
        let Some(first) = self.links.front() else {
            return Ok(Overlay::default());
        };
        let tag = internal::read_tag(conn)?;
        if !follows(first.base_version, first.parent_tag, version, tag) {
            let found = (first.base_version, first.parent_tag);
            self.links.clear();
            return Err(DbError::Stale(format!(
                "the write pipeline is out of step with the database (a delta on version {} \
                 after tag {:#x} is in flight; the database is at version {version}, tag \
                 {tag:#x}); retry",
                found.0, found.1
            )));
        }
        let mut pages = BTreeMap::new();
        for link in &self.links {
            for (pgno, image) in &link.pages {
                pages.insert(*pgno, image.clone());
            }
        }
        let last = self.links.back().map_or(0, |l| l.tag);
        let db_pages = self.links.back().map_or(0, |l| l.db_pages);
        write_pages(conn, &pages)?;
        let now: u32 = conn
            .prepare_cached(internal_sql!("PRAGMA page_count"))?
            .query_row([], |r| r.get(0))?;
        if now != db_pages {
            self.links.clear();
            return Err(DbError::Internal(format!(
                "the write pipeline laid its deltas but the database has {now} pages, not \
                 {db_pages}; retry"
            )));
        }
        Ok(Overlay {
            pages,
            parent_tag: last,
            db_pages: Some(db_pages),
        })
    }
}

/// Write `pages` (page 1 last) into the open transaction, under the rules in the module docs.
fn write_pages(conn: &Connection, pages: &BTreeMap<u32, Arc<Vec<u8>>>) -> Result<()> {
    // SAFETY: the handle is `conn`'s, open and used on this thread only; the call frees
    // unused cached pages of that connection (none is dirty: nothing was written yet).
    unsafe { ffi::sqlite3_db_release_memory(conn.handle()) };
    // `sqlite_dbpage` is read-only under SQLITE_DBCONFIG_DEFENSIVE; no client SQL runs
    // while it is off.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, false)?;
    let written = (|| -> Result<()> {
        conn.prepare_cached(internal_sql!("SAVEPOINT raftlite_chain"))?
            .execute([])?;
        let mut insert = conn.prepare_cached(internal_sql!(
            "INSERT INTO sqlite_dbpage(pgno, data) VALUES(?1, ?2)"
        ))?;
        let page1 = pages.get(&1);
        for (pgno, image) in pages.iter().filter(|p| *p.0 != 1) {
            insert.execute(rusqlite::params![pgno, image.as_slice()])?;
        }
        if let Some(page1) = page1 {
            insert.execute(rusqlite::params![1, page1.as_slice()])?;
        }
        // RELEASE re-reads the database size from page 1 (see the module docs).
        conn.prepare_cached(internal_sql!("RELEASE raftlite_chain"))?
            .execute([])?;
        Ok(())
    })();
    let restored = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true);
    written?;
    restored?;
    // Page 1 as written must be what the btree now reads.
    if let Some(page1) = pages.get(&1) {
        if read_page(conn, 1)?.as_deref() != Some(page1.as_slice()) {
            return Err(DbError::Internal(
                "the write pipeline could not lay page 1".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page1_header_fields_the_btree_caches_are_not_stacked_on() {
        let before = vec![0u8; 512];
        let mut after = before.clone();
        after[24] = 1; // change counter
        after[28] = 9; // size in pages
        after[36] = 2; // free-list count
        after[96] = 3; // SQLite version
        assert!(only_mutable_header_changed(&before, &after));
        let mut schema = after.clone();
        schema[40] = 1; // schema cookie
        assert!(!only_mutable_header_changed(&before, &schema));
        let mut cell = after.clone();
        cell[300] = 1; // the schema table's cells
        assert!(!only_mutable_header_changed(&before, &cell));
        assert!(!only_mutable_header_changed(&before, &after[..100]));
    }
}
