//! Validated conversions between the wire types (`raftlite.v1`) and the node's domain types,
//! and the mapping of node errors to gRPC statuses. Bad input becomes INVALID_ARGUMENT here,
//! before anything reaches the node.

use raftlite_proto::v1;
use raftlite_proto::Kind;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::db::{ColumnInfo, DbError, Params, SqlValue, Statement, StatementOutcome, WriteRequest};
use crate::node::reads::ReadConsistency;
use crate::node::{LeaderHint, NodeError, TransactionCall, TransactionReply, WriteReply};
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

/// True when `sql` holds no statement: only whitespace, semicolons and comments. SQLite
/// prepares nothing from such text, which it reports as API misuse.
fn holds_no_statement(sql: &str) -> bool {
    crate::db::statement_start(sql).is_empty()
}

pub fn statement_from_proto(s: v1::Statement) -> Result<Statement, Status> {
    if holds_no_statement(&s.sql) {
        return Err(Status::invalid_argument(
            "empty SQL statement (only whitespace, semicolons or comments)",
        ));
    }
    // SQLite stops reading at a NUL: whatever follows would be dropped without a word, past
    // the one-statement check.
    if s.sql.contains('\0') {
        return Err(Status::invalid_argument(
            "the SQL contains a NUL character; SQLite would ignore everything after it",
        ));
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
    check_request_id(&r.request_id)?;
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
        max_result_bytes: None,
    })
}

pub fn write_request_to_proto(r: &WriteRequest) -> v1::ExecuteRequest {
    v1::ExecuteRequest {
        request_id: r.request_id.clone(),
        statements: r.statements.iter().map(statement_to_proto).collect(),
        transaction_id: String::new(),
    }
}

pub fn column_to_proto(c: ColumnInfo) -> v1::Column {
    v1::Column {
        name: c.name,
        decl_type: c.decl_type.unwrap_or_default(),
    }
}

pub fn row_to_proto(r: Vec<SqlValue>) -> v1::Row {
    v1::Row {
        values: r.into_iter().map(value_to_proto).collect(),
    }
}

pub fn outcome_to_proto(o: StatementOutcome) -> v1::StatementResult {
    v1::StatementResult {
        rows_affected: o.rows_affected,
        last_insert_rowid: o.last_insert_rowid,
        columns: o.columns.into_iter().map(column_to_proto).collect(),
        rows: o.rows.into_iter().map(row_to_proto).collect(),
    }
}

/// A result a peer (the leader) answered; a malformed one is the leader's fault, not the
/// client's.
pub fn outcome_from_proto(o: v1::StatementResult) -> Result<StatementOutcome, NodeError> {
    let bad =
        |e: Status| NodeError::Internal(format!("the leader sent a bad result: {}", e.message()));
    Ok(StatementOutcome {
        rows_affected: o.rows_affected,
        last_insert_rowid: o.last_insert_rowid,
        columns: o
            .columns
            .into_iter()
            .map(|c| ColumnInfo {
                decl_type: Some(c.decl_type).filter(|t| !t.is_empty()),
                name: c.name,
            })
            .collect(),
        rows: o
            .rows
            .into_iter()
            .map(|r| r.values.into_iter().map(value_from_proto).collect())
            .collect::<Result<_, _>>()
            .map_err(bad)?,
    })
}

pub fn write_reply_to_proto(r: WriteReply) -> v1::ExecuteResponse {
    v1::ExecuteResponse {
        results: r.results.into_iter().map(outcome_to_proto).collect(),
        log_index: r.log_index,
        deduplicated: r.deduplicated,
    }
}

/// The answer to an `Execute` inside a transaction: nothing is durable yet, so no log index.
pub fn transaction_results_to_proto(results: Vec<StatementOutcome>) -> v1::ExecuteResponse {
    write_reply_to_proto(WriteReply {
        results,
        log_index: 0,
        deduplicated: false,
    })
}

pub fn write_reply_from_proto(r: v1::ExecuteResponse) -> Result<WriteReply, NodeError> {
    Ok(WriteReply {
        results: r
            .results
            .into_iter()
            .map(outcome_from_proto)
            .collect::<Result<_, _>>()?,
        log_index: r.log_index,
        deduplicated: r.deduplicated,
    })
}

/// A request id as it reaches the node: a client's (at most [`MAX_REQUEST_ID_BYTES`], see
/// [`check_client_request_id`]), or one a member forwards, with its token's tag (`#` and 12
/// hex digits, `grpc::sql`).
fn check_request_id(id: &str) -> Result<(), Status> {
    request_id_within(id, MAX_REQUEST_ID_BYTES + 13)
}

/// A client's request id: at most [`MAX_REQUEST_ID_BYTES`].
pub fn check_client_request_id(id: &str) -> Result<(), Status> {
    request_id_within(id, MAX_REQUEST_ID_BYTES)
}

/// Both limits say the client's: a longer id comes from no member.
fn request_id_within(id: &str, limit: usize) -> Result<(), Status> {
    if id.len() > limit {
        return Err(Status::invalid_argument(format!(
            "request_id is longer than {MAX_REQUEST_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A transaction id is 32 hex digits (what `Begin` hands out); anything else is refused before
/// it reaches the node.
pub fn check_transaction_id(id: &str) -> Result<(), Status> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument(
            "transaction_id must be the id Begin returned (32 hex digits)",
        ));
    }
    Ok(())
}

/// `Execute` inside a transaction (`transaction_id` set).
pub fn transaction_execute_from_proto(r: v1::ExecuteRequest) -> Result<TransactionCall, Status> {
    check_transaction_id(&r.transaction_id)?;
    let transaction_id = r.transaction_id.clone();
    let write = write_request_from_proto(r)?;
    Ok(TransactionCall::Execute {
        transaction_id,
        request_id: write.request_id,
        statements: write.statements,
        max_result_bytes: None,
    })
}

pub fn commit_from_proto(r: v1::CommitRequest) -> Result<TransactionCall, Status> {
    check_transaction_id(&r.transaction_id)?;
    check_request_id(&r.request_id)?;
    Ok(TransactionCall::Commit {
        transaction_id: r.transaction_id,
        request_id: r.request_id,
    })
}

pub fn rollback_from_proto(r: v1::RollbackRequest) -> Result<TransactionCall, Status> {
    check_transaction_id(&r.transaction_id)?;
    Ok(TransactionCall::Rollback {
        transaction_id: r.transaction_id,
    })
}

pub fn transaction_call_to_proto(principal: &str, call: &TransactionCall) -> v1::TransactionCall {
    use v1::transaction_call::Call;
    let call = match call {
        TransactionCall::Begin => Call::Begin(v1::BeginRequest {}),
        TransactionCall::Execute {
            transaction_id,
            request_id,
            statements,
            ..
        } => Call::Execute(v1::ExecuteRequest {
            request_id: request_id.clone(),
            statements: statements.iter().map(statement_to_proto).collect(),
            transaction_id: transaction_id.clone(),
        }),
        TransactionCall::Commit {
            transaction_id,
            request_id,
        } => Call::Commit(v1::CommitRequest {
            transaction_id: transaction_id.clone(),
            request_id: request_id.clone(),
        }),
        TransactionCall::Rollback { transaction_id } => Call::Rollback(v1::RollbackRequest {
            transaction_id: transaction_id.clone(),
        }),
    };
    v1::TransactionCall {
        principal: principal.to_string(),
        call: Some(call),
    }
}

/// A forwarded call, checked like the client's own call was on the follower.
pub fn transaction_call_from_proto(
    c: v1::TransactionCall,
) -> Result<(String, TransactionCall), Status> {
    use v1::transaction_call::Call;
    let call = match c.call {
        None => {
            return Err(Status::invalid_argument(
                "a transaction call without a call",
            ))
        }
        Some(Call::Begin(_)) => TransactionCall::Begin,
        Some(Call::Execute(r)) => transaction_execute_from_proto(r)?,
        Some(Call::Commit(r)) => commit_from_proto(r)?,
        Some(Call::Rollback(r)) => rollback_from_proto(r)?,
    };
    Ok((c.principal, call))
}

pub fn transaction_reply_to_proto(r: TransactionReply) -> v1::TransactionReply {
    use v1::transaction_reply::Reply;
    let reply = match r {
        TransactionReply::Begun { transaction_id } => {
            Reply::Begin(v1::BeginResponse { transaction_id })
        }
        TransactionReply::Executed(results) => {
            Reply::Execute(transaction_results_to_proto(results))
        }
        TransactionReply::Committed {
            log_index,
            deduplicated,
        } => Reply::Commit(v1::CommitResponse {
            log_index,
            deduplicated,
        }),
        TransactionReply::RolledBack => Reply::Rollback(v1::RollbackResponse {}),
    };
    v1::TransactionReply { reply: Some(reply) }
}

pub fn transaction_reply_from_proto(
    r: v1::TransactionReply,
) -> Result<TransactionReply, NodeError> {
    use v1::transaction_reply::Reply;
    Ok(match r.reply {
        None => {
            return Err(NodeError::Internal(
                "the leader sent an empty transaction reply".into(),
            ))
        }
        Some(Reply::Begin(b)) => TransactionReply::Begun {
            transaction_id: b.transaction_id,
        },
        Some(Reply::Execute(e)) => TransactionReply::Executed(
            e.results
                .into_iter()
                .map(outcome_from_proto)
                .collect::<Result<_, _>>()?,
        ),
        Some(Reply::Commit(c)) => TransactionReply::Committed {
            log_index: c.log_index,
            deduplicated: c.deduplicated,
        },
        Some(Reply::Rollback(_)) => TransactionReply::RolledBack,
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
        DbError::Stale(m) => Status::unavailable(m),
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
        NodeError::Aborted(m) => Status::aborted(m),
    }
}

/// The leader a status names in its metadata (as [`node_error_to_status`] puts it there).
pub(crate) fn leader_from_metadata(status: &Status) -> Option<LeaderHint> {
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
        Code::Aborted => NodeError::Aborted(message),
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
    fn sql_without_a_statement_or_with_a_nul_is_refused() {
        for sql in [
            "",
            "  ",
            ";",
            " ; ;",
            "-- hi",
            "/* x */",
            "/* x */ -- y\n ;",
            "/* unterminated",
            "SELECT 1\0; DROP TABLE t",
        ] {
            let err = statement_from_proto(v1::Statement::new(sql, vec![])).expect_err(sql);
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{sql:?}: {}",
                err.message()
            );
        }
        for sql in [
            "SELECT 1",
            "-- a comment\nSELECT 1",
            "/* c */ SELECT '--'",
            "SELECT 1;",
        ] {
            assert!(
                statement_from_proto(v1::Statement::new(sql, vec![])).is_ok(),
                "{sql:?}"
            );
        }
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
        assert!(check_client_request_id(&"x".repeat(128)).is_ok());
        assert!(check_client_request_id(&"x".repeat(129)).is_err());
        let r = v1::ExecuteRequest {
            request_id: "x".repeat(200),
            statements: vec![v1::Statement::new("SELECT 1", vec![])],
            transaction_id: String::new(),
        };
        assert_eq!(
            write_request_from_proto(r).expect_err("must fail").code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn transaction_calls_are_checked_and_round_trip() {
        let id = "0123456789abcdef0123456789ABCDEF".to_string();
        for bad in [
            "",
            "x",
            "../../etc",
            &"0".repeat(33),
            "g123456789abcdef0123456789abcdef",
        ] {
            assert!(check_transaction_id(bad).is_err(), "{bad:?}");
        }
        let commit = v1::CommitRequest {
            transaction_id: id.clone(),
            request_id: "r".repeat(142),
        };
        assert_eq!(
            commit_from_proto(commit).expect_err("long id").code(),
            Code::InvalidArgument
        );
        let calls = [
            TransactionCall::Begin,
            TransactionCall::Execute {
                transaction_id: id.clone(),
                request_id: "e1".into(),
                max_result_bytes: None,
                statements: vec![Statement::with_params(
                    "INSERT INTO t VALUES(?1)",
                    vec![SqlValue::Blob(vec![1])],
                )],
            },
            TransactionCall::Commit {
                transaction_id: id.clone(),
                request_id: "c1".into(),
            },
            TransactionCall::Rollback { transaction_id: id },
        ];
        for call in calls {
            let wire = transaction_call_to_proto("app", &call);
            assert_eq!(
                transaction_call_from_proto(wire).expect("valid"),
                ("app".to_string(), call)
            );
        }
        let reply = TransactionReply::Executed(vec![StatementOutcome {
            rows_affected: 1,
            last_insert_rowid: 4,
            columns: vec![ColumnInfo {
                name: "n".into(),
                decl_type: Some("INTEGER".into()),
            }],
            rows: vec![vec![SqlValue::Integer(4)], vec![SqlValue::Null]],
        }]);
        assert_eq!(
            transaction_reply_from_proto(transaction_reply_to_proto(reply.clone())).expect("valid"),
            reply
        );
    }
}
