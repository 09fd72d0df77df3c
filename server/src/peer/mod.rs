//! Node-to-node traffic: both sides of every call one node makes to another.
//!
//! - [`dialer`]: the one place a connection to a peer is built (and, with TLS, where the
//!   node's certificate and the cluster CA are used); one pooled client per peer address.
//! - [`client`]: typed calls a node makes on a peer — forward a write or a membership change
//!   to the leader, ask the leader for a read index, ask a peer who it is or how it is doing,
//!   ask a peer to start an election. Callers in `node/` and `cluster/` never see prost or
//!   tonic types.
//! - [`early`]: a leader's new entries sent to its followers as it appends them, before its
//!   own log flush (openraft 0.9 replicates only after it), on [`append_stream`]: one
//!   long-lived stream per follower instead of a call per AppendEntries.
//! - [`network`]: openraft's `RaftNetwork` (AppendEntries, Vote, streamed snapshots) over the
//!   same clients.
//! - [`transfer`]: entries too large for one of openraft's AppendEntries calls, sent by a
//!   task that outlives the call, so that openraft's next call continues it.
//! - [`service`]: the `raftlite.v1.Peer` service that answers all of the above.
//! - [`convert`]: conversions between the peer messages and the node's types.
//!
//! # Key decisions and trade-offs
//!
//! - **One room owns both sides** (as rqlite's `cluster` package does): a change to how nodes
//!   talk to each other — a new call, TLS, a size limit — is made in one place and cannot
//!   miss one of the callers.
//! - **Forwarded calls reuse the public messages** (`ExecuteRequest`, `AddNodeRequest`), so
//!   their validation is the public API's; only the envelope of Raft messages is peer-only.

pub mod append_stream;
pub mod client;
pub mod convert;
pub mod dialer;
pub mod early;
pub mod network;
pub mod service;
pub mod transfer;

pub use client::PeerClient;
pub use dialer::Dialer;

/// Largest message either side of the peer service accepts: well above a batch of
/// `max_payload_entries` log entries, far below what could exhaust a node's memory.
/// Snapshots are streamed in 1 MiB chunks and bounded as a whole by `max_snapshot_bytes`.
pub const PEER_MESSAGE_LIMIT: usize = 256 << 20;
