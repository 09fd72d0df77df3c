//! Validated conversions between the wire types (`raftlite.v1`) and the node's domain types,
//! and the mapping of node errors to gRPC statuses. Bad input becomes INVALID_ARGUMENT here,
//! before anything reaches the node.

use raftlite_proto::v1;
use raftlite_proto::Kind;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::db::{DbError, Params, SqlValue, Statement, StatementOutcome, WriteRequest};
use crate::node::reads::ReadConsistency;
use crate::node::{LeaderHint, NodeError, WriteReply};
use crate::raft::types::{NodeAddr, NodeId};

pub const LEADER_ID_HEADER: &str = "raftlite-leader-id";
pub const LEADER_ADDR_HEADER: &str = "raftlite-leader-addr";
const MAX_REQUEST_ID_BYTES: usize = 128;

pub fn value_from_proto(v: v1::Value) -> Result<SqlValue, Status> {
    match v.kind {
        None => Err(Status::invalid_argument(
            "a parameter value has no type (set null, integer, real, text or blob)",
        )),
        Some(Kind::Null(_)) => Ok(SqlValue::Null),
        Some(Kind::Integer(i)) => Ok(SqlValue::Integer(i)),
        Some(Kind::Real(r)) => Ok(SqlValue::Real(r)),
        Some(Kind::Text(t)) => Ok(SqlValue::Text(t)),
        Some(Kind::Blob(b)) => Ok(SqlValue::Blob(b)),
    }
}

pub fn value_to_proto(v: SqlValue) -> v1::Value {
    match v {
        SqlValue::Null => v1::Value::null(),
        SqlValue::Integer(i) => v1::Value::integer(i),
        SqlValue::Real(r) => v1::Value::real(r),
        SqlValue::Text(t) => v1::Value::text(t),
        SqlValue::Blob(b) => v1::Value::blob(b),
    }
}

pub fn statement_from_proto(s: v1::Statement) -> Result<Statement, Status> {
    if s.sql.trim().is_empty() {
        return Err(Status::invalid_argument("empty SQL statement"));
    }
    let params = match (s.positional.is_empty(), s.named.is_empty()) {
        (_, true) => Params::Positional(
            s.positional
                .into_iter()
                .map(value_from_proto)
                .collect::<Result<_, _>>()?,
        ),
        (true, false) => Params::Named(
            s.named
                .into_iter()
                .map(|(k, v)| Ok((k, value_from_proto(v)?)))
                .collect::<Result<_, Status>>()?,
        ),
        (false, false) => {
            return Err(Status::invalid_argument(
                "a statement takes positional or named parameters, not both",
            ))
        }
    };
    Ok(Statement { sql: s.sql, params })
}

fn statement_to_proto(s: &Statement) -> v1::Statement {
    let (positional, named) = match &s.params {
        Params::Positional(p) => (
            p.iter().cloned().map(value_to_proto).collect(),
            Default::default(),
        ),
        Params::Named(n) => (
            Vec::new(),
            n.iter()
                .map(|(k, v)| (k.clone(), value_to_proto(v.clone())))
                .collect(),
        ),
    };
    v1::Statement {
        sql: s.sql.clone(),
        positional,
        named,
    }
}

pub fn write_request_from_proto(r: v1::ExecuteRequest) -> Result<WriteRequest, Status> {
    if r.request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "request_id is longer than {MAX_REQUEST_ID_BYTES} bytes"
        )));
    }
    if r.statements.is_empty() {
        return Err(Status::invalid_argument(
            "an Execute request needs at least one statement",
        ));
    }
    let statements = r
        .statements
        .into_iter()
        .map(statement_from_proto)
        .collect::<Result<_, _>>()?;
    Ok(WriteRequest {
        request_id: r.request_id,
        statements,
        deadline: None,
    })
}

pub fn write_request_to_proto(r: &WriteRequest) -> v1::ExecuteRequest {
    v1::ExecuteRequest {
        request_id: r.request_id.clone(),
        statements: r.statements.iter().map(statement_to_proto).collect(),
    }
}

pub fn write_reply_to_proto(r: WriteReply) -> v1::ExecuteResponse {
    v1::ExecuteResponse {
        results: r
            .results
            .into_iter()
            .map(|o| v1::StatementResult {
                rows_affected: o.rows_affected,
                last_insert_rowid: o.last_insert_rowid,
            })
            .collect(),
        log_index: r.log_index,
        deduplicated: r.deduplicated,
    }
}

pub fn write_reply_from_proto(r: v1::ExecuteResponse) -> Result<WriteReply, NodeError> {
    Ok(WriteReply {
        results: r
            .results
            .into_iter()
            .map(|o| StatementOutcome {
                rows_affected: o.rows_affected,
                last_insert_rowid: o.last_insert_rowid,
            })
            .collect(),
        log_index: r.log_index,
        deduplicated: r.deduplicated,
    })
}

/// The node a membership change adds: its id and addresses, checked. An empty peer address
/// defaults to the client address's port + 1 (the default `--peer-listen`).
pub fn new_node_from_proto(r: v1::AddNodeRequest) -> Result<(NodeId, NodeAddr), Status> {
    if r.node_id == 0 {
        return Err(Status::invalid_argument("node_id must be at least 1"));
    }
    let split = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(host, p)| Some((host.to_owned(), p.parse::<u16>().ok()?)))
            .filter(|(host, port)| !host.is_empty() && *port != 0)
    };
    let Some((host, port)) = split(&r.addr) else {
        return Err(Status::invalid_argument(format!(
            "addr {:?} is not HOST:PORT",
            r.addr
        )));
    };
    let peer = if r.peer_addr.is_empty() {
        let peer_port = port.checked_add(1).ok_or_else(|| {
            Status::invalid_argument(format!(
                "addr {:?} has port 65535: give peer_addr (the peer port cannot be port + 1)",
                r.addr
            ))
        })?;
        format!("{host}:{peer_port}")
    } else if split(&r.peer_addr).is_some() {
        r.peer_addr
    } else {
        return Err(Status::invalid_argument(format!(
            "peer_addr {:?} is not HOST:PORT",
            r.peer_addr
        )));
    };
    Ok((
        r.node_id,
        NodeAddr {
            client: r.addr,
            peer,
        },
    ))
}

pub fn consistency_from_proto(c: Option<v1::ReadConsistency>) -> ReadConsistency {
    use v1::read_consistency::Level;
    match c.and_then(|c| c.level) {
        None | Some(Level::Linearizable(_)) => ReadConsistency::Linearizable,
        Some(Level::Stale(_)) => ReadConsistency::Stale,
        Some(Level::Bounded(b)) => ReadConsistency::Bounded { max_lag: b.max_lag },
        Some(Level::AtIndex(a)) => ReadConsistency::AtIndex(a.index),
    }
}

fn with_leader(mut status: Status, leader: Option<&LeaderHint>) -> Status {
    if let Some(l) = leader {
        if let Ok(v) = MetadataValue::try_from(l.id.to_string()) {
            status.metadata_mut().insert(LEADER_ID_HEADER, v);
        }
        if let Ok(v) = MetadataValue::try_from(l.addr.as_str()) {
            status.metadata_mut().insert(LEADER_ADDR_HEADER, v);
        }
    }
    status
}

pub fn db_error_to_status(e: DbError) -> Status {
    match e {
        DbError::InvalidArgument(m) => Status::invalid_argument(m),
        DbError::Constraint(m) => Status::failed_precondition(m),
        DbError::PermissionDenied(m) => Status::permission_denied(m),
        DbError::TooLarge(m) => Status::resource_exhausted(m),
        DbError::Corrupt(m) => Status::internal(m),
        DbError::Internal(m) => Status::internal(m),
        DbError::Timeout(m) => Status::deadline_exceeded(m),
        DbError::Overloaded(m) => Status::resource_exhausted(m),
    }
}

pub fn node_error_to_status(e: NodeError) -> Status {
    match e {
        NodeError::Unavailable { message, leader } => {
            with_leader(Status::unavailable(message), leader.as_ref())
        }
        NodeError::Db(e) => db_error_to_status(e),
        NodeError::InvalidArgument(m) => Status::invalid_argument(m),
        NodeError::TooLarge(m) => Status::resource_exhausted(m),
        NodeError::Timeout(m) => Status::deadline_exceeded(m),
        NodeError::Internal(m) => Status::internal(m),
    }
}

fn leader_from_metadata(status: &Status) -> Option<LeaderHint> {
    let md = status.metadata();
    let id = md.get(LEADER_ID_HEADER)?.to_str().ok()?.parse().ok()?;
    let addr = md.get(LEADER_ADDR_HEADER)?.to_str().ok()?.to_string();
    Some(LeaderHint {
        id,
        addr,
        peer_addr: String::new(),
    })
}

/// Turns the status a peer answered a forwarded request with back into a node error, so it
/// reaches the client with the same code.
pub fn node_error_from_status(status: Status, leader: Option<LeaderHint>) -> NodeError {
    let message = status.message().to_string();
    match status.code() {
        Code::InvalidArgument => NodeError::Db(DbError::InvalidArgument(message)),
        Code::PermissionDenied => NodeError::Db(DbError::PermissionDenied(message)),
        Code::FailedPrecondition => NodeError::Db(DbError::Constraint(message)),
        Code::ResourceExhausted => NodeError::TooLarge(message),
        Code::DeadlineExceeded => NodeError::Timeout(message),
        Code::Internal => NodeError::Internal(message),
        _ => {
            let hint = leader_from_metadata(&status).or(leader);
            NodeError::unavailable(format!("the leader could not be reached: {message}"), hint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untyped_value_is_invalid_argument() {
        let err = value_from_proto(v1::Value { kind: None }).expect_err("must fail");
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[test]
    fn mixed_parameters_are_refused() {
        let mut s = v1::Statement::new("SELECT ?", vec![v1::Value::integer(1)]);
        s.named.insert(":a".into(), v1::Value::integer(2));
        assert_eq!(
            statement_from_proto(s).expect_err("must fail").code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn leader_hint_survives_a_round_trip() {
        let hint = LeaderHint {
            id: 2,
            addr: "10.0.0.2:7000".into(),
            peer_addr: String::new(),
        };
        let status = node_error_to_status(NodeError::unavailable("no", Some(hint.clone())));
        assert_eq!(status.code(), Code::Unavailable);
        match node_error_from_status(status, None) {
            NodeError::Unavailable { leader, .. } => assert_eq!(leader, Some(hint)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn request_id_is_bounded() {
        let r = v1::ExecuteRequest {
            request_id: "x".repeat(200),
            statements: vec![v1::Statement::new("SELECT 1", vec![])],
        };
        assert_eq!(
            write_request_from_proto(r).expect_err("must fail").code(),
            Code::InvalidArgument
        );
    }
}
