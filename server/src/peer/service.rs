//! The peer-only service: Raft RPCs, streamed snapshot install, write forwarding, read index,
//! identity, membership changes and joining. It is served on the peer port only.
//!
//! # Who may send what
//!
//! With TLS (`tls_cert`/`tls_key`/`tls_ca`), the peer port asks every caller for a certificate
//! signed by the cluster CA (mutual TLS); a connection without one never reaches this service.
//! On top of that, each message is checked before anything is decoded or written:
//!
//! - **AppendEntries** (a unary call, or each message of an `AppendStream`), **Vote,
//!   InstallSnapshot** name their sender (`from`). The sender must be a
//!   member of this node's membership (any sender while the node has none yet: a new node
//!   waiting to be added) and, with TLS, its certificate must name that node
//!   ([`crate::tls::PeerCert::names_node`]). Its cluster id must be this node's: a node that
//!   belongs to a cluster refuses a message with an empty or different id.
//! - **InstallSnapshot** also checks the sender's vote against this node's before a byte is
//!   written, writes at most `max_snapshot_bytes` into a file it names itself (never after the
//!   sender's `snapshot_id`), and removes that file whatever happens. It installs only a
//!   stream that ends with the sender's empty last chunk: one cut short is not the snapshot.
//! - **Elect** (leadership transfer) is honoured, with TLS, only from the current leader.
//! - **ForwardAdmin** from a member may change anything (the member checked the client's admin
//!   token); from a node that is no member, only adding itself (a StatefulSet pod joining),
//!   with a certificate that names it explicitly (`raftlite-node-<id>`).
//! - **ForwardExecute** and **ForwardTransaction** come only from a member (with TLS, a
//!   certificate that names one), and obey `max_request_bytes` like `Sql.Execute`;
//!   a forwarded transaction call is checked again here (ids, sizes) and answers only the token
//!   named in it (the follower checked that token).
//! - **Re-sync** (wiping this node's data for another cluster's): see `cluster::resync`. One
//!   message never does it: the other peers must confirm that this node is the odd one out.
//!
//! Without TLS (loopback, or `--insecure`), a sender cannot be authenticated: the membership,
//! cluster id, vote, size and file-name checks still hold, re-sync is off unless set explicitly.
//! Every payload is decoded with a size limit: garbage is INVALID_ARGUMENT, never a panic.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::Snapshot;
use raftlite_proto::v1::{self, peer_server::Peer, peer_server::PeerServer};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use crate::grpc::convert::{node_error_to_status, write_reply_to_proto, write_request_from_proto};
use crate::node::{MembershipChange, Node};
use crate::raft::codec;
use crate::raft::types::{LogId, NodeId, SnapshotMeta, TypeConfig, Vote};
use crate::tls::{ConnInfo, PeerCert};

#[derive(Clone)]
pub struct PeerService {
    pub node: Node,
}

/// Most messages of one `AppendStream` handled at once: as many group commits as a leader may
/// have in flight (`write_pipeline_depth`).
const APPEND_STREAM_CONCURRENCY: usize = crate::config::defaults::MAX_WRITE_PIPELINE_DEPTH;

/// The answers of an `AppendStream`, in the order of its messages.
pub type AppendAnswers =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::RaftMessage, Status>> + Send>>;

/// Serves the peer service of `node` on `listen` (its own port, never the client port) until
/// `shutdown` resolves.
pub async fn serve(
    node: Node,
    listen: std::net::SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let incoming = crate::tls::incoming(
        listen,
        node.tls(),
        crate::tls::Port::Peer,
        crate::tls::PEER_MAX_CONNECTIONS,
        None,
    )
    .await
    .context("peer listener (peer_listen)")?;
    let peer = PeerServer::new(PeerService { node })
        .max_decoding_message_size(super::PEER_MESSAGE_LIMIT)
        .max_encoding_message_size(super::PEER_MESSAGE_LIMIT);
    tonic::transport::Server::builder()
        .add_service(peer)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .with_context(|| format!("serve the peer service on {listen}"))
}

/// The verified certificate of the connection a request came on.
fn peer_cert<T>(request: &Request<T>) -> Option<std::sync::Arc<PeerCert>> {
    request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|i| i.peer_cert.clone())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Status> {
    codec::decode(bytes).map_err(|e| Status::invalid_argument(format!("undecodable {what}: {e}")))
}

fn reply<T: serde::Serialize>(node: &Node, value: &T) -> Result<Response<v1::RaftMessage>, Status> {
    let payload =
        codec::encode(value).map_err(|e| Status::internal(format!("encode reply: {e}")))?;
    Ok(Response::new(v1::RaftMessage {
        cluster_id: node.identity().get().unwrap_or_default(),
        from: node.id(),
        payload,
    }))
}

impl PeerService {
    /// An AppendEntries from a peer (a unary call or a message of `AppendStream`): who sent it
    /// is checked before it is decoded, and its vote must be the sender's own.
    async fn append_one(
        &self,
        msg: v1::RaftMessage,
        cert: Option<&PeerCert>,
    ) -> Result<v1::RaftMessage, Status> {
        self.check_cluster(&msg.cluster_id, msg.from, true, cert)?;
        self.check_sender(msg.from, cert)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&msg.payload, "append-entries request")?;
        if rpc.vote.leader_id().voted_for() != Some(msg.from) {
            return Err(Status::invalid_argument(format!(
                "append-entries from node {} carries the vote of another leader",
                msg.from
            )));
        }
        let commit = rpc.leader_commit;
        let started = std::time::Instant::now();
        let entries = rpc.entries.len();
        let _in_flight = self
            .node
            .begin_append(rpc.vote.leader_id().term)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let _last = rpc.entries.last().map_or(0, |e| e.log_id.index);
        crate::stamp!("f.in", _last);
        let result = self.node.raft().append_entries(rpc).await;
        crate::stamp!("f.out", _last);
        if let Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)) =
            &result
        {
            // Heard from the leader: only when it was accepted (a deposed leader's message is
            // refused and must not count for bounded reads or pre-votes).
            self.node.note_leader_commit(commit.map_or(0, |c| c.index));
        }
        tracing::debug!(
            entries,
            elapsed_us = started.elapsed().as_micros() as u64,
            "append-entries handled"
        );
        Ok(reply(&self.node, &result)?.into_inner())
    }

    /// Whether `cert` names a member of the cluster (or, before this node knows a
    /// membership, one of its configured peers).
    fn names_a_member(&self, cert: &PeerCert) -> bool {
        let members = self.node.member_addrs();
        members
            .iter()
            .any(|(id, a)| self.cert_names(cert, *id, Some(&a.peer)))
            || (members.is_empty()
                && self
                    .node
                    .config()
                    .peers
                    .iter()
                    .any(|(id, addr)| self.cert_names(cert, *id, Some(addr))))
    }

    /// A member may forward any change; a node that is no member may only add itself, and
    /// only with a certificate that names it explicitly (`raftlite-node-<id>`, as the chart's
    /// pod certificates do). A certificate that merely names a host would let anyone the CA
    /// ever signed for some host add itself at an address it chose, as a voter.
    fn check_admin_sender(&self, cert: &PeerCert, change: &MembershipChange) -> Result<(), Status> {
        if self.names_a_member(cert) {
            return Ok(());
        }
        match change {
            MembershipChange::AddLearner { id, .. } | MembershipChange::AddVoter { id, .. }
                if cert.names_node(*id, None, false) =>
            {
                Ok(())
            }
            MembershipChange::AddLearner { id, .. } | MembershipChange::AddVoter { id, .. } => {
                Err(Status::permission_denied(format!(
                    "a node that is not a member may only add itself, with a certificate that \
                     names {}",
                    crate::tls::node_name(*id)
                )))
            }
            _ => Err(Status::permission_denied(
                "a node that is not a member may only ask to add itself",
            )),
        }
    }

    /// Forwarded client calls come only from members: the member checked the client's token,
    /// and the call runs with the identity it names. With TLS, a certificate that names no
    /// member is refused.
    fn check_forwarder<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if !self.tls_on() {
            return Ok(());
        }
        match peer_cert(request) {
            Some(cert) if self.names_a_member(&cert) => Ok(()),
            Some(cert) => {
                tracing::warn!(names = ?cert.names, "refusing a forwarded call from a certificate that names no member");
                Err(Status::permission_denied(format!(
                    "only a member of the cluster may forward a client's call; the certificate \
                     names {:?}",
                    cert.names
                )))
            }
            None => Err(Status::unauthenticated(
                "the peer port requires a client certificate",
            )),
        }
    }

    fn tls_on(&self) -> bool {
        self.node.tls().is_some()
    }

    /// True when `cert` names node `id` (at `peer_addr`, if known).
    fn cert_names(&self, cert: &PeerCert, id: NodeId, peer_addr: Option<&str>) -> bool {
        // The explicit name needs no look at the membership (the usual case).
        if cert.names_node(id, None, false) {
            return true;
        }
        let hosts = self.node.member_peer_hosts();
        let host = peer_addr.and_then(crate::tls::addr_host);
        let unique = host
            .as_ref()
            .is_some_and(|h| hosts.iter().filter(|x| *x == h).count() <= 1);
        cert.names_node(id, peer_addr, unique)
    }

    /// A Raft message (not from a leader: Vote, PreVote) that passed the cluster and sender
    /// checks, and its decoded payload.
    fn admit<T: serde::de::DeserializeOwned>(
        &self,
        request: Request<v1::RaftMessage>,
        what: &str,
    ) -> Result<(v1::RaftMessage, T), Status> {
        let cert = peer_cert(&request);
        let msg = request.into_inner();
        self.check_cluster(&msg.cluster_id, msg.from, false, cert.as_deref())?;
        self.check_sender(msg.from, cert.as_deref())?;
        let payload = decode(&msg.payload, what)?;
        Ok((msg, payload))
    }

    /// The checks every Raft message passes before it is decoded (see the module docs):
    /// the sender is a member and, with TLS, the node its certificate names.
    fn check_sender(&self, from: NodeId, cert: Option<&PeerCert>) -> Result<(), Status> {
        let members = self.node.member_addrs();
        let addr = members
            .get(&from)
            .map(|a| a.peer.clone())
            .or_else(|| self.node.config().peers.get(&from).cloned());
        if !members.is_empty() && !members.contains_key(&from) {
            tracing::warn!(
                from,
                "refusing a Raft message from a node that is not a member"
            );
            return Err(Status::permission_denied(format!(
                "node {from} is not a member of this cluster"
            )));
        }
        if self.tls_on() {
            let Some(cert) = cert else {
                return Err(Status::unauthenticated(
                    "the peer port requires a client certificate",
                ));
            };
            if !self.cert_names(cert, from, addr.as_deref()) {
                tracing::warn!(from, names = ?cert.names, "refusing a Raft message: the certificate does not name its sender");
                return Err(Status::permission_denied(format!(
                    "the client certificate does not name node {from} (it names {:?})",
                    cert.names
                )));
            }
        }
        Ok(())
    }

    /// The sender's cluster id against this node's. A message from a leader of another
    /// cluster may make this node re-sync, under the rules in `cluster::resync`.
    fn check_cluster(
        &self,
        theirs: &str,
        from: NodeId,
        from_leader: bool,
        cert: Option<&PeerCert>,
    ) -> Result<(), Status> {
        let Err(mismatch) = self.node.identity().check_peer(theirs) else {
            return Ok(());
        };
        if theirs.is_empty() {
            return Err(Status::failed_precondition(format!(
                "a message without a cluster id; this node belongs to cluster {}",
                mismatch.ours
            )));
        }
        if from_leader {
            // This node's own membership belongs to the other cluster: the sender is vouched
            // for by this node's configured peers (and, with TLS, its certificate).
            let configured = self.node.config().peers.get(&from).cloned();
            let known = configured.is_some() || self.node.member_addrs().contains_key(&from);
            let authenticated = match cert {
                Some(c) => self.cert_names(c, from, configured.as_deref()),
                None => !self.tls_on(),
            };
            crate::cluster::resync::foreign_leader(
                &self.node,
                &mismatch,
                from,
                known && authenticated,
            );
        } else {
            tracing::warn!(from, error = %mismatch, "refusing a message from another cluster");
        }
        Err(Status::failed_precondition(mismatch.to_string()))
    }
}

/// The room for rows the follower that forwarded a write or transaction call has
/// ([`crate::db::WriteRequest::max_result_bytes`]); none if it did not say.
fn forwarded_room(metadata: &tonic::metadata::MetadataMap) -> Option<usize> {
    metadata
        .get(super::client::MAX_RESULT_BYTES_KEY)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftMessage>, Status> {
        let cert = peer_cert(&request);
        let answer = self
            .append_one(request.into_inner(), cert.as_deref())
            .await?;
        Ok(Response::new(answer))
    }

    type AppendStreamStream = AppendAnswers;

    /// AppendEntries, each checked as the unary call is, answered in order by the stream's own
    /// task. The first error ends the stream with that status.
    async fn append_stream(
        &self,
        request: Request<Streaming<v1::RaftMessage>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        let cert = peer_cert(&request);
        let service = self.clone();
        // Several at once, as unary calls would be (a follower's log then syncs them
        // together), started in the order they came (each hands its entries to openraft's
        // core on its first poll) and answered in that order.
        let handled = futures::StreamExt::map(request.into_inner(), move |msg| {
            let (service, cert) = (service.clone(), cert.clone());
            async move { service.append_one(msg?, cert.as_deref()).await }
        });
        let answers = futures::StreamExt::buffered(handled, APPEND_STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftMessage>, Status> {
        let (msg, rpc): (_, VoteRequest<NodeId>) = self.admit(request, "vote request")?;
        if rpc.vote.leader_id().voted_for() != Some(msg.from) {
            return Err(Status::invalid_argument(format!(
                "vote request from node {} asks a vote for another node",
                msg.from
            )));
        }
        // Before openraft can grant it: from here on this node, if leader, reads with a quorum
        // round again (see `node::lease`).
        self.node.before_vote(rpc.vote.leader_id().term).await;
        let result = self.node.raft().vote(rpc).await;
        reply(&self.node, &result)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<v1::SnapshotChunk>>,
    ) -> Result<Response<v1::RaftMessage>, Status> {
        let cert = peer_cert(&request);
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        self.check_cluster(&first.cluster_id, first.from, true, cert.as_deref())?;
        self.check_sender(first.from, cert.as_deref())?;
        let (vote, mut meta): (Vote, SnapshotMeta) = decode(&first.header, "snapshot header")?;
        if vote.leader_id().voted_for() != Some(first.from) || !vote.is_committed() {
            return Err(Status::invalid_argument(format!(
                "a snapshot from node {} must carry its committed leader vote",
                first.from
            )));
        }
        let ours = self.node.raft().metrics().borrow().vote;
        if vote < ours {
            return Err(Status::failed_precondition(format!(
                "snapshot from node {} with a stale vote ({vote}; this node has {ours})",
                first.from
            )));
        }
        // The file is named here, never after the sender's snapshot id.
        meta.snapshot_id = format!(
            "{}-{}-{}",
            meta.last_log_id.map(|l| l.leader_id.term).unwrap_or(0),
            meta.last_log_id.map(|l| l.index).unwrap_or(0),
            uuid::Uuid::new_v4().simple()
        );
        tracing::info!(from = first.from, index = ?meta.last_log_id.map(|l| l.index), "receiving snapshot");
        let limit = self.node.config().max_snapshot_bytes;
        let received = ReceivedFile::create(self.node.snapshot_receive_path())
            .await
            .map_err(|e| Status::internal(format!("create the received snapshot file: {e}")))?;
        let mut file = received
            .open()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let io = |e: std::io::Error| Status::internal(format!("write received snapshot: {e}"));
        let mut total = 0u64;
        let mut chunk = Some(first.data);
        // The sender ends a whole snapshot with an empty chunk, after the file's last byte. A
        // stream that ends without it was cut short (the sender's read failed, or it stopped):
        // what arrived is not the snapshot, and installing it would replace the database with
        // its first part.
        let mut whole = false;
        while let Some(data) = chunk.take() {
            if data.is_empty() {
                whole = true;
                break;
            }
            total += data.len() as u64;
            if total > limit {
                tracing::warn!(
                    from = first.from,
                    total,
                    limit,
                    "refusing a snapshot over max_snapshot_bytes"
                );
                return Err(Status::resource_exhausted(format!(
                    "snapshot is over {limit} bytes (max_snapshot_bytes)"
                )));
            }
            file.write_all(&data).await.map_err(io)?;
            chunk = match stream.next().await {
                Some(c) => Some(c?.data),
                None => None,
            };
        }
        if !whole {
            tracing::warn!(
                from = first.from,
                total,
                "refusing a snapshot whose stream ended before its last chunk"
            );
            return Err(Status::aborted(format!(
                "the snapshot stream ended after {total} bytes, before its last (empty) chunk: \
                 the sender stopped early; nothing was installed"
            )));
        }
        file.flush().await.map_err(io)?;
        let result = self
            .node
            .raft()
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: Box::new(file),
                },
            )
            .await;
        drop(received);
        if result.is_ok() {
            self.node.metrics().snapshot_received();
        }
        reply(&self.node, &result)
    }

    async fn forward_execute(
        &self,
        request: Request<v1::ExecuteRequest>,
    ) -> Result<Response<v1::ExecuteResponse>, Status> {
        use tracing::Instrument;
        let span = tracing::info_span!("peer.forward_execute", node = self.node.id());
        // The follower's `forward` span is the parent: one trace across both nodes.
        crate::telemetry::continue_trace(&span, request.metadata());
        self.check_forwarder(&request)?;
        let limit = self.node.config().max_request_bytes;
        let len = prost::Message::encoded_len(request.get_ref());
        if len > limit {
            return Err(Status::resource_exhausted(format!(
                "forwarded request of {len} bytes is over the limit of {limit} bytes \
                 (max_request_bytes)"
            )));
        }
        let deadline = crate::grpc::sql::statement_deadline(
            request.metadata(),
            self.node.config().statement_timeout,
        );
        let max_result_bytes = forwarded_room(request.metadata());
        async move {
            let mut write = write_request_from_proto(request.into_inner())?;
            write.deadline = Some(deadline);
            write.max_result_bytes = max_result_bytes;
            let reply = self
                .node
                .execute(write, true)
                .await
                .map_err(node_error_to_status)?;
            Ok(Response::new(write_reply_to_proto(reply)))
        }
        .instrument(span)
        .await
    }

    async fn forward_transaction(
        &self,
        request: Request<v1::TransactionCall>,
    ) -> Result<Response<v1::TransactionReply>, Status> {
        self.check_forwarder(&request)?;
        let limit = self.node.config().max_request_bytes;
        let len = prost::Message::encoded_len(request.get_ref());
        if len > limit {
            return Err(Status::resource_exhausted(format!(
                "forwarded transaction call of {len} bytes is over the limit of {limit} bytes \
                 (max_request_bytes)"
            )));
        }
        let metadata = request.metadata().clone();
        let (principal, mut call) =
            crate::grpc::convert::transaction_call_from_proto(request.into_inner())?;
        if let crate::node::TransactionCall::Execute {
            max_result_bytes, ..
        } = &mut call
        {
            *max_result_bytes = forwarded_room(&metadata);
        }
        // The follower sent its client's remaining time; a commit may use the request's.
        let limit = match call {
            crate::node::TransactionCall::Commit { .. } => self.node.config().request_timeout,
            _ => self.node.config().statement_timeout,
        };
        let deadline = crate::grpc::sql::statement_deadline(&metadata, limit);
        let reply = self
            .node
            .transaction(&principal, call, deadline, true)
            .await
            .map_err(node_error_to_status)?;
        Ok(Response::new(
            crate::grpc::convert::transaction_reply_to_proto(reply),
        ))
    }

    async fn read_index(
        &self,
        _: Request<v1::ReadIndexRequest>,
    ) -> Result<Response<v1::ReadIndexResponse>, Status> {
        let index = self.node.read_index().await.map_err(node_error_to_status)?;
        Ok(Response::new(v1::ReadIndexResponse { index }))
    }

    async fn identity(
        &self,
        _: Request<v1::IdentityRequest>,
    ) -> Result<Response<v1::IdentityResponse>, Status> {
        let initialized = self
            .node
            .has_raft_state()
            .map_err(|e| Status::internal(e.to_string()))?;
        let leader = self.node.leader_hint();
        let (voters, learners, membership_index) = self.node.membership();
        Ok(Response::new(v1::IdentityResponse {
            node_id: self.node.id(),
            cluster_id: self.node.identity().get().unwrap_or_default(),
            initialized,
            leader: leader.as_ref().map_or(0, |l| l.id),
            leader_addr: leader.map(|l| l.peer_addr).unwrap_or_default(),
            voters,
            learners,
            membership_index,
            client_addr: self.node.config().advertise_addr.clone(),
        }))
    }

    async fn local_status(
        &self,
        _: Request<v1::LocalStatusRequest>,
    ) -> Result<Response<v1::NodeStatus>, Status> {
        Ok(Response::new(convert::member_status_to_proto(
            self.node.local_status(),
        )))
    }

    async fn elect(
        &self,
        request: Request<v1::ElectRequest>,
    ) -> Result<Response<v1::ElectResponse>, Status> {
        if self.tls_on() {
            let cert = peer_cert(&request);
            let leader = self.node.leader_hint();
            let from_leader = match (&cert, &leader) {
                (Some(c), Some(l)) => self.cert_names(c, l.id, Some(&l.peer_addr)),
                _ => false,
            };
            if !from_leader {
                return Err(Status::permission_denied(
                    "only the current leader may ask this node to start an election",
                ));
            }
        }
        let request = request.into_inner();
        let after = std::time::Duration::from_millis(request.after_ms.min(10_000));
        self.node.elect_after(after, request.term);
        Ok(Response::new(v1::ElectResponse {}))
    }

    async fn pre_vote(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftMessage>, Status> {
        let (msg, last_log_id): (_, Option<LogId>) = self.admit(request, "pre-vote request")?;
        let answer = self.node.answer_pre_vote(msg.from, last_log_id).await;
        reply(&self.node, &answer)
    }

    async fn forward_admin(
        &self,
        request: Request<v1::AdminCall>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let cert = peer_cert(&request);
        let change = convert::membership_change_from_proto(request.into_inner())?;
        if let Some(cert) = cert.as_deref() {
            self.check_admin_sender(cert, &change)?;
        }
        let outcome = self
            .node
            .change_membership(change, true)
            .await
            .map_err(node_error_to_status)?;
        Ok(Response::new(convert::membership_outcome_to_proto(outcome)))
    }
}

/// A received snapshot's file, removed when dropped (installed or not): a refused, broken or
/// abandoned transfer leaves nothing behind.
struct ReceivedFile {
    path: std::path::PathBuf,
}

impl ReceivedFile {
    async fn create(path: std::path::PathBuf) -> std::io::Result<ReceivedFile> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(ReceivedFile { path })
    }

    /// Read-write: openraft reads the data back from this handle when installing.
    async fn open(&self) -> std::io::Result<tokio::fs::File> {
        tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .await
    }
}

impl Drop for ReceivedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
