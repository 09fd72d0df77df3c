//! The public `Admin` service. Membership changes run on the leader: the node forwards them
//! there from a follower (over the peer service).

use raftlite_proto::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::convert::{new_node_from_proto, node_error_to_status};
use crate::node::{MembershipChange, Node};
use crate::peer::convert::{member_status_to_proto, membership_outcome_to_proto};

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
        nodes: s.members.into_iter().map(member_status_to_proto).collect(),
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

impl AdminService {
    /// Runs a membership change (on the leader, forwarded there by the node if need be).
    async fn change(
        &self,
        change: MembershipChange,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let outcome = self
            .node
            .change_membership(change, false)
            .await
            .map_err(node_error_to_status)?;
        Ok(Response::new(membership_outcome_to_proto(outcome)))
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
        let (id, addr) = new_node_from_proto(request.into_inner())?;
        self.change(MembershipChange::AddLearner { id, addr }).await
    }

    async fn add_voter(
        &self,
        request: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let (id, addr) = new_node_from_proto(request.into_inner())?;
        self.change(MembershipChange::AddVoter { id, addr }).await
    }

    async fn remove_node(
        &self,
        request: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let id = request.into_inner().node_id;
        self.change(MembershipChange::Remove { id }).await
    }

    async fn transfer_leadership(
        &self,
        request: Request<v1::TransferLeadershipRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let id = request.into_inner().node_id;
        self.node
            .change_membership(MembershipChange::TransferLeadership { id }, false)
            .await
            .map_err(node_error_to_status)?;
        Ok(Response::new(status_to_proto(
            self.node.cluster_status().await,
        )))
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
