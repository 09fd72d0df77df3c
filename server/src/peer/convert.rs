//! Conversions between the peer-only messages and the node's types. The messages a peer
//! forwards on a client's behalf (`ExecuteRequest`, `AddNodeRequest`, ...) are the public ones
//! and go through the public API's validated conversions (`grpc::convert`).

use raftlite_proto::v1;
use tonic::Status;

pub use crate::grpc::convert::{new_node_from_proto, node_error_from_status};
use crate::node::status::MemberStatus;
use crate::node::{MembershipChange, MembershipOutcome};

pub fn membership_change_to_proto(change: &MembershipChange) -> v1::AdminCall {
    use v1::admin_call::Call;
    let call = match change {
        MembershipChange::AddLearner { id, addr } => Call::AddLearner(v1::AddNodeRequest {
            node_id: *id,
            addr: addr.client.clone(),
            peer_addr: addr.peer.clone(),
        }),
        MembershipChange::AddVoter { id, addr } => Call::AddVoter(v1::AddNodeRequest {
            node_id: *id,
            addr: addr.client.clone(),
            peer_addr: addr.peer.clone(),
        }),
        MembershipChange::Remove { id } => Call::RemoveNode(v1::RemoveNodeRequest { node_id: *id }),
        MembershipChange::TransferLeadership { id } => {
            Call::TransferLeadership(v1::TransferLeadershipRequest { node_id: *id })
        }
    };
    v1::AdminCall { call: Some(call) }
}

pub fn membership_change_from_proto(call: v1::AdminCall) -> Result<MembershipChange, Status> {
    use v1::admin_call::Call;
    match call.call {
        Some(Call::AddLearner(r)) => {
            let (id, addr) = new_node_from_proto(r)?;
            Ok(MembershipChange::AddLearner { id, addr })
        }
        Some(Call::AddVoter(r)) => {
            let (id, addr) = new_node_from_proto(r)?;
            Ok(MembershipChange::AddVoter { id, addr })
        }
        Some(Call::RemoveNode(r)) => Ok(MembershipChange::Remove { id: r.node_id }),
        Some(Call::TransferLeadership(r)) => {
            Ok(MembershipChange::TransferLeadership { id: r.node_id })
        }
        None => Err(Status::invalid_argument("an admin call without a call")),
    }
}

pub fn membership_outcome_to_proto(o: MembershipOutcome) -> v1::MembershipResponse {
    v1::MembershipResponse {
        log_index: o.log_index,
        voters: o.voters,
        learners: o.learners,
    }
}

pub fn membership_outcome_from_proto(r: v1::MembershipResponse) -> MembershipOutcome {
    MembershipOutcome {
        log_index: r.log_index,
        voters: r.voters,
        learners: r.learners,
    }
}

pub fn member_status_to_proto(m: MemberStatus) -> v1::NodeStatus {
    v1::NodeStatus {
        id: m.id,
        addr: m.addr,
        peer_addr: m.peer_addr,
        role: m.role,
        applied_index: m.applied_index,
        lag: m.lag,
        voter: m.voter,
        term: m.term,
    }
}

pub fn member_status_from_proto(s: v1::NodeStatus) -> MemberStatus {
    MemberStatus {
        id: s.id,
        addr: s.addr,
        peer_addr: s.peer_addr,
        role: s.role,
        applied_index: s.applied_index,
        lag: s.lag,
        voter: s.voter,
        term: s.term,
    }
}
