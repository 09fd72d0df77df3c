//! The public `Sql` service: translate, delegate to the node, map errors.

use prost::Message;
use raftlite_proto::v1::{self, sql_server::Sql};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{
    consistency_from_proto, db_error_to_status, node_error_to_status, statement_from_proto,
    value_to_proto, write_reply_to_proto, write_request_from_proto,
};
use crate::db::QueryChunk;
use crate::node::Node;

pub struct SqlService {
    pub node: Node,
    pub max_request_bytes: usize,
}

fn chunk_to_proto(chunk: QueryChunk, applied_index: u64) -> v1::QueryResponse {
    v1::QueryResponse {
        columns: chunk
            .columns
            .into_iter()
            .map(|c| v1::Column {
                name: c.name,
                decl_type: c.decl_type.unwrap_or_default(),
            })
            .collect(),
        rows: chunk
            .rows
            .into_iter()
            .map(|r| v1::Row {
                values: r.into_iter().map(value_to_proto).collect(),
            })
            .collect(),
        applied_index,
        truncated: chunk.truncated,
        done: chunk.done,
    }
}

/// When a statement must stop: after `limit`, or earlier if the client's deadline
/// (`grpc-timeout`) is shorter.
pub(crate) fn statement_deadline(
    metadata: &tonic::metadata::MetadataMap,
    limit: std::time::Duration,
) -> std::time::Instant {
    let budget = match super::limits::grpc_timeout(metadata.as_ref()) {
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

#[tonic::async_trait]
impl Sql for SqlService {
    async fn execute(
        &self,
        request: Request<v1::ExecuteRequest>,
    ) -> Result<Response<v1::ExecuteResponse>, Status> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "sql.execute",
            node = self.node.id(),
            statements = request.get_ref().statements.len()
        );
        // A client that sent a trace context (an instrumented app) gets the write in its trace.
        crate::telemetry::continue_trace(&span, request.metadata());
        async move {
            check_size(request.get_ref().encoded_len(), self.max_request_bytes)?;
            let deadline =
                statement_deadline(request.metadata(), self.node.config().statement_timeout);
            let mut write = write_request_from_proto(request.into_inner())?;
            write.deadline = Some(deadline);
            let reply = self
                .node
                .execute(write, false)
                .await
                .map_err(node_error_to_status)?;
            Ok(Response::new(write_reply_to_proto(reply)))
        }
        .instrument(span)
        .await
    }

    type QueryStream = ReceiverStream<Result<v1::QueryResponse, Status>>;

    async fn query(
        &self,
        request: Request<v1::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        check_size(request.get_ref().encoded_len(), self.max_request_bytes)?;
        // A query (and the stream of its rows) gets the request's time, not a write
        // statement's: it holds a read thread, never the executor.
        let deadline = statement_deadline(request.metadata(), self.node.config().request_timeout);
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
        let first = match rows.recv().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Err(db_error_to_status(e)),
            None => return Err(Status::internal("the query ended without a result")),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let node = self.node.clone();
        // A client that does not take the next rows within the statement timeout loses the
        // stream, so that a reader never stalls a read thread for long.
        let idle = self.node.config().statement_timeout;
        let wait = move || {
            deadline
                .saturating_duration_since(std::time::Instant::now())
                .min(idle)
        };
        tokio::spawn(async move {
            let mut done = first.done;
            match tokio::time::timeout(wait(), tx.send(Ok(chunk_to_proto(first, applied)))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
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
                // A client that stops reading: past the deadline the stream ends and the
                // query (waiting for room on its channel) stops.
                match tokio::time::timeout(wait(), tx.send(msg)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return,
                }
            }
            node.record_read(consistency, started.elapsed());
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
