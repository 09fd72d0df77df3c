//! Consistent full images of the database, for Raft snapshots and archives.
//!
//! An image is every page read through `sqlite_dbpage` inside ONE read transaction and written
//! back to back into a plain file — a valid SQLite database of the same page size whose
//! version counter says exactly which delta it includes. A raw copy of the live file would be
//! neither consistent (the WAL holds committed pages not yet checkpointed) nor safe (opening
//! the live file with our own descriptor and closing it drops SQLite's POSIX locks). The read
//! transaction does not block the applier: WAL readers and the writer run concurrently.

use super::error::{DbError, Result};
use super::internal;
use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::path::Path;

/// What [`build_image`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Number of pages in the image.
    pub pages: u32,
    pub page_size: u32,
    /// The database's version counter at the moment of the image.
    pub version: u64,
}

/// Write a consistent image of the database at `db_path` to `dest` (created or truncated,
/// fsynced before returning).
pub fn build_image(db_path: &Path, dest: &Path) -> Result<ImageInfo> {
    let conn = open_read_only(db_path)?;
    conn.execute_batch("BEGIN")?;
    let result = write_pages(&conn, dest);
    // A read transaction has nothing to commit; end it either way.
    let ended = conn.execute_batch("COMMIT");
    let info = result?;
    ended?;
    Ok(info)
}

fn write_pages(conn: &Connection, dest: &Path) -> Result<ImageInfo> {
    let version = internal::read_version(conn)?;
    let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let file = std::fs::File::create(dest)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut stmt = conn.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
    let mut rows = stmt.query([])?;
    let mut pages = 0u32;
    while let Some(row) = rows.next()? {
        let pgno: u32 = row.get(0)?;
        let data = row
            .get_ref(1)?
            .as_blob()
            .map_err(|e| DbError::Internal(e.to_string()))?;
        if pgno != pages + 1 || data.len() != page_size as usize {
            return Err(DbError::Internal(format!(
                "unexpected page {pgno} ({} bytes) after page {pages}",
                data.len()
            )));
        }
        out.write_all(data)?;
        pages = pgno;
    }
    let file = out
        .into_inner()
        .map_err(|e| DbError::Internal(e.to_string()))?;
    file.sync_all()?;
    Ok(ImageInfo {
        pages,
        page_size,
        version,
    })
}

/// Every page of the database at `path`, in order, read through `sqlite_dbpage` in one read
/// transaction, for tests and cluster checks that compare replicas byte for byte.
///
/// Page 1's change counter (bytes 24..28) and "version-valid-for" (bytes 92..96) are zeroed.
/// In WAL mode SQLite stamps them at every commit that writes page 1 with *that node's*
/// previous counter + 1, so a node that installed an image counts differently from one that
/// applied every delta since creation. SQLite itself does not rely on them in WAL mode (the
/// wal-index replaces them); every other byte must match.
pub fn dump_pages(path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut pages = dump_raw_pages(path)?;
    if let Some(page1) = pages.first_mut() {
        page1[CHANGE_COUNTER].fill(0);
        page1[VERSION_VALID_FOR].fill(0);
    }
    Ok(pages)
}

/// The version and tag of the database in the SQLite file at `path` (a snapshot image), read
/// without changing it: opened as immutable, since a read-only connection to an image in WAL
/// format would leave `-wal` and `-shm` files beside it.
pub fn image_state(path: &Path) -> Result<(u64, u64)> {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    Ok((internal::read_version(&conn)?, internal::read_tag(&conn)?))
}

/// Page-1 header fields that differ between replicas with different commit histories.
const CHANGE_COUNTER: std::ops::Range<usize> = 24..28;
const VERSION_VALID_FOR: std::ops::Range<usize> = 92..96;

/// Every page exactly as stored (see [`dump_pages`] for the comparable form).
pub(crate) fn dump_raw_pages(path: &Path) -> Result<Vec<Vec<u8>>> {
    let conn = open_read_only(path)?;
    let mut stmt = conn.prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")?;
    let pages = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<Vec<u8>>>>()?;
    Ok(pages)
}

fn open_read_only(path: &Path) -> Result<Connection> {
    Ok(Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?)
}
