//! [`PageDelta`]: the pages one batch of writes changed, and its wire format.
//!
//! A delta is what travels through the Raft log, so its decoder faces bytes from disk and from
//! the network. The format is deliberately simple and checked strictly:
//!
//! ```text
//! magic "RLPD" | format u8 (=1) | page_size u32 | db_pages u32 | base_version u64 | count u32
//! count x (pgno u32 | page image [page_size])
//! crc32 (IEEE) of everything before it, u32
//! ```
//! All integers are little-endian. The decoder computes the exact expected length from the
//! header and rejects anything else before allocating, so a garbage length can never cause a
//! huge allocation, and every rule an applier relies on (power-of-two page size, ascending
//! page numbers within the database size, full page images) is validated here once.

use super::error::{DbError, Result};

const MAGIC: &[u8; 4] = b"RLPD";
const FORMAT: u8 = 1;
/// magic + format + page_size + db_pages + base_version + count
const HEADER_LEN: usize = 4 + 1 + 4 + 4 + 8 + 4;
const CRC_LEN: usize = 4;

/// Full images of the pages a transaction changed.
#[derive(Clone, PartialEq, Eq)]
pub struct PageDelta {
    /// Page size of the database the delta was captured from.
    pub page_size: u32,
    /// Database size in pages after the transaction (pages beyond it are truncated away).
    pub db_pages: u32,
    /// The internal version counter the executor saw when it captured the delta. An applier
    /// applies it only to a database at exactly this version.
    pub base_version: u64,
    /// `(pgno, full page image)`, strictly ascending `pgno`.
    pub pages: Vec<(u32, Vec<u8>)>,
}

impl std::fmt::Debug for PageDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Page images are large and unreadable; show their numbers only.
        f.debug_struct("PageDelta")
            .field("page_size", &self.page_size)
            .field("db_pages", &self.db_pages)
            .field("base_version", &self.base_version)
            .field("pgnos", &self.pages.iter().map(|p| p.0).collect::<Vec<_>>())
            .finish()
    }
}

impl PageDelta {
    /// Total bytes of page images carried.
    pub fn payload_bytes(&self) -> usize {
        self.pages.len() * self.page_size as usize
    }

    /// Check the invariants every applier relies on.
    pub fn validate(&self) -> Result<()> {
        check_page_size(self.page_size)?;
        if self.db_pages == 0 {
            return Err(corrupt("database size of 0 pages"));
        }
        let mut prev = 0u32;
        for (pgno, data) in &self.pages {
            if *pgno <= prev {
                return Err(corrupt(format!("page {pgno} out of order (after {prev})")));
            }
            if *pgno > self.db_pages {
                return Err(corrupt(format!(
                    "page {pgno} beyond database size {}",
                    self.db_pages
                )));
            }
            if data.len() != self.page_size as usize {
                return Err(corrupt(format!(
                    "page {pgno} has {} bytes, page size is {}",
                    data.len(),
                    self.page_size
                )));
            }
            prev = *pgno;
        }
        Ok(())
    }

    /// Serialize to the wire format described in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER_LEN + self.pages.len() * (4 + self.page_size as usize) + 4);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&self.db_pages.to_le_bytes());
        out.extend_from_slice(&self.base_version.to_le_bytes());
        // A delta never holds more than u32::MAX pages: page numbers are u32 and unique.
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for (pgno, data) in &self.pages {
            out.extend_from_slice(&pgno.to_le_bytes());
            out.extend_from_slice(data);
        }
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parse and validate the wire format. Never panics and never allocates more than the
    /// input's size, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<PageDelta> {
        if bytes.len() < HEADER_LEN + CRC_LEN {
            return Err(corrupt(format!(
                "delta of {} bytes is too short",
                bytes.len()
            )));
        }
        if &bytes[..4] != MAGIC {
            return Err(corrupt("not a page delta (bad magic)"));
        }
        if bytes[4] != FORMAT {
            return Err(corrupt(format!("unknown delta format {}", bytes[4])));
        }
        let mut r = Reader { buf: &bytes[5..] };
        let page_size = r.u32()?;
        let db_pages = r.u32()?;
        let base_version = r.u64()?;
        let count = r.u32()?;
        check_page_size(page_size)?;
        let expected = (count as u64) * (4 + page_size as u64) + (HEADER_LEN + CRC_LEN) as u64;
        if expected != bytes.len() as u64 {
            return Err(corrupt(format!(
                "delta length {} does not match {count} pages of {page_size} bytes",
                bytes.len()
            )));
        }
        let (body, crc_bytes) = bytes.split_at(bytes.len() - CRC_LEN);
        let stored = u32::from_le_bytes(crc_bytes.try_into().map_err(|_| corrupt("crc"))?);
        if crc32(body) != stored {
            return Err(corrupt("checksum mismatch"));
        }
        // `count` is now bounded by the input length, so this allocation is safe.
        let mut pages = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let pgno = r.u32()?;
            let data = r.take(page_size as usize)?.to_vec();
            pages.push((pgno, data));
        }
        let delta = PageDelta {
            page_size,
            db_pages,
            base_version,
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
            pages: vec![(1, vec![1; 512]), (4, vec![4; 512]), (9, vec![9; 512])],
        }
    }

    #[test]
    fn crc32_matches_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_rejections() -> Result<()> {
        let d = sample();
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
        Ok(())
    }

    #[test]
    fn huge_declared_count_is_rejected_without_allocating() {
        let mut bytes = sample().encode();
        // count field sits right before the first page
        bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            PageDelta::decode(&bytes),
            Err(DbError::Corrupt(_))
        ));
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
                    pages: pgnos
                        .into_iter()
                        .map(|p| (p, vec![fill.wrapping_add(p as u8); page_size as usize]))
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
        fn encode_decode_round_trips(d in arb_delta()) {
            prop_assert_eq!(PageDelta::decode(&d.encode()).ok(), Some(d));
        }
    }
}
