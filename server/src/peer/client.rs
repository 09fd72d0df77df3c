//! The typed calls a node makes on a peer. Errors come back as [`NodeError`]s with the same
//! meaning the peer gave them, so a forwarded request fails for the client as it would have
//! on the leader.

use std::time::Duration;

use raftlite_proto::v1;

use super::convert;
use super::dialer::PeerProtoClient;
use crate::db::WriteRequest;
use crate::node::status::MemberStatus;
use crate::node::{
    LeaderHint, MembershipChange, MembershipOutcome, NodeError, PreVoteAnswer, TransactionCall,
    TransactionReply, WriteReply,
};
use crate::raft::codec;
use crate::raft::types::{LogId, NodeId};

/// What a peer says about itself (bootstrap asks every initial member before initializing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: u64,
    /// Empty when the peer belongs to no cluster yet.
    pub cluster_id: String,
    /// The peer holds Raft state (a vote or log entries).
    pub initialized: bool,
    /// The leader the peer knows, if any.
    pub leader: Option<LeaderHint>,
    /// The voters and learners of the peer's membership, and that membership's log index.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub membership_index: u64,
    /// The address clients reach the peer at.
    pub client_addr: String,
}

/// Metadata of a forwarded write: the most bytes of rows its answer may hold
/// ([`WriteRequest::max_result_bytes`]).
pub(crate) const MAX_RESULT_BYTES_KEY: &str = "raftlite-max-result-bytes";

/// Tells the leader the room for rows a forwarded request's answer has here, if any (read back
/// by the peer service's `forwarded_room`).
fn send_room<T>(request: &mut tonic::Request<T>, room: Option<usize>) {
    if let Some(room) = room {
        request
            .metadata_mut()
            .insert(MAX_RESULT_BYTES_KEY, room.into());
    }
}

/// A connection to one peer.
#[derive(Clone)]
pub struct PeerClient {
    inner: PeerProtoClient,
}

impl PeerClient {
    pub(crate) fn new(inner: PeerProtoClient) -> Self {
        Self { inner }
    }

    /// Runs a client's write on `leader` (this client's peer).
    pub async fn forward_execute(
        &self,
        request: &WriteRequest,
        leader: LeaderHint,
    ) -> Result<WriteReply, NodeError> {
        use tracing::Instrument;
        let span = tracing::info_span!("forward", leader = leader.id);
        let mut outgoing =
            tonic::Request::new(crate::grpc::convert::write_request_to_proto(request));
        // The leader stops the statement at the request's deadline and answers why.
        if let Some(deadline) = request.deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            raftlite_client::transport::set_deadline(&mut outgoing, left);
        }
        send_room(&mut outgoing, request.max_result_bytes);
        // The leader's `peer.forward_execute` span continues this one: one trace across both.
        span.in_scope(|| crate::telemetry::inject_current(outgoing.metadata_mut()));
        match self
            .inner
            .clone()
            .forward_execute(outgoing)
            .instrument(span)
            .await
        {
            Ok(resp) => crate::grpc::convert::write_reply_from_proto(resp.into_inner()),
            Err(status) => Err(convert::node_error_from_status(status, Some(leader))),
        }
    }

    /// Runs a call of an interactive transaction on `leader` (this client's peer) for the
    /// token `principal`, within `timeout`.
    pub async fn forward_transaction(
        &self,
        principal: &str,
        call: &TransactionCall,
        timeout: Duration,
        leader: LeaderHint,
    ) -> Result<TransactionReply, NodeError> {
        let mut request = tonic::Request::new(crate::grpc::convert::transaction_call_to_proto(
            principal, call,
        ));
        raftlite_client::transport::set_deadline(&mut request, timeout);
        if let TransactionCall::Execute {
            max_result_bytes, ..
        } = call
        {
            send_room(&mut request, *max_result_bytes);
        }
        match self.inner.clone().forward_transaction(request).await {
            Ok(resp) => crate::grpc::convert::transaction_reply_from_proto(resp.into_inner()),
            Err(status) => Err(convert::node_error_from_status(status, Some(leader))),
        }
    }

    /// Asks `leader` (this client's peer) for a linearizable read index.
    pub async fn read_index(
        &self,
        timeout: Duration,
        leader: LeaderHint,
    ) -> Result<u64, NodeError> {
        let mut request = tonic::Request::new(v1::ReadIndexRequest {});
        request.set_timeout(timeout);
        match self.inner.clone().read_index(request).await {
            Ok(r) => Ok(r.into_inner().index),
            Err(status) => Err(convert::node_error_from_status(status, Some(leader))),
        }
    }

    /// Runs a membership change on `leader` (this client's peer).
    pub async fn forward_membership(
        &self,
        change: &MembershipChange,
        leader: LeaderHint,
    ) -> Result<MembershipOutcome, NodeError> {
        let call = convert::membership_change_to_proto(change);
        match self.inner.clone().forward_admin(call).await {
            Ok(r) => Ok(convert::membership_outcome_from_proto(r.into_inner())),
            Err(status) => Err(convert::node_error_from_status(status, Some(leader))),
        }
    }

    /// Who the peer is; `None` when it did not answer within `timeout`.
    pub async fn identity(&self, timeout: Duration) -> Option<PeerIdentity> {
        let mut request = tonic::Request::new(v1::IdentityRequest {});
        request.set_timeout(timeout);
        // The bound covers name resolution and connecting too, not only the call.
        let answer = tokio::time::timeout(timeout, self.inner.clone().identity(request)).await;
        let r = answer.ok()?.ok()?.into_inner();
        Some(PeerIdentity {
            node_id: r.node_id,
            cluster_id: r.cluster_id,
            initialized: r.initialized,
            leader: (r.leader != 0).then_some(LeaderHint {
                id: r.leader,
                addr: String::new(),
                peer_addr: r.leader_addr,
            }),
            voters: r.voters,
            learners: r.learners,
            membership_index: r.membership_index,
            client_addr: r.client_addr,
        })
    }

    /// The peer's own view of itself; `None` when it did not answer within `timeout`.
    pub async fn local_status(&self, timeout: Duration) -> Option<MemberStatus> {
        let mut request = tonic::Request::new(v1::LocalStatusRequest {});
        request.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, self.inner.clone().local_status(request)).await;
        Some(convert::member_status_from_proto(
            answer.ok()?.ok()?.into_inner(),
        ))
    }

    /// Asks the peer whether it would vote for node `from` (this node) now: the pre-vote of
    /// `node::prevote`. Fails when the peer did not answer within `timeout`.
    pub async fn pre_vote(
        &self,
        cluster_id: &str,
        from: NodeId,
        last_log_id: Option<LogId>,
        timeout: Duration,
    ) -> Result<PreVoteAnswer, tonic::Status> {
        let payload = codec::encode(&last_log_id)
            .map_err(|e| tonic::Status::internal(format!("encode pre-vote: {e}")))?;
        let mut request = tonic::Request::new(v1::RaftMessage {
            cluster_id: cluster_id.to_string(),
            from,
            payload,
        });
        request.set_timeout(timeout);
        // The bound covers name resolution and connecting too, not only the call.
        let reply = tokio::time::timeout(timeout, self.inner.clone().pre_vote(request))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no answer in time"))??
            .into_inner();
        codec::decode(&reply.payload)
            .map_err(|e| tonic::Status::internal(format!("undecodable pre-vote answer: {e}")))
    }

    /// Asks the peer to start an election after `after` (leadership transfer).
    pub async fn elect(&self, after: Duration, term: u64) -> Result<(), tonic::Status> {
        self.inner
            .clone()
            .elect(v1::ElectRequest {
                after_ms: after.as_millis() as u64,
                term,
            })
            .await
            .map(|_| ())
    }
}
