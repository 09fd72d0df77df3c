//! Prometheus metrics, served at `http://METRICS_ADDR/metrics` (default `0.0.0.0:9090`).
//!
//! Two kinds of series:
//! - **State read at scrape time** from openraft's metrics and the node: leader, term,
//!   commit/applied/last-log/snapshot index, readiness, and on the leader the replication lag
//!   of every follower (entries between the leader's last log index and what the follower has
//!   matched). Reading them when scraped keeps the hot paths free of bookkeeping.
//! - **Events counted where they happen**: write and read latency histograms, the
//!   group-commit batch size, leader changes and snapshots.
//!
//! # Key decisions and trade-offs
//!
//! - **One registry per node**, not a process-global one: `raftlite dev` and tests run several
//!   nodes in one process and their series must not mix.
//! - **A port that cannot be bound is logged, not fatal.** Metrics are for operators; a node
//!   that refused to serve data because port 9090 was taken would trade availability for
//!   observability. The error says which address and how to change it.
//! - **OpenMetrics text** (`prometheus-client`'s encoder), which Prometheus scrapes natively.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::node::Node;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabels {
    pub follower: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    /// stale, bounded, at_index or linearizable.
    pub consistency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadIndexLabels {
    /// lease (the leader's read lease) or quorum (a heartbeat round to the followers).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EarlyLabels {
    /// sent (to one follower), used (its answer stood in for openraft's request), or carried
    /// (it carried the commit index of openraft's request without entries, not sent then).
    pub answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchBaseLabels {
    /// committed (executed on the committed database) or in_flight (on top of deltas still
    /// in flight: the write pipeline).
    pub base: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// ok or error.
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every series of one node.
pub struct Metrics {
    registry: Registry,
    node_id: Gauge,
    is_leader: Gauge,
    leader_id: Gauge,
    term: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    snapshot_index: Gauge,
    ready: Gauge,
    voters: Gauge,
    learners: Gauge,
    replication_lag: Family<FollowerLabels, Gauge>,
    leader_changes: Counter,
    snapshots: Counter,
    snapshots_received: Counter,
    archive_archived_index: Gauge,
    archive_snapshot_index: Gauge,
    archive_lag_entries: Gauge,
    archive_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    archive_failing: Gauge,
    write_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    read_duration: Family<ReadLabels, Histogram, fn() -> Histogram>,
    read_indexes: Family<ReadIndexLabels, Counter>,
    batch_size: Histogram,
    batch_duration: Histogram,
    gather_wait: Histogram,
    batches: Family<BatchBaseLabels, Counter>,
    commits_in_place: Counter,
    early_commits: Counter,
    commits_in_place_early: Counter,
    ran_ahead: Counter,
    wal_frames: Gauge,
    reads_held_for_wal: Gauge,
    checkpoint_failures: Gauge,
    answer_bytes_held: Gauge,
    unread_connections_closed: Counter,
    /// The node's count of connections closed for unread answers when last rendered.
    unread_connections_closed_seen: std::sync::atomic::AtomicU64,
    /// The database's count of commits in place when last rendered.
    commits_in_place_seen: std::sync::atomic::AtomicU64,
    early_appends: Family<EarlyLabels, Counter>,
    append_streams: Counter,
    requests_shed: Counter,
    request_deadlines: Counter,
    execute_streams: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("raftlite"),
            node_id: Gauge::default(),
            is_leader: Gauge::default(),
            leader_id: Gauge::default(),
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            ready: Gauge::default(),
            voters: Gauge::default(),
            learners: Gauge::default(),
            replication_lag: Family::default(),
            leader_changes: Counter::default(),
            snapshots: Counter::default(),
            snapshots_received: Counter::default(),
            archive_archived_index: Gauge::default(),
            archive_snapshot_index: Gauge::default(),
            archive_lag_entries: Gauge::default(),
            archive_lag_seconds: Gauge::default(),
            archive_failing: Gauge::default(),
            write_duration: Family::new_with_constructor(latency_histogram),
            read_duration: Family::new_with_constructor(latency_histogram),
            read_indexes: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            batch_duration: latency_histogram(),
            gather_wait: latency_histogram(),
            batches: Family::default(),
            commits_in_place: Counter::default(),
            early_commits: Counter::default(),
            commits_in_place_early: Counter::default(),
            ran_ahead: Counter::default(),
            wal_frames: Gauge::default(),
            reads_held_for_wal: Gauge::default(),
            checkpoint_failures: Gauge::default(),
            answer_bytes_held: Gauge::default(),
            unread_connections_closed: Counter::default(),
            unread_connections_closed_seen: Default::default(),
            commits_in_place_seen: Default::default(),
            early_appends: Family::default(),
            append_streams: Counter::default(),
            requests_shed: Counter::default(),
            request_deadlines: Counter::default(),
            execute_streams: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("node_id", "This node's id", m.node_id.clone());
        r.register(
            "is_leader",
            "1 if this node is the leader",
            m.is_leader.clone(),
        );
        r.register(
            "leader_id",
            "Id of the leader this node knows of (0: none)",
            m.leader_id.clone(),
        );
        r.register("term", "Current Raft term", m.term.clone());
        r.register(
            "commit_index",
            "Best known commit index (announced by the leader)",
            m.commit_index.clone(),
        );
        r.register(
            "applied_index",
            "Last log index applied to the database",
            m.applied_index.clone(),
        );
        r.register(
            "last_log_index",
            "Last index in this node's Raft log",
            m.last_log_index.clone(),
        );
        r.register(
            "snapshot_index",
            "Log index of the latest snapshot",
            m.snapshot_index.clone(),
        );
        r.register(
            "ready",
            "1 if the node is caught up and serves clients (the readiness probe)",
            m.ready.clone(),
        );
        r.register("voters", "Voters in the membership", m.voters.clone());
        r.register("learners", "Learners in the membership", m.learners.clone());
        r.register(
            "replication_lag_entries",
            "On the leader: log entries each follower is behind the leader's last log index",
            m.replication_lag.clone(),
        );
        r.register(
            "leader_changes",
            "Times this node saw the leader change",
            m.leader_changes.clone(),
        );
        r.register(
            "snapshots",
            "Snapshots this node built or installed",
            m.snapshots.clone(),
        );
        r.register(
            "snapshots_received",
            "Snapshots streamed to this node by a leader",
            m.snapshots_received.clone(),
        );
        r.register(
            "archive_archived_index",
            "Highest log index the archive holds without a gap (as this node last saw it)",
            m.archive_archived_index.clone(),
        );
        r.register(
            "archive_snapshot_index",
            "Log index of the newest snapshot in the archive",
            m.archive_snapshot_index.clone(),
        );
        r.register(
            "archive_lag_entries",
            "Committed entries not archived yet (leader; 0 elsewhere)",
            m.archive_lag_entries.clone(),
        );
        r.register_with_unit(
            "archive_lag",
            "Age of the oldest committed entry not archived yet (leader; 0 elsewhere)",
            Unit::Seconds,
            m.archive_lag_seconds.clone(),
        );
        r.register(
            "archive_failing",
            "1 while the last archive upload failed (it is retried with backoff)",
            m.archive_failing.clone(),
        );
        r.register_with_unit(
            "write_duration",
            "Write requests handled by this node (forwarded ones included), by outcome",
            Unit::Seconds,
            m.write_duration.clone(),
        );
        r.register_with_unit(
            "read_duration",
            "Queries served by this node, from request to last row, by consistency",
            Unit::Seconds,
            m.read_duration.clone(),
        );
        r.register(
            "write_batch_size",
            "Write requests per group commit (leader)",
            m.batch_size.clone(),
        );
        r.register_with_unit(
            "write_batch_gather_wait",
            "How long a group commit waited for the writers the last one answered, when it \
             waited (leader, write_pipeline_depth 1)",
            Unit::Seconds,
            m.gather_wait.clone(),
        );
        r.register_with_unit(
            "write_batch_duration",
            "Execute and commit one group commit, until its requests are answered (leader)",
            Unit::Seconds,
            m.batch_duration.clone(),
        );
        r.register(
            "write_batches",
            "Group commits this leader proposed, by what they were executed on: the committed \
             database, or deltas still in flight (the write pipeline)",
            m.batches.clone(),
        );
        r.register(
            "write_batches_committed_in_place",
            "Group commits whose transaction this leader kept open and committed once Raft \
             committed their delta, instead of applying the delta (write_pipeline_depth 1)",
            m.commits_in_place.clone(),
        );
        r.register(
            "write_batches_committed_in_place_early",
            "Of the group commits committed in place, those this leader committed as soon as \
             Raft committed their delta, before its state machine's apply reached them: the \
             next group commit did not wait for that apply",
            m.commits_in_place_early.clone(),
        );
        r.register(
            "write_requests_run_ahead",
            "Writes this leader executed while their group commit still waited for the rest of \
             its writers, instead of after",
            m.ran_ahead.clone(),
        );
        r.register(
            "write_batches_answered_early",
            "Group commits whose writers this leader answered as soon as early replication's \
             answers and its own log flush made a quorum, before openraft counted it",
            m.early_commits.clone(),
        );
        r.register(
            "replication_early_appends",
            "AppendEntries this leader sent to a follower as it appended the entries, before its \
             own log flush (answer=\"sent\"), and those whose answer stood in for openraft's \
             own request (answer=\"used\"), or carried the commit index of openraft's own request \
             without entries, which then was not sent (answer=\"carried\")",
            m.early_appends.clone(),
        );
        r.register(
            "replication_append_streams_opened",
            "Peer.AppendStream streams this leader opened for its early AppendEntries: one per \
             follower and leadership while all is well, one more each time a stream broke (a \
             follower's error, an answer past its deadline, a lost connection)",
            m.append_streams.clone(),
        );
        r.register(
            "sqlite_wal_frames",
            "Pages in the database's WAL at the last background checkpoint (it restarts from its \
             start once all are copied; a commit checkpoints past 4096)",
            m.wal_frames.clone(),
        );
        r.register(
            "sqlite_reads_held_for_wal",
            "1 while new reads wait for those in flight to end, because the WAL is past its \
             limit (16384 pages) and open read transactions keep it from restarting; else 0",
            m.reads_held_for_wal.clone(),
        );
        r.register(
            "sql_answer_bytes_held",
            "Bytes of rows in answers to writes that their clients have not read yet; at \
             268435456 writes that return rows are refused (RESOURCE_EXHAUSTED) until they are",
            m.answer_bytes_held.clone(),
        );
        r.register(
            "sql_unread_connections_closed",
            "Client connections this node closed because they left answers unread for over 2 \
             seconds while other requests needed the room those answers took",
            m.unread_connections_closed.clone(),
        );
        r.register(
            "sqlite_checkpoint_failures",
            "Background WAL checkpoints that failed since the node started",
            m.checkpoint_failures.clone(),
        );
        r.register(
            "read_indexes",
            "Read indexes this leader gave linearizable reads, by source: its read lease, or a \
             quorum round",
            m.read_indexes.clone(),
        );
        r.register(
            "requests_shed",
            "Public requests refused with RESOURCE_EXHAUSTED (max_concurrent_requests, or the bytes of requests in progress)",
            m.requests_shed.clone(),
        );
        r.register(
            "request_deadline_exceeded",
            "Public requests answered DEADLINE_EXCEEDED (client deadline or request_timeout_ms)",
            m.request_deadlines.clone(),
        );
        r.register(
            "sql_execute_streams",
            "Sql.ExecuteStream streams open on this node (at most max_concurrent_requests)",
            m.execute_streams.clone(),
        );
        m
    }

    /// Counts writes executed while their group commit gathered (`node::write_path`).
    pub fn ran_ahead(&self, writes: usize) {
        if writes > 0 {
            self.ran_ahead.inc_by(writes as u64);
        }
    }

    /// Counts a group commit committed in place before its apply (`node::write_path`).
    pub fn committed_in_place_early(&self) {
        self.commits_in_place_early.inc();
    }

    /// Counts group commits answered by early commit (`raft::early_commit`).
    pub fn answered_early(&self, batches: usize) {
        self.early_commits.inc_by(batches as u64);
    }

    /// The counters early replication counts its AppendEntries on (`peer::early`).
    pub fn early_appends(&self) -> crate::peer::early::Counts {
        let counter = |answer| {
            self.early_appends
                .get_or_create(&EarlyLabels { answer })
                .clone()
        };
        crate::peer::early::Counts {
            sent: counter("sent"),
            used: counter("used"),
            carried: counter("carried"),
            streams_opened: self.append_streams.clone(),
        }
    }

    pub fn request_shed(&self) {
        self.requests_shed.inc();
    }

    /// An `ExecuteStream` opened (`true`) or ended.
    pub fn execute_stream_open(&self, open: bool) {
        if open {
            self.execute_streams.inc();
        } else {
            self.execute_streams.dec();
        }
    }

    pub fn request_deadline_exceeded(&self) {
        self.request_deadlines.inc();
    }

    pub fn observe_write(&self, elapsed: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.write_duration
            .get_or_create(&OutcomeLabels { outcome })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_read(&self, consistency: &'static str, elapsed: Duration) {
        self.read_duration
            .get_or_create(&ReadLabels { consistency })
            .observe(elapsed.as_secs_f64());
    }

    pub fn read_indexes_given(&self, source: &'static str, reads: usize) {
        self.read_indexes
            .get_or_create(&ReadIndexLabels { source })
            .inc_by(reads as u64);
    }

    pub fn observe_batch(&self, requests: usize, elapsed: Duration) {
        self.batch_size.observe(requests as f64);
        self.batch_duration.observe(elapsed.as_secs_f64());
    }

    pub fn observe_gather_wait(&self, waited: Duration) {
        self.gather_wait.observe(waited.as_secs_f64());
    }

    pub fn batch_proposed(&self, on_deltas_in_flight: bool) {
        let base = if on_deltas_in_flight {
            "in_flight"
        } else {
            "committed"
        };
        self.batches.get_or_create(&BatchBaseLabels { base }).inc();
    }

    pub fn snapshot_received(&self) {
        self.snapshots_received.inc();
    }

    /// Reads the node's current state into the gauges and encodes every series.
    pub fn render(&self, node: &Node) -> String {
        let m = node.raft().metrics().borrow().clone();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.node_id.set(as_i64(node.id()));
        self.is_leader
            .set(i64::from(m.current_leader == Some(node.id())));
        self.leader_id.set(as_i64(m.current_leader.unwrap_or(0)));
        self.term.set(as_i64(m.current_term));
        self.commit_index.set(as_i64(node.commit_index()));
        self.applied_index.set(as_i64(node.applied_index()));
        let last_log = m.last_log_index.unwrap_or(0);
        self.last_log_index.set(as_i64(last_log));
        self.snapshot_index
            .set(as_i64(m.snapshot.map(|s| s.index).unwrap_or(0)));
        self.ready.set(i64::from(node.readiness().is_ready()));
        let (wal_frames, checkpoint_failures) = node.database().wal_status();
        self.wal_frames.set(as_i64(wal_frames));
        self.reads_held_for_wal
            .set(i64::from(node.database().reads_held_for_wal()));
        self.checkpoint_failures.set(as_i64(checkpoint_failures));
        let answers = node.database().answers();
        self.answer_bytes_held.set(as_i64(answers.held() as u64));
        let closed = answers.connections_closed();
        let seen = self
            .unread_connections_closed_seen
            .fetch_max(closed, std::sync::atomic::Ordering::Relaxed);
        self.unread_connections_closed
            .inc_by(closed.saturating_sub(seen));
        let in_place = node.database().committed_in_place();
        let seen = self
            .commits_in_place_seen
            .fetch_max(in_place, std::sync::atomic::Ordering::Relaxed);
        self.commits_in_place.inc_by(in_place.saturating_sub(seen));
        let archive = node.archive_status().get();
        self.archive_archived_index
            .set(as_i64(archive.archived_index));
        self.archive_snapshot_index
            .set(as_i64(archive.snapshot_index));
        self.archive_lag_entries.set(as_i64(archive.lag_entries));
        self.archive_lag_seconds.set(archive.lag_ms as f64 / 1000.0);
        self.archive_failing
            .set(i64::from(!archive.last_error.is_empty()));
        let membership = m.membership_config.membership();
        self.voters
            .set(as_i64(membership.voter_ids().count() as u64));
        self.learners
            .set(as_i64(membership.learner_ids().count() as u64));
        self.replication_lag.clear();
        for (follower, matched) in m.replication.iter().flatten() {
            if *follower == node.id() {
                continue;
            }
            let matched = matched.map(|l| l.index).unwrap_or(0);
            self.replication_lag
                .get_or_create(&FollowerLabels {
                    follower: follower.to_string(),
                })
                .set(as_i64(last_log.saturating_sub(matched)));
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        text
    }
}

/// Counts leader changes and snapshots as openraft reports them, until Raft stops. Leaders come
/// from the server metrics, which change only with the vote, the state, the leader or the
/// membership; snapshots from the data metrics, which change with every write and are looked
/// at once per [`crate::node::METRICS_GAP`] at most.
async fn watch_raft_events(node: Node) {
    let (mut server, mut data) = (node.raft().server_metrics(), node.raft().data_metrics());
    let mut leader = server.borrow_and_update().current_leader;
    let mut snapshot = data.borrow_and_update().snapshot;
    loop {
        tokio::select! {
            changed = server.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = server.borrow_and_update().current_leader;
                if now != leader && now.is_some() {
                    node.metrics().leader_changes.inc();
                }
                leader = now;
            }
            changed = data.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = data.borrow_and_update().snapshot;
                if now != snapshot {
                    node.metrics().snapshots.inc();
                    snapshot = now;
                }
                tokio::time::sleep(crate::node::METRICS_GAP).await;
            }
        }
    }
}

/// Most connections the metrics port holds at once.
const METRICS_MAX_CONNECTIONS: usize = 64;

/// Longest a metrics connection stays open (a scraper that keeps it alive connects again).
const METRICS_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `/metrics` of `node` on `addr` until the process ends. A port that cannot be bound
/// is logged and the node runs on without metrics.
pub async fn serve(node: Node, addr: SocketAddr) {
    tokio::spawn(watch_raft_events(node.clone()));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                %addr, error = %e,
                "cannot serve metrics; the node runs without them (set --metrics-addr or \
                 RAFTLITE_METRICS_ADDR to another HOST:PORT, or \"off\")"
            );
            return;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "metrics served at http://{local}/metrics");
    // Scrapers are few: connections past the limit are closed at once, and each lasts at most
    // a minute, so that the port cannot hold the files the node needs (see `tls::incoming`).
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(METRICS_MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&node, &request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A scraper that hangs up early is not worth a log line.
            let _ = tokio::time::timeout(
                METRICS_CONNECTION_LIFETIME,
                hyper::server::conn::http1::Builder::new().serve_connection(io, service),
            )
            .await;
        });
    }
}

fn respond<B>(
    node: &Node,
    request: &http::Request<B>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    use http::{header, Method, StatusCode};
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, node.metrics().render(node)),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
    };
    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
