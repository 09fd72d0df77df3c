//! [`Applier`]: writes committed page deltas (and whole images) into the database.
//!
//! Every node applies every committed delta here, so all replicas go through the same code
//! path and end up byte-identical. The one exception is the leader's own batch still open on
//! its executor (no write pipeline): that is committed in place, which writes the very pages
//! the delta carries (see `Database::apply`); only page 1's change counter, which each file
//! keeps for itself, may differ. Pages are written through the
//! writable `sqlite_dbpage` virtual table, in one transaction, so readers see either all of a
//! delta or none of it, and the WAL/checkpoint machinery stays SQLite's.
//!
//! Rules (each found by breaking it in `spikes/pagedelta`):
//! * **Dedicated connection.** `sqlite_dbpage` copies raw bytes beneath the btree layer, so
//!   btree pages this connection decoded earlier go stale; nothing else may use it, and
//!   `sqlite3_db_release_memory` drops its cache after every apply, error or not.
//! * **Page 1 and the truncation last, in one statement.** Page 1 carries the schema cookie;
//!   a statement started after it changed would reload the schema against the old page count.
//!   A truncation (`INSERT (N+1, NULL)`) is cancelled by any later page write.
//! * **Version check.** A delta applies only to a database at exactly its `base_version`;
//!   a newer database means "already applied or stale" (skipped), an older one means a gap.
//!   A delta captured on top of another in flight (`parent_tag`) also needs the database to
//!   hold that tag; at its version with another tag, the delta below it was lost and another
//!   took its place (skipped, stale).
//! * **`synchronous=NORMAL`**: an apply is atomic and survives a process crash without an
//!   fsync of its own (WAL mode syncs at checkpoints). After a power loss the file may lack the
//!   last applies; the Raft layer detects that by the database version it recorded and replays
//!   the log from its last snapshot (see `raft::state_machine`). The Raft log is the durable
//!   copy, so the database does not need to pay an fsync per apply.

use super::capture::read_page;
use super::delta::PageDelta;
use super::error::{DbError, Result};
use super::executor::{GateState, WriteGate};
use super::internal;
use rusqlite::{ffi, params, Connection};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// What [`Applier::apply`] did with a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The pages were written; the database is now at `base_version + 1`.
    Applied,
    /// The database is already past the delta's base version: the delta was applied before
    /// (replay after a crash) or captured on an older state. Nothing was written.
    Skipped,
}

/// `e`, from resolving page `pgno` of `delta` on a database at `db_version`, with what tells
/// the next reader where the replicas parted: the page, the versions and the tags.
fn diverged(e: DbError, pgno: u32, delta: &PageDelta, db_version: u64) -> DbError {
    match e {
        DbError::Corrupt(what) => DbError::Corrupt(format!(
            "{what}: page {pgno} of a delta on version {} (tag {:x}, parent {:x}; this \
             database is at version {db_version}, {} pages in the delta)",
            delta.base_version,
            delta.tag,
            delta.parent_tag,
            delta.pages.len()
        )),
        other => other,
    }
}

/// The connection that writes deltas and images. See the module docs.
pub struct Applier {
    conn: Connection,
    gate: WriteGate,
}

fn batch_open() -> DbError {
    DbError::Internal("the executor keeps a batch open on this database".into())
}

/// SQLite file header magic (first 16 bytes of page 1).
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Header bytes 18/19: file format write/read version, 2 = WAL.
const FORMAT_VERSION_BYTES: std::ops::Range<usize> = 18..20;
const WAL_FORMAT: u8 = 2;

/// What page 1's first 100 bytes (the SQLite file header) say.
#[derive(Clone, Copy)]
pub(crate) struct Header {
    /// Bytes 18 and 19, the file format's write and read versions, are 2: WAL.
    pub wal: bool,
    /// Bytes 16–17, big-endian; 1 stands for 65,536 (not checked for validity).
    pub page_size: u32,
    /// Bytes 28–31, the in-header database size in pages, when bytes 92–95 (the change
    /// counter it was written with) say it is current. Only a hint for [`page_count`].
    pub pages: Option<u32>,
}

impl Header {
    /// `None` when the bytes are too short or not an SQLite database.
    pub(crate) fn of(page1: &[u8]) -> Option<Header> {
        if page1.len() < 100 || &page1[..16] != SQLITE_MAGIC {
            return None;
        }
        let word = |at: usize| {
            u32::from_be_bytes([page1[at], page1[at + 1], page1[at + 2], page1[at + 3]])
        };
        Some(Header {
            wal: page1[FORMAT_VERSION_BYTES].iter().all(|&v| v == WAL_FORMAT),
            page_size: match u16::from_be_bytes([page1[16], page1[17]]) {
                1 => 65536,
                n => u32::from(n),
            },
            pages: (word(92) == word(24)).then(|| word(28)),
        })
    }
}

/// The size in pages of the database open on `conn`, as `PRAGMA page_count` answers it, inside
/// a transaction the caller has open (a read of the database must have started it).
///
/// A prepared PRAGMA runs only once, so SQLite compiles `page_count` again on every use, and
/// this runs for every batch on the leader and every apply on each node. `sqlite_dbpage`
/// answers whether a page number exists from the very count the pragma reads (the btree's),
/// without reading the page, from a cached statement: `hint` (page 1's in-header size,
/// [`Header::pages`]) is the count when page `hint` exists and page `hint + 1` does not.
/// Without a hint, or with a wrong one, the pragma answers.
pub(crate) fn page_count(conn: &Connection, hint: Option<u32>) -> Result<u32> {
    let exists = |pgno: u32| -> Result<bool> {
        Ok(conn
            .prepare_cached(internal::internal_sql!(
                "SELECT 1 FROM sqlite_dbpage WHERE pgno = ?1"
            ))?
            .exists([pgno])?)
    };
    if let Some(pages) = hint {
        if (pages == 0 || exists(pages)?) && !exists(pages.saturating_add(1))? {
            return Ok(pages);
        }
    }
    Ok(conn
        .prepare_cached(internal::internal_sql!("PRAGMA page_count"))?
        .query_row([], |r| r.get(0))?)
}

impl Applier {
    /// Open the applier's connection on an existing WAL database.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Applier> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(busy_timeout)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        Ok(Applier {
            conn,
            gate: WriteGate::default(),
        })
    }

    /// The gate this applier's writes take; the executor on the same database shares it.
    pub fn gate(&self) -> WriteGate {
        self.gate.clone()
    }

    /// Apply one delta atomically, subject to the version check.
    pub fn apply(&self, delta: &PageDelta) -> Result<ApplyOutcome> {
        self.apply_unless_batch_open(delta)?.ok_or_else(batch_open)
    }

    /// [`Applier::apply`]; `None`, with nothing done, while the executor sharing the gate
    /// keeps a batch open for its commit in place (it holds SQLite's write lock: end it first).
    pub(crate) fn apply_unless_batch_open(
        &self,
        delta: &PageDelta,
    ) -> Result<Option<ApplyOutcome>> {
        delta.validate()?;
        self.unless_batch_open(
            |held| {
                // Committed in place ahead of this apply (see `Executor::commit_early`).
                held.take_ahead(delta).then_some(ApplyOutcome::Applied)
            },
            || self.apply_in_transaction(delta),
        )
    }

    /// Overwrite the whole database with the image at `path`: a plain SQLite file with the
    /// same page size (e.g. written by [`build_image`](super::snapshot::build_image)). No
    /// version check — an image replaces whatever state this node had.
    pub fn install_image(&self, path: &Path) -> Result<()> {
        self.install_image_unless_batch_open(path)?
            .ok_or_else(batch_open)
    }

    /// [`Applier::install_image`], or `None` as [`Applier::apply_unless_batch_open`].
    pub(crate) fn install_image_unless_batch_open(&self, path: &Path) -> Result<Option<()>> {
        let installed = self.unless_batch_open(
            |held| {
                held.forget_ahead();
                None
            },
            || {
                self.install_in_transaction(path)
                    .map(|()| ApplyOutcome::Applied)
            },
        )?;
        Ok(installed.map(|_| ()))
    }

    /// Runs `write` under the gate and ends it (see [`Applier::end_write`]), unless `first`,
    /// under the gate too, already knows the outcome; `None`, with nothing done, while the
    /// executor keeps a batch open.
    fn unless_batch_open(
        &self,
        first: impl FnOnce(&mut GateState) -> Option<ApplyOutcome>,
        write: impl FnOnce() -> Result<ApplyOutcome>,
    ) -> Result<Option<ApplyOutcome>> {
        let mut held = self.gate.hold();
        if let Some(done) = first(&mut held) {
            return Ok(Some(done));
        }
        if held.batch_open() {
            return Ok(None);
        }
        self.end_write(write()).map(Some)
    }

    /// The database's version counter (0 before the first write) and tag (see `delta.rs`).
    pub fn state(&self) -> Result<(u64, u64)> {
        Ok((
            internal::read_version(&self.conn)?,
            internal::read_tag(&self.conn)?,
        ))
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Runs once per delta on every node: its statements come from the statement cache.
    fn apply_in_transaction(&self, delta: &PageDelta) -> Result<ApplyOutcome> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let current_pages = self.check_page_size(delta.page_size)?;
        let db_version = internal::read_version(&self.conn)?;
        if db_version < delta.base_version {
            return Err(DbError::Corrupt(format!(
                "delta based on version {} but database is at {db_version}",
                delta.base_version
            )));
        }
        // The tag matters only to a delta that names its parent.
        let db_tag = match delta.parent_tag {
            0 => 0,
            _ => internal::read_tag(&self.conn)?,
        };
        if !delta.applies_to(db_version, db_tag) {
            self.conn.execute_batch("ROLLBACK")?;
            return Ok(ApplyOutcome::Skipped);
        }
        // Growing the file without carrying its new last page would leave page 1 claiming more
        // pages than the file has ("malformed"); a delta from the executor always carries it.
        if delta.db_pages > current_pages && delta.pages.last().map(|p| p.0) != Some(delta.db_pages)
        {
            return Err(DbError::Corrupt(format!(
                "delta grows the database from {current_pages} to {} pages but lacks page {}",
                delta.db_pages, delta.db_pages
            )));
        }
        // Patches need this node's image of the page at the base version: read each page
        // before it is written (page 1 before any), within this transaction.
        let page1 = match delta.pages.first().filter(|p| p.0 == 1) {
            Some((_, image)) => Some(image.resolve(|| read_page(&self.conn, 1))?),
            None => None,
        };
        {
            let mut insert = self.insert_page_statement()?;
            for (pgno, image) in delta.pages.iter().filter(|p| p.0 != 1) {
                let data = image
                    .resolve(|| read_page(&self.conn, *pgno))
                    .map_err(|e| diverged(e, *pgno, delta, db_version))?;
                insert.execute(params![pgno, &*data])?;
            }
        }
        self.write_page1_and_size(page1.as_deref(), delta.db_pages, current_pages)?;
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(ApplyOutcome::Applied)
    }

    fn install_in_transaction(&self, path: &Path) -> Result<()> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let mut header = [0u8; 100];
        file.read_exact(&mut header)
            .map_err(|e| DbError::Corrupt(format!("image too short: {e}")))?;
        let page_size = Header::of(&header)
            .ok_or_else(|| DbError::Corrupt("image is not an SQLite database".into()))?
            .page_size;
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(DbError::Corrupt(format!(
                "image has invalid page size {page_size}"
            )));
        }
        if len == 0 || len % u64::from(page_size) != 0 {
            return Err(DbError::Corrupt(format!(
                "image size {len} is not a multiple of its page size {page_size}"
            )));
        }
        let image_pages = u32::try_from(len / u64::from(page_size))
            .map_err(|_| DbError::TooLarge(format!("image of {len} bytes")))?;

        // An installed image replaces the state a log's entries built, and no entry can build
        // it again: its commit is synced (an apply's is not, see [`Applier::open`]), before the
        // snapshot that names it is recorded or the log behind it purged.
        self.conn.execute_batch("PRAGMA synchronous=FULL")?;
        let installed = self.install_pages(path, page_size, image_pages);
        let normal = self.conn.execute_batch("PRAGMA synchronous=NORMAL");
        installed?;
        Ok(normal?)
    }

    /// The image's pages in one transaction (see [`Applier::install_in_transaction`]).
    fn install_pages(&self, path: &Path, page_size: u32, image_pages: u32) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let current_pages = self.check_page_size(page_size)?;
        // Stream the image page by page: it can be much larger than memory.
        let mut file = std::fs::File::open(path)?;
        let mut page1 = vec![0u8; page_size as usize];
        file.read_exact(&mut page1)?;
        page1[FORMAT_VERSION_BYTES].fill(WAL_FORMAT);
        {
            let mut insert = self.insert_page_statement()?;
            let mut page = vec![0u8; page_size as usize];
            for pgno in 2..=image_pages {
                file.read_exact(&mut page)?;
                insert.execute(params![pgno, page])?;
            }
        }
        self.write_page1_and_size(Some(&page1), image_pages, current_pages)?;
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Current size in pages; errors if the database has pages of a different size. Both come
    /// from page 1's header (checked, see [`page_count`]): `PRAGMA page_size` and
    /// `PRAGMA page_count` would be compiled again for every delta.
    fn check_page_size(&self, page_size: u32) -> Result<u32> {
        let header = read_page(&self.conn, 1)?.as_deref().and_then(Header::of);
        let pages = page_count(&self.conn, header.and_then(|h| h.pages))?;
        let current = match header {
            Some(h) => h.page_size,
            None if pages == 0 => return Ok(0),
            None => self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?,
        };
        if pages > 0 && current != page_size {
            return Err(DbError::Corrupt(format!(
                "page size mismatch: delta has {page_size}, database has {current}"
            )));
        }
        Ok(pages)
    }

    fn insert_page_statement(&self) -> Result<rusqlite::CachedStatement<'_>> {
        Ok(self
            .conn
            .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES(?1, ?2)")?)
    }

    /// Page 1 and the truncation, last and in ONE statement (see the module docs).
    fn write_page1_and_size(
        &self,
        page1: Option<&[u8]>,
        db_pages: u32,
        current: u32,
    ) -> Result<()> {
        let truncate = db_pages < current;
        let conn = &self.conn;
        match (page1, truncate) {
            (Some(p1), true) => conn
                .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES(1, ?1), (?2, NULL)")?
                .execute(params![p1, db_pages + 1])?,
            (Some(p1), false) => conn
                .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES(1, ?1)")?
                .execute(params![p1])?,
            (None, true) => conn
                .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES(?1, NULL)")?
                .execute(params![db_pages + 1])?,
            (None, false) => 0,
        };
        Ok(())
    }

    /// Roll back whatever is still open and drop the connection's (possibly stale) page cache.
    fn end_write(&self, result: Result<ApplyOutcome>) -> Result<ApplyOutcome> {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rollback of a failed apply failed");
            }
        }
        // SAFETY: the handle belongs to `self.conn`, which is open and used only on this
        // thread; sqlite3_db_release_memory only frees unused cache memory of that connection.
        unsafe { ffi::sqlite3_db_release_memory(self.conn.handle()) };
        result
    }
}
