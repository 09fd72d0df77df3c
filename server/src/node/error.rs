//! Errors a node returns to its callers; the gRPC layer maps each to a status code.

use crate::db::DbError;

/// Where the current leader is, when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderHint {
    pub id: u64,
    /// The leader's client address (what clients are told).
    pub addr: String,
    /// The leader's peer address (where forwarded requests go); empty when unknown.
    pub peer_addr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No leader, no quorum, leadership changed, or the node is not caught up. Retrying (with the
    /// same request id for writes) is safe.
    #[error("{message}")]
    Unavailable {
        message: String,
        leader: Option<LeaderHint>,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
    /// An interactive transaction ended before its commit (idle timeout, leader change, a
    /// statement that rolled it back, or an unknown id): nothing of it was applied; retrying
    /// the whole transaction is safe.
    #[error("{0}")]
    Aborted(String),
}

impl NodeError {
    pub fn unavailable(message: impl Into<String>, leader: Option<LeaderHint>) -> Self {
        NodeError::Unavailable {
            message: message.into(),
            leader,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, NodeError::Unavailable { .. } | NodeError::Timeout(_))
    }

    pub fn leader_hint(&self) -> Option<&LeaderHint> {
        match self {
            NodeError::Unavailable { leader, .. } => leader.as_ref(),
            _ => None,
        }
    }
}
