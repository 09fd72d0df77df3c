//! Typed Rust client for raftlite, highly available SQLite over Raft.
//!
//! Give it the addresses of some or all nodes; it talks to any of them (followers forward
//! writes to the leader), so it never has to know which one leads.
//!
//! * **Writes** ([`Client::execute`], [`Client::exec`]) run atomically as one transaction and
//!   carry a request id. When a node is unreachable, there is no leader or quorum, or an
//!   answer does not arrive in time, the client retries with exponential backoff and jitter on
//!   the next node with the *same* id until [`ClientOptions::retry_deadline`]: the server
//!   answers a repeated id with the first result (`deduplicated`), so a write applies once.
//! * **Reads** ([`Client::query`], [`Client::query_with`], [`Client::query_stream`]) choose a
//!   [`Consistency`] per call, linearizable by default. Every acknowledged write advances the
//!   client's read-your-writes token ([`Client::last_write_index`]);
//!   [`Consistency::ReadYourWrites`] reads it on whatever node answers, without a round trip
//!   to the leader.
//! * **Addresses**: [`Client::connect`] takes `host:port` (or `https://host:port`) per node;
//!   [`Client::from_url`] takes one `raftlite://[NAME:TOKEN@]HOST:PORT[,...][?tls_ca=PATH]`
//!   URL with the credentials, the syntax the `raftlite` CLI and the Python client share
//!   ([`ClusterUrl`]).
//! * **Admin** calls ([`Client::status`], membership changes, snapshots) return the wire
//!   types of [`proto`].
//!
//! ```no_run
//! use raftlite_client::{Client, Consistency, Statement};
//!
//! # async fn demo() -> Result<(), raftlite_client::Error> {
//! let client = Client::connect(["10.0.0.1:7401", "10.0.0.2:7401", "10.0.0.3:7401"])?;
//! client.execute(["CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v INTEGER)"]).await?;
//!
//! // Several statements: all or nothing.
//! let written = client
//!     .execute([
//!         Statement::new("INSERT INTO kv VALUES (?1, ?2)").bind("a").bind(1),
//!         Statement::new("UPDATE kv SET v = v + 1 WHERE k = :k").bind_named(":k", "a"),
//!     ])
//!     .await?;
//! println!("committed at log index {}", written.log_index);
//!
//! // Reads any node may serve, as long as it has applied our write.
//! let rows = client
//!     .query_with(Statement::new("SELECT v FROM kv WHERE k = ?").bind("a"), Consistency::ReadYourWrites, 0)
//!     .await?;
//! let v: i64 = rows.rows[0].get(0)?;
//! assert_eq!(v, 2);
//! # Ok(())
//! # }
//! ```
//!
//! Writes are only ever retried after failures where resending is safe under deduplication;
//! errors such as INVALID_ARGUMENT (bad SQL), PERMISSION_DENIED (forbidden statement) or
//! FAILED_PRECONDITION (constraint violation) are returned at once; see [`Error::is_retryable`].

mod backoff;
mod client;
mod endpoint;
mod error;
mod execute_stream;
mod rows;
mod statement;
mod transaction;
pub mod transport;
mod url;
mod value;

pub use client::{Client, ClientOptions, Consistency, ExecuteResult, StatementResult};
pub use error::{code_name, Error, ANSWER_GRACE, STATEMENT_INTERRUPTED};
pub use rows::{Column, Row, RowStream, Rows};
pub use statement::Statement;
pub use transaction::{CommitResult, Transaction};
pub use url::ClusterUrl;
pub use value::{FromValue, Value};

/// A fresh request id, as [`Client::execute`] makes them: a UUIDv7, so ids made at nearly the
/// same time sort next to each other. Each write stores its id in the server's request-id
/// index; random ids (UUIDv4) would put every write of a group commit on a different index
/// page, and each changed page is replicated and written on every node (measured: 24.5 pages
/// per 16-write group commit with random ids, 7.25 with these). Unique like a random id: 74
/// of its bits are random, asked of the OS for each id (a `getrandom` call). Not from a
/// thread-local generator (uuid's `fast-rng`): a process that forks without `exec` copies
/// one, parent and child could make the same id in the same millisecond, and a repeated id is
/// answered with the first write's results.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The wire types, for admin answers such as [`proto::v1::StatusResponse`].
pub use raftlite_proto as proto;

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_unique_and_sort_in_the_order_they_were_made() {
        let first: Vec<String> = (0..1000).map(|_| super::new_request_id()).collect();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = super::new_request_id();
        let unique: std::collections::HashSet<&String> = first.iter().collect();
        assert_eq!(unique.len(), 1000);
        assert!(first.iter().all(|id| id < &later));
        let parsed = uuid::Uuid::parse_str(&later).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 7);
    }
}
