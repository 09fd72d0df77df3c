//! The public `Sql` service: translate, delegate to the node, map errors.

use std::sync::Arc;

use prost::Message;
use raftlite_proto::v1::{self, sql_server::Sql};
use tonic::{Request, Response, Status};

use super::auth::principal_name;
use super::convert::{
    check_client_request_id, check_transaction_id, column_to_proto, commit_from_proto,
    consistency_from_proto, db_error_to_status, node_error_to_status, rollback_from_proto,
    row_to_proto, statement_from_proto, transaction_execute_from_proto,
    transaction_results_to_proto, write_reply_to_proto, write_request_from_proto,
};
use crate::db::{ClientAnswers, QueryChunk};
use crate::node::{Node, TransactionCall, TransactionReply};

#[derive(Clone)]
pub struct SqlService {
    pub node: Node,
    pub max_request_bytes: usize,
    /// The listener's permits and deadlines, which calls on an `ExecuteStream` take one by one.
    pub admission: super::limits::Admission,
    /// The auth file, which calls on an `ExecuteStream` are checked against again when it
    /// changed since the stream opened.
    pub auth: Option<std::sync::Arc<super::auth::AuthFile>>,
    /// Becomes true when the node stops: every `ExecuteStream` then ends.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

fn chunk_to_proto(chunk: QueryChunk, applied_index: u64) -> v1::QueryResponse {
    v1::QueryResponse {
        columns: chunk.columns.into_iter().map(column_to_proto).collect(),
        rows: chunk.rows.into_iter().map(row_to_proto).collect(),
        applied_index,
        truncated: chunk.truncated,
        done: chunk.done,
    }
}

/// When a statement must stop: after `limit`, or earlier if the client's deadline
/// (`grpc-timeout` or `raftlite-timeout`) is shorter.
pub(crate) fn statement_deadline(
    metadata: &tonic::metadata::MetadataMap,
    limit: std::time::Duration,
) -> std::time::Instant {
    deadline_within(client_timeout(metadata), limit)
}

/// When a statement must stop: after `limit`, or earlier if the `client`'s deadline is shorter.
fn deadline_within(
    client: Option<std::time::Duration>,
    limit: std::time::Duration,
) -> std::time::Instant {
    let budget = match client {
        Some(client) if client < limit => client,
        _ => limit,
    };
    std::time::Instant::now() + budget
}

pub(crate) fn check_size(len: usize, limit: usize) -> Result<(), Status> {
    if len > limit {
        return Err(Status::resource_exhausted(format!(
            "request of {len} bytes is over the limit of {limit} bytes (max_request_bytes)"
        )));
    }
    Ok(())
}

fn client_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    super::limits::client_timeout(metadata.as_ref())
}

impl SqlService {
    /// One `Execute` call, unary or on an `ExecuteStream`: a write of its own, or a call of
    /// the interactive transaction it names. `client` is the caller's deadline; `trace` the
    /// metadata that may carry the caller's trace context.
    pub(crate) async fn execute_one(
        &self,
        principal: &str,
        client: Option<std::time::Duration>,
        trace: Option<&tonic::metadata::MetadataMap>,
        message: v1::ExecuteRequest,
    ) -> Result<v1::ExecuteResponse, Status> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "sql.execute",
            node = self.node.id(),
            statements = message.statements.len()
        );
        // A client that sent a trace context (an instrumented app) gets the write in its trace.
        if let Some(metadata) = trace {
            crate::telemetry::continue_trace(&span, metadata);
        }
        crate::stamp!("rpc.in", 0);
        async move {
            check_size(message.encoded_len(), self.max_request_bytes)?;
            if !message.transaction_id.is_empty() {
                let call = transaction_execute_from_proto(message)?;
                return match self.transaction(principal, client, call).await? {
                    TransactionReply::Executed(results) => {
                        Ok(transaction_results_to_proto(results))
                    }
                    other => Err(unexpected(other)),
                };
            }
            let deadline = deadline_within(client, self.node.config().statement_timeout);
            let mut write = write_request_from_proto(message)?;
            write.request_id = scoped_request_id(principal, write.request_id)?;
            write.deadline = Some(deadline);
            let reply = self
                .node
                .execute(write, false)
                .await
                .map_err(node_error_to_status)?;
            crate::stamp!("rpc.out", reply.log_index);
            Ok(write_reply_to_proto(reply))
        }
        .instrument(span)
        .await
    }

    /// Counts `answer`'s bytes in the node's unread answers until it is sent (see
    /// `db/answers.rs`), and in its connection's (`conn`) when it has rows: only those grow
    /// large, and an answer of a few bytes skips the connection's lock (which the calls of one
    /// busy stream would otherwise contend for).
    pub(crate) fn hold_answer(
        &self,
        conn: Option<&Arc<ClientAnswers>>,
        answer: &impl RowsAnswer,
    ) -> crate::db::AnswerHold {
        self.node
            .database()
            .answers()
            .hold(conn.filter(|_| answer.has_rows()), answer.encoded_len())
    }

    /// Runs a call of an interactive transaction for the caller of `metadata`'s request.
    async fn transaction(
        &self,
        principal: &str,
        client: Option<std::time::Duration>,
        mut call: TransactionCall,
    ) -> Result<TransactionReply, Status> {
        if let TransactionCall::Execute { request_id, .. }
        | TransactionCall::Commit { request_id, .. } = &mut call
        {
            *request_id = scoped_request_id(principal, std::mem::take(request_id))?;
        }
        // A commit replicates (and may wait for a new leader to look it up): the request's
        // time, not a statement's.
        let limit = match call {
            TransactionCall::Commit { .. } => self.node.config().request_timeout,
            _ => self.node.config().statement_timeout,
        };
        let deadline = deadline_within(client, limit);
        self.node
            .transaction(principal, call, deadline, false)
            .await
            .map_err(node_error_to_status)
    }
}

/// The key a write's request id is remembered under (to answer a retry with the first
/// execution's results): with tokens, the id followed by a tag of the caller's token name, so
/// that one token can neither read another's results by reusing its id nor make its write look
/// done ("deduplicated") by claiming the id first (`raftlite migrate`'s ids are predictable).
/// A suffix, not a hash of the whole: time-ordered ids keep their order in the server's index.
/// Without tokens every caller is the same one, and the id is kept as it is. The client's id is
/// checked against its limit here, before the tag makes it longer.
fn scoped_request_id(principal: &str, id: String) -> Result<String, Status> {
    use sha2::Digest;
    check_client_request_id(&id)?;
    if principal.is_empty() || id.is_empty() {
        return Ok(id);
    }
    let name = principal
        .rsplit_once(':')
        .map_or(principal, |(name, _)| name);
    let digest = sha2::Sha256::digest(name.as_bytes());
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{id}#{tag}"))
}

/// An answer that may carry rows.
pub(crate) trait RowsAnswer: Message {
    fn has_rows(&self) -> bool;
}

impl RowsAnswer for v1::ExecuteResponse {
    fn has_rows(&self) -> bool {
        self.results.iter().any(|r| !r.rows.is_empty())
    }
}

impl RowsAnswer for v1::QueryResponse {
    fn has_rows(&self) -> bool {
        !self.rows.is_empty()
    }
}

/// The unread answers of the client connection `request` came on (see `db/answers.rs`).
pub(crate) fn unread_answers_of<T>(request: &Request<T>) -> Option<Arc<ClientAnswers>> {
    request
        .extensions()
        .get::<crate::tls::ConnInfo>()
        .and_then(|conn| conn.answers.clone())
}

/// A query's messages: its rows, then, when the node cut the query off, the status that says
/// why. The status goes apart from the rows, so that it follows whatever rows were queued
/// however full their channel is; a stream that just stopped would read as a lost node, and
/// clients would run the query again elsewhere.
pub struct QueryStream {
    /// Each holding its room in the node's unread answers until the next is taken.
    rows: super::limits::HeldItems<Result<v1::QueryResponse, Status>>,
    cut_off: Option<tokio::sync::oneshot::Receiver<Status>>,
}

/// A message of a query's stream, with its bytes' room in the node's unread answers.
type QueryMessage = super::limits::HeldItem<Result<v1::QueryResponse, Status>>;

impl QueryStream {
    fn new(
        rows: tokio::sync::mpsc::Receiver<QueryMessage>,
    ) -> (Self, tokio::sync::oneshot::Sender<Status>) {
        let (cut_tx, cut_rx) = tokio::sync::oneshot::channel();
        let stream = QueryStream {
            rows: super::limits::HeldItems::new(rows),
            cut_off: Some(cut_rx),
        };
        (stream, cut_tx)
    }
}

/// A query's message with its room in the node's unread answers, or the RESOURCE_EXHAUSTED
/// that ends the query when the room left is too small.
fn with_room(
    answers: &Arc<crate::db::AnswerBytes>,
    conn: Option<&Arc<ClientAnswers>>,
    message: Result<v1::QueryResponse, Status>,
) -> Result<QueryMessage, Status> {
    let Ok(rows) = &message else {
        return Ok((message, None));
    };
    let len = rows.encoded_len();
    match answers.try_hold(conn, len) {
        Some(held) => Ok((message, Some(held))),
        None => Err(Status::resource_exhausted(format!(
            "this node holds as many bytes of answers that their clients have not read yet as \
             it may ({} bytes), and the query's next {len} bytes of rows do not fit: retry, \
             or ask for fewer rows",
            answers.limit()
        ))),
    }
}

impl tokio_stream::Stream for QueryStream {
    type Item = Result<v1::QueryResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(message) = std::task::ready!(std::pin::Pin::new(&mut self.rows).poll_next(cx)) {
            return std::task::Poll::Ready(Some(message));
        }
        // The rows end once the task that sends them has returned, and it sends the status
        // before: it is there now or never (no wait, no wake-up of its own per query).
        let mut cut_off = self.cut_off.take();
        std::task::Poll::Ready(cut_off.as_mut().and_then(|c| c.try_recv().ok()).map(Err))
    }
}

/// Sends one message of a query's stream. `Err` ends the stream: `None` quietly (the client
/// went away, or took no message within `idle`), or with the status to send last when the
/// query's deadline passed before all its rows reached the client.
async fn deliver(
    tx: &tokio::sync::mpsc::Sender<QueryMessage>,
    msg: QueryMessage,
    deadline: std::time::Instant,
    idle: std::time::Duration,
) -> Result<(), Option<Status>> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if !left.is_zero() {
        match tokio::time::timeout(left.min(idle), tx.send(msg)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => return Err(None),
            Err(_) if left > idle => return Err(None),
            Err(_) => {}
        }
    }
    Err(Some(Status::deadline_exceeded(format!(
        "the query's deadline passed before all its rows reached the client, so the node \
         stopped it ({}): ask for fewer rows (LIMIT, max_rows), read them faster, or give the \
         query a longer timeout",
        raftlite_client::STATEMENT_INTERRUPTED
    ))))
}

fn unexpected(reply: TransactionReply) -> Status {
    Status::internal(format!("unexpected transaction reply {reply:?}"))
}

#[tonic::async_trait]
impl Sql for SqlService {
    async fn execute(
        &self,
        request: Request<v1::ExecuteRequest>,
    ) -> Result<Response<v1::ExecuteResponse>, Status> {
        let principal = principal_name(&request);
        let client = client_timeout(request.metadata());
        let conn = unread_answers_of(&request);
        let (metadata, _, message) = request.into_parts();
        let answer = self
            .execute_one(&principal, client, Some(&metadata), message)
            .await?;
        let held = super::limits::HeldAnswer(Arc::new(self.hold_answer(conn.as_ref(), &answer)));
        let mut response = Response::new(answer);
        response.extensions_mut().insert(held);
        Ok(response)
    }

    type ExecuteStreamStream = super::execute_stream::AnswerStream;

    async fn execute_stream(
        &self,
        request: Request<tonic::Streaming<v1::StreamedExecute>>,
    ) -> Result<Response<Self::ExecuteStreamStream>, Status> {
        super::execute_stream::start(self.clone(), request).map(Response::new)
    }

    type QueryStream = QueryStream;

    async fn query(
        &self,
        request: Request<v1::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        check_size(request.get_ref().encoded_len(), self.max_request_bytes)?;
        // A query (and the stream of its rows) gets the request's time, not a write
        // statement's: it holds a read thread, never the executor.
        if !request.get_ref().transaction_id.is_empty() {
            return self.transaction_query(request).await;
        }
        let deadline = statement_deadline(request.metadata(), self.node.config().request_timeout);
        let conn = unread_answers_of(&request);
        let request = request.into_inner();
        let statement = statement_from_proto(
            request
                .statement
                .ok_or_else(|| Status::invalid_argument("a Query request needs a statement"))?,
        )?;
        let consistency = consistency_from_proto(request.consistency);
        let started = std::time::Instant::now();
        let (applied, mut rows) = self
            .node
            .query(statement, consistency, request.max_rows, deadline)
            .await
            .map_err(node_error_to_status)?;
        // The first chunk decides whether the statement is valid: its error is the call's status.
        let first_chunk = match rows.recv().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Err(db_error_to_status(e)),
            None => return Err(Status::internal("the query ended without a result")),
        };
        let answers = self.node.database().answers().clone();
        let mut done = first_chunk.done;
        let first = with_room(
            &answers,
            conn.as_ref(),
            Ok(chunk_to_proto(first_chunk, applied)),
        )?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (stream, cut_off) = QueryStream::new(rx);
        let node = self.node.clone();
        // A client that does not take the next rows within the statement timeout loses the
        // stream, so that a reader never stalls a read thread for long.
        let idle = self.node.config().statement_timeout;
        tokio::spawn(async move {
            if let Err(cut) = deliver(&tx, first, deadline, idle).await {
                let _ = cut.map(|status| cut_off.send(status));
                return;
            }
            while !done {
                let msg = match rows.recv().await {
                    Some(Ok(chunk)) => {
                        done = chunk.done;
                        Ok(chunk_to_proto(chunk, applied))
                    }
                    Some(Err(e)) => {
                        done = true;
                        Err(db_error_to_status(e))
                    }
                    None => {
                        done = true;
                        Err(Status::internal("the query stopped unexpectedly"))
                    }
                };
                let msg = match with_room(&answers, conn.as_ref(), msg) {
                    Ok(msg) => msg,
                    Err(refused) => {
                        let _ = cut_off.send(refused);
                        return;
                    }
                };
                // A client that stops reading: past the deadline the stream ends and the
                // query (waiting for room on its channel) stops.
                if let Err(cut) = deliver(&tx, msg, deadline, idle).await {
                    let _ = cut.map(|status| cut_off.send(status));
                    return;
                }
            }
            node.record_read(consistency, started.elapsed());
        });
        Ok(Response::new(stream))
    }

    async fn begin(
        &self,
        request: Request<v1::BeginRequest>,
    ) -> Result<Response<v1::BeginResponse>, Status> {
        let principal = principal_name(&request);
        match self
            .transaction(
                &principal,
                client_timeout(request.metadata()),
                TransactionCall::Begin,
            )
            .await?
        {
            TransactionReply::Begun { transaction_id } => {
                Ok(Response::new(v1::BeginResponse { transaction_id }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        let principal = principal_name(&request);
        let (metadata, _, message) = request.into_parts();
        let call = commit_from_proto(message)?;
        match self
            .transaction(&principal, client_timeout(&metadata), call)
            .await?
        {
            TransactionReply::Committed {
                log_index,
                deduplicated,
            } => Ok(Response::new(v1::CommitResponse {
                log_index,
                deduplicated,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn rollback(
        &self,
        request: Request<v1::RollbackRequest>,
    ) -> Result<Response<v1::RollbackResponse>, Status> {
        let principal = principal_name(&request);
        let (metadata, _, message) = request.into_parts();
        let call = rollback_from_proto(message)?;
        match self
            .transaction(&principal, client_timeout(&metadata), call)
            .await?
        {
            TransactionReply::RolledBack => Ok(Response::new(v1::RollbackResponse {})),
            other => Err(unexpected(other)),
        }
    }
}

impl SqlService {
    /// A query inside a transaction: its one statement runs on the leader's executor, in the
    /// transaction, and all its rows come back in one message.
    async fn transaction_query(
        &self,
        request: Request<v1::QueryRequest>,
    ) -> Result<Response<QueryStream>, Status> {
        let principal = principal_name(&request);
        let conn = unread_answers_of(&request);
        let (metadata, _, message) = request.into_parts();
        check_transaction_id(&message.transaction_id)?;
        let statement = statement_from_proto(
            message
                .statement
                .ok_or_else(|| Status::invalid_argument("a Query request needs a statement"))?,
        )?;
        let call = TransactionCall::Execute {
            transaction_id: message.transaction_id,
            request_id: String::new(),
            statements: vec![statement],
            max_result_bytes: None,
        };
        let mut outcome = match self
            .transaction(&principal, client_timeout(&metadata), call)
            .await?
        {
            TransactionReply::Executed(mut results) if results.len() == 1 => results.remove(0),
            other => return Err(unexpected(other)),
        };
        let max = usize::try_from(message.max_rows).unwrap_or(usize::MAX);
        let truncated = max > 0 && outcome.rows.len() > max;
        outcome
            .rows
            .truncate(if max > 0 { max } else { usize::MAX });
        let response = v1::QueryResponse {
            columns: outcome.columns.into_iter().map(column_to_proto).collect(),
            rows: outcome.rows.into_iter().map(row_to_proto).collect(),
            applied_index: self.node.applied_index(),
            truncated,
            done: true,
        };
        let held = self.hold_answer(conn.as_ref(), &response);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.send((Ok(response), Some(held))).await;
        Ok(Response::new(QueryStream::new(rx).0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_message_past_the_room_ends_the_query_with_the_reason() {
        let answers = Arc::new(crate::db::AnswerBytes::new(100));
        let conn = answers.client(None);
        let message = |bytes: usize| {
            Ok(v1::QueryResponse {
                rows: vec![v1::Row {
                    values: vec![v1::Value {
                        kind: Some(v1::value::Kind::Blob(vec![7; bytes])),
                    }],
                }],
                ..Default::default()
            })
        };
        let (_, held) = with_room(&answers, Some(&conn), message(50)).expect("fits");
        assert!(held.as_ref().is_some_and(|h| h.bytes() > 50));
        let refused = with_room(&answers, Some(&conn), message(50)).expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("have not read yet"),
            "{refused:?}"
        );
        let (error, held) =
            with_room(&answers, None, Err(Status::internal("x"))).expect("an error");
        assert!(
            error.is_err() && held.is_none(),
            "an error message takes no room"
        );

        // Past the grace the connection that keeps its answer unread gives its room.
        let answers = Arc::new(crate::db::AnswerBytes::with_grace(
            100,
            std::time::Duration::ZERO,
        ));
        let (hoarder, reader) = (answers.client(None), answers.client(None));
        let _unread = with_room(&answers, Some(&hoarder), message(50)).expect("fits");
        let (_, held) = with_room(&answers, Some(&reader), message(50)).expect("room made");
        assert!(held.is_some() && hoarder.is_closed() && !reader.is_closed());
    }

    #[test]
    fn request_ids_are_scoped_to_their_token() {
        let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_string();
        let a = scoped_request_id("app:write", id.clone()).expect("a");
        let b = scoped_request_id("other:write", id.clone()).expect("b");
        assert_ne!(a, b, "two tokens, two keys");
        assert!(a.starts_with(&id), "the id keeps its time order: {a}");
        assert_eq!(a.len(), id.len() + 13);
        assert_eq!(
            scoped_request_id("app:admin", id.clone()).expect("role"),
            a,
            "the token's name, not its role"
        );
        assert_eq!(scoped_request_id("", id.clone()).expect("no tokens"), id);
        assert_eq!(
            scoped_request_id("app:write", String::new()).expect("none"),
            ""
        );
        assert!(scoped_request_id("app:write", "x".repeat(129)).is_err());
        assert!(scoped_request_id("", "x".repeat(129)).is_err());
        assert!(scoped_request_id("app:write", "x".repeat(128)).is_ok());
    }
}
