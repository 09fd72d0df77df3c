//! A raftlite node: the database, the Raft instance around it, the write path and the reads.
//! The gRPC services translate requests into calls on [`Node`] and map its errors.

pub mod error;
pub mod events;
pub mod lease;
pub mod prevote;
pub mod reads;
pub mod removal;
pub mod status;
pub mod transaction;
pub mod write_path;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{ChangeMembers, ServerState};
use tokio::sync::{mpsc, oneshot, watch};

pub use error::{LeaderHint, NodeError};
pub use prevote::PreVoteAnswer;
pub use transaction::{TransactionCall, TransactionReply};
pub use write_path::WriteReply;

use crate::cluster::identity::ClusterIdentity;
use crate::config::Config;
use crate::db::{Database, WriteRequest};
use crate::peer::early::EarlyReplication;
use crate::peer::network::Network;
use crate::peer::{Dialer, PeerClient};
use crate::raft::early_commit::EarlyCommit;
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::StateMachine;
use crate::raft::store::RaftStore;
use crate::raft::types::{NodeAddr, NodeId, Raft};
use crate::raft::{RAFT_LOG_DIR, SNAPSHOT_DIR};

/// How long a write waits for this node to become a ready leader before answering UNAVAILABLE.
const LEADER_READY_TIMEOUT: Duration = Duration::from_secs(3);
/// Linearizable reads that may wait for the next read-index round before senders wait too.
const READ_INDEX_QUEUE: usize = 4096;
/// Shortest time between two looks of a watcher of openraft's metrics that does not decide
/// anything for a request (health, event logs, counters): the metrics change several times per
/// write, and each look woke a task on the node's runtime thread (4 % of that thread's time at
/// one client, BENCHMARKS.md "Session 27").
pub(crate) const METRICS_GAP: Duration = Duration::from_millis(50);

/// A change of the cluster's membership or leadership (the admin calls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    AddLearner { id: NodeId, addr: NodeAddr },
    AddVoter { id: NodeId, addr: NodeAddr },
    Remove { id: NodeId },
    TransferLeadership { id: NodeId },
}

/// The membership after a change, and the log index of the change (0 for a leadership
/// transfer, which writes no entry of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipOutcome {
    pub log_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// Cheap handle to a running node.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

pub(crate) struct NodeInner {
    pub id: NodeId,
    pub config: Arc<Config>,
    pub raft: Raft,
    pub db: Arc<Database>,
    pub identity: Arc<ClusterIdentity>,
    pub store: RaftStore,
    /// The log store Raft owns, for readers outside Raft (the archiver).
    pub log_store: LogStore,
    pub archive_status: crate::archive::ArchiveStatusHandle,
    writes: mpsc::Sender<write_path::WriteJob>,
    /// The leader's executor, for lookups outside the write queue (a retried Commit).
    executor: crate::db::ExecutorHandle,
    /// The interactive transaction open on this leader (see `transaction.rs`).
    transactions: transaction::OpenTransactions,
    applied: watch::Receiver<u64>,
    /// Commit index the leader last announced to this follower, and when.
    leader_commit: Arc<Mutex<(u64, Option<Instant>)>>,
    /// The highest entry this leader committed in place ahead of its apply (see
    /// `write_path::commit_early`): the database holds it and everything before it. Only
    /// entries of a term this node leads get here, and a leader is ready only once it applied
    /// an entry of its term, so an older value is always below what it applied.
    in_place: std::sync::atomic::AtomicU64,
    /// Linearizable reads waiting for a read index (see `reads::confirm_read_indexes`).
    read_indexes: mpsc::Sender<reads::ReadIndexWaiter>,
    /// The leader's read lease (see `lease.rs`).
    lease: Arc<lease::LeaderLease>,
    /// When this process opened the node.
    started: Instant,
    /// AppendEntries being handled, against a prompt election being decided (`prevote.rs`).
    campaign: Mutex<prevote::Campaign>,
    /// Until when this node is taking over leadership (a transfer's `Elect`): it refuses
    /// pre-votes meanwhile, so no other follower races it into an election.
    taking_over_until: Mutex<Option<Instant>>,
    /// Set once the other members showed that this node was removed (`removal.rs`).
    removed: Mutex<Option<removal::Removal>>,
    dialer: Arc<Dialer>,
    /// TLS material of both listeners and of dialing peers; `None` without TLS.
    tls: Option<Arc<crate::tls::Tls>>,
    /// Set while whole-cluster recovery has not yet snapshotted the restored state and purged
    /// the log behind it: a member added before that would replay the log onto an empty
    /// database instead of installing the snapshot.
    recovering: std::sync::atomic::AtomicBool,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This leader's proposals in flight: their spans and commit notices (write path).
    pub proposals: crate::raft::state_machine::Proposals,
}

/// The next tick of one of a node's background loops: the node, or `None` once it was
/// dropped or Raft has shut down (the loop ends).
async fn next_tick(
    node: &std::sync::Weak<NodeInner>,
    ticker: &mut tokio::time::Interval,
) -> Option<Arc<NodeInner>> {
    ticker.tick().await;
    let inner = node.upgrade()?;
    inner.raft.metrics().has_changed().is_ok().then_some(inner)
}

impl Node {
    /// Opens the node's data and starts Raft, the executor and the write path. Serving gRPC and
    /// bootstrapping the cluster are separate steps (`grpc::serve`, `cluster::bootstrap`).
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        use anyhow::Context;
        let config = Arc::new(config);
        if config.data_dir.exists() {
            crate::cluster::resync::finish_marked_wipe(&config.data_dir)
                .context("wipe the data directory marked for it")?;
        }
        let store = RaftStore::open(&config.data_dir)?;
        let identity = Arc::new(ClusterIdentity::load(store.clone()).context("read cluster id")?);
        let recovery_pending = identity.recovery_pending()?;
        let db = Arc::new(
            Database::open(config.data_dir.join("db.sqlite"), config.db_options())
                .context("open database")?,
        );
        let (applied_tx, applied_rx) = watch::channel(0u64);
        let state_machine = StateMachine::open(
            db.clone(),
            store.clone(),
            config.data_dir.join(SNAPSHOT_DIR),
            applied_tx,
        )
        .await
        .context("open state machine")?;
        let proposals = state_machine.proposals();
        let mut log_store = LogStore::open(store.clone(), &config.data_dir.join(RAFT_LOG_DIR))?;
        if !recovery_pending {
            if store.has_vote()? || !log_store.is_empty() {
                state_machine.check_database(&log_store).await?;
            } else if !db.is_empty().await.context("read the database")?
                && !crate::cluster::bootstrap::may_restore(&config)
            {
                // A node without Raft state takes its database from the leader: a file
                // already here would be taken as holding the deltas its version claims.
                anyhow::bail!(crate::cluster::bootstrap::not_a_new_database(db.path()));
            }
        }
        log_store.purge_after_applied(applied_rx.clone());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let commit_early = {
            let (proposals, metrics) = (proposals.clone(), metrics.clone());
            Arc::new(EarlyCommit::new(
                config.node_id,
                Box::new(move |upto| metrics.answered_early(proposals.commit_early(upto))),
            ))
        };
        let early = Arc::new(EarlyReplication::new(
            config.node_id,
            config.heartbeat,
            metrics.early_appends(),
            commit_early.clone(),
        ));
        log_store.replicate_early(early.clone(), proposals.clone());
        if let Some(term) = log_store
            .demote_restored_leader(config.node_id)
            .context("read the saved vote")?
        {
            tracing::info!(
                term,
                "this node led term {term} before it stopped: it leads again only by winning an election"
            );
        }
        let archive_log = log_store.clone();
        let raft_config = openraft::Config {
            cluster_name: "raftlite".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            // Keep at most one snapshot interval of log behind a snapshot for lagging followers.
            max_in_snapshot_log_to_keep: config.snapshot_every.min(1000),
            install_snapshot_timeout: 60_000,
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .context("raft timings")?;
        let tls = match &config.tls {
            Some(files) => Some(crate::tls::Tls::load(files.clone()).context("TLS files")?),
            None => None,
        };
        let dialer = Arc::new(Dialer::new(tls.clone()));
        let lease = Arc::new(lease::LeaderLease::default());
        let network = Network {
            self_id: config.node_id,
            identity: identity.clone(),
            dialer: dialer.clone(),
            lease: lease.clone(),
            early,
        };
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine,
        )
        .await
        .context("start raft")?;
        let executor = db
            .open_executor_with_links(config.write_pipeline_depth > 1)
            .context("open executor connection")?;
        let (writes, queue) = mpsc::channel(config.max_batch_requests * 4);
        let (read_indexes, read_index_queue) = mpsc::channel(READ_INDEX_QUEUE);
        let inner = Arc::new(NodeInner {
            id: config.node_id,
            config: config.clone(),
            raft,
            db,
            identity,
            store,
            log_store: archive_log,
            archive_status: Default::default(),
            writes,
            executor: executor.clone(),
            transactions: Default::default(),
            applied: applied_rx,
            leader_commit: Arc::new(Mutex::new((0, None))),
            in_place: Default::default(),
            taking_over_until: Mutex::new(None),
            removed: Mutex::new(None),
            lease,
            started: Instant::now(),
            campaign: Mutex::new(Default::default()),
            read_indexes,
            dialer,
            tls,
            // A recovery from the archive cut short by a restart holds members off from the
            // start, until `bootstrap` finishes it.
            recovering: std::sync::atomic::AtomicBool::new(recovery_pending),
            metrics,
            proposals,
        });
        tokio::spawn(prevote::run(Arc::downgrade(&inner), config.heartbeat));
        tokio::spawn(removal::watch(Arc::downgrade(&inner)));
        tokio::spawn(crate::raft::early_commit::follow_membership(
            Arc::downgrade(&commit_early),
            inner.raft.server_metrics(),
        ));
        tokio::spawn(reads::confirm_read_indexes(
            Arc::downgrade(&inner),
            read_index_queue,
        ));
        write_path::spawn_batcher(
            inner.clone(),
            executor,
            queue,
            config.max_batch_requests,
            config.write_pipeline_depth,
        )
        .context("start the write batcher thread")?;
        Ok(Node { inner })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn identity(&self) -> &ClusterIdentity {
        &self.inner.identity
    }

    pub fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    pub fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    /// The leader this node knows, if any.
    pub fn leader_hint(&self) -> Option<LeaderHint> {
        self.inner.leader_hint()
    }

    /// TLS of the listeners and of dialing peers; `None` without TLS.
    pub fn tls(&self) -> Option<Arc<crate::tls::Tls>> {
        self.inner.tls.clone()
    }

    /// Every member of the current membership (voters and learners) and its addresses.
    pub fn member_addrs(&self) -> std::collections::BTreeMap<NodeId, NodeAddr> {
        // Borrowed, not cloned: the peer service asks on every Raft message.
        self.inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, a)| (*id, a.clone()))
            .collect()
    }

    /// The hosts of the members' peer addresses (a host appears once per member).
    pub fn member_peer_hosts(&self) -> Vec<String> {
        self.member_addrs()
            .values()
            .filter_map(|a| crate::tls::addr_host(&a.peer))
            .collect()
    }

    /// A new, unused path for a snapshot being received (in the snapshot directory).
    pub fn snapshot_receive_path(&self) -> std::path::PathBuf {
        self.inner
            .config
            .data_dir
            .join(SNAPSHOT_DIR)
            .join(format!("receiving-{}.db", uuid::Uuid::new_v4().simple()))
    }

    /// The applied log index, as a watch.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.inner.applied.clone()
    }

    /// The Raft log store (read-only use outside Raft: the archiver).
    pub fn log_store(&self) -> &LogStore {
        &self.inner.log_store
    }

    /// The limit on physical log purging (see `PurgeFloor`).
    pub fn purge_floor(&self) -> crate::raft::log_store::PurgeFloor {
        self.inner.log_store.purge_floor()
    }

    pub fn archive_status(&self) -> crate::archive::ArchiveStatusHandle {
        self.inner.archive_status.clone()
    }

    /// The database (whole-cluster restore installs into it before initializing).
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// True when this node holds Raft state (a vote or log entries).
    pub fn has_raft_state(&self) -> Result<bool, crate::raft::types::StorageError> {
        Ok(self.inner.store.has_vote()? || !self.inner.log_store.is_empty())
    }

    /// Runs a write. On a follower it is forwarded to the leader; `forwarded` marks a write that
    /// already was (it is not forwarded twice).
    pub async fn execute(
        &self,
        request: WriteRequest,
        forwarded: bool,
    ) -> Result<WriteReply, NodeError> {
        let started = Instant::now();
        let result = match self.inner.refuse_if_removed() {
            Ok(()) => self.execute_here_or_on_leader(request, forwarded).await,
            Err(refused) => Err(refused),
        };
        self.inner
            .metrics
            .observe_write(started.elapsed(), result.is_ok());
        result
    }

    /// Runs one call of an interactive transaction. A follower forwards it to the leader
    /// (once: a transaction lives on one leader, a new leader does not know it); `forwarded`
    /// marks a call that already was. `principal` names the token that made the call.
    pub async fn transaction(
        &self,
        principal: &str,
        call: TransactionCall,
        deadline: Instant,
        forwarded: bool,
    ) -> Result<TransactionReply, NodeError> {
        let inner = &self.inner;
        inner.refuse_if_removed()?;
        if inner.is_leader() {
            return inner.transaction_here(principal, call, deadline).await;
        }
        let leader = match inner.leader_hint() {
            Some(leader) if !forwarded => leader,
            hint => {
                return Err(NodeError::unavailable(
                    "this node is not the leader (and knows no leader to forward to); retry",
                    hint,
                ))
            }
        };
        let peer = inner.peer(&leader.peer_addr)?;
        let left = deadline.saturating_duration_since(Instant::now());
        // As for a forwarded write: rows only as many as this node has room for.
        let mut call = call;
        let room = match &mut call {
            TransactionCall::Execute {
                statements,
                max_result_bytes,
                ..
            } => {
                let share = inner.db.answers().reserve_share(statements);
                *max_result_bytes = Some(share.bytes());
                Some(share)
            }
            _ => None,
        };
        let reply = peer
            .forward_transaction(principal, &call, left, leader)
            .await;
        drop(room);
        reply
    }

    async fn execute_here_or_on_leader(
        &self,
        request: WriteRequest,
        forwarded: bool,
    ) -> Result<WriteReply, NodeError> {
        let inner = &self.inner;
        if inner.is_leader() {
            return self.execute_here(request).await;
        }
        let Some(leader) = inner.leader_hint() else {
            return Err(NodeError::unavailable(
                "no leader is elected at the moment; retry",
                None,
            ));
        };
        if forwarded {
            return Err(NodeError::unavailable(
                "this node is not the leader",
                Some(leader),
            ));
        }
        // The answer comes back to this node and waits here for its client: the leader may
        // return only rows this node has room for (see `db/answers.rs`).
        let room = inner.db.answers().reserve_share(&request.statements);
        let request = WriteRequest {
            max_result_bytes: Some(room.bytes()),
            ..request
        };
        self.forward_to_leader(&request, leader).await
    }

    /// Runs a write on this node, the leader: through the batcher into a group commit.
    async fn execute_here(&self, request: WriteRequest) -> Result<WriteReply, NodeError> {
        let inner = &self.inner;
        {
            let (reply, rx) = oneshot::channel();
            inner
                .writes
                .send(write_path::WriteJob::Write(write_path::PendingWrite {
                    request,
                    reply,
                    queued: std::time::Instant::now(),
                    span: tracing::Span::current(),
                }))
                .await
                .map_err(|_| NodeError::unavailable("the node is shutting down", None))?;
            rx.await
                .map_err(|_| NodeError::unavailable("the node is shutting down", None))?
        }
    }

    /// Forwards a write to `leader`. A forward that fails as unavailable, or gets no answer
    /// within two election timeouts while this node no longer hears from that leader (it was
    /// cut off, paused or replaced), goes to the leader known then — under the same request
    /// id, so a leader that did receive it answers with its first result — until the
    /// request's deadline. A leader this node still hears from is only busy (a transaction
    /// holds its write lock): the forward waits for it up to the request's deadline.
    async fn forward_to_leader(
        &self,
        request: &WriteRequest,
        mut leader: LeaderHint,
    ) -> Result<WriteReply, NodeError> {
        let inner = &self.inner;
        let patience = inner.config.election_timeout_max * 2;
        let deadline = request
            .deadline
            .unwrap_or_else(|| Instant::now() + inner.config.statement_timeout);
        loop {
            let stuck = leader.id;
            let peer = inner.peer(&leader.peer_addr)?;
            let forward = async {
                let call = peer.forward_execute(request, leader.clone());
                tokio::pin!(call);
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    // The leader answers at the deadline (a statement it interrupted says so):
                    // that answer, not this node's timeout, is what the client should hear.
                    let wait = patience.min(left + raftlite_client::ANSWER_GRACE);
                    match tokio::time::timeout(wait, &mut call).await {
                        // The leader still speaks to this node (its heartbeats arrive): it is
                        // alive and only busy, e.g. a transaction holds its write lock. Wait on
                        // up to the request's deadline, as a write sent to it directly would.
                        Err(_)
                            if left > patience
                                && inner.heard_from_leader().is_some_and(|ago| ago < patience)
                                && inner.leader_hint().is_some_and(|l| l.id == stuck) => {}
                        answered => return answered,
                    }
                }
            };
            // A new leader known meanwhile ends the wait at once: the old one cannot commit.
            // Woken by Raft's metrics, not polled: an ordinary forward costs nothing here.
            let mut metrics = inner.raft.metrics();
            let moved = async move {
                loop {
                    if metrics.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    match inner.leader_hint() {
                        Some(l) if l.id != stuck => return l,
                        _ => {}
                    }
                }
            };
            let attempt = tokio::select! {
                r = forward => r,
                l = moved => {
                    tracing::info!(from = stuck, to = l.id, "leader changed during a forwarded write: sending it again");
                    if l.id == inner.id {
                        // This node won the election: run it here, under the same request id.
                        return self.execute_here(request.clone()).await;
                    }
                    leader = l;
                    continue;
                }
            };
            let error = match attempt {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                Ok(Err(e)) => e,
                // The leader may still run it (it may only be busy): say so, as the client
                // must not take UNAVAILABLE here for "nothing happened".
                Err(_) => NodeError::unavailable(
                    format!(
                        "leader {} did not answer a forwarded write in time (the write's \
                         outcome is unknown; retry with the same request id)",
                        leader.id
                    ),
                    None,
                ),
            };
            // Wait (at most one more patience) for a leader other than the one that failed.
            let waited_until = (Instant::now() + patience).min(deadline);
            let next = loop {
                match inner.leader_hint() {
                    Some(l) if l.id != stuck => break Some(l),
                    _ if Instant::now() >= waited_until => break inner.leader_hint(),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            // Only a different leader is worth another try: the one that failed (answered
            // UNAVAILABLE, or could not answer) is given up on, so the client hears at once.
            match next {
                Some(l) if Instant::now() < deadline && l.id == inner.id => {
                    tracing::info!(from = stuck, error = %error, "this node became the leader: running the forwarded write here");
                    return self.execute_here(request.clone()).await;
                }
                Some(l) if Instant::now() < deadline && l.id != stuck => {
                    tracing::info!(from = stuck, to = l.id, error = %error, "forwarding the write again");
                    leader = l;
                }
                _ => return Err(error),
            }
        }
    }

    /// The peer service, before it hands a vote request for `term` to openraft. A leader's read
    /// lease ends when it could vote someone else in. A node that started less than a lease
    /// ago answers once a lease has passed since its start: it may have acknowledged a leader
    /// just before it stopped, and openraft, which forgets that on a restart, would grant the
    /// vote at once while that leader still serves reads from its lease (`lease.rs`).
    /// A vote for term 1, a new cluster's first election, follows no leader and waits for
    /// nothing: waiting made the initializer's first election time out at every cold start.
    pub async fn before_vote(&self, term: u64) {
        self.inner.lease.vote_requested(term);
        if term <= 1 {
            return;
        }
        let until = self.inner.started + prevote::lease(&self.inner);
        tokio::time::sleep_until(until.into()).await;
    }

    /// The peer service, before it hands an AppendEntries of `term` to openraft: refused while
    /// this node is starting an election it decided on (the leader must not count this node's
    /// answer for its read lease once it may vote for itself); otherwise counted as in flight
    /// until the guard drops.
    pub fn begin_append(&self, term: u64) -> Result<prevote::AppendGuard<'_>, NodeError> {
        prevote::AppendGuard::enter(&self.inner, term)
    }

    /// Records the leader's commit index carried by an AppendEntries this follower received.
    pub fn note_leader_commit(&self, index: u64) {
        let mut guard = self
            .inner
            .leader_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        guard.0 = guard.0.max(index);
        guard.1 = Some(Instant::now());
        drop(guard);
        self.inner.clear_removal();
    }

    /// Leader only: a log index a linearizable read must wait for (Raft read index).
    /// Concurrent callers share one quorum confirmation (see `reads::confirm_read_indexes`).
    pub async fn read_index(&self) -> Result<u64, NodeError> {
        self.queue_read_index(true).await
    }

    /// A read index from this node as leader, or (unless `leader_only`) from the leader.
    async fn queue_read_index(&self, leader_only: bool) -> Result<u64, NodeError> {
        if let Some(index) = self.inner.lease_read_index() {
            self.inner.metrics.read_indexes_given("lease", 1);
            return Ok(index);
        }
        let (reply, rx) = oneshot::channel();
        let shutting_down = || NodeError::unavailable("the node is shutting down", None);
        self.inner
            .read_indexes
            .send(reads::ReadIndexWaiter { reply, leader_only })
            .await
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?.map_err(|e| {
            NodeError::unavailable(
                format!("no read index for a linearizable read: {e}"),
                self.inner.leader_hint(),
            )
        })
    }

    /// Runs a membership change on the leader: here, or forwarded to the leader when this node
    /// is a follower that knows it (`forwarded` marks a change that already was).
    pub async fn change_membership(
        &self,
        change: MembershipChange,
        forwarded: bool,
    ) -> Result<MembershipOutcome, NodeError> {
        let local = match &change {
            MembershipChange::AddLearner { id, addr } => self.add_learner(*id, addr.clone()).await,
            MembershipChange::AddVoter { id, addr } => self.add_voter(*id, addr.clone()).await,
            MembershipChange::Remove { id } => self.remove_node(*id).await,
            MembershipChange::TransferLeadership { id } => {
                self.transfer_leadership(*id).await.map(|()| 0)
            }
        };
        let error = match local {
            Ok(log_index) => {
                let (voters, learners) = self.members();
                return Ok(MembershipOutcome {
                    log_index,
                    voters,
                    learners,
                });
            }
            Err(e) => e,
        };
        match error.leader_hint().filter(|l| l.id != self.id()).cloned() {
            Some(leader) if !forwarded => {
                self.inner
                    .peer(&leader.peer_addr)?
                    .forward_membership(&change, leader)
                    .await
            }
            _ => Err(error),
        }
    }

    /// Marks whole-cluster recovery in progress: membership changes wait (see `recovering`).
    pub fn set_recovering(&self, recovering: bool) {
        self.inner
            .recovering
            .store(recovering, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn add_learner(&self, id: NodeId, addr: NodeAddr) -> Result<u64, NodeError> {
        if self
            .inner
            .recovering
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(NodeError::unavailable(
                "the cluster is being restored from the archive; members can join in a moment, retry",
                None,
            ));
        }
        if self.inner.is_leader() {
            self.check_joining(id, &addr).await?;
        }
        // openraft's own wait (`blocking`) counts a learner it never reached as caught up
        // while the log is short (so a dead or mistyped address became a voter at once), and
        // waits for good once the log is long: this node waits itself.
        let resp = self
            .inner
            .raft
            .add_learner(id, addr, false)
            .await
            .map_err(|e| self.inner.membership_error(e))?;
        self.wait_caught_up(id, resp.log_id.index).await?;
        tracing::info!(node = id, "learner added and caught up");
        Ok(resp.log_id.index)
    }

    /// Refuses to add node `id` at `addr` unless that address answers as node `id` on its
    /// peer port (a node that cannot answer cannot catch up).
    async fn check_joining(&self, id: NodeId, addr: &NodeAddr) -> Result<(), NodeError> {
        let peer = self.inner.peer(&addr.peer)?;
        let Some(who) = peer.identity(Duration::from_secs(2)).await else {
            return Err(NodeError::unavailable(
                format!(
                    "node {id} does not answer at {} (its peer address): start it, or check \
                     the address, then add it",
                    addr.peer
                ),
                None,
            ));
        };
        if who.node_id != id {
            return Err(NodeError::InvalidArgument(format!(
                "the node at {} is node {}, not node {id}",
                addr.peer, who.node_id
            )));
        }
        Ok(())
    }

    /// Waits until learner `id` holds every entry up to `index`. Gives up when its progress
    /// stops for `JOIN_STALL` (it went away, or cannot be reached): it stays a learner.
    async fn wait_caught_up(&self, id: NodeId, index: u64) -> Result<(), NodeError> {
        const JOIN_STALL: Duration = Duration::from_secs(20);
        let mut metrics = self.inner.raft.metrics();
        let mut progress = (None, Instant::now());
        loop {
            let (matched, leading) = {
                let m = metrics.borrow_and_update();
                (matched_index(&m, id), m.current_leader == Some(self.id()))
            };
            if matched.is_some_and(|m| m >= index) {
                return Ok(());
            }
            if !leading {
                return Err(NodeError::unavailable(
                    format!("the leader changed while node {id} caught up; retry"),
                    self.inner.leader_hint(),
                ));
            }
            if matched != progress.0 {
                progress = (matched, Instant::now());
            } else if progress.1.elapsed() >= JOIN_STALL {
                return Err(NodeError::unavailable(
                    format!(
                        "node {id} joined as a learner but has made no progress for {}s (it \
                         holds {} of {index} entries); it stays a learner. Check that it runs \
                         and is reachable, then add it again, or remove it. A node with a \
                         large database to copy can be added with add-learner first and \
                         promoted once `raftlite status` shows it caught up",
                        JOIN_STALL.as_secs(),
                        matched.unwrap_or(0)
                    ),
                    None,
                ));
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), metrics.changed()).await;
        }
    }

    pub async fn add_voter(&self, id: NodeId, addr: NodeAddr) -> Result<u64, NodeError> {
        self.add_learner(id, addr).await?;
        let resp = self
            .inner
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.inner.membership_error(e))?;
        tracing::info!(node = id, "node promoted to voter");
        Ok(resp.log_id.index)
    }

    pub async fn remove_node(&self, id: NodeId) -> Result<u64, NodeError> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(NodeError::InvalidArgument(format!(
                "node {id} is not a member of the cluster"
            )));
        };
        let resp = self
            .inner
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.inner.membership_error(e))?;
        tracing::info!(node = id, "node removed from the cluster");
        Ok(resp.log_id.index)
    }

    /// Voters and learners of the current membership.
    pub fn members(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let (voters, learners, _) = self.membership();
        (voters, learners)
    }

    /// Voters and learners of the current membership, and the log index it was written at
    /// (0 before any).
    pub fn membership(&self) -> (Vec<NodeId>, Vec<NodeId>, u64) {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let config = &metrics.membership_config;
        let m = config.membership();
        let index = config.log_id().map_or(0, |l| l.index);
        (m.voter_ids().collect(), m.learner_ids().collect(), index)
    }

    /// Builds a snapshot now and waits for it; returns its log index.
    pub async fn trigger_snapshot(&self) -> Result<u64, NodeError> {
        // openraft builds no snapshot of nothing: a leader asked moments after its election,
        // before it applied its first entry, would find none on disk.
        self.inner
            .raft
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(1), "an entry applied")
            .await
            .map_err(|e| {
                NodeError::unavailable(
                    format!("nothing is applied yet, so there is nothing to snapshot: {e}"),
                    self.inner.leader_hint(),
                )
            })?;
        let target = self.applied_index();
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let metrics = self
            .inner
            .raft
            .wait(Some(Duration::from_secs(120)))
            .metrics(
                |m| m.snapshot.map(|s| s.index).unwrap_or(0) >= target,
                "snapshot built",
            )
            .await
            .map_err(|e| NodeError::Timeout(format!("snapshot was not built in time: {e}")))?;
        Ok(metrics.snapshot.map(|s| s.index).unwrap_or(0))
    }

    /// Leadership transfer: the target starts an election while this leader stays quiet.
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), NodeError> {
        let inner = &self.inner;
        if !inner.is_leader() {
            return Err(NodeError::unavailable(
                "only the leader can transfer leadership",
                inner.leader_hint(),
            ));
        }
        if target == inner.id {
            return Ok(());
        }
        let metrics = inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if !membership.voter_ids().any(|v| v == target) {
            return Err(NodeError::InvalidArgument(format!(
                "node {target} is not a voter"
            )));
        }
        let addr = membership
            .get_node(&target)
            .map(|n| n.peer.clone())
            .ok_or_else(|| NodeError::InvalidArgument(format!("node {target} has no address")))?;
        let client = inner.peer(&addr)?;
        let lease = inner.config.election_timeout_max;
        // The target will vote for itself without waiting for the lease it granted this
        // leader, and writes keep reaching it until then: no read lease for the rest of this
        // term, whatever becomes of the transfer.
        let term = metrics.current_term;
        inner.lease.vote_requested(term + 1);
        let result = async {
            // Followers refuse to vote while the leader's lease is fresh: stop heartbeats so it
            // expires, and let only the target time out into an election.
            inner.raft.runtime_config().heartbeat(false);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let _ = client.elect(lease + Duration::from_millis(50), term).await;
                let got = inner
                    .raft
                    .wait(Some(lease * 4))
                    .metrics(
                        |m| m.current_leader.is_some() && m.current_leader != Some(inner.id),
                        "leader moved",
                    )
                    .await;
                if let Ok(m) = got {
                    return Ok(m.current_leader);
                }
                if Instant::now() > deadline {
                    return Err(NodeError::Timeout(
                        "leadership transfer did not complete".into(),
                    ));
                }
            }
        }
        .await;
        inner.raft.runtime_config().heartbeat(true);
        match result? {
            Some(l) if l == target => Ok(()),
            other => Err(NodeError::unavailable(
                format!("leadership moved to {other:?} instead of {target}; retry"),
                None,
            )),
        }
    }

    /// Peer request: start an election after `after` (leadership transfer).
    pub fn elect_after(&self, after: Duration, term: u64) {
        let current = self.inner.raft.metrics().borrow().current_term;
        if term != 0 && term != current {
            tracing::info!(
                term,
                current,
                "ignored a leadership transfer of another term"
            );
            return;
        }
        *self
            .inner
            .taking_over_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + after + self.inner.config.election_timeout_max * 2);
        let raft = self.inner.raft.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // Only for the leadership that asked: a later term may have a leader holding its
            // read lease with this node's acknowledgements (see `lease.rs`).
            let now = raft.metrics().borrow().current_term;
            if term != 0 && now != term {
                tracing::info!(term, now, "leadership transfer outdated: no election");
                return;
            }
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
            }
        });
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// On the leader: records that its entry `index` is committed and answered, in `noted` (its
/// `leader_commit`): a leased read's index and the next batch's settling cover it
/// ([`NodeInner::answered_index`]).
pub(super) fn note_committed(noted: &Mutex<(u64, Option<Instant>)>, index: u64) {
    let mut guard = noted.lock().unwrap_or_else(|p| p.into_inner());
    guard.0 = guard.0.max(index);
}

/// The term and the voter sets (two during a joint change) the read lease counts a quorum in.
fn term_and_quorums(
    m: &openraft::RaftMetrics<NodeId, NodeAddr>,
) -> (u64, Vec<std::collections::BTreeSet<NodeId>>) {
    (
        m.current_term,
        m.membership_config.membership().get_joint_config().clone(),
    )
}

/// On the leader: the highest log index follower `id` is known to hold (`None`: not known).
fn matched_index(m: &openraft::RaftMetrics<NodeId, NodeAddr>, id: NodeId) -> Option<u64> {
    let matched = m.replication.as_ref()?.get(&id).copied().flatten();
    matched.map(|log_id| log_id.index)
}

/// Leader, and it has applied an entry of its own term: everything earlier leaders committed
/// is applied, and the executor sees it.
fn leader_ready(m: &openraft::RaftMetrics<NodeId, NodeAddr>) -> bool {
    m.state == ServerState::Leader
        && m.last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term)
}

impl NodeInner {
    /// See [`NodeInner::in_place`].
    pub(crate) fn in_place_index(&self) -> u64 {
        self.in_place.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn note_in_place(&self, index: u64) {
        self.in_place
            .fetch_max(index, std::sync::atomic::Ordering::AcqRel);
    }

    /// The highest index this leader answered a write for, as noted at its commit.
    pub(crate) fn answered_index(&self) -> u64 {
        self.leader_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// The highest index this leader answered a write for (it answers at commit, a moment
    /// before it applies) or, if higher, its applied index: everything committed that a client
    /// may have seen. The read index of a leased read, and the token of a write answered
    /// without a delta of its own (a retried request id, a failure).
    pub(crate) fn committed_token(&self) -> u64 {
        self.answered_index().max(self.applied_index())
    }

    /// On a ready leader that holds its read lease (see `lease.rs`): the read index of a
    /// linearizable read, without a quorum round. The highest index it answered a write for
    /// (it answers at commit, a moment before it applies) or, if higher, its applied index.
    pub(crate) fn lease_read_index(&self) -> Option<u64> {
        let (term, quorums) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if !leader_ready(&m) || m.current_leader != Some(self.id) {
                return None;
            }
            term_and_quorums(&m)
        };
        let window = self.config.election_timeout_min / 2;
        if !self.lease.held(self.id, term, &quorums, window) {
            return None;
        }
        Some(self.committed_token())
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Best known commit index: the leader's applied index on the leader, the last announced
    /// one (or what it applied) on a follower.
    pub(crate) fn commit_index(&self) -> u64 {
        if self.is_leader() {
            return self.applied_index();
        }
        let announced = self
            .leader_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0;
        announced.max(self.applied_index())
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    pub fn leader_hint(&self) -> Option<LeaderHint> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some(LeaderHint {
            id,
            addr: node.client,
            peer_addr: node.peer,
        })
    }

    /// A connection to the peer at `addr` (its peer address).
    pub fn peer(&self, addr: &str) -> Result<PeerClient, NodeError> {
        self.dialer
            .proto_client(addr)
            .map(PeerClient::new)
            .map_err(NodeError::Internal)
    }

    /// Waits until this node is leader and has applied an entry of its own term, which means
    /// everything committed by earlier leaders is applied and the executor sees it.
    pub async fn wait_leader_ready(&self) -> Result<(), NodeError> {
        let id = self.id;
        self.raft
            .wait(Some(LEADER_READY_TIMEOUT))
            .metrics(leader_ready, "leader ready")
            .await
            .map_err(|_| {
                let hint = self.leader_hint().filter(|l| l.id != id);
                NodeError::unavailable(
                    "this node is no longer the leader or not ready yet; retry",
                    hint,
                )
            })?;
        self.check_quorum_contact()
    }

    /// On the leader: an error when it has not heard from a quorum for two election timeouts.
    /// openraft 0.9 keeps a leader that lost its quorum in place; writes must not wait on it.
    pub fn check_quorum_contact(&self) -> Result<(), NodeError> {
        let limit = self.config.election_timeout_max * 2;
        match self.since_quorum_ack() {
            Some(since) if since > limit => Err(NodeError::unavailable(
                format!(
                    "the leader has not heard from a quorum for {} ms (no quorum); retry",
                    since.as_millis()
                ),
                None,
            )),
            _ => Ok(()),
        }
    }

    /// On the leader: how long ago a quorum last acknowledged it, each answer as of the
    /// request that got it (see [`lease::LeaderLease::since_quorum`]); `None` until a quorum
    /// of its term did.
    pub fn since_quorum_ack(&self) -> Option<Duration> {
        // Checked before every batch: the configuration is read in place, not copied.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let quorums = m.membership_config.membership().get_joint_config();
        self.lease.since_quorum(self.id, m.current_term, quorums)
    }

    /// Waits until the applied index reaches `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), NodeError> {
        let mut rx = self.applied.clone();
        let reached = tokio::time::timeout(timeout, async {
            rx.wait_for(|&a| a >= index).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(NodeError::unavailable("the node is shutting down", None)),
            Err(_) => {
                let (commit, applied) = (self.commit_index(), self.applied_index());
                let beyond = if index > commit {
                    format!(
                        " (the cluster's commit index, as this node last heard, is {commit}: \
                         index {index} may not be written yet)"
                    )
                } else {
                    String::new()
                };
                Err(NodeError::unavailable(
                    format!(
                        "this node has applied up to {applied} and did not reach index {index} \
                         within {timeout:?}{beyond}"
                    ),
                    self.leader_hint(),
                ))
            }
        }
    }

    fn membership_error<E: std::fmt::Display>(&self, e: E) -> NodeError {
        let text = e.to_string();
        if text.contains("forward request to") || text.contains("has to forward") {
            NodeError::unavailable(
                format!("membership changes go through the leader: {text}"),
                self.leader_hint(),
            )
        } else {
            NodeError::unavailable(
                format!("membership change failed: {text}"),
                self.leader_hint(),
            )
        }
    }
}
