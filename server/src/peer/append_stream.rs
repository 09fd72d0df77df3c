//! The leader's end of `Peer.AppendStream`: early AppendEntries to one follower as messages of
//! one long-lived HTTP/2 stream, instead of one unary call each.
//!
//! A unary call opens an HTTP/2 stream with its headers and trailers, and the follower's server
//! spawns a task for it; a message on an open stream does neither. On this host a round trip
//! of one message took ~100 µs at p50 against ~145 µs for a unary call through the same
//! transport (`bench/peer-rtt`, BENCHMARKS.md "Session 19"), and early replication makes two
//! of them per write.
//!
//! - [`AppendStream::send`] never waits: it queues the message on the stream (opening one if
//!   there is none, or the last one broke) with what to do with its answer. Answers come back
//!   in order, so the task that reads them hands each to the oldest one waiting, on that task.
//! - Every message gets an answer or `None`, exactly once: `None` when it could not be queued
//!   (no connection, [`MAX_WAITING`] unanswered), or when the stream broke before its answer
//!   (an error from the follower ends the stream, and so does an answer later than the
//!   message's deadline). A broken stream is dropped; the next message opens a new one.
//! - A follower of an older version answers the stream UNIMPLEMENTED: nothing goes early to
//!   it from then on (openraft's own AppendEntries still reach it), rather than a failed
//!   stream per write during a rolling upgrade.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use raftlite_proto::v1::RaftMessage;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::dialer::PeerProtoClient;

/// Most messages in flight on one stream; one more is not sent early.
pub(super) const MAX_WAITING: usize = 16;

/// What to do with a message's answer (`None`: there is none).
pub(super) type Done = Box<dyn FnOnce(Option<RaftMessage>) + Send>;

/// The stream to one follower, opened on first use.
pub(super) struct AppendStream {
    client: Result<PeerProtoClient, String>,
    /// The node's runtime, where the task reading answers runs.
    runtime: Option<tokio::runtime::Handle>,
    open: Mutex<Option<Open>>,
    /// The follower does not know `AppendStream`.
    unsupported: Arc<AtomicBool>,
    /// Counts the streams opened.
    opened: Counter,
}

struct Open {
    tx: mpsc::Sender<RaftMessage>,
    shared: Arc<Shared>,
}

/// Between the senders and the task reading the answers.
struct Shared {
    waiting: Mutex<VecDeque<Waiter>>,
    /// A message was queued while none was waiting: the reader takes up its deadline.
    pushed: Notify,
    broken: AtomicBool,
}

struct Waiter {
    deadline: Instant,
    done: Done,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AppendStream {
    pub(super) fn new(client: Result<PeerProtoClient, String>, opened: Counter) -> Self {
        AppendStream {
            client,
            runtime: tokio::runtime::Handle::try_current().ok(),
            open: Mutex::new(None),
            unsupported: Arc::new(AtomicBool::new(false)),
            opened,
        }
    }

    /// Queues `msg`; `done` gets its answer, or `None` if it has none within `ttl`.
    pub(super) fn send(&self, msg: RaftMessage, ttl: Duration, done: Done) {
        let mut open = lock(&self.open);
        if open
            .as_ref()
            .is_none_or(|o| o.shared.broken.load(Ordering::Acquire))
        {
            *open = self.start(ttl);
        }
        let Some(o) = open.as_ref() else {
            drop(open);
            return done(None);
        };
        let mut waiting = lock(&o.shared.waiting);
        // `broken` is set under this lock as the reader gives up its waiters: a waiter added
        // after that would never be answered.
        if waiting.len() >= MAX_WAITING || o.shared.broken.load(Ordering::Acquire) {
            drop(waiting);
            drop(open);
            return done(None);
        }
        // Under the lock of the waiting list: the answer cannot be read before its waiter is
        // in place, and waiters stay in the order of their messages.
        match o.tx.try_send(msg) {
            Ok(()) => {
                waiting.push_back(Waiter {
                    deadline: Instant::now() + ttl,
                    done,
                });
                if waiting.len() == 1 {
                    o.shared.pushed.notify_one();
                }
            }
            Err(_) => {
                drop(waiting);
                drop(open);
                done(None)
            }
        }
    }

    /// A new stream, its reader started; `None` without a connection or a runtime.
    fn start(&self, ttl: Duration) -> Option<Open> {
        if self.unsupported.load(Ordering::Relaxed) {
            return None;
        }
        let client = self.client.as_ref().ok()?.clone();
        let runtime = self
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())?;
        self.opened.inc();
        let (tx, rx) = mpsc::channel(MAX_WAITING);
        let shared = Arc::new(Shared {
            waiting: Mutex::new(VecDeque::new()),
            pushed: Notify::new(),
            broken: AtomicBool::new(false),
        });
        runtime.spawn(read_answers(
            client,
            rx,
            shared.clone(),
            ttl,
            self.unsupported.clone(),
        ));
        Some(Open { tx, shared })
    }
}

/// Opens the stream and hands each answer to the oldest waiter, until the stream ends or
/// breaks; then every waiter left gets `None`.
async fn read_answers(
    mut client: PeerProtoClient,
    rx: mpsc::Receiver<RaftMessage>,
    shared: Arc<Shared>,
    ttl: Duration,
    unsupported: Arc<AtomicBool>,
) {
    let why = match tokio::time::timeout(
        ttl,
        client.append_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    {
        Err(_) => format!("the stream did not open within {ttl:?}"),
        Ok(Err(status)) => {
            if status.code() == tonic::Code::Unimplemented {
                unsupported.store(true, Ordering::Relaxed);
            }
            format!("{}: {}", status.code(), status.message())
        }
        Ok(Ok(response)) => hand_out(response.into_inner(), &shared).await,
    };
    tracing::debug!(reason = %why, "append stream closed");
    let left: Vec<Waiter> = {
        let mut waiting = lock(&shared.waiting);
        shared.broken.store(true, Ordering::Release);
        waiting.drain(..).collect()
    };
    for w in left {
        (w.done)(None);
    }
}

impl Drop for Shared {
    /// A reader that never ran (its runtime shutting down) still answers every waiter.
    fn drop(&mut self) {
        let waiting = self.waiting.get_mut().unwrap_or_else(|p| p.into_inner());
        for w in waiting.drain(..) {
            (w.done)(None);
        }
    }
}

enum Next {
    Answer(Option<Result<RaftMessage, tonic::Status>>),
    Late,
    Pushed,
}

/// Why the stream ended.
async fn hand_out(mut answers: tonic::Streaming<RaftMessage>, shared: &Shared) -> String {
    loop {
        let deadline = lock(&shared.waiting).front().map(|w| w.deadline);
        let next = tokio::select! {
            a = answers.next() => Next::Answer(a),
            () = until(deadline) => Next::Late,
            () = shared.pushed.notified() => Next::Pushed,
        };
        match next {
            Next::Pushed => {}
            Next::Late => return "an answer came later than its deadline".into(),
            Next::Answer(None) => return "the follower ended the stream".into(),
            Next::Answer(Some(Err(status))) => {
                return format!("{}: {}", status.code(), status.message())
            }
            Next::Answer(Some(Ok(msg))) => {
                let Some(w) = lock(&shared.waiting).pop_front() else {
                    return "an answer to no message".into();
                };
                (w.done)(Some(msg));
            }
        }
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Dialer;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    fn message(i: u64) -> RaftMessage {
        RaftMessage {
            cluster_id: String::new(),
            from: i,
            payload: vec![1, 2, 3],
        }
    }

    /// A `done` that reports its answer (whether there was one) on `tx`.
    fn report(tx: &UnboundedSender<(u64, bool)>, i: u64) -> Done {
        let tx = tx.clone();
        Box::new(move |answer| {
            let _ = tx.send((i, answer.is_some()));
        })
    }

    async fn next(rx: &mut UnboundedReceiver<(u64, bool)>) -> anyhow::Result<(u64, bool)> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("no more answers"))
    }

    #[test]
    fn without_a_connection_every_message_is_answered_at_once_with_none() {
        let stream = AppendStream::new(Err("not dialed".into()), Counter::default());
        let (tx, mut rx) = unbounded_channel();
        stream.send(message(1), Duration::from_secs(60), report(&tx, 1));
        assert_eq!(rx.try_recv().ok(), Some((1, false)));
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_costs_each_message_its_deadline_and_no_more(
    ) -> anyhow::Result<()> {
        // Accepts connections and never says a word (not even HTTP/2's preface).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let dialer = Dialer::new(None);
        let stream = AppendStream::new(dialer.proto_client(&addr.to_string()), Counter::default());
        let ttl = Duration::from_millis(200);
        let (tx, mut rx) = unbounded_channel();
        let started = Instant::now();
        for i in 0..=MAX_WAITING as u64 {
            stream.send(message(i), ttl, report(&tx, i));
        }
        // One more than may wait: refused at once, before any deadline.
        assert_eq!(rx.try_recv().ok(), Some((MAX_WAITING as u64, false)));
        let mut answered = Vec::new();
        while answered.len() < MAX_WAITING {
            let (i, some) = next(&mut rx).await?;
            assert!(
                !some,
                "message {i} had an answer from a peer that never spoke"
            );
            answered.push(i);
        }
        let took = started.elapsed();
        assert_eq!(answered, (0..MAX_WAITING as u64).collect::<Vec<_>>());
        assert!(took >= ttl && took < ttl * 5, "gave up after {took:?}");
        // The next message opens a new stream, and waits its own deadline.
        stream.send(message(99), ttl, report(&tx, 99));
        assert_eq!(next(&mut rx).await?, (99, false));
        silent.abort();
        Ok(())
    }

    #[tokio::test]
    async fn a_follower_without_the_stream_is_sent_nothing_more() -> anyhow::Result<()> {
        // A gRPC server without the peer service, like a node of an older version: it
        // answers UNIMPLEMENTED.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (_, health) = tonic_health::server::health_reporter();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let dialer = Dialer::new(None);
        let stream = AppendStream::new(dialer.proto_client(&addr.to_string()), Counter::default());
        let (tx, mut rx) = unbounded_channel();
        stream.send(message(1), Duration::from_secs(5), report(&tx, 1));
        assert_eq!(next(&mut rx).await?, (1, false));
        assert!(stream.unsupported.load(Ordering::Relaxed));
        // No stream is opened again: the answer is there before `send` returns.
        stream.send(message(2), Duration::from_secs(5), report(&tx, 2));
        assert_eq!(rx.try_recv().ok(), Some((2, false)));
        server.abort();
        Ok(())
    }
}
