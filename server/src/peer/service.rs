//! The peer-only service: Raft RPCs, streamed snapshot install, write forwarding, read index.
//! Every message is checked against this node's cluster identity before it reaches Raft, and
//! every payload is decoded with a size limit: garbage is INVALID_ARGUMENT, never a panic.

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Snapshot;
use raftlite_proto::v1::{self, peer_server::Peer};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use crate::cluster::identity::ClusterMismatch;
use crate::grpc::convert::{node_error_to_status, write_reply_to_proto, write_request_from_proto};
use crate::node::Node;
use crate::raft::codec;
use crate::raft::types::{NodeId, SnapshotMeta, TypeConfig, Vote};

pub struct PeerService {
    pub node: Node,
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
    /// Entries or a snapshot from a leader of another cluster: this node's data is foreign.
    fn foreign_leader(&self, mismatch: ClusterMismatch) -> Status {
        crate::cluster::resync::foreign_leader(&self.node, &mismatch);
        Status::failed_precondition(mismatch.to_string())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftMessage>, Status> {
        let msg = request.into_inner();
        if let Err(m) = self.node.identity().check_peer(&msg.cluster_id) {
            return Err(self.foreign_leader(m));
        }
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&msg.payload, "append-entries request")?;
        if let Some(commit) = rpc.leader_commit {
            self.node.note_leader_commit(commit.index);
        }
        let started = std::time::Instant::now();
        let entries = rpc.entries.len();
        let result = self.node.raft().append_entries(rpc).await;
        tracing::debug!(
            entries,
            elapsed_us = started.elapsed().as_micros() as u64,
            "append-entries handled"
        );
        reply(&self.node, &result)
    }

    async fn vote(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftMessage>, Status> {
        let msg = request.into_inner();
        if let Err(m) = self.node.identity().check_peer(&msg.cluster_id) {
            tracing::warn!(from = msg.from, error = %m, "refusing a vote request from another cluster");
            return Err(Status::failed_precondition(m.to_string()));
        }
        let rpc: VoteRequest<NodeId> = decode(&msg.payload, "vote request")?;
        let result = self.node.raft().vote(rpc).await;
        reply(&self.node, &result)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<v1::SnapshotChunk>>,
    ) -> Result<Response<v1::RaftMessage>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        if let Err(m) = self.node.identity().check_peer(&first.cluster_id) {
            return Err(self.foreign_leader(m));
        }
        let (vote, meta): (Vote, SnapshotMeta) = decode(&first.header, "snapshot header")?;
        tracing::info!(from = first.from, index = ?meta.last_log_id.map(|l| l.index), "receiving snapshot");
        let mut file = self
            .node
            .raft()
            .begin_receiving_snapshot()
            .await
            .map_err(|e| Status::unavailable(format!("cannot receive a snapshot now: {e}")))?;
        let io = |e: std::io::Error| Status::internal(format!("write received snapshot: {e}"));
        file.write_all(&first.data).await.map_err(io)?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?.data).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        let result = self
            .node
            .raft()
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: file,
                },
            )
            .await;
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
        async move {
            let write = write_request_from_proto(request.into_inner())?;
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
        Ok(Response::new(v1::IdentityResponse {
            node_id: self.node.id(),
            cluster_id: self.node.identity().get().unwrap_or_default(),
            initialized,
            leader: leader.as_ref().map_or(0, |l| l.id),
            leader_addr: leader.map(|l| l.addr).unwrap_or_default(),
            voters: self.node.members().0,
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
        let after = std::time::Duration::from_millis(request.into_inner().after_ms.min(10_000));
        self.node.elect_after(after);
        Ok(Response::new(v1::ElectResponse {}))
    }

    async fn forward_admin(
        &self,
        request: Request<v1::AdminCall>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let change = convert::membership_change_from_proto(request.into_inner())?;
        let outcome = self
            .node
            .change_membership(change, true)
            .await
            .map_err(node_error_to_status)?;
        Ok(Response::new(convert::membership_outcome_to_proto(outcome)))
    }
}
