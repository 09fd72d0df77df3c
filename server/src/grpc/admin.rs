//! The public `Admin` service. Membership changes run on the leader: a follower forwards them.

use raftlite_proto::v1::{self, admin_client::AdminClient, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::convert::node_error_to_status;
use crate::node::{Node, NodeError};

pub struct AdminService {
    pub node: Node,
}

pub(crate) fn status_to_proto(s: crate::node::status::ClusterStatus) -> v1::StatusResponse {
    v1::StatusResponse {
        cluster_id: s.cluster_id,
        node_id: s.node_id,
        leader: s.leader.unwrap_or(0),
        term: s.term,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        nodes: s.members.into_iter().map(member_to_proto).collect(),
        archive: Some(v1::ArchiveStatus {
            url: s.archive.url,
            uploading: s.archive.uploading,
            generation: s.archive.generation,
            archived_index: s.archive.archived_index,
            lag_entries: s.archive.lag_entries,
            lag_ms: s.archive.lag_ms,
            last_error: s.archive.last_error,
            snapshot_index: s.archive.snapshot_index,
        }),
    }
}

pub(crate) fn member_to_proto(m: crate::node::status::MemberStatus) -> v1::NodeStatus {
    v1::NodeStatus {
        id: m.id,
        addr: m.addr,
        role: m.role,
        applied_index: m.applied_index,
        lag: m.lag,
        voter: m.voter,
        term: m.term,
    }
}

impl AdminService {
    fn membership(&self, log_index: u64) -> v1::MembershipResponse {
        let (voters, learners) = self.node.members();
        v1::MembershipResponse {
            log_index,
            voters,
            learners,
        }
    }

    /// The leader's Admin client when this node is not the leader.
    fn leader_client(&self, err: &NodeError) -> Option<AdminClient<tonic::transport::Channel>> {
        let hint = err.leader_hint()?;
        if hint.id == self.node.id() {
            return None;
        }
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", hint.addr)).ok()?;
        Some(AdminClient::new(endpoint.connect_lazy()))
    }

    /// Answers with this node's result, or, when this node is not the leader and knows who is,
    /// with the leader's answer to the same request (`forward`).
    async fn or_forward<T, Fut>(
        &self,
        local: Result<T, NodeError>,
        forward: impl FnOnce(AdminClient<tonic::transport::Channel>) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        match local {
            Ok(answer) => Ok(Response::new(answer)),
            Err(e) => match self.leader_client(&e) {
                Some(leader) => forward(leader).await,
                None => Err(node_error_to_status(e)),
            },
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        Ok(Response::new(status_to_proto(
            self.node.cluster_status().await,
        )))
    }

    async fn add_learner(
        &self,
        request: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let r = request.into_inner();
        validate_new_node(&r)?;
        let local = self.node.add_learner(r.node_id, r.addr.clone()).await;
        self.or_forward(local.map(|i| self.membership(i)), |mut leader| async move {
            leader.add_learner(r).await
        })
        .await
    }

    async fn add_voter(
        &self,
        request: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let r = request.into_inner();
        validate_new_node(&r)?;
        let local = self.node.add_voter(r.node_id, r.addr.clone()).await;
        self.or_forward(local.map(|i| self.membership(i)), |mut leader| async move {
            leader.add_voter(r).await
        })
        .await
    }

    async fn remove_node(
        &self,
        request: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let r = request.into_inner();
        let local = self.node.remove_node(r.node_id).await;
        self.or_forward(local.map(|i| self.membership(i)), |mut leader| async move {
            leader.remove_node(r).await
        })
        .await
    }

    async fn transfer_leadership(
        &self,
        request: Request<v1::TransferLeadershipRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let r = request.into_inner();
        let local = match self.node.transfer_leadership(r.node_id).await {
            Ok(()) => Ok(status_to_proto(self.node.cluster_status().await)),
            Err(e) => Err(e),
        };
        self.or_forward(local, |mut leader| async move {
            leader.transfer_leadership(r).await
        })
        .await
    }

    async fn trigger_snapshot(
        &self,
        _: Request<v1::SnapshotRequest>,
    ) -> Result<Response<v1::SnapshotResponse>, Status> {
        let index = self
            .node
            .trigger_snapshot()
            .await
            .map_err(node_error_to_status)?;
        Ok(Response::new(v1::SnapshotResponse {
            snapshot_index: index,
        }))
    }
}

fn validate_new_node(r: &v1::AddNodeRequest) -> Result<(), Status> {
    if r.node_id == 0 {
        return Err(Status::invalid_argument("node_id must be at least 1"));
    }
    if r.addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        return Err(Status::invalid_argument(format!(
            "addr {:?} is not HOST:PORT",
            r.addr
        )));
    }
    Ok(())
}
