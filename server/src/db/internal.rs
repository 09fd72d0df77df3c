//! raftlite's own tables inside the user's database.
//!
//! They live in the replicated database itself — not in a side store — so that what they
//! record travels in the same page delta as the data it describes:
//!
//! * `_raftlite_meta(key, value)`, key `version`: a counter the executor bumps in every
//!   captured transaction. A delta records the value it was captured on (`base_version`), and
//!   an applier applies it only to a database at exactly that version. That makes replaying a
//!   log suffix after a crash a no-op for deltas already applied, and refuses deltas captured
//!   on an older state.
//! * `_raftlite_requests(id, results, created_ms)`: request ids with their encoded results, so
//!   a client retry (e.g. after a leader failover) is answered from the table instead of being
//!   applied twice.
//!
//! Clients cannot write these tables (nor create TEMP objects with their names): the
//! executor's authorizer refuses it. Every statement here names the `main` schema anyway, so
//! a shadowing TEMP table could never capture raftlite's bookkeeping.

use super::error::{DbError, Result};
use super::value::StatementOutcome;
use rusqlite::{Connection, OptionalExtension};

/// Prefix of every internal table; clients may not create or write such tables.
pub(crate) const INTERNAL_PREFIX: &str = "_raftlite_";

const CREATE_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS main._raftlite_meta(key TEXT PRIMARY KEY, value);
    CREATE TABLE IF NOT EXISTS main._raftlite_requests(
        id TEXT PRIMARY KEY,
        results BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    );";

/// True if `name` is (or would be) an internal table.
pub(crate) fn is_internal_table(name: &str) -> bool {
    name.len() >= INTERNAL_PREFIX.len()
        && name.as_bytes()[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX.as_bytes())
}

/// Create the internal tables if missing (a no-op that changes no page when they exist).
pub(crate) fn ensure_tables(conn: &Connection) -> Result<()> {
    conn.execute_batch(CREATE_TABLES)?;
    Ok(())
}

/// The database's version counter; 0 when the meta table does not exist yet.
pub(crate) fn read_version(conn: &Connection) -> Result<u64> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = '_raftlite_meta')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let v: Option<i64> = conn
        .query_row(
            "SELECT value FROM main._raftlite_meta WHERE key = 'version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    u64::try_from(v.unwrap_or(0))
        .map_err(|_| DbError::Corrupt(format!("negative database version {v:?}")))
}

/// Set the version counter (the meta table must exist).
pub(crate) fn write_version(conn: &Connection, version: u64) -> Result<()> {
    let v = i64::try_from(version)
        .map_err(|_| DbError::Internal(format!("version {version} overflows")))?;
    conn.execute(
        "INSERT INTO main._raftlite_meta(key, value) VALUES('version', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [v],
    )?;
    Ok(())
}

/// Stored results of an earlier request with this id, if any.
pub(crate) fn lookup_request(conn: &Connection, id: &str) -> Result<Option<Vec<StatementOutcome>>> {
    let blob: Option<Vec<u8>> = conn
        .query_row(
            "SELECT results FROM main._raftlite_requests WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    blob.map(|b| decode_outcomes(&b)).transpose()
}

/// Record a request id with its results.
pub(crate) fn record_request(
    conn: &Connection,
    id: &str,
    outcomes: &[StatementOutcome],
    now_ms: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO main._raftlite_requests(id, results, created_ms) VALUES(?1, ?2, ?3)",
        rusqlite::params![id, encode_outcomes(outcomes), now_ms],
    )?;
    Ok(())
}

/// Forget request ids recorded before `cutoff_ms`. Looks only at the oldest `limit` rows (in
/// insertion order), so one call costs a bounded amount of work inside a write batch.
pub(crate) fn prune_requests(conn: &Connection, cutoff_ms: i64, limit: u32) -> Result<usize> {
    Ok(conn.execute(
        "DELETE FROM main._raftlite_requests
         WHERE rowid IN (SELECT rowid FROM main._raftlite_requests ORDER BY rowid LIMIT ?2)
           AND created_ms < ?1",
        rusqlite::params![cutoff_ms, limit],
    )?)
}

/// Results are stored as a count followed by (rows_affected u64, last_insert_rowid i64), all
/// little-endian: small, stable and independent of any serialization crate's format.
fn encode_outcomes(outcomes: &[StatementOutcome]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + outcomes.len() * 16);
    out.extend_from_slice(&(outcomes.len() as u32).to_le_bytes());
    for o in outcomes {
        out.extend_from_slice(&o.rows_affected.to_le_bytes());
        out.extend_from_slice(&o.last_insert_rowid.to_le_bytes());
    }
    out
}

fn decode_outcomes(bytes: &[u8]) -> Result<Vec<StatementOutcome>> {
    let bad = || DbError::Corrupt("malformed stored request results".into());
    let (count, rest) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
    let count = u32::from_le_bytes(*count) as usize;
    if rest.len() != count.checked_mul(16).ok_or_else(bad)? {
        return Err(bad());
    }
    Ok(rest
        .chunks_exact(16)
        .map(|c| {
            let (a, b) = c.split_at(8);
            let mut rows = [0u8; 8];
            let mut rowid = [0u8; 8];
            rows.copy_from_slice(a);
            rowid.copy_from_slice(b);
            StatementOutcome {
                rows_affected: u64::from_le_bytes(rows),
                last_insert_rowid: i64::from_le_bytes(rowid),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_and_reject_garbage() -> Result<()> {
        let o = vec![
            StatementOutcome {
                rows_affected: 3,
                last_insert_rowid: -1,
            },
            StatementOutcome {
                rows_affected: 0,
                last_insert_rowid: i64::MAX,
            },
        ];
        assert_eq!(decode_outcomes(&encode_outcomes(&o))?, o);
        assert_eq!(decode_outcomes(&encode_outcomes(&[]))?, vec![]);
        assert!(decode_outcomes(&[1, 0, 0, 0, 1]).is_err());
        assert!(decode_outcomes(&[0xff; 4]).is_err());
        Ok(())
    }

    #[test]
    fn version_defaults_to_zero_and_updates() -> Result<()> {
        let conn = Connection::open_in_memory()?;
        assert_eq!(read_version(&conn)?, 0);
        ensure_tables(&conn)?;
        assert_eq!(read_version(&conn)?, 0);
        write_version(&conn, 41)?;
        write_version(&conn, 42)?;
        assert_eq!(read_version(&conn)?, 42);
        assert!(is_internal_table("_RaftLite_meta"));
        assert!(!is_internal_table("raftlite_meta"));
        Ok(())
    }
}
