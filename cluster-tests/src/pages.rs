//! Byte-level comparison of the replicas: every page of every node's `db.sqlite`.

use std::hash::{DefaultHasher, Hasher};
use std::path::Path;

use anyhow::{bail, Context};
use rusqlite::{Connection, OpenFlags};

/// One node's database as a list of `(page number, digest of the page's bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageImage {
    pub node: u64,
    pub pages: Vec<(u32, u64)>,
}

impl PageImage {
    /// Reads `db_path` page by page through `sqlite_dbpage`, inside one read transaction so the
    /// image is consistent even while the node applies. The connection is read-only: it never
    /// checkpoints or otherwise changes a stopped node's files.
    pub fn read(node: u64, db_path: &Path) -> anyhow::Result<PageImage> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(db_path, flags)
            .with_context(|| format!("open {} read-only", db_path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let tx = conn.transaction().context("begin a read transaction")?;
        let pages = {
            let mut stmt = tx
                .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
                .context("prepare the sqlite_dbpage scan (is SQLITE_ENABLE_DBPAGE_VTAB set?)")?;
            let rows = stmt.query_map([], |row| {
                let pgno: u32 = row.get(0)?;
                let mut data: Vec<u8> = row.get(1)?;
                if pgno == 1 {
                    mask_file_change_counter(&mut data);
                }
                let mut hasher = DefaultHasher::new();
                hasher.write(&data);
                Ok((pgno, hasher.finish()))
            })?;
            rows.collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("read the pages of {}", db_path.display()))?
        };
        tx.commit()?;
        Ok(PageImage { node, pages })
    }
}

/// Zeroes page 1's "file change counter" (bytes 24..28) and "version-valid-for" (92..96).
///
/// SQLite's pager writes these itself at every commit that touches page 1, as *this file's*
/// previous counter + 1; no SQL can set them. Nodes that applied the same deltas from the start
/// agree on them, but a node rebuilt from a snapshot image counts from its own history, so its
/// counter differs by a constant. They are file bookkeeping, not database content (SQLite does
/// not read them in WAL mode); every other byte of every page must match.
fn mask_file_change_counter(page1: &mut [u8]) {
    for range in [24..28, 92..96] {
        if let Some(bytes) = page1.get_mut(range) {
            bytes.fill(0);
        }
    }
}

/// The page images of several nodes, to compare.
#[derive(Debug, Clone)]
pub struct PageDigests {
    pub images: Vec<PageImage>,
}

impl PageDigests {
    /// Fails, naming the first pages that differ, unless every image has the same pages with
    /// the same bytes.
    pub fn ensure_identical(&self) -> anyhow::Result<()> {
        let Some(reference) = self.images.first() else {
            bail!("no page images to compare");
        };
        if reference.pages.is_empty() {
            bail!("node {} has an empty database", reference.node);
        }
        let mut problems = Vec::new();
        for image in &self.images[1..] {
            if image.pages.len() != reference.pages.len() {
                problems.push(format!(
                    "node {} has {} pages, node {} has {}",
                    image.node,
                    image.pages.len(),
                    reference.node,
                    reference.pages.len()
                ));
            }
            let differing: Vec<u32> = reference
                .pages
                .iter()
                .zip(&image.pages)
                .filter(|(a, b)| a != b)
                .map(|(a, _)| a.0)
                .collect();
            if !differing.is_empty() {
                problems.push(format!(
                    "node {} differs from node {} on {} page(s), first {:?}",
                    image.node,
                    reference.node,
                    differing.len(),
                    &differing[..differing.len().min(10)]
                ));
            }
        }
        if !problems.is_empty() {
            bail!("replicas are not byte-identical: {}", problems.join("; "));
        }
        Ok(())
    }
}
