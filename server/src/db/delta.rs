//! [`PageDelta`]: the pages one batch of writes changed, and its wire format.
//!
//! A delta is what travels through the Raft log, so its decoder faces bytes from disk and from
//! the network. The format is deliberately simple and checked strictly:
//!
//! ```text
//! magic "RLPD" | format u8 (=3) | page_size u32 | db_pages u32 | base_version u64
//!   | tag u64 | parent_tag u64 | count u32
//! count x (pgno u32 | kind u8 | body)
//!   kind 0, a full image:  page image [page_size]
//!   kind 1, a patch:       base_crc u32 | new_crc u32 | runs u32
//!                          runs x (offset u32 | len u32 | bytes [len])
//! crc32 (IEEE) of everything before it, u32
//! ```
//! All integers are little-endian. Format 2 (still decoded, like every older format: logs and
//! archives written before) had no tags; format 1 had no kind byte either, only full images.
//!
//! `tag` is a random number the executor stores in the database with the delta (the meta
//! table's `tag` row), naming the state the delta leads to. `parent_tag`, when not 0, names
//! the state the delta was captured on: a leader that executes a batch on top of a delta
//! still in flight (the write pipeline) sets it, and the delta applies only to a database
//! whose tag is exactly that. The version alone cannot tell: if the delta below it was lost
//! in a leadership change and another leader's delta took its version, the version matches
//! but the pages do not.
//!
//! A patch carries only the byte runs that differ from the page's image at `base_version`:
//! a one-row insert changes a few dozen bytes of each 4 KiB page it touches, and every delta is
//! written to two logs, sent to each follower and archived. The applier reads its own copy of
//! the page, checks it against `base_crc`, patches it and checks the result against
//! `new_crc`, so a replica whose page differs from the leader's stops with an error instead of
//! diverging further. Page 1, pages new to the database and pages that changed by more than
//! half are full images: page 1 holds each node's own change counter and SQLite version
//! (bytes 24..28 and 92..100), so it has no base image common to all replicas.
//!
//! The decoder checks every count and length against the bytes left before allocating, so a
//! garbage length can never cause a large allocation (at most a small multiple of the input),
//! and every rule an applier relies on (power-of-two page size, ascending page numbers within
//! the database size, full images of the page size, page 1 in full, ascending runs inside the
//! page) is validated here once.

use super::error::{DbError, Result};

const MAGIC: &[u8; 4] = b"RLPD";
/// The format written; [`FORMAT_UNTAGGED`] and [`FORMAT_FULL_PAGES`] are still read.
const FORMAT: u8 = 3;
const FORMAT_UNTAGGED: u8 = 2;
const FORMAT_FULL_PAGES: u8 = 1;
const KIND_FULL: u8 = 0;
const KIND_PATCH: u8 = 1;
/// The fewest bytes a page takes in the format: pgno, kind, and a patch's two checksums and
/// run count (a full image is longer).
const MIN_PAGE_BYTES: u64 = 4 + 1 + 12;
/// The fewest bytes a patch run takes: offset, length, one byte.
const MIN_RUN_BYTES: u64 = 4 + 4 + 1;
/// Equal bytes between two differing runs below which they are sent as one run (a run's
/// header is 8 bytes).
const MERGE_GAP: usize = 8;
/// magic + format + page_size + db_pages + base_version + tag + parent_tag + count
const HEADER_LEN: usize = 4 + 1 + 4 + 4 + 8 + 8 + 8 + 4;
/// The header of formats 1 and 2 (no tags).
const UNTAGGED_HEADER_LEN: usize = HEADER_LEN - 16;
const CRC_LEN: usize = 4;

/// The pages a transaction changed: full images or patches against the base version.
#[derive(Clone, PartialEq, Eq)]
pub struct PageDelta {
    /// Page size of the database the delta was captured from.
    pub page_size: u32,
    /// Database size in pages after the transaction (pages beyond it are truncated away).
    pub db_pages: u32,
    /// The internal version counter the executor saw when it captured the delta. An applier
    /// applies it only to a database at exactly this version.
    pub base_version: u64,
    /// The tag the delta stores in the database (0: none, a delta of an older format).
    pub tag: u64,
    /// When not 0, the delta applies only to a database holding this tag (see the module
    /// docs): it was captured on top of another delta not yet committed.
    pub parent_tag: u64,
    /// `(pgno, new contents)`, strictly ascending `pgno`.
    pub pages: Vec<(u32, PageImage)>,
}

/// A page's new contents in a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageImage {
    Full(Vec<u8>),
    Patch(PagePatch),
}

/// The byte runs in which a page differs from its image at the delta's base version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagePatch {
    /// CRC-32 of the base image the runs apply to.
    pub base_crc: u32,
    /// CRC-32 of the image after the runs are applied.
    pub new_crc: u32,
    /// `(offset, bytes)`, ascending and not overlapping.
    pub runs: Vec<(u32, Vec<u8>)>,
}

/// How many leading bytes `a` and `b` have in common. Eight at a time: a patch skips
/// thousands of equal bytes per page, which a byte at a time took about a tenth of a one-row
/// batch's execution (BENCHMARKS.md, session 17).
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    let (words_a, _) = a.as_chunks::<8>();
    let (words_b, _) = b.as_chunks::<8>();
    let equal = 8 * words_a
        .iter()
        .zip(words_b)
        .take_while(|(x, y)| x == y)
        .count();
    let rest = a[equal..].iter().zip(&b[equal..]);
    equal + rest.take_while(|(x, y)| x == y).count()
}

impl PageImage {
    /// `new` as a patch against `base` when that is less than half a page, else in full.
    /// `base` is the page at the delta's base version (same length as `new`), or `None` for a
    /// page the base database does not have.
    pub fn between(base: Option<&[u8]>, new: Vec<u8>) -> PageImage {
        let Some(base) = base.filter(|b| b.len() == new.len()) else {
            return PageImage::Full(new);
        };
        let mut runs: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut carried = 0usize;
        let mut i = 0usize;
        loop {
            i += first_difference(&base[i..], &new[i..]);
            if i >= new.len() {
                break;
            }
            let start = i;
            // Extend through differing bytes and through short equal gaps.
            let mut end = i + 1;
            let mut j = end;
            while j < new.len() {
                if base[j] != new[j] {
                    end = j + 1;
                    j += 1;
                } else if j - end < MERGE_GAP {
                    j += 1;
                } else {
                    break;
                }
            }
            carried += 8 + (end - start);
            if carried * 2 >= new.len() {
                return PageImage::Full(new);
            }
            runs.push((start as u32, new[start..end].to_vec()));
            i = end;
        }
        PageImage::Patch(PagePatch {
            base_crc: crc32(base),
            new_crc: crc32(&new),
            runs,
        })
    }

    /// The full new image, given the page's current image (read only for a patch; a full
    /// image is borrowed, not copied).
    pub fn resolve(
        &self,
        base: impl FnOnce() -> Result<Option<Vec<u8>>>,
    ) -> Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            PageImage::Full(data) => Ok(std::borrow::Cow::Borrowed(data)),
            PageImage::Patch(patch) => {
                let base = base()?.ok_or_else(|| {
                    corrupt("a page patch for a page this database does not have")
                })?;
                patch.apply(base).map(std::borrow::Cow::Owned)
            }
        }
    }

    /// Bytes of page contents carried (a patch: its runs).
    pub fn carried_bytes(&self) -> usize {
        match self {
            PageImage::Full(data) => data.len(),
            PageImage::Patch(p) => p.runs.iter().map(|(_, b)| b.len()).sum(),
        }
    }
}

impl PagePatch {
    /// Apply the runs to `base`, which must be the image they were computed against.
    pub fn apply(&self, mut base: Vec<u8>) -> Result<Vec<u8>> {
        if crc32(&base) != self.base_crc {
            return Err(corrupt(
                "a page patch does not match this node's copy of the page (replicas diverged?)",
            ));
        }
        for (offset, bytes) in &self.runs {
            let start = *offset as usize;
            let end = start.saturating_add(bytes.len());
            let target = base
                .get_mut(start..end)
                .ok_or_else(|| corrupt("a page patch run lies outside the page"))?;
            target.copy_from_slice(bytes);
        }
        if crc32(&base) != self.new_crc {
            return Err(corrupt("a patched page does not match the leader's image"));
        }
        Ok(base)
    }
}

impl std::fmt::Debug for PageDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Page images are large and unreadable; show their numbers only.
        f.debug_struct("PageDelta")
            .field("page_size", &self.page_size)
            .field("db_pages", &self.db_pages)
            .field("base_version", &self.base_version)
            .field("tag", &self.tag)
            .field("parent_tag", &self.parent_tag)
            .field("pgnos", &self.pages.iter().map(|p| p.0).collect::<Vec<_>>())
            .field("payload_bytes", &self.payload_bytes())
            .finish()
    }
}

/// Whether a delta on `base_version` that names `parent_tag` applies to a database at
/// `version` holding `tag` (see the module docs). The applier, the state machine and the
/// write pipeline all decide by this one rule.
pub(crate) fn follows(base_version: u64, parent_tag: u64, version: u64, tag: u64) -> bool {
    base_version == version && (parent_tag == 0 || parent_tag == tag)
}

/// The tag in an encoded delta's header, read without decoding or checking the rest: for a
/// leader looking up its own proposal by the entry it just appended (`None`: no tag).
pub fn peek_tag(bytes: &[u8]) -> Option<u64> {
    peek_lineage(bytes).map(|l| l.tag).filter(|&tag| tag != 0)
}

/// Where a delta goes in the database's history: the version it was captured on, the tag it
/// gives the database and the tag it must find there (0: none; formats before 3 carry no tags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lineage {
    pub base_version: u64,
    pub tag: u64,
    pub parent_tag: u64,
}

/// An encoded delta's [`Lineage`], read from its header without decoding or checking the rest
/// (`None`: not a delta).
pub fn peek_lineage(bytes: &[u8]) -> Option<Lineage> {
    if bytes.len() < UNTAGGED_HEADER_LEN || &bytes[..4] != MAGIC {
        return None;
    }
    let word = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let base_version = word(4 + 1 + 4 + 4)?;
    let (tag, parent_tag) = match bytes[4] {
        FORMAT if bytes.len() >= HEADER_LEN => {
            (word(4 + 1 + 4 + 4 + 8)?, word(4 + 1 + 4 + 4 + 16)?)
        }
        FORMAT_UNTAGGED | FORMAT_FULL_PAGES => (0, 0),
        _ => return None,
    };
    Some(Lineage {
        base_version,
        tag,
        parent_tag,
    })
}

impl PageDelta {
    /// Whether this delta applies to a database at `version` holding `tag`.
    pub fn applies_to(&self, version: u64, tag: u64) -> bool {
        follows(self.base_version, self.parent_tag, version, tag)
    }

    /// Bytes of page contents carried (full images and patch runs).
    pub fn payload_bytes(&self) -> usize {
        self.pages.iter().map(|(_, p)| p.carried_bytes()).sum()
    }

    /// Check the invariants every applier relies on.
    pub fn validate(&self) -> Result<()> {
        check_page_size(self.page_size)?;
        if self.db_pages == 0 {
            return Err(corrupt("database size of 0 pages"));
        }
        let page_size = self.page_size as usize;
        let mut prev = 0u32;
        for (pgno, image) in &self.pages {
            if *pgno <= prev {
                return Err(corrupt(format!("page {pgno} out of order (after {prev})")));
            }
            if *pgno > self.db_pages {
                return Err(corrupt(format!(
                    "page {pgno} beyond database size {}",
                    self.db_pages
                )));
            }
            match image {
                PageImage::Full(data) if data.len() != page_size => {
                    return Err(corrupt(format!(
                        "page {pgno} has {} bytes, page size is {}",
                        data.len(),
                        self.page_size
                    )));
                }
                PageImage::Full(_) => {}
                PageImage::Patch(_) if *pgno == 1 => {
                    return Err(corrupt("page 1 must travel as a full image"));
                }
                PageImage::Patch(patch) => {
                    let mut end = 0usize;
                    for (offset, bytes) in &patch.runs {
                        let start = *offset as usize;
                        let run_end = start.saturating_add(bytes.len());
                        if bytes.is_empty() || start < end || run_end > page_size {
                            return Err(corrupt(format!(
                                "page {pgno}: patch runs empty, out of order or outside the page"
                            )));
                        }
                        end = run_end;
                    }
                }
            }
            prev = *pgno;
        }
        Ok(())
    }

    /// Serialize to the wire format described in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let body: usize = self
            .pages
            .iter()
            .map(|(_, p)| {
                5 + match p {
                    PageImage::Full(d) => d.len(),
                    PageImage::Patch(patch) => {
                        12 + patch.runs.iter().map(|(_, b)| 8 + b.len()).sum::<usize>()
                    }
                }
            })
            .sum();
        let mut out = Vec::with_capacity(HEADER_LEN + body + CRC_LEN);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&self.db_pages.to_le_bytes());
        out.extend_from_slice(&self.base_version.to_le_bytes());
        out.extend_from_slice(&self.tag.to_le_bytes());
        out.extend_from_slice(&self.parent_tag.to_le_bytes());
        // A delta never holds more than u32::MAX pages: page numbers are u32 and unique.
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for (pgno, image) in &self.pages {
            out.extend_from_slice(&pgno.to_le_bytes());
            match image {
                PageImage::Full(data) => {
                    out.push(KIND_FULL);
                    out.extend_from_slice(data);
                }
                PageImage::Patch(patch) => {
                    out.push(KIND_PATCH);
                    out.extend_from_slice(&patch.base_crc.to_le_bytes());
                    out.extend_from_slice(&patch.new_crc.to_le_bytes());
                    // Runs and their lengths are bounded by the page size (at most 65536).
                    out.extend_from_slice(&(patch.runs.len() as u32).to_le_bytes());
                    for (offset, bytes) in &patch.runs {
                        out.extend_from_slice(&offset.to_le_bytes());
                        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parse and validate the wire format (this one or an older one). Never panics and never
    /// allocates more than a small multiple of the input's size, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<PageDelta> {
        if bytes.len() < UNTAGGED_HEADER_LEN + CRC_LEN {
            return Err(corrupt(format!(
                "delta of {} bytes is too short",
                bytes.len()
            )));
        }
        if &bytes[..4] != MAGIC {
            return Err(corrupt("not a page delta (bad magic)"));
        }
        let format = bytes[4];
        if ![FORMAT, FORMAT_UNTAGGED, FORMAT_FULL_PAGES].contains(&format) {
            return Err(corrupt(format!("unknown delta format {format}")));
        }
        let (body, crc_bytes) = bytes.split_at(bytes.len() - CRC_LEN);
        let stored = u32::from_le_bytes(crc_bytes.try_into().map_err(|_| corrupt("crc"))?);
        if crc32(body) != stored {
            return Err(corrupt("checksum mismatch"));
        }
        let mut r = Reader { buf: &body[5..] };
        let page_size = r.u32()?;
        let db_pages = r.u32()?;
        let base_version = r.u64()?;
        let (tag, parent_tag) = if format == FORMAT {
            (r.u64()?, r.u64()?)
        } else {
            (0, 0)
        };
        let count = r.u32()?;
        check_page_size(page_size)?;
        // Each page takes at least MIN_PAGE_BYTES (format 1: its full image): `count` is
        // bounded by the input before anything is allocated for it.
        let min_page = if format == FORMAT_FULL_PAGES {
            4 + u64::from(page_size)
        } else {
            MIN_PAGE_BYTES
        };
        if u64::from(count) * min_page > r.buf.len() as u64 {
            return Err(corrupt(format!(
                "delta declares {count} pages in {} bytes",
                bytes.len()
            )));
        }
        let mut pages = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let pgno = r.u32()?;
            let kind = if format == FORMAT_FULL_PAGES {
                KIND_FULL
            } else {
                r.u8()?
            };
            let image = match kind {
                KIND_FULL => PageImage::Full(r.take(page_size as usize)?.to_vec()),
                KIND_PATCH => {
                    let base_crc = r.u32()?;
                    let new_crc = r.u32()?;
                    let n = r.u32()?;
                    if u64::from(n) * MIN_RUN_BYTES > r.buf.len() as u64 {
                        return Err(corrupt(format!("page {pgno}: {n} patch runs declared")));
                    }
                    let mut runs = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let offset = r.u32()?;
                        let len = r.u32()?;
                        runs.push((offset, r.take(len as usize)?.to_vec()));
                    }
                    PageImage::Patch(PagePatch {
                        base_crc,
                        new_crc,
                        runs,
                    })
                }
                other => return Err(corrupt(format!("page {pgno}: unknown kind {other}"))),
            };
            pages.push((pgno, image));
        }
        if !r.buf.is_empty() {
            return Err(corrupt(format!(
                "{} bytes after the last page of the delta",
                r.buf.len()
            )));
        }
        let delta = PageDelta {
            page_size,
            db_pages,
            base_version,
            tag,
            parent_tag,
            pages,
        };
        delta.validate()?;
        Ok(delta)
    }
}

fn corrupt(msg: impl Into<String>) -> DbError {
    DbError::Corrupt(msg.into())
}

fn check_page_size(page_size: u32) -> Result<()> {
    if (512..=65536).contains(&page_size) && page_size.is_power_of_two() {
        Ok(())
    } else {
        Err(corrupt(format!("invalid page size {page_size}")))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(corrupt("delta truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) — guards against torn or bit-flipped
/// log entries; Raft's own transport does not checksum payloads end to end.
fn crc32(data: &[u8]) -> u32 {
    // CRC-32 (IEEE), SIMD-accelerated: every delta is checksummed when it is encoded on the
    // leader and when it is decoded on each node.
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> PageDelta {
        PageDelta {
            page_size: 512,
            db_pages: 9,
            base_version: 7,
            tag: 0x1234_5678_9abc_def0,
            parent_tag: 42,
            pages: vec![
                (1, PageImage::Full(vec![1; 512])),
                (
                    4,
                    PageImage::between(Some(&[0; 512]), patched(&[0; 512], 100, b"row")),
                ),
                (9, PageImage::Full(vec![9; 512])),
            ],
        }
    }

    fn patched(base: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut page = base.to_vec();
        page[at..at + bytes.len()].copy_from_slice(bytes);
        page
    }

    /// Rewrites the trailing checksum after a test edited the bytes before it.
    fn reseal(bytes: &mut Vec<u8>) {
        bytes.truncate(bytes.len() - CRC_LEN);
        let crc = crc32(bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn the_tag_is_read_from_the_header_alone() {
        let mut d = sample();
        d.tag = 0x1234_5678_9abc_def0;
        assert_eq!(super::peek_tag(&d.encode()), Some(d.tag));
        d.tag = 0;
        assert_eq!(super::peek_tag(&d.encode()), None, "no tag");
        assert_eq!(super::peek_tag(b"RLPD"), None, "too short");
        assert_eq!(super::peek_tag(&[0; 64]), None, "not a delta");
        let d = PageDelta {
            base_version: 7,
            tag: 9,
            parent_tag: 8,
            ..d
        };
        assert_eq!(
            super::peek_lineage(&d.encode()),
            Some(super::Lineage {
                base_version: 7,
                tag: 9,
                parent_tag: 8
            })
        );
    }

    #[test]
    fn crc32_matches_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_rejections() -> Result<()> {
        let d = sample();
        assert!(matches!(d.pages[1].1, PageImage::Patch(_)));
        let bytes = d.encode();
        assert_eq!(PageDelta::decode(&bytes)?, d);

        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 10] ^= 1;
        assert!(
            matches!(PageDelta::decode(&flipped), Err(DbError::Corrupt(m)) if m.contains("checksum"))
        );
        assert!(PageDelta::decode(&bytes[..bytes.len() - 1]).is_err());

        let mut unordered = sample();
        unordered.pages.swap(0, 1);
        assert!(PageDelta::decode(&unordered.encode()).is_err());
        let mut beyond = sample();
        beyond.db_pages = 8;
        assert!(PageDelta::decode(&beyond.encode()).is_err());
        let mut zero = sample();
        zero.pages[0].0 = 0;
        assert!(PageDelta::decode(&zero.encode()).is_err());
        let mut odd_size = sample();
        odd_size.page_size = 1000;
        assert!(odd_size.validate().is_err());
        let mut outside = sample();
        outside.pages[1].1 = PageImage::Patch(PagePatch {
            base_crc: 0,
            new_crc: 0,
            runs: vec![(510, vec![1, 2, 3])],
        });
        assert!(PageDelta::decode(&outside.encode()).is_err());
        let mut page1_patch = sample();
        page1_patch.pages[0].1 = PageImage::Patch(PagePatch {
            base_crc: 0,
            new_crc: 0,
            runs: vec![(0, vec![1])],
        });
        assert!(
            matches!(PageDelta::decode(&page1_patch.encode()), Err(DbError::Corrupt(m)) if m.contains("page 1"))
        );
        let mut overlapping = sample();
        overlapping.pages[1].1 = PageImage::Patch(PagePatch {
            base_crc: 0,
            new_crc: 0,
            runs: vec![(10, vec![1, 2, 3]), (11, vec![4])],
        });
        assert!(PageDelta::decode(&overlapping.encode()).is_err());
        Ok(())
    }

    #[test]
    fn huge_declared_counts_are_rejected_without_allocating() {
        let mut bytes = sample().encode();
        // The page count sits right before the first page.
        bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut bytes);
        assert!(matches!(
            PageDelta::decode(&bytes),
            Err(DbError::Corrupt(m)) if m.contains("declares")
        ));
        // The run count of the patched page: after page 1 (4 + 1 + 512 bytes), its pgno and
        // kind (5) and both checksums (8).
        let mut bytes = sample().encode();
        let runs_at = HEADER_LEN + 517 + 5 + 8;
        bytes[runs_at..runs_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut bytes);
        assert!(matches!(
            PageDelta::decode(&bytes),
            Err(DbError::Corrupt(m)) if m.contains("runs declared")
        ));
    }

    #[test]
    fn format_2_deltas_still_decode_untagged() -> Result<()> {
        // Format 2 is format 3 without the two tags.
        let mut delta = sample();
        let mut bytes = delta.encode();
        bytes[4] = FORMAT_UNTAGGED;
        bytes.drain(UNTAGGED_HEADER_LEN - 4..HEADER_LEN - 4);
        bytes.truncate(bytes.len() - CRC_LEN);
        let crc = crc32(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        delta.tag = 0;
        delta.parent_tag = 0;
        assert_eq!(PageDelta::decode(&bytes)?, delta);
        Ok(())
    }

    #[test]
    fn format_1_deltas_still_decode() -> Result<()> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.push(FORMAT_FULL_PAGES);
        bytes.extend_from_slice(&512u32.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&41u64.to_le_bytes());
        bytes.extend_from_slice(&2u32.to_le_bytes());
        for pgno in [1u32, 3] {
            bytes.extend_from_slice(&pgno.to_le_bytes());
            bytes.extend_from_slice(&[pgno as u8; 512]);
        }
        let crc = crc32(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let d = PageDelta::decode(&bytes)?;
        assert_eq!(d.base_version, 41);
        assert_eq!(
            d.pages,
            vec![
                (1, PageImage::Full(vec![1; 512])),
                (3, PageImage::Full(vec![3; 512]))
            ]
        );
        Ok(())
    }

    #[test]
    fn a_small_change_travels_as_a_small_patch() -> Result<()> {
        let base: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut new = patched(&base, 100, b"a new row");
        new[4000] ^= 0xFF;
        let image = PageImage::between(Some(&base), new.clone());
        let PageImage::Patch(patch) = &image else {
            panic!("expected a patch, got {image:?}");
        };
        assert_eq!(patch.runs.len(), 2);
        assert!(image.carried_bytes() <= 10, "{}", image.carried_bytes());
        assert_eq!(image.resolve(|| Ok(Some(base.clone())))?, new);
        Ok(())
    }

    #[test]
    fn a_patch_refuses_a_base_it_was_not_made_from() {
        let base = vec![0u8; 4096];
        let image = PageImage::between(Some(&base), patched(&base, 10, b"x"));
        let other = patched(&base, 2000, b"y");
        assert!(matches!(
            image.resolve(|| Ok(Some(other))),
            Err(DbError::Corrupt(m)) if m.contains("diverged")
        ));
        assert!(image.resolve(|| Ok(None)).is_err());
    }

    #[test]
    fn new_pages_and_large_changes_travel_in_full() {
        let new = vec![5u8; 4096];
        assert_eq!(
            PageImage::between(None, new.clone()),
            PageImage::Full(new.clone())
        );
        assert_eq!(
            PageImage::between(Some(&[0u8; 4096]), new.clone()),
            PageImage::Full(new)
        );
    }

    fn arb_delta() -> impl Strategy<Value = PageDelta> {
        (
            prop::sample::select(vec![512u32, 1024, 4096]),
            1u32..50,
            any::<u64>(),
        )
            .prop_flat_map(|(page_size, db_pages, base_version)| {
                let pgnos = prop::collection::btree_set(1..=db_pages, 0..5);
                (
                    Just(page_size),
                    Just(db_pages),
                    Just(base_version),
                    pgnos,
                    any::<u8>(),
                )
            })
            .prop_map(
                |(page_size, db_pages, base_version, pgnos, fill)| PageDelta {
                    page_size,
                    db_pages,
                    base_version,
                    tag: u64::from(fill),
                    parent_tag: base_version,
                    pages: pgnos
                        .into_iter()
                        .map(|p| {
                            let new = vec![fill.wrapping_add(p as u8); page_size as usize];
                            // Every other page as a patch against a page that differs a little.
                            let base = (p % 2 == 0).then(|| patched(&new, p as usize, &[!fill]));
                            (p, PageImage::between(base.as_deref(), new))
                        })
                        .collect(),
                },
            )
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = PageDelta::decode(&bytes);
        }

        #[test]
        fn random_bytes_after_valid_header_never_panic(
            tail in prop::collection::vec(any::<u8>(), 0..2048),
            cut in 0usize..HEADER_LEN,
        ) {
            let mut bytes = sample().encode()[..cut].to_vec();
            bytes.extend_from_slice(&tail);
            let _ = PageDelta::decode(&bytes);
        }

        #[test]
        fn random_bodies_with_a_valid_checksum_never_panic(
            tail in prop::collection::vec(any::<u8>(), 0..2048),
        ) {
            let mut bytes = sample().encode()[..HEADER_LEN].to_vec();
            bytes.extend_from_slice(&tail);
            bytes.extend_from_slice(&[0; CRC_LEN]);
            reseal(&mut bytes);
            let _ = PageDelta::decode(&bytes);
        }

        #[test]
        fn encode_decode_round_trips(d in arb_delta()) {
            prop_assert_eq!(PageDelta::decode(&d.encode()).ok(), Some(d));
        }

        #[test]
        fn first_difference_is_the_first_differing_byte(
            a in prop::collection::vec(any::<u8>(), 0..100),
            at in 0usize..120,
            longer in prop::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut b = a.clone();
            if let Some(byte) = b.get_mut(at) {
                *byte = byte.wrapping_add(1);
            }
            b.extend(longer);
            let byte_by_byte = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            prop_assert_eq!(first_difference(&a, &b), byte_by_byte);
        }

        #[test]
        fn patches_rebuild_the_new_page(
            base in prop::collection::vec(any::<u8>(), 512),
            edits in prop::collection::vec((0usize..512, any::<u8>()), 0..40),
        ) {
            let mut new = base.clone();
            for (at, byte) in edits {
                new[at] = byte;
            }
            let image = PageImage::between(Some(&base), new.clone());
            prop_assert_eq!(
                image.resolve(|| Ok(Some(base.clone()))).ok().map(|p| p.into_owned()),
                Some(new)
            );
        }
    }
}
