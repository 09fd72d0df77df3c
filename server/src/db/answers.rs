//! The bytes of rows a node holds in answers its clients have not yet read.
//!
//! A write returns rows (`RETURNING`, or a `SELECT` in a write), up to
//! [`MAX_RESULT_BYTES`](super::MAX_RESULT_BYTES) per request. Its answer stays in the node's
//! memory until the client's HTTP/2 flow-control window lets it out, and a client that never
//! opens its window keeps it there: 300 connections each with one `SELECT randomblob(4000000)`
//! held 1.28 GB on a leader, and the connection limit allows thousands. Requests are bounded
//! by count and by their own bytes (`grpc::limits`); this bounds what they return.
//!
//! - Every answer with rows holds its bytes here ([`AnswerBytes::hold`]) from the moment it
//!   exists until its response is sent or dropped: a unary `Execute`'s (or a transaction's
//!   `Query`'s) until its body ends, a call on an `ExecuteStream` until the stream takes the
//!   next answer. A `Query`'s messages take their room as they are made
//!   ([`AnswerBytes::try_hold`]) and hold it until the next is taken; a message that finds no
//!   room ends its query with RESOURCE_EXHAUSTED.
//! - Responses go to hyper in slices (`grpc::limits`): hyper hands a whole frame to h2 once
//!   one byte may be sent, and h2 buffers what the client's window does not let out.
//! - The executor checks the room left before it runs a batch (and each call of an
//!   interactive transaction): rows beyond it fail their request alone with
//!   [`DbError::Overloaded`](super::DbError::Overloaded), before anything commits, and the
//!   rest of the batch goes on. Writes that return no rows never meet the limit, so clients
//!   that do not read their answers cannot stop other clients' writes.
//!
//! # Key decisions and trade-offs
//! - While the budget is full every request that returns rows (a query too) is refused, so a
//!   client that keeps 256 MiB of answers unread denies others their rows (not their writes)
//!   until it reads them or its connections close. Sharing the budget per connection or per
//!   token, and ending answers left unread past the request timeout, would narrow that.
//! - The executor checks room; the answer takes it when it exists (`hold` never refuses: the
//!   write has committed by then). So the total may pass the limit by what the batches in
//!   flight return (at most 64 MiB each), not by what any number of unread answers hold.
//! - A follower holds the answers of the writes it forwards in its own budget. Before it
//!   forwards one it reserves a share of its room ([`AnswerBytes::reserve_share`]: an eighth
//!   of what is left, at most one maximal answer) and the leader's executor lets that request
//!   return no more (a call of an interactive transaction likewise); so writes forwarded at
//!   once cannot together pass the follower's limit, and writes without rows never notice.
//!   The leader's own room does not limit them (their answers wait on the follower).
//! - No setting: [`MAX_HELD_ANSWER_BYTES`] is 64 maximal answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::authorizer::first_word_is;
use super::{Statement, MAX_RESULT_BYTES};

/// The bytes of unread answers a node holds before writes that return rows are refused.
pub const MAX_HELD_ANSWER_BYTES: usize = 64 * MAX_RESULT_BYTES;

/// Whether any of `statements` may return rows: one that mentions `RETURNING`, or does not
/// begin with a word of a statement that never returns any (`INSERT`, `UPDATE`, `CREATE`,
/// ...; a comment first counts as unknown). Errs toward yes: a write taken for one that
/// returns no rows could never be answered with the rows it does return.
pub fn may_return_rows(statements: &[Statement]) -> bool {
    const NO_ROWS: [&str; 16] = [
        "INSERT",
        "UPDATE",
        "DELETE",
        "REPLACE",
        "CREATE",
        "DROP",
        "ALTER",
        "REINDEX",
        "ANALYZE",
        "VACUUM",
        "SAVEPOINT",
        "RELEASE",
        "ROLLBACK",
        "BEGIN",
        "COMMIT",
        "END",
    ];
    statements.iter().any(|s| {
        let sql = s.sql.trim_start();
        let commented = sql.starts_with("--") || sql.starts_with("/*");
        let plain = !commented && NO_ROWS.iter().any(|w| first_word_is(sql, w));
        let returning = || {
            sql.as_bytes()
                .windows(b"returning".len())
                .any(|w| w.eq_ignore_ascii_case(b"returning"))
        };
        !plain || returning()
    })
}

/// A node's count of answer bytes held, with its limit.
#[derive(Debug)]
pub struct AnswerBytes {
    held: AtomicUsize,
    limit: usize,
}

impl Default for AnswerBytes {
    fn default() -> Self {
        AnswerBytes::new(MAX_HELD_ANSWER_BYTES)
    }
}

impl AnswerBytes {
    pub fn new(limit: usize) -> AnswerBytes {
        AnswerBytes {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Bytes more that answers may hold now.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.held())
    }

    /// Reserves an eighth of the room left, at most [`MAX_RESULT_BYTES`]: what a write this
    /// node forwards may return (see the module docs). Successive shares shrink with the room
    /// and never together exceed it. Nothing for `statements` that cannot return rows
    /// ([`may_return_rows`]): plain writes forwarded at once leave the room to those that do.
    pub fn reserve_share(self: &Arc<Self>, statements: &[Statement]) -> AnswerHold {
        if !may_return_rows(statements) {
            return self.hold(0);
        }
        let mut held = self.held();
        loop {
            let share = (self.limit.saturating_sub(held) / 8).min(MAX_RESULT_BYTES);
            match self.held.compare_exchange_weak(
                held,
                held + share,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return AnswerHold {
                        bytes: share,
                        owner: self.clone(),
                    }
                }
                Err(now) => held = now,
            }
        }
    }

    /// Counts `bytes` of an answer that is about to be made, if they fit the room left.
    pub fn try_hold(self: &Arc<Self>, bytes: usize) -> Option<AnswerHold> {
        let mut held = self.held();
        loop {
            if bytes > self.limit.saturating_sub(held) {
                return None;
            }
            match self.held.compare_exchange_weak(
                held,
                held + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(AnswerHold {
                        bytes,
                        owner: self.clone(),
                    })
                }
                Err(now) => held = now,
            }
        }
    }

    /// Counts `bytes` of an answer until the returned hold drops. Never refuses: the answer
    /// exists already (the executor checked the room before it made it).
    pub fn hold(self: &Arc<Self>, bytes: usize) -> AnswerHold {
        self.held.fetch_add(bytes, Ordering::Relaxed);
        AnswerHold {
            bytes,
            owner: self.clone(),
        }
    }
}

/// One answer's bytes in its node's [`AnswerBytes`], given back on drop.
#[derive(Debug)]
pub struct AnswerHold {
    bytes: usize,
    owner: Arc<AnswerBytes>,
}

impl AnswerHold {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for AnswerHold {
    fn drop(&mut self) {
        self.owner.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_count_until_they_drop() {
        let answers = Arc::new(AnswerBytes::new(100));
        let a = answers.hold(60);
        let b = answers.hold(70);
        assert_eq!(answers.held(), 130);
        assert_eq!(answers.room(), 0);
        drop(a);
        assert_eq!(answers.room(), 30);
        assert_eq!(b.bytes(), 70);
        drop(b);
        assert_eq!((answers.held(), answers.room()), (0, 100));
        let c = answers.try_hold(80).expect("room for 80");
        assert!(answers.try_hold(21).is_none(), "20 left");
        assert_eq!(answers.try_hold(20).map(|h| h.bytes()), Some(20));
        drop(c);
    }

    #[test]
    fn shares_shrink_with_the_room_and_never_exceed_it() {
        let answers = Arc::new(AnswerBytes::new(8 * MAX_RESULT_BYTES + 800));
        let select = [Statement::new("SELECT 1")];
        let first = answers.reserve_share(&select);
        assert_eq!(
            first.bytes(),
            MAX_RESULT_BYTES,
            "at most one maximal answer"
        );
        let plain = answers.reserve_share(&[Statement::new("INSERT INTO t VALUES(1)")]);
        assert_eq!(plain.bytes(), 0, "a write without rows takes no share");
        let shares: Vec<_> = (0..200).map(|_| answers.reserve_share(&select)).collect();
        assert!(answers.held() <= answers.limit());
        assert!(shares.windows(2).all(|w| w[1].bytes() <= w[0].bytes()));
        drop((first, plain, shares));
        assert_eq!(answers.held(), 0);
    }

    #[test]
    fn statements_that_may_return_rows() {
        let may = |sqls: &[&str]| {
            may_return_rows(&sqls.iter().map(|s| Statement::new(*s)).collect::<Vec<_>>())
        };
        for rows in [
            "SELECT 1",
            "  with x as (select 1) select * from x",
            "VALUES (1)",
            "PRAGMA user_version",
            "EXPLAIN INSERT INTO t VALUES(1)",
            "insert into t values(1) returning id",
            "DELETE FROM t\nRETURNING *",
            "/* c */ INSERT INTO t VALUES(1)",
        ] {
            assert!(may(&[rows]), "{rows}");
        }
        for plain in [
            "INSERT INTO t VALUES(1)",
            " update t set a = 1",
            "CREATE TABLE t(a)",
            "Drop table t",
        ] {
            assert!(!may(&[plain]), "{plain}");
        }
        assert!(may(&["INSERT INTO t VALUES(1)", "SELECT changes()"]));
    }
}
