//! Capture the pages an open write transaction changed, without committing it.
//!
//! This is the leader half of the page-delta write path (proven in `spikes/pagedelta`):
//!
//! 1. [`start`] runs right after `BEGIN IMMEDIATE` and remembers page 1.
//! 2. The caller runs its statements.
//! 3. [`finish`] flushes every dirty page into the WAL as uncommitted frames
//!    (`sqlite3_db_cacheflush`), takes their page numbers from the wal-index, adds page 1 if
//!    it changed, and reads the current contents through `sqlite_dbpage`. Each page other than
//!    page 1 that the base database already has travels as a patch against its base image
//!    (read through a second, read-only connection, which sees only committed data) when that
//!    is smaller.
//!    The caller then rolls back: the database never holds data Raft has not committed.
//!
//! Why the wal-index (`-shm`) and not the `-wal` file: SQLite writes one `aPgno[]` entry per
//! appended frame and zeroes the entries past `mxFrame` on ROLLBACK, so entries
//! `mxFrame+1 ..` up to the first zero are exactly this transaction's frames. Scanning the WAL
//! file instead breaks on spilled frames (rewritten with zero salts until COMMIT) and picks up
//! stale frames of rolled-back transactions. The mapping is reached through SQLite's own file
//! handle (`SQLITE_FCNTL_FILE_POINTER` → `xShmMap`): opening the files ourselves would drop
//! SQLite's POSIX locks when our descriptor closes.
//!
//! Why page 1 separately: the btree keeps page 1 referenced for the whole transaction, and
//! `sqlite3_db_cacheflush` skips referenced pages, so page 1 never reaches the WAL here.
//!
//! The scan stops at the first zero and never passes the last frame the `-wal` file can hold
//! ([`WalBound`]): frames past it could only be a stale region of an older, longer WAL. The
//! file's size is asked once and again only when the WAL was restarted or a scan reaches it,
//! not for every batch: each `fstat` marks the file's change time as read, and Linux's
//! multigrain timestamps then give its next write a fine-grained time, which moves the clock
//! every file's next change is stamped with; on ext4 without a journal every Raft log append
//! then wrote its inode too (BENCHMARKS.md, session 29).
//!
//! Page *contents* always come from `sqlite_dbpage`, which reads through the pager and
//! therefore sees the transaction's uncommitted state; page numbers beyond the transaction's
//! final size (`PRAGMA page_count`) are dropped. Over-reporting a page number is harmless (its
//! current image is shipped); missing one would not be, and cannot happen because every dirty
//! page other than page 1 is in the WAL after the flush.

use super::apply::{page_count, Header};
use super::chain::{Overlay, MAX_LINK_BYTES};
use super::delta::{PageDelta, PageImage};
use super::error::{DbError, Result};
use super::internal::internal_sql;
use rusqlite::{ffi, Connection, OptionalExtension};
use std::collections::BTreeSet;
use std::ffi::{c_int, c_void};
use std::ptr;

/// Size of one wal-index region (`WALINDEX_PGSZ`): 4096 `u32` page numbers + 8192 `u16` slots.
const SHM_REGION_BYTES: c_int = 32768;
/// Frames indexed per region (`HASHTABLE_NPAGE`).
const FRAMES_PER_REGION: u32 = 4096;
/// The wal-index header (two `WalIndexHdr` copies + `WalCkptInfo`) takes 136 bytes of region 0.
const SHM_HEADER_WORDS: u32 = 136 / 4;
/// Frames indexed by region 0 (`HASHTABLE_NPAGE_ONE`).
const FRAMES_IN_REGION0: u32 = FRAMES_PER_REGION - SHM_HEADER_WORDS;
/// Byte offset of `mxFrame` (last committed frame) in the first `WalIndexHdr` copy.
const MX_FRAME_OFFSET: usize = 16;
/// Byte offset of `aSalt[2]` in the first `WalIndexHdr` copy: new salts with every restart of
/// the WAL (and every truncation).
const SALT_OFFSET: usize = 32;
/// WAL file header and per-frame header sizes.
const WAL_HEADER_BYTES: i64 = 32;
const WAL_FRAME_HEADER_BYTES: i64 = 24;

/// State remembered when a captured transaction starts.
pub(crate) struct CaptureStart {
    page1: Option<Vec<u8>>,
    page_size: u32,
}

impl CaptureStart {
    /// Page 1 as the transaction found it.
    pub(crate) fn page1(&self) -> Option<&[u8]> {
        self.page1.as_deref()
    }
}

/// Call inside a freshly begun write transaction, before any statement changes the database.
///
/// The journal mode and the page size come from page 1's header, read here anyway: a prepared
/// `PRAGMA journal_mode` runs only once (SQLite compiles it again for every batch), and
/// `PRAGMA page_size` cannot be cached (see [`page_size`]). Neither can change inside the
/// transaction. Only an empty database, which has no header yet, asks SQLite.
pub(crate) fn start(conn: &Connection) -> Result<CaptureStart> {
    let page1 = read_page(conn, 1)?;
    let (wal, page_size) = match page1.as_deref().and_then(Header::of) {
        Some(header) => (header.wal, header.page_size),
        None => {
            let mode: String = conn
                .prepare_cached(internal_sql!("PRAGMA journal_mode"))?
                .query_row([], |r| r.get(0))?;
            (mode.eq_ignore_ascii_case("wal"), page_size(conn)?)
        }
    };
    if !wal {
        return Err(DbError::Internal(
            "page capture needs journal_mode=WAL, the database is not in WAL mode".into(),
        ));
    }
    Ok(CaptureStart { page1, page_size })
}

/// What [`finish`] captured: the delta, the full new images of its pages when they are wanted
/// (`keep_images`) and few enough for the write pipeline to keep (see `chain.rs`), and the
/// database size the transaction started from.
pub(crate) struct Captured {
    pub delta: PageDelta,
    pub images: Option<Vec<(u32, Vec<u8>)>>,
    pub pages_before: u32,
}

/// Collect the transaction's changed pages. All statements on `conn` must be reset (no open
/// cursors); `wal` is what this connection knows of its `-wal` file's size. The transaction
/// stays open; the caller rolls it back. `base` is a read-only connection to the same
/// database: while `conn` holds the write lock, what it reads is the committed state. The
/// delta is based on that state with the pipeline's `overlay` on top: pages the overlay holds
/// are compared with, and patched against, its images (and left out when this transaction did
/// not change them).
pub(crate) fn finish(
    (conn, wal): (&Connection, &WalBound),
    base: &Connection,
    start: &CaptureStart,
    (base_version, tag): (u64, u64),
    overlay: &Overlay,
    max_bytes: usize,
    keep_images: bool,
) -> Result<Captured> {
    // SAFETY: `conn.handle()` is a valid open connection owned by `conn` for this call; the
    // function only flushes that connection's page cache.
    let rc = unsafe { ffi::sqlite3_db_cacheflush(conn.handle()) };
    check(rc, "sqlite3_db_cacheflush")?;

    let page_size = start.page_size;
    let mut page1 = read_page(conn, 1)?;
    let db_pages = page_count(conn, header_pages(page1.as_deref()))?;
    let mut pgnos = uncommitted_pgnos(conn, page_size, wal)?;
    pgnos.remove(&1);
    if page1 != start.page1 {
        pgnos.insert(1);
    }
    // Checked on the page count, before a byte is read (an oversized transaction costs no
    // memory here), leaving out the pipeline's pages (bounded), which may not have changed;
    // checked again once they are known.
    let too_large = |pages: usize| {
        let bytes = pages.saturating_mul(page_size as usize);
        (bytes > max_bytes).then(|| {
            DbError::TooLarge(format!(
                "the write changes {bytes} bytes of pages, over the limit of {max_bytes} bytes \
                 (max_delta_bytes); split it into smaller transactions"
            ))
        })
    };
    let own = pgnos
        .iter()
        .filter(|p| !overlay.pages.contains_key(p))
        .count();
    if let Some(e) = too_large(own) {
        return Err(e);
    }
    // The pages' full images for the pipeline, while they stay within a link's size.
    let mut images = keep_images.then(Vec::new);
    let mut image_bytes = 0usize;
    let mut pages = Vec::with_capacity(pgnos.len());
    // The committed size is the one the transaction started from, unless the pipeline's
    // overlay lay beneath it (then the hint is wrong and SQLite answers).
    let base_pages = BaseReader::begin(base, header_pages(start.page1.as_deref()))?;
    for pgno in pgnos.into_iter().filter(|&p| p >= 1 && p <= db_pages) {
        let data = match pgno {
            1 => page1.take(),
            _ => read_page(conn, pgno)?,
        }
        .ok_or_else(|| DbError::Internal(format!("page {pgno} vanished during capture")))?;
        let laid = overlay.pages.get(&pgno).filter(|_| pgno != 1);
        if laid.is_some_and(|before| before.as_slice() == data.as_slice()) {
            continue; // the overlay wrote it; this transaction did not change it
        }
        image_bytes += data.len();
        if image_bytes > MAX_LINK_BYTES {
            images = None;
        }
        if let Some(images) = images.as_mut() {
            images.push((pgno, data.clone()));
        }
        // Page 1 always in full: its change counter and SQLite version bytes are each node's
        // own (a node that installed an image counts differently), so no base image of it is
        // common to all replicas.
        let image = match laid {
            _ if pgno == 1 => PageImage::Full(data),
            Some(before) => PageImage::between(Some(before.as_slice()), data),
            None => PageImage::between(base_pages.page(pgno)?.as_deref(), data),
        };
        pages.push((pgno, image));
    }
    let pages_before = overlay.db_pages.unwrap_or(base_pages.pages);
    base_pages.end()?;
    if let Some(e) = too_large(pages.len()) {
        return Err(e);
    }
    let delta = PageDelta {
        page_size,
        db_pages,
        base_version,
        tag,
        parent_tag: overlay.parent_tag,
        pages,
    };
    delta.validate()?;
    Ok(Captured {
        delta,
        images,
        pages_before,
    })
}

/// Pages of the committed database, read in one read transaction on the base connection
/// (rolled back if dropped: a read transaction left open would keep checkpoints from
/// finishing). Its `BEGIN` and `COMMIT` come from the statement cache: one per batch,
/// they are not worth compiling each time.
struct BaseReader<'c> {
    conn: &'c Connection,
    pages: u32,
    open: bool,
}

impl<'c> BaseReader<'c> {
    /// `hint`: the committed size in pages, if known (see [`page_count`]). The read
    /// transaction starts with the first statement that reads (`sqlite_dbpage` does).
    fn begin(conn: &'c Connection, hint: Option<u32>) -> Result<BaseReader<'c>> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        let mut reader = BaseReader {
            conn,
            pages: 0,
            open: true,
        };
        reader.pages = page_count(conn, hint)?;
        Ok(reader)
    }

    /// The committed image of `pgno`, or `None` for a page beyond the committed database.
    fn page(&self, pgno: u32) -> Result<Option<Vec<u8>>> {
        if pgno > self.pages {
            return Ok(None);
        }
        read_page(self.conn, pgno)
    }

    fn end(mut self) -> Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for BaseReader<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Whether the open transaction has changed any page since [`start`] (flushes the page cache
/// to find out, as [`finish`] does).
pub(crate) fn changed(conn: &Connection, start: &CaptureStart, wal: &WalBound) -> Result<bool> {
    Ok(changed_bytes(conn, wal)? > 0 || read_page(conn, 1)? != start.page1)
}

/// Bytes of the pages the open transaction has changed so far, page 1 aside (flushes the page
/// cache to count them, as [`finish`] does): what its delta would carry.
pub(crate) fn changed_bytes(conn: &Connection, wal: &WalBound) -> Result<usize> {
    // SAFETY: as in `finish`.
    let rc = unsafe { ffi::sqlite3_db_cacheflush(conn.handle()) };
    check(rc, "sqlite3_db_cacheflush")?;
    let page_size = page_size(conn)?;
    Ok(uncommitted_pgnos(conn, page_size, wal)?
        .len()
        .saturating_mul(page_size as usize))
}

/// The in-header database size of page 1, if any (a hint for [`page_count`]).
fn header_pages(page1: Option<&[u8]>) -> Option<u32> {
    page1.and_then(Header::of).and_then(|h| h.pages)
}

/// One page through `sqlite_dbpage` (sees the connection's own uncommitted changes).
pub(crate) fn read_page(conn: &Connection, pgno: u32) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached(internal_sql!(
            "SELECT data FROM sqlite_dbpage WHERE pgno = ?1"
        ))?
        .query_row([pgno], |r| r.get(0))
        .optional()?)
}

/// Not from the statement cache: SQLite compiles the current page size into the prepared
/// `PRAGMA page_size` as a constant.
fn page_size(conn: &Connection) -> Result<u32> {
    Ok(conn.query_row("PRAGMA page_size", [], |r| r.get(0))?)
}

fn check(rc: c_int, what: &str) -> Result<()> {
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        // SAFETY: sqlite3_errstr returns a pointer to a static, NUL-terminated string for any
        // result code.
        let msg = unsafe { std::ffi::CStr::from_ptr(ffi::sqlite3_errstr(rc)) };
        Err(DbError::Internal(format!(
            "{what} failed: {} ({rc})",
            msg.to_string_lossy()
        )))
    }
}

/// SQLite's own `sqlite3_file` for the main database (`SQLITE_FCNTL_FILE_POINTER`) or its WAL
/// (`SQLITE_FCNTL_JOURNAL_POINTER`).
fn file_pointer(conn: &Connection, op: c_int) -> Result<*mut ffi::sqlite3_file> {
    let mut file: *mut ffi::sqlite3_file = ptr::null_mut();
    // SAFETY: both opcodes write one `sqlite3_file*` into the pointed-to location; `file` lives
    // for the duration of the call and the schema name is a static C string.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            op,
            (&mut file as *mut *mut ffi::sqlite3_file).cast::<c_void>(),
        )
    };
    check(rc, "sqlite3_file_control")?;
    // SAFETY: a non-null `file` returned by SQLite points to an open sqlite3_file whose
    // `pMethods` is either null (closed) or a valid method table.
    if file.is_null() || unsafe { (*file).pMethods.is_null() } {
        return Err(DbError::Internal("database file handle is not open".into()));
    }
    Ok(file)
}

/// Map wal-index region `region` of the main database (without extending the `-shm` file).
/// Returns `None` if the region does not exist yet.
fn shm_region(file: *mut ffi::sqlite3_file, region: u32) -> Result<Option<*const u32>> {
    // SAFETY: `file` comes from `file_pointer` (valid, open, non-null method table).
    let map = unsafe { (*(*file).pMethods).xShmMap }
        .ok_or_else(|| DbError::Internal("VFS has no xShmMap".into()))?;
    let index = c_int::try_from(region)
        .map_err(|_| DbError::Internal(format!("wal-index region {region} out of range")))?;
    let mut mapped: *mut c_void = ptr::null_mut();
    // SAFETY: xShmMap with bExtend=0 maps an existing region (or reports none) of the file's
    // shared-memory index; the mapping stays valid while the connection keeps the database
    // open, which outlives this capture. `mapped` is a valid out-pointer.
    let rc = unsafe { map(file, index, SHM_REGION_BYTES, 0, &mut mapped) };
    check(rc, "xShmMap")?;
    Ok((!mapped.is_null()).then_some(mapped as *const u32))
}

/// Upper bound for frame numbers: frames the `-wal` file can hold at its current size.
fn wal_frame_capacity(conn: &Connection, page_size: u32) -> Result<u32> {
    let wal = file_pointer(conn, ffi::SQLITE_FCNTL_JOURNAL_POINTER)?;
    // SAFETY: `wal` is SQLite's open WAL handle (checked non-null with a method table).
    let size_fn = unsafe { (*(*wal).pMethods).xFileSize }
        .ok_or_else(|| DbError::Internal("VFS has no xFileSize".into()))?;
    let mut size: ffi::sqlite3_int64 = 0;
    // SAFETY: xFileSize writes the file size into `size`, a valid out-pointer.
    check(unsafe { size_fn(wal, &mut size) }, "xFileSize(wal)")?;
    let frames = (size - WAL_HEADER_BYTES).max(0) / (WAL_FRAME_HEADER_BYTES + page_size as i64);
    Ok(u32::try_from(frames).unwrap_or(u32::MAX))
}

/// The most frames one connection's `-wal` file can hold, as last measured, and the WAL
/// generation (its salts) it was measured in (see the module docs).
#[derive(Default)]
pub(crate) struct WalBound {
    /// `(salts, frames)`; `None` until first measured.
    known: std::cell::Cell<Option<([u32; 2], u32)>>,
    /// How many times the file was measured.
    #[cfg(test)]
    measured: std::cell::Cell<u32>,
}

impl WalBound {
    /// Frames the file holds, measured again only if the WAL has restarted since (a
    /// truncation restarts it too) or `past` frames were asked for and the last measure held
    /// fewer (the file grew).
    fn frames(&self, conn: &Connection, page_size: u32, salts: [u32; 2], past: u32) -> Result<u32> {
        match self.known.get() {
            Some((known_salts, frames)) if known_salts == salts && frames >= past => Ok(frames),
            _ => {
                let frames = wal_frame_capacity(conn, page_size)?;
                self.known.set(Some((salts, frames)));
                #[cfg(test)]
                self.measured.set(self.measured.get() + 1);
                Ok(frames)
            }
        }
    }
}

/// Page numbers of the WAL frames appended by the open write transaction, read from the
/// wal-index hash tables (see the module docs and SQLite's walformat documentation).
fn uncommitted_pgnos(conn: &Connection, page_size: u32, wal: &WalBound) -> Result<BTreeSet<u32>> {
    let file = file_pointer(conn, ffi::SQLITE_FCNTL_FILE_POINTER)?;
    let region0 = shm_region(file, 0)?
        .ok_or_else(|| DbError::Internal("wal-index is not mapped (not in WAL mode?)".into()))?;
    // SAFETY: region 0 is SHM_REGION_BYTES long and 4-byte aligned (mmap'd); mxFrame is the
    // u32 at byte 16 of the first header copy, the salts the two at byte 32. This connection
    // holds the WAL write lock, so no other connection moves them while we read;
    // read_volatile because the memory is shared.
    let (mx_frame, salts) = unsafe {
        (
            ptr::read_volatile(region0.add(MX_FRAME_OFFSET / 4)),
            [
                ptr::read_volatile(region0.add(SALT_OFFSET / 4)),
                ptr::read_volatile(region0.add(SALT_OFFSET / 4 + 1)),
            ],
        )
    };
    let mut last_possible = wal.frames(conn, page_size, salts, 0)?;

    let mut pgnos = BTreeSet::new();
    let mut current: Option<(u32, *const u32)> = None;
    let mut frame = mx_frame.saturating_add(1); // 1-based frame number
    loop {
        let region = (frame + FRAMES_PER_REGION - FRAMES_IN_REGION0 - 1) / FRAMES_PER_REGION;
        let base = match current {
            Some((r, base)) if r == region => base,
            _ => match shm_region(file, region)? {
                Some(base) => {
                    current = Some((region, base));
                    base
                }
                None => break,
            },
        };
        let slot = if region == 0 {
            SHM_HEADER_WORDS + frame - 1
        } else {
            (frame - 1 - FRAMES_IN_REGION0) % FRAMES_PER_REGION
        };
        // SAFETY: `slot` < 4096 (region 0: 34 + frame - 1 <= 34 + 4061; other regions: modulo
        // 4096), so the read stays inside the mapped SHM_REGION_BYTES region.
        let pgno = unsafe { ptr::read_volatile(base.add(slot as usize)) };
        if pgno == 0 {
            break;
        }
        if frame > last_possible {
            // A frame past the file as last measured: the file grew since, or this is a stale
            // region of an older WAL.
            last_possible = wal.frames(conn, page_size, salts, frame)?;
            if frame > last_possible {
                break;
            }
        }
        pgnos.insert(pgno);
        frame += 1;
    }
    Ok(pgnos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> Result<Connection> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA page_size=4096; PRAGMA journal_mode=WAL;")?;
        Ok(conn)
    }

    /// The journal mode and page size come from page 1's header; a database without one
    /// (empty) asks SQLite, and one that is not in WAL mode is refused.
    #[test]
    fn start_reads_the_journal_mode_and_page_size_off_page_1() -> Result<()> {
        // The page size `start` found, or its refusal, in a write transaction rolled back.
        let started = |conn: &Connection| -> Result<std::result::Result<u32, String>> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let started = start(conn).map(|s| s.page_size).map_err(|e| e.to_string());
            conn.execute_batch("ROLLBACK")?;
            Ok(started)
        };
        let refused = |r: &std::result::Result<u32, String>| {
            r.as_ref().err().is_some_and(|e| e.contains("WAL"))
        };
        let dir = tempfile::tempdir()?;
        let wal = Connection::open(dir.path().join("wal.db"))?;
        wal.execute_batch("PRAGMA page_size=8192; PRAGMA journal_mode=WAL; CREATE TABLE t(x);")?;
        assert_eq!(started(&wal)?, Ok(8192));

        let journal = Connection::open(dir.path().join("journal.db"))?;
        journal.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x);")?;
        let r = started(&journal)?;
        assert!(refused(&r), "a rollback-journal database: {r:?}");

        let empty = Connection::open(dir.path().join("empty.db"))?;
        empty.execute_batch("PRAGMA page_size=16384")?;
        let r = started(&empty)?;
        assert!(
            refused(&r),
            "an empty database in the default (rollback) mode: {r:?}"
        );
        empty.execute_batch("PRAGMA journal_mode=WAL")?;
        assert_eq!(started(&empty)?, Ok(16384));
        Ok(())
    }

    /// The page count from page 1's header, checked through `sqlite_dbpage`, is what
    /// `PRAGMA page_count` says: as the database grows and shrinks, inside a transaction that
    /// changed the size, with wrong hints, and on a reader whose last look is out of date.
    #[test]
    fn page_count_from_the_header_is_the_pragmas() -> Result<()> {
        fn pragma(conn: &Connection) -> Result<u32> {
            Ok(conn.query_row("PRAGMA page_count", [], |r| r.get(0))?)
        }
        /// Every hint gives the pragma's answer, and page 1's own hint is that answer.
        fn agrees(conn: &Connection, what: &str) -> Result<u32> {
            let truth = pragma(conn)?;
            let hint = header_pages(read_page(conn, 1)?.as_deref());
            assert_eq!(hint, Some(truth), "{what}: page 1's in-header size");
            for wrong in [
                None,
                Some(0),
                Some(truth - 1),
                Some(truth + 1),
                Some(u32::MAX),
            ] {
                assert_eq!(page_count(conn, wrong)?, truth, "{what}: hint {wrong:?}");
            }
            assert_eq!(page_count(conn, hint)?, truth, "{what}");
            Ok(truth)
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.db");
        let conn = open(&path)?;
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, a BLOB)")?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let small = agrees(&conn, "a new table")?;
        conn.execute_batch(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 300)
             INSERT INTO t(a) SELECT randomblob(1000) FROM c",
        )?;
        let grown = agrees(&conn, "grown inside the transaction")?;
        assert!(grown > small + 50, "{grown} pages after, {small} before");
        conn.execute_batch("COMMIT")?;

        let reader = open(&path)?;
        assert_eq!(pragma(&reader)?, grown);
        conn.execute_batch(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 300)
             INSERT INTO t(a) SELECT randomblob(1000) FROM c",
        )?;
        let committed = pragma(&conn)?;
        reader.execute_batch("BEGIN")?;
        assert_eq!(page_count(&reader, Some(grown))?, committed, "a stale hint");
        assert_eq!(page_count(&reader, Some(committed))?, committed);
        reader.execute_batch("COMMIT")?;

        conn.execute_batch("DELETE FROM t; VACUUM")?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let shrunk = agrees(&conn, "after VACUUM")?;
        assert!(shrunk < small + 2, "{shrunk} pages after VACUUM");
        conn.execute_batch("ROLLBACK")?;
        Ok(())
    }

    /// Capture of a transaction larger than the page cache: it must contain every page that a
    /// plain commit of the same statements changes.
    #[test]
    fn captures_spilled_transaction_and_leaves_db_unchanged() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let conn = open(&dir.path().join("a.db"))?;
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT); CREATE INDEX t_a ON t(a);",
        )?;
        conn.execute_batch("PRAGMA cache_size=10")?;
        let before: u32 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;

        conn.execute_batch("BEGIN IMMEDIATE")?;
        let start = start(&conn)?;
        conn.execute_batch(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 3000)
             INSERT INTO t(a) SELECT hex(x * 2654435761 % 4294967296) FROM c",
        )?;
        let (mut spills, mut high) = (0, 0);
        // SAFETY: valid open connection; the two out-pointers are live locals.
        let rc = unsafe {
            ffi::sqlite3_db_status(
                conn.handle(),
                ffi::SQLITE_DBSTATUS_CACHE_SPILL,
                &mut spills,
                &mut high,
                0,
            )
        };
        check(rc, "sqlite3_db_status")?;
        assert!(spills > 0, "the transaction was meant to spill");
        let base = open(&dir.path().join("a.db"))?;
        let delta = finish(
            (&conn, &WalBound::default()),
            &base,
            &start,
            (5, 9),
            &Overlay::default(),
            usize::MAX,
            false,
        )?
        .delta;
        conn.execute_batch("ROLLBACK")?;

        assert_eq!((delta.base_version, delta.tag, delta.parent_tag), (5, 9, 0));
        assert!(
            delta.db_pages > before,
            "{} pages after, {before} before",
            delta.db_pages
        );
        // every page beyond the old end is new and must be in the delta, plus page 1
        let pgnos: BTreeSet<u32> = delta.pages.iter().map(|p| p.0).collect();
        assert!(pgnos.contains(&1));
        for p in before + 1..=delta.db_pages {
            assert!(pgnos.contains(&p), "new page {p} missing");
        }
        let after: u32 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        assert_eq!(after, before, "capture must not commit");
        let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
        assert_eq!(rows, 0);
        Ok(())
    }

    /// The `-wal` file's size is asked once per WAL generation, not per capture: again only
    /// when a transaction's frames pass what it held (the file grew) or the WAL restarted
    /// (here after another connection truncated it). Every capture still finds all its pages.
    #[test]
    fn the_wal_size_is_asked_again_only_when_the_wal_grew_or_restarted() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.db");
        let conn = open(&path)?;
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, a BLOB)")?;
        conn.execute_batch("INSERT INTO t(a) VALUES (zeroblob(100))")?;
        let base = open(&path)?;
        let wal = WalBound::default();
        // Pages of a captured (and rolled back) transaction running `sql`.
        let capture = |sql: &str| -> Result<BTreeSet<u32>> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let started = start(&conn)?;
            conn.execute_batch(sql)?;
            let pages = finish(
                (&conn, &wal),
                &base,
                &started,
                (1, 2),
                &Overlay::default(),
                usize::MAX,
                false,
            )?
            .delta
            .pages
            .iter()
            .map(|p| p.0)
            .collect();
            conn.execute_batch("ROLLBACK")?;
            Ok(pages)
        };
        let table_root: u32 = conn.query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = 't'",
            [],
            |r| r.get(0),
        )?;
        let one_row = "INSERT INTO t(a) VALUES (x'01')";

        for round in 1..=3 {
            assert!(capture(one_row)?.contains(&table_root), "round {round}");
        }
        assert_eq!(
            wal.measured.get(),
            1,
            "three small captures in one WAL generation"
        );

        // Far more frames than the file held: it grew, and is measured again mid-scan.
        let before: u32 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let big = capture(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 200)
             INSERT INTO t(a) SELECT zeroblob(3000) FROM c",
        )?;
        assert!(
            wal.measured.get() > 1,
            "the grown file was not measured again"
        );
        let grown = wal.measured.get();
        let after = big.iter().max().copied().unwrap_or(0);
        assert!(after > before + 100, "{after} pages after, {before} before");
        for p in before + 1..=after {
            assert!(big.contains(&p), "new page {p} missing");
        }
        assert!(capture(one_row)?.contains(&table_root));
        assert_eq!(
            wal.measured.get(),
            grown,
            "a small capture after the big one"
        );

        // Another connection truncates the WAL: a new generation, measured once more.
        conn.execute_batch("INSERT INTO t(a) VALUES (x'02')")?;
        base.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        assert!(capture(one_row)?.contains(&table_root));
        assert_eq!(
            wal.measured.get(),
            grown + 1,
            "the truncated WAL was not measured again"
        );
        assert!(capture(one_row)?.contains(&table_root));
        assert_eq!(wal.measured.get(), grown + 1);
        Ok(())
    }
}
