//! Interactive transactions: read, decide, write, then commit — as one atomic write.

use std::time::Duration;

use raftlite_proto::v1;

use crate::client::{sql_client, Client};
use crate::endpoint::Transport as Channel;
use crate::{Error, Rows, Statement, StatementResult};

/// Outcome of [`Transaction::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitResult {
    /// Raft log index that made the transaction durable (a read-your-writes token); when the
    /// transaction wrote nothing, the leader's applied index it read at.
    pub log_index: u64,
    /// True when a retried Commit found the transaction already committed.
    pub deduplicated: bool,
}

/// An open interactive transaction, from [`Client::begin`].
///
/// Every statement sees the transaction's own writes; other writes wait until it ends (it
/// holds the write lock like SQLite's `BEGIN IMMEDIATE`), so keep it short. The server rolls
/// it back after its idle timeout without a call (5 s by default), and aborts it when the
/// leader changes: such calls fail with [`Error::is_aborted`] — nothing of the transaction was
/// applied, run it again from the start. Dropping it without [`Transaction::commit`] leaves
/// it to that timeout; call [`Transaction::rollback`] to release the lock at once.
///
/// Calls inside the transaction go where the client's other calls go, and are retried like
/// writes, on any node (a follower forwards them to the leader, which alone knows the
/// transaction), under the same request id, which the leader answers with the first result, so
/// each runs once. So a transaction whose leader died is answered [`Error::is_aborted`] by the
/// new leader, not a connection error from the dead one. [`Transaction::commit`] is retried
/// the same way under one request id, so a commit applies once. If `commit` still fails
/// retryably when the retry deadline passes, its outcome is unknown: read to find out before
/// running it again.
#[derive(Debug)]
pub struct Transaction {
    client: Client,
    id: String,
    channel: Channel,
    /// Set by commit and rollback; a transaction dropped without either is rolled back in the
    /// background so that it does not hold the write lock until its idle timeout.
    ended: bool,
}

impl Transaction {
    pub(crate) fn new(client: Client, id: String, channel: Channel) -> Self {
        Transaction {
            client,
            id,
            channel,
            ended: false,
        }
    }

    /// The server's id of this transaction.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn timeout(&self) -> Duration {
        self.client.options().request_timeout
    }

    /// Runs `statements` atomically inside the transaction (if one fails, none of them
    /// applies; the transaction stays open unless the error says it was aborted). Rows of
    /// statements that return them (`RETURNING`, `SELECT`) are in the results.
    pub async fn execute(
        &mut self,
        statements: impl IntoIterator<Item = impl Into<Statement>>,
    ) -> Result<Vec<StatementResult>, Error> {
        let message = v1::ExecuteRequest {
            request_id: crate::new_request_id(),
            statements: statements
                .into_iter()
                .map(|s| v1::Statement::from(s.into()))
                .collect(),
            transaction_id: self.id.clone(),
        };
        let timeout = self.timeout();
        let response = self
            .client
            .call(Some(timeout), |channel| {
                let mut request = tonic::Request::new(message.clone());
                crate::transport::set_deadline(&mut request, timeout);
                async move { Ok(sql_client(channel).execute(request).await?.into_inner()) }
            })
            .await?;
        response
            .results
            .into_iter()
            .map(StatementResult::try_from)
            .collect()
    }

    /// Runs one write statement with positional parameters inside the transaction.
    pub async fn exec(
        &mut self,
        sql: impl Into<String>,
        params: impl IntoIterator<Item = impl Into<crate::Value>>,
    ) -> Result<StatementResult, Error> {
        let mut results = self.execute([Statement::new(sql).bind_all(params)]).await?;
        results
            .pop()
            .ok_or_else(|| Error::Transport("the server answered no result".into()))
    }

    /// Runs a query inside the transaction: it sees the transaction's own writes.
    pub async fn query(
        &mut self,
        sql: impl Into<String>,
        params: impl IntoIterator<Item = impl Into<crate::Value>>,
    ) -> Result<Rows, Error> {
        let message = v1::QueryRequest {
            statement: Some(Statement::new(sql).bind_all(params).into()),
            consistency: None,
            max_rows: 0,
            transaction_id: self.id.clone(),
        };
        let timeout = self.timeout();
        self.client
            .call(Some(timeout), |channel| {
                let mut request = tonic::Request::new(message.clone());
                crate::transport::set_deadline(&mut request, timeout);
                let wait = timeout + crate::error::ANSWER_GRACE;
                crate::client::collect_query(channel, request, wait)
            })
            .await
    }

    /// Commits: the whole transaction becomes one replicated write. Retried on retryable
    /// errors (on any node) under one request id, so it applies once.
    pub async fn commit(mut self) -> Result<CommitResult, Error> {
        self.ended = true;
        let request = v1::CommitRequest {
            transaction_id: self.id.clone(),
            request_id: crate::new_request_id(),
        };
        let timeout = self.timeout();
        let response = self
            .client
            .call(Some(timeout), |channel| {
                let mut request = tonic::Request::new(request.clone());
                crate::transport::set_deadline(&mut request, timeout);
                async move { Ok(sql_client(channel).commit(request).await?.into_inner()) }
            })
            .await?;
        self.client.note_write(response.log_index);
        Ok(CommitResult {
            log_index: response.log_index,
            deduplicated: response.deduplicated,
        })
    }

    /// Discards the transaction and releases the write lock (retried on any node; a
    /// transaction the leader no longer knows is gone already).
    pub async fn rollback(mut self) -> Result<(), Error> {
        self.ended = true;
        let message = v1::RollbackRequest {
            transaction_id: self.id.clone(),
        };
        let timeout = self.timeout();
        let rolled_back = self
            .client
            .call(Some(timeout), |channel| {
                let mut request = tonic::Request::new(message.clone());
                crate::transport::set_deadline(&mut request, timeout);
                async move { Ok(sql_client(channel).rollback(request).await?.into_inner()) }
            })
            .await;
        match rolled_back {
            Err(e) if !e.is_aborted() => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // Best effort, without blocking: the server's idle timeout remains the backstop.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut request = tonic::Request::new(v1::RollbackRequest {
                transaction_id: std::mem::take(&mut self.id),
            });
            request.set_timeout(self.timeout());
            let channel = self.channel.clone();
            runtime.spawn(async move {
                let _ = sql_client(channel).rollback(request).await;
            });
        }
    }
}
