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
//! - Each client connection's answers with rows also count apart ([`ClientAnswers`],
//!   registered as the connection is accepted). When a request needs room that is not left, the node closes the
//!   connections that have kept an answer unread for [`UNREAD_GRACE`], those holding the most
//!   first, until the room suffices ([`AnswerBytes::make_room`]): their answers stop counting
//!   at once and the connection ends at its next turn (its calls fail as a lost connection
//!   does). So a client that keeps answers unread holds the room for two seconds at most
//!   once others need it, and only its own connection pays. When closing every such
//!   connection would not make the room (young answers hold it), none is closed: the request
//!   fails either way, and a slow reader is not cut off for nothing.
//!
//! # Key decisions and trade-offs
//! - Closing a connection, not refusing the newcomer: a limit that one client's behaviour
//!   hits must hurt that client. Redis does the same with a client whose output buffer stays
//!   over its limit. The grace spares clients that are reading (an answer leaves a reading
//!   client within milliseconds) and those that read slowly while nobody else needs the room;
//!   a client reading an answer slower than the grace, while the node is short, loses its
//!   connection and retries. Until the hoarded answers are two seconds old, requests that
//!   return rows are refused as before.
//! - The connection, not the single answer: hyper asks a response body for more only when
//!   the client's window opens, so an answer nobody reads cannot be ended from its body; the
//!   connection's socket can (`tls::Conn` reads [`ClientAnswers::poll_closed`]).
//! - The executor checks room before a batch and holds what the batch returned to this
//!   node's clients (`ExecutedBatch::rows_held`) while its delta replicates, so the next
//!   batches find that room taken; the handlers hold each answer once the batch is answered
//!   (`hold` never refuses: the write has committed by then). Between the two the rows go
//!   uncounted for the moment a handler takes to wake, so the total may pass the limit by
//!   what a batch returns in that moment (t16 saw 255.6 MiB of 256; before the batch held
//!   its rows, 259–278 MiB), not by what any number of unread answers hold.
//! - A follower holds the answers of the writes it forwards in its own budget. Before it
//!   forwards one it reserves a share of its room ([`AnswerBytes::reserve_share`]: an eighth
//!   of what is left, at most one maximal answer) and the leader's executor lets that request
//!   return no more (a call of an interactive transaction likewise); so writes forwarded at
//!   once cannot together pass the follower's limit, and writes without rows never notice.
//!   The leader's own room does not limit them (their answers wait on the follower).
//! - No setting: [`MAX_HELD_ANSWER_BYTES`] is 64 maximal answers, [`UNREAD_GRACE`] 2 s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Context;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

use super::authorizer::first_word_is;
use super::{Statement, MAX_RESULT_BYTES};

/// The bytes of unread answers a node holds before writes that return rows are refused.
pub const MAX_HELD_ANSWER_BYTES: usize = 64 * MAX_RESULT_BYTES;

/// How long a client connection may keep an answer unread before, while the node is short of
/// room, it may be closed to give that room to others ([`AnswerBytes::make_room`]).
pub const UNREAD_GRACE: Duration = Duration::from_secs(2);

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A node's count of answer bytes held, with its limit, and the client connections that hold
/// them.
#[derive(Debug)]
pub struct AnswerBytes {
    held: AtomicUsize,
    limit: usize,
    grace: Duration,
    clients: Mutex<Clients>,
    /// Milliseconds after `epoch` before which no connection can have held an answer for the
    /// grace: until then [`AnswerBytes::make_room`] has nothing to close and does not look.
    next_stalled_ms: AtomicU64,
    epoch: Instant,
    closed: AtomicU64,
}

/// The client connections a node serves, as [`AnswerBytes::client`] registered them.
#[derive(Debug, Default)]
struct Clients {
    list: Vec<Weak<ClientAnswers>>,
    /// The length at which the next registration drops the connections that have gone.
    prune_at: usize,
}

impl Default for AnswerBytes {
    fn default() -> Self {
        AnswerBytes::new(MAX_HELD_ANSWER_BYTES)
    }
}

impl AnswerBytes {
    pub fn new(limit: usize) -> AnswerBytes {
        AnswerBytes::with_grace(limit, UNREAD_GRACE)
    }

    /// A budget whose connections may keep answers unread for `grace` (tests shorten it).
    pub fn with_grace(limit: usize, grace: Duration) -> AnswerBytes {
        AnswerBytes {
            held: AtomicUsize::new(0),
            limit,
            grace,
            clients: Mutex::default(),
            next_stalled_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            closed: AtomicU64::new(0),
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

    /// Client connections closed so far because they left answers unread while others needed
    /// the room ([`AnswerBytes::make_room`]).
    pub fn connections_closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Registers a new client connection, whose answers [`AnswerBytes::hold`] counts apart.
    pub fn client(&self, remote: Option<SocketAddr>) -> Arc<ClientAnswers> {
        let client = Arc::new(ClientAnswers {
            remote,
            state: Mutex::default(),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            used: AtomicBool::new(false),
        });
        let mut clients = lock(&self.clients);
        if clients.list.len() >= clients.prune_at {
            clients.list.retain(|c| c.strong_count() > 0);
            clients.prune_at = (2 * clients.list.len()).max(64);
        }
        clients.list.push(Arc::downgrade(&client));
        client
    }

    /// Closes the oldest client connection that never made a request with a valid token (any
    /// request, without auth); whether there was one. Its place on the listener is free once
    /// the connection ends, at its next turn: connections that only sit there, from anyone
    /// who can reach the port, must not keep the applications (and the probes) out.
    pub fn close_oldest_unused(&self) -> bool {
        let clients = lock(&self.clients);
        clients
            .list
            .iter()
            .filter_map(Weak::upgrade)
            .any(|client| client.close_unused())
    }

    /// Makes room for `bytes` if answers that clients left unread for the grace took it:
    /// closes the connections holding such answers, those holding the most first, until the
    /// room suffices (their answers stop counting at once; the connections end at their next
    /// turn). Returns the room left. Closes nothing when closing them all would not make the
    /// room (the request fails anyway), never touches answers held for less than the grace,
    /// and while none can have been held that long only reads the count.
    pub fn make_room(&self, bytes: usize) -> usize {
        self.make_room_at(bytes, Instant::now())
    }

    fn make_room_at(&self, bytes: usize, now: Instant) -> usize {
        let room = self.room();
        if room >= bytes || self.ms(now) < self.next_stalled_ms.load(Ordering::Relaxed) {
            return room;
        }
        let mut stalled = Vec::new();
        let mut youngest_due = now + self.grace;
        {
            let mut clients = lock(&self.clients);
            clients.list.retain(|weak| {
                let Some(client) = weak.upgrade().filter(|c| !c.is_closed()) else {
                    return false;
                };
                match client.holding() {
                    (held, Some(made)) if now.saturating_duration_since(made) >= self.grace => {
                        stalled.push((held, client))
                    }
                    (_, Some(made)) => youngest_due = youngest_due.min(made + self.grace),
                    _ => {}
                }
                true
            });
        }
        let closable: usize = stalled.iter().map(|(held, _)| held).sum();
        if room.saturating_add(closable) >= bytes {
            stalled.sort_by_key(|(held, _)| std::cmp::Reverse(*held));
            let mut stalled = stalled.into_iter();
            while self.room() < bytes {
                let Some((_, client)) = stalled.next() else {
                    break;
                };
                if let Some(freed) = client.close(self, now, self.grace) {
                    self.closed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        remote = ?client.remote,
                        bytes = freed,
                        "closing a client connection that left answers unread for over {:?} \
                         while other requests need their room",
                        self.grace
                    );
                }
            }
            if stalled.next().is_some() {
                youngest_due = now;
            }
        }
        self.next_stalled_ms
            .store(self.ms(youngest_due), Ordering::Relaxed);
        self.room()
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Reserves an eighth of the room left, at most [`MAX_RESULT_BYTES`]: what a write this
    /// node forwards may return (see the module docs). Successive shares shrink with the room
    /// and never together exceed it. Nothing for `statements` that cannot return rows
    /// ([`may_return_rows`]): plain writes forwarded at once leave the room to those that do.
    pub fn reserve_share(self: &Arc<Self>, statements: &[Statement]) -> AnswerHold {
        if !may_return_rows(statements) {
            return self.hold(None, 0);
        }
        self.make_room(8 * MAX_RESULT_BYTES);
        let share = |held: usize| (self.limit.saturating_sub(held) / 8).min(MAX_RESULT_BYTES);
        let before = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held + share(held))
            });
        self.counted(share(before.unwrap_or_else(|held| held)), Count::Node)
    }

    /// Counts `bytes` of an answer that is about to be made for `client`'s connection, if
    /// they fit the room left (after [`AnswerBytes::make_room`] if they did not at first).
    pub fn try_hold(
        self: &Arc<Self>,
        client: Option<&Arc<ClientAnswers>>,
        bytes: usize,
    ) -> Option<AnswerHold> {
        if client.is_some_and(|c| c.is_closed()) {
            return None;
        }
        self.try_take(client, bytes).or_else(|| {
            self.make_room(bytes);
            self.try_take(client, bytes)
        })
    }

    fn try_take(
        self: &Arc<Self>,
        client: Option<&Arc<ClientAnswers>>,
        bytes: usize,
    ) -> Option<AnswerHold> {
        let mut state = client.map(|c| lock(&c.state));
        if client.is_some_and(|c| c.is_closed()) {
            return None;
        }
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (bytes <= self.limit.saturating_sub(held)).then_some(held + bytes)
            })
            .ok()?;
        let count = match (client, state.as_mut()) {
            (Some(client), Some(state)) => Count::Client(client.clone(), state.add(bytes)),
            _ => Count::Node,
        };
        Some(self.counted(bytes, count))
    }

    /// Counts `bytes` of an answer for `client`'s connection (if it came on one) until the
    /// returned hold drops. Never refuses: the answer exists already (the executor checked
    /// the room before it made it). A closed connection's answer counts nowhere.
    pub fn hold(self: &Arc<Self>, client: Option<&Arc<ClientAnswers>>, bytes: usize) -> AnswerHold {
        let Some(client) = client else {
            self.held.fetch_add(bytes, Ordering::Relaxed);
            return self.counted(bytes, Count::Node);
        };
        // Under the connection's lock, so that closing it takes out exactly what it added.
        let mut state = lock(&client.state);
        if client.is_closed() {
            return self.counted(bytes, Count::Nowhere);
        }
        self.held.fetch_add(bytes, Ordering::Relaxed);
        let number = state.add(bytes);
        drop(state);
        self.counted(bytes, Count::Client(client.clone(), number))
    }

    fn counted(self: &Arc<Self>, bytes: usize, count: Count) -> AnswerHold {
        AnswerHold {
            bytes,
            owner: self.clone(),
            count,
        }
    }
}

/// One client connection's unread answers: their bytes, when each was made, and whether the
/// node closed the connection to take their room back. The connection reads
/// [`ClientAnswers::poll_closed`] and ends when it says so.
#[derive(Debug)]
pub struct ClientAnswers {
    remote: Option<SocketAddr>,
    state: Mutex<ClientState>,
    /// Set once, under `state`'s lock: whoever holds the lock reads it settled.
    closed: AtomicBool,
    waker: AtomicWaker,
    /// A request on this connection carried a valid token (any request, without auth): a
    /// connection that never made one may be closed to make room on a full listener
    /// ([`AnswerBytes::close_oldest_unused`]).
    used: AtomicBool,
}

#[derive(Debug, Default)]
struct ClientState {
    held: usize,
    /// When each answer held was made, by the number it was given.
    made: BTreeMap<u64, Instant>,
    next: u64,
}

impl ClientState {
    /// When the oldest answer held was made.
    fn oldest(&self) -> Option<Instant> {
        self.made.values().next().copied()
    }

    fn add(&mut self, bytes: usize) -> u64 {
        let number = self.next;
        self.next += 1;
        self.held += bytes;
        self.made.insert(number, Instant::now());
        number
    }
}

impl ClientAnswers {
    /// Whether the node closed this connection; if not, `cx` is woken when it does.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        if self.is_closed() {
            return true;
        }
        self.waker.register(cx.waker());
        self.is_closed()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Records that a request on this connection carried a valid token (or needed none).
    pub fn mark_used(&self) {
        if !self.used.load(Ordering::Acquire) {
            // Under the lock `close_unused` decides under.
            let _state = lock(&self.state);
            self.used.store(true, Ordering::Release);
        }
    }

    /// Tells the connection to end if it was never used (nor closed); whether it was told.
    fn close_unused(&self) -> bool {
        let _state = lock(&self.state);
        if self.used.load(Ordering::Acquire) || self.is_closed() {
            return false;
        }
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
        true
    }

    /// Bytes held and when the oldest answer held was made.
    fn holding(&self) -> (usize, Option<Instant>) {
        let state = lock(&self.state);
        (state.held, state.oldest())
    }

    /// Takes this connection's answers out of `owner`'s count and tells the connection to end,
    /// if it still holds an answer made `grace` before `now` (it may have read it since it
    /// was picked). Returns the bytes they held.
    fn close(&self, owner: &AnswerBytes, now: Instant, grace: Duration) -> Option<usize> {
        let state = lock(&self.state);
        let oldest = state.oldest();
        let stalled = oldest.is_some_and(|made| now.saturating_duration_since(made) >= grace);
        if self.is_closed() || state.held == 0 || !stalled {
            return None;
        }
        owner.held.fetch_sub(state.held, Ordering::Relaxed);
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
        Some(state.held)
    }

    /// Forgets answer `number`; whether its bytes still count in the node's total (not once
    /// the connection was closed).
    fn release(&self, number: u64, bytes: usize) -> bool {
        let mut state = lock(&self.state);
        state.held -= bytes;
        state.made.remove(&number);
        !self.is_closed()
    }
}

/// Where an answer's bytes count.
#[derive(Debug)]
enum Count {
    /// In the node's total only.
    Node,
    /// In the node's total and its client connection's, as answer number `.1`.
    Client(Arc<ClientAnswers>, u64),
    /// Nowhere: its connection was closed.
    Nowhere,
}

/// One answer's bytes in its node's [`AnswerBytes`], given back on drop.
#[derive(Debug)]
pub struct AnswerHold {
    bytes: usize,
    owner: Arc<AnswerBytes>,
    count: Count,
}

impl AnswerHold {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for AnswerHold {
    fn drop(&mut self) {
        let counted = match &self.count {
            Count::Node => true,
            Count::Client(client, number) => client.release(*number, self.bytes),
            Count::Nowhere => false,
        };
        if counted {
            self.owner.held.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_count_until_they_drop() {
        let answers = Arc::new(AnswerBytes::new(100));
        let a = answers.hold(None, 60);
        let b = answers.hold(None, 70);
        assert_eq!(answers.held(), 130);
        assert_eq!(answers.room(), 0);
        drop(a);
        assert_eq!(answers.room(), 30);
        assert_eq!(b.bytes(), 70);
        drop(b);
        assert_eq!((answers.held(), answers.room()), (0, 100));
        let c = answers.try_hold(None, 80).expect("room for 80");
        assert!(answers.try_hold(None, 21).is_none(), "20 left");
        assert_eq!(answers.try_hold(None, 20).map(|h| h.bytes()), Some(20));
        drop(c);
    }

    #[test]
    fn connections_that_leave_answers_unread_past_the_grace_give_their_room() {
        let grace = Duration::from_secs(10);
        let answers = Arc::new(AnswerBytes::with_grace(100, grace));
        let (a, b, c) = (
            answers.client(None),
            answers.client(None),
            answers.client(None),
        );
        let a1 = answers.hold(Some(&a), 60);
        let _b1 = answers.hold(Some(&b), 30);
        let made_ab = Instant::now();
        assert_eq!(answers.make_room(50), 10, "nothing is past the grace yet");
        assert_eq!(answers.connections_closed(), 0);

        std::thread::sleep(Duration::from_millis(50));
        let _c1 = answers.hold(Some(&c), 5);
        let made_c = Instant::now();
        // a and b are past the grace, c is not.
        let late = made_ab + grace + Duration::from_millis(25);
        let woken = Arc::new(Flag::default());
        let waker = futures::task::waker(woken.clone());
        assert!(!a.poll_closed(&mut Context::from_waker(&waker)));
        assert_eq!(
            answers.make_room_at(20, late),
            65,
            "the largest holder went first, and alone"
        );
        assert!(a.is_closed() && !b.is_closed() && !c.is_closed());
        assert!(
            woken.0.load(Ordering::SeqCst),
            "the closed connection was woken"
        );
        assert_eq!(answers.connections_closed(), 1);

        drop(a1);
        assert_eq!(
            answers.held(),
            35,
            "a closed connection's answers count no more"
        );
        assert!(answers.try_hold(Some(&a), 1).is_none());
        drop(answers.hold(Some(&a), 10));
        assert_eq!(answers.held(), 35);

        assert_eq!(
            answers.make_room_at(200, late),
            65,
            "closing b could not make the room: it stays"
        );
        assert!(!b.is_closed());

        let later = made_c + grace + Duration::from_millis(1);
        assert_eq!(answers.make_room_at(95, later), 95);
        assert!(b.is_closed() && !c.is_closed(), "b made the room alone");
        assert_eq!(answers.connections_closed(), 2);
        assert_eq!(answers.try_hold(Some(&c), 95).map(|h| h.bytes()), Some(95));
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl futures::task::ArcWake for Flag {
        fn wake_by_ref(flag: &Arc<Self>) {
            flag.0.store(true, Ordering::SeqCst);
        }
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
