//! The client: endpoints, retries, consistency and the read-your-writes token.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftlite_proto::v1::{self, admin_client::AdminClient, sql_client::SqlClient};

use crate::endpoint::Transport as Channel;

use crate::backoff::Backoff;
use crate::endpoint::NodeEndpoint;
use crate::error::ANSWER_GRACE;
use crate::execute_stream::{self, ExecuteStream};
use crate::{ClusterUrl, Column, Error, Row, RowStream, Rows, Statement, Transaction, Value};

/// Largest response message accepted (tonic's default is 4 MiB; a row batch or a status of a
/// large cluster can exceed that).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Timeouts, retry policy and credentials of a [`Client`]. Its `Debug` output never shows the
/// token.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Longest wait for one attempt: a whole `Execute` or `Status`, a whole query collected
    /// by [`Client::query`] or [`Client::query_with`], or the next message of a
    /// [`Client::query_stream`]. Membership changes are not bounded by it (a new node may
    /// take long to catch up). It is the deadline the node is given (but for a
    /// `query_stream`, whose rows may take longer in all); the client waits half a second
    /// more for the node's answer, so that a node that ran out of time says why. A statement the
    /// node interrupted at that deadline is not sent again ([`crate::STATEMENT_INTERRUPTED`]):
    /// another attempt would run it for as long again.
    pub request_timeout: Duration,
    /// Longest wait for a TCP connection to a node.
    pub connect_timeout: Duration,
    /// Total time spent retrying a call before its last error is returned.
    pub retry_deadline: Duration,
    /// First delay between retries; it doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Sent as `authorization: Bearer TOKEN` with every call (nodes started with an auth file
    /// require one).
    pub token: Option<String>,
    /// PEM of the CA that signed the nodes' certificates. With it (or with an `https://`
    /// address) the client speaks TLS; an `https://` address without it is an error.
    pub tls_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry_deadline", &self.retry_deadline)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca.as_ref().map(|c| c.len()))
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retry_deadline: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            token: None,
            tls_ca: None,
        }
    }
}

/// How fresh the data a query reads must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// The answering node's data as it is; may be arbitrarily old on a partitioned node.
    Stale,
    /// At most `max_lag` log entries behind the leader's commit index.
    Bounded { max_lag: u64 },
    /// Includes log index `n` (e.g. the `log_index` of a write).
    AtIndex(u64),
    /// Reflects every write acknowledged before the query started.
    #[default]
    Linearizable,
    /// Includes this client's last acknowledged write, on any node: `AtIndex(token)`, or
    /// `Linearizable` when this client has not written yet.
    ReadYourWrites,
}

/// Outcome of one statement of a write.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatementResult {
    /// Rows the statement inserted, updated or deleted.
    pub rows_affected: u64,
    /// The rowid of the last row this request (or transaction) inserted so far, as SQLite's
    /// `last_insert_rowid()` would answer on a connection of its own; 0 before any insert.
    pub last_insert_rowid: i64,
    /// For a statement that returns rows (`INSERT/UPDATE/DELETE ... RETURNING`, or a `SELECT`
    /// inside a transaction): its columns and rows. Empty otherwise.
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

impl TryFrom<v1::StatementResult> for StatementResult {
    type Error = Error;

    fn try_from(s: v1::StatementResult) -> Result<Self, Error> {
        Ok(StatementResult {
            rows_affected: s.rows_affected,
            last_insert_rowid: s.last_insert_rowid,
            columns: s.columns.into_iter().map(Column::from).collect(),
            rows: s
                .rows
                .into_iter()
                .map(Row::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Outcome of a write.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecuteResult {
    /// One result per statement, in order.
    pub results: Vec<StatementResult>,
    /// Raft log index that made the write durable (a read-your-writes token).
    pub log_index: u64,
    /// True when the request id had already been applied and the first result was returned.
    pub deduplicated: bool,
}

impl TryFrom<v1::ExecuteResponse> for ExecuteResult {
    type Error = Error;

    fn try_from(r: v1::ExecuteResponse) -> Result<Self, Error> {
        Ok(ExecuteResult {
            results: r
                .results
                .into_iter()
                .map(StatementResult::try_from)
                .collect::<Result<_, _>>()?,
            log_index: r.log_index,
            deduplicated: r.deduplicated,
        })
    }
}

/// A connection to a raftlite cluster through any of its nodes. Cheap to clone; clones share
/// channels, the preferred node and the read-your-writes token.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    nodes: Vec<NodeEndpoint>,
    options: ClientOptions,
    /// Node the next call goes to first: the last one that answered.
    preferred: AtomicUsize,
    /// Highest `log_index` of a write this client saw acknowledged.
    write_token: AtomicU64,
}

impl Client {
    /// A client for the nodes at `endpoints` (`host:port` or `http://host:port`) with default
    /// options. Nothing is dialed yet: each node is connected on first use, so this succeeds
    /// while nodes are down, and needs no Tokio runtime.
    pub fn connect(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Client, Error> {
        Self::with_options(endpoints, ClientOptions::default())
    }

    pub fn with_options(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let nodes = endpoints
            .into_iter()
            .map(|e| NodeEndpoint::parse(&e.into(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(Error::InvalidEndpoint("no endpoints given".into()));
        }
        Ok(Client {
            inner: Arc::new(Shared {
                nodes,
                options,
                preferred: AtomicUsize::new(0),
                write_token: AtomicU64::new(0),
            }),
        })
    }

    /// A client for the cluster a `raftlite://[NAME:TOKEN@]HOST:PORT[,HOST:PORT...][?tls_ca=PATH]`
    /// URL names, with its token and CA (see [`ClusterUrl`]) and default options otherwise.
    pub fn from_url(url: &str) -> Result<Client, Error> {
        Self::from_url_with_options(url, ClientOptions::default())
    }

    /// Like [`Client::from_url`]; the URL's token and CA replace those of `options`.
    pub fn from_url_with_options(url: &str, options: ClientOptions) -> Result<Client, Error> {
        let url = ClusterUrl::parse(url)?;
        Self::with_options(url.endpoints(), url.client_options(options)?)
    }

    /// The endpoints as normalized URIs (`http://host:port`).
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.inner.nodes.iter().map(|n| n.uri.as_str())
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The read-your-writes token: the highest log index of a write this client (or a clone)
    /// saw acknowledged; 0 before the first write.
    pub fn last_write_index(&self) -> u64 {
        self.inner.write_token.load(Ordering::Acquire)
    }

    /// Runs `statements` atomically, in order, as one transaction, under a fresh request id.
    /// Retries that may reach the server twice reuse the id, so the write applies once.
    pub async fn execute(
        &self,
        statements: impl IntoIterator<Item = impl Into<Statement>>,
    ) -> Result<ExecuteResult, Error> {
        self.execute_with_id(crate::new_request_id(), statements)
            .await
    }

    /// Like [`Client::execute`] with a caller-chosen request id (at most 128 bytes), for
    /// callers that retry across process restarts.
    pub async fn execute_with_id(
        &self,
        request_id: impl Into<String>,
        statements: impl IntoIterator<Item = impl Into<Statement>>,
    ) -> Result<ExecuteResult, Error> {
        let request = v1::ExecuteRequest {
            request_id: request_id.into(),
            statements: statements
                .into_iter()
                .map(|s| v1::Statement::from(s.into()))
                .collect(),
            transaction_id: String::new(),
        };
        let timeout = self.inner.options.request_timeout;
        let response = self
            .retry(Some(timeout), |channel, stream| {
                let request = &request;
                async move {
                    match stream {
                        Some(stream) => stream.execute(channel, request, timeout).await,
                        None => execute_stream::unary(channel, request, timeout).await,
                    }
                }
            })
            .await?;
        self.note_write(response.log_index);
        response.try_into()
    }

    /// Begins an interactive transaction (see [`Transaction`]) on whichever node answers; the
    /// transaction lives on the leader. Waits while another transaction holds the write lock.
    pub async fn begin(&self) -> Result<Transaction, Error> {
        let timeout = self.inner.options.request_timeout;
        let (id, channel) = self
            .call(Some(timeout), |channel| {
                let mut request = tonic::Request::new(v1::BeginRequest {});
                crate::transport::set_deadline(&mut request, timeout);
                async move {
                    let id = sql_client(channel.clone())
                        .begin(request)
                        .await?
                        .into_inner()
                        .transaction_id;
                    Ok((id, channel))
                }
            })
            .await?;
        Ok(Transaction::new(self.clone(), id, channel))
    }

    /// Records an acknowledged write's log index as the read-your-writes token.
    pub(crate) fn note_write(&self, log_index: u64) {
        self.inner
            .write_token
            .fetch_max(log_index, Ordering::AcqRel);
    }

    /// Runs one write statement with positional parameters.
    pub async fn exec(
        &self,
        sql: impl Into<String>,
        params: impl IntoIterator<Item = impl Into<Value>>,
    ) -> Result<ExecuteResult, Error> {
        self.execute([Statement::new(sql).bind_all(params)]).await
    }

    /// Runs a query with positional parameters, linearizably, and collects all rows.
    pub async fn query(
        &self,
        sql: impl Into<String>,
        params: impl IntoIterator<Item = impl Into<Value>>,
    ) -> Result<Rows, Error> {
        self.query_with(
            Statement::new(sql).bind_all(params),
            Consistency::Linearizable,
            0,
        )
        .await
    }

    /// Runs a query at `consistency` and collects at most `max_rows` rows (0: all). A query
    /// that fails in a retryable way, even midway, runs again on the next node.
    pub async fn query_with(
        &self,
        statement: impl Into<Statement>,
        consistency: Consistency,
        max_rows: u64,
    ) -> Result<Rows, Error> {
        let request = self.query_request(statement.into(), consistency, max_rows);
        let timeout = self.inner.options.request_timeout;
        self.call(None, |channel| {
            // The node stops the query at the deadline and says so; that is not retried.
            let mut request = tonic::Request::new(request.clone());
            crate::transport::set_deadline(&mut request, timeout);
            collect_query(channel, request, timeout + ANSWER_GRACE)
        })
        .await
    }

    /// Runs a query at `consistency` and returns its rows as they arrive, for results too
    /// large to hold. Opening the query is retried; an error midway ends the stream.
    pub async fn query_stream(
        &self,
        statement: impl Into<Statement>,
        consistency: Consistency,
        max_rows: u64,
    ) -> Result<RowStream, Error> {
        let request = self.query_request(statement.into(), consistency, max_rows);
        let timeout = self.inner.options.request_timeout;
        self.call(None, |channel| {
            open_query(channel, request.clone(), timeout)
        })
        .await
    }

    /// Cluster status as seen by the first node that answers.
    pub async fn status(&self) -> Result<v1::StatusResponse, Error> {
        self.call(
            Some(self.inner.options.request_timeout),
            |channel| async move {
                Ok(admin_client(channel)
                    .status(v1::StatusRequest {})
                    .await?
                    .into_inner())
            },
        )
        .await
    }

    /// Adds a non-voting learner; returns once it has caught up. `addr` is its client address,
    /// `peer_addr` its peer address (`None`: the client address's port + 1).
    pub async fn add_learner(
        &self,
        node_id: u64,
        addr: impl Into<String>,
        peer_addr: Option<String>,
    ) -> Result<v1::MembershipResponse, Error> {
        let request = v1::AddNodeRequest {
            node_id,
            addr: addr.into(),
            peer_addr: peer_addr.unwrap_or_default(),
        };
        self.call(None, |channel| {
            let request = request.clone();
            async move {
                Ok(admin_client(channel)
                    .add_learner(request)
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Adds a voter (it joins as a learner, catches up, then is promoted). Addresses as for
    /// [`Client::add_learner`].
    pub async fn add_voter(
        &self,
        node_id: u64,
        addr: impl Into<String>,
        peer_addr: Option<String>,
    ) -> Result<v1::MembershipResponse, Error> {
        let request = v1::AddNodeRequest {
            node_id,
            addr: addr.into(),
            peer_addr: peer_addr.unwrap_or_default(),
        };
        self.call(None, |channel| {
            let request = request.clone();
            async move { Ok(admin_client(channel).add_voter(request).await?.into_inner()) }
        })
        .await
    }

    /// Removes a voter or learner from the cluster.
    pub async fn remove_node(&self, node_id: u64) -> Result<v1::MembershipResponse, Error> {
        self.call(None, |channel| async move {
            Ok(admin_client(channel)
                .remove_node(v1::RemoveNodeRequest { node_id })
                .await?
                .into_inner())
        })
        .await
    }

    /// Asks the leader to hand leadership to `node_id`; answers with the resulting status.
    pub async fn transfer_leadership(&self, node_id: u64) -> Result<v1::StatusResponse, Error> {
        self.call(None, |channel| async move {
            let request = v1::TransferLeadershipRequest { node_id };
            Ok(admin_client(channel)
                .transfer_leadership(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Makes the answering node take a snapshot now; returns its snapshot index.
    pub async fn trigger_snapshot(&self) -> Result<v1::SnapshotResponse, Error> {
        self.call(None, |channel| async move {
            Ok(admin_client(channel)
                .trigger_snapshot(v1::SnapshotRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    fn query_request(
        &self,
        statement: Statement,
        consistency: Consistency,
        max_rows: u64,
    ) -> v1::QueryRequest {
        v1::QueryRequest {
            statement: Some(statement.into()),
            consistency: Some(self.read_consistency(consistency)),
            max_rows,
            transaction_id: String::new(),
        }
    }

    fn read_consistency(&self, consistency: Consistency) -> v1::ReadConsistency {
        use v1::read_consistency::Level;
        let level = match consistency {
            Consistency::Stale => Level::Stale(v1::Stale {}),
            Consistency::Bounded { max_lag } => Level::Bounded(v1::Bounded { max_lag }),
            Consistency::AtIndex(index) => Level::AtIndex(v1::AtIndex { index }),
            Consistency::Linearizable => Level::Linearizable(v1::Linearizable {}),
            Consistency::ReadYourWrites => match self.last_write_index() {
                0 => Level::Linearizable(v1::Linearizable {}),
                index => Level::AtIndex(v1::AtIndex { index }),
            },
        };
        v1::ReadConsistency { level: Some(level) }
    }

    /// Runs `attempt` against the preferred node, and on a retryable error against the next
    /// ones with backoff until `retry_deadline` has passed. `timeout` bounds each attempt.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        timeout: Option<Duration>,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.retry(timeout, move |channel, _| attempt(channel))
            .await
    }

    /// Like [`Client::call`]; each attempt also gets the node's `ExecuteStream`.
    async fn retry<T, F, Fut>(&self, timeout: Option<Duration>, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(Channel, Option<Arc<ExecuteStream>>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let options = &self.inner.options;
        let started = Instant::now();
        let mut backoff = Backoff::new(options.backoff_initial, options.backoff_max);
        let mut node = self.inner.preferred.load(Ordering::Relaxed) % self.inner.nodes.len();
        // Each node's last failure, for the final error (see `Error::after_retries`).
        let mut last: Vec<Option<String>> = vec![None; self.inner.nodes.len()];
        let mut attempts = 0;
        loop {
            attempts += 1;
            let endpoint = &self.inner.nodes[node];
            let future = attempt(endpoint.channel(), Some(endpoint.execute_stream.clone()));
            let result = match timeout {
                Some(limit) => tokio::time::timeout(limit + ANSWER_GRACE, future)
                    .await
                    .unwrap_or(Err(Error::timeout(limit))),
                None => future.await,
            };
            let err = match result {
                Ok(value) => {
                    self.inner.preferred.store(node, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(err) if !err.is_retryable() || err.is_statement_interrupted() => {
                    return Err(err)
                }
                Err(err) => err,
            };
            let elapsed = started.elapsed();
            last[node] = Some(err.to_string());
            if elapsed >= options.retry_deadline {
                let others: Vec<(String, String)> = last
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != node)
                    .filter_map(|(i, e)| Some((self.inner.nodes[i].uri.clone(), e.clone()?)))
                    .collect();
                return Err(err.after_retries(attempts, elapsed, &others));
            }
            let delay = backoff.next_delay().min(options.retry_deadline - elapsed);
            let next = self.next_node(node, &err);
            tracing::debug!(
                endpoint = %self.inner.nodes[node].uri,
                next = %self.inner.nodes[next].uri,
                ?delay,
                error = %err,
                "retrying"
            );
            self.inner.preferred.store(next, Ordering::Relaxed);
            node = next;
            tokio::time::sleep(delay).await;
        }
    }

    /// The node to try after `current` failed with `err`: the leader if the server named one
    /// of our endpoints, else the next endpoint in turn.
    fn next_node(&self, current: usize, err: &Error) -> usize {
        let nodes = &self.inner.nodes;
        err.leader_hint()
            .and_then(|(_, addr)| nodes.iter().position(|n| n.matches(addr)))
            .unwrap_or((current + 1) % nodes.len())
    }
}

pub(crate) fn sql_client(channel: Channel) -> SqlClient<Channel> {
    SqlClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

fn admin_client(channel: Channel) -> AdminClient<Channel> {
    AdminClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// Sends a query and collects its rows.
pub(crate) async fn collect_query(
    channel: Channel,
    request: tonic::Request<v1::QueryRequest>,
    timeout: Duration,
) -> Result<Rows, Error> {
    open_query(channel, request, timeout)
        .await?
        .collect_rows()
        .await
}

/// Sends a query and waits, at most `timeout`, for its first message (the columns).
async fn open_query(
    channel: Channel,
    request: impl tonic::IntoRequest<v1::QueryRequest>,
    timeout: Duration,
) -> Result<RowStream, Error> {
    let open = async {
        let mut messages = sql_client(channel).query(request).await?.into_inner();
        let first = messages.message().await?.ok_or_else(|| {
            Error::Transport("query stream ended before its first message".into())
        })?;
        Ok::<_, Error>((first, messages))
    };
    let (first, messages) = tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| Error::timeout(timeout))??;
    RowStream::new(first, messages, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(client: &Client, c: Consistency) -> v1::read_consistency::Level {
        client.read_consistency(c).level.expect("always set")
    }

    #[test]
    fn connect_needs_at_least_one_valid_endpoint() {
        let none: [&str; 0] = [];
        assert!(matches!(
            Client::connect(none),
            Err(Error::InvalidEndpoint(_))
        ));
        assert!(matches!(
            Client::connect(["a:1", "nope"]),
            Err(Error::InvalidEndpoint(_))
        ));
        let client = Client::connect(["127.0.0.1:7401", "http://127.0.0.1:7402"]).expect("valid");
        assert_eq!(
            client.endpoints().collect::<Vec<_>>(),
            ["http://127.0.0.1:7401", "http://127.0.0.1:7402"]
        );
    }

    #[test]
    fn from_url_takes_the_nodes_and_token() {
        let client =
            Client::from_url("raftlite://app:s3cret@127.0.0.1:7401,127.0.0.1:7402").expect("valid");
        assert_eq!(
            client.endpoints().collect::<Vec<_>>(),
            ["http://127.0.0.1:7401", "http://127.0.0.1:7402"]
        );
        assert_eq!(client.options().token.as_deref(), Some("s3cret"));
        assert!(!format!("{client:?}").contains("s3cret"));
        let err =
            Client::from_url("raftlite://app:s3cret@127.0.0.1:7401?tls_ca=/nonexistent/ca.crt")
                .expect_err("no CA file");
        assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
        assert!(matches!(
            Client::from_url("127.0.0.1:7401"),
            Err(Error::InvalidEndpoint(_))
        ));
    }

    #[test]
    fn client_is_cheap_to_share() {
        fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
        assert_send_sync_clone::<Client>();
    }

    #[test]
    fn read_your_writes_follows_the_write_token() {
        use v1::read_consistency::Level;
        let client = Client::connect(["127.0.0.1:7401"]).expect("valid");
        assert_eq!(
            level(&client, Consistency::ReadYourWrites),
            Level::Linearizable(v1::Linearizable {})
        );
        let clone = client.clone();
        clone.inner.write_token.fetch_max(42, Ordering::AcqRel);
        clone.inner.write_token.fetch_max(7, Ordering::AcqRel);
        assert_eq!(client.last_write_index(), 42);
        assert_eq!(
            level(&client, Consistency::ReadYourWrites),
            Level::AtIndex(v1::AtIndex { index: 42 })
        );
        assert_eq!(
            level(&client, Consistency::Stale),
            Level::Stale(v1::Stale {})
        );
        assert_eq!(
            level(&client, Consistency::Bounded { max_lag: 3 }),
            Level::Bounded(v1::Bounded { max_lag: 3 })
        );
        assert_eq!(
            level(&client, Consistency::default()),
            Level::Linearizable(v1::Linearizable {})
        );
    }

    #[test]
    fn retries_go_to_the_hinted_leader_or_the_next_node() {
        let client = Client::connect(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]).expect("valid");
        let plain = Error::Transport("refused".into());
        assert_eq!(client.next_node(0, &plain), 1);
        assert_eq!(client.next_node(2, &plain), 0);
        let hinted = |addr: &str| Error::Status {
            code: tonic::Code::Unavailable,
            message: "not leader".into(),
            leader_hint: Some((3, addr.into())),
        };
        assert_eq!(client.next_node(0, &hinted("127.0.0.1:3")), 2);
        assert_eq!(
            client.next_node(0, &hinted("10.9.9.9:3")),
            1,
            "unknown leader address"
        );
    }

    /// No server listens on port 1: the call is retried until the deadline, then the last
    /// transport error is returned.
    #[tokio::test]
    async fn gives_up_after_the_retry_deadline() {
        let options = ClientOptions {
            retry_deadline: Duration::from_millis(200),
            request_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        };
        let client = Client::with_options(["127.0.0.1:1"], options).expect("valid");
        let started = Instant::now();
        let err = client
            .exec("INSERT INTO t VALUES (?)", [1])
            .await
            .expect_err("nothing listens");
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(client.last_write_index(), 0);
    }
}
