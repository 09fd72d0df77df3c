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
//!   exists until its response is sent or dropped: a unary `Execute`'s until its body ends, a
//!   call on an `ExecuteStream` until the stream takes the next answer.
//! - The executor checks the room left before it runs a batch (and each call of an
//!   interactive transaction): rows beyond it fail their request alone with
//!   [`DbError::Overloaded`](super::DbError::Overloaded), before anything commits, and the
//!   rest of the batch goes on. Writes that return no rows never meet the limit, so clients
//!   that do not read their answers cannot stop other clients' writes.
//!
//! # Key decisions and trade-offs
//! - The executor checks room; the answer takes it when it exists (`hold` never refuses: the
//!   write has committed by then). So the total may pass the limit by what the batches in
//!   flight return (at most 64 MiB each), not by what any number of unread answers hold.
//! - A follower holds the answers of the writes it forwards, in its own budget, but the
//!   leader's executor checks only the leader's: a follower's unread answers are bounded by
//!   the forwarded writes running at once (`max_concurrent_requests`), not by this budget.
//! - No setting: [`MAX_HELD_ANSWER_BYTES`] is 64 maximal answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::MAX_RESULT_BYTES;

/// The bytes of unread answers a node holds before writes that return rows are refused.
pub const MAX_HELD_ANSWER_BYTES: usize = 64 * MAX_RESULT_BYTES;

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
    }
}
