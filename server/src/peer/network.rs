//! `RaftNetwork`: openraft RPCs over the peer-only gRPC service.
//!
//! Each RPC is a bincode-encoded openraft message in a `RaftMessage` envelope carrying the
//! sender's cluster id. Snapshots are streamed from the image file in 1 MiB chunks
//! (`InstallSnapshot` is a client-streaming call), so a large database never sits in memory.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot};
use raftlite_proto::v1::{RaftMessage, SnapshotChunk};
use tokio::io::AsyncReadExt;

use super::dialer::PeerProtoClient;
use super::early::{EarlyReplication, Slot, COMMIT_HOLD};
use super::transfer::{Transfer, Waited, TRANSFER_BYTES};
use super::Dialer;
use crate::cluster::identity::ClusterIdentity;
use crate::node::lease::LeaderLease;
use crate::raft::codec;
use crate::raft::types::{NodeAddr, NodeId, TypeConfig, Vote};

const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Most entry bytes in one AppendEntries: half the peer message limit leaves room for the
/// envelope and encoding overhead.
pub(super) const APPEND_BYTES_LIMIT: usize = super::PEER_MESSAGE_LIMIT / 2;

/// About how many bytes `entry` takes on the wire.
fn entry_bytes(entry: &crate::raft::types::Entry) -> usize {
    use crate::raft::types::Command;
    match &entry.payload {
        openraft::EntryPayload::Normal(Command::Delta(delta)) => delta.len() + 64,
        _ => 1024,
    }
}

/// About how many bytes `entries` take on the wire.
pub(super) fn entries_bytes(entries: &[crate::raft::types::Entry]) -> usize {
    entries.iter().map(entry_bytes).sum()
}

/// Splits `rpc` into consecutive AppendEntries of at most `limit` entry bytes each (an entry
/// larger than `limit` goes alone). One part, unchanged, in the common case.
pub(super) fn split_append(
    rpc: AppendEntriesRequest<TypeConfig>,
    limit: usize,
) -> Vec<AppendEntriesRequest<TypeConfig>> {
    if entries_bytes(&rpc.entries) <= limit {
        return vec![rpc];
    }
    let AppendEntriesRequest {
        vote,
        mut prev_log_id,
        entries,
        leader_commit,
    } = rpc;
    let mut parts = Vec::new();
    let mut current: Vec<crate::raft::types::Entry> = Vec::new();
    let mut bytes = 0;
    let mut flush = |current: &mut Vec<crate::raft::types::Entry>,
                     prev: &mut Option<openraft::LogId<NodeId>>| {
        let Some(last) = current.last().map(|e| e.log_id) else {
            return;
        };
        parts.push(AppendEntriesRequest {
            vote,
            prev_log_id: *prev,
            entries: std::mem::take(current),
            // Never announce a commit beyond what this part carries.
            leader_commit: leader_commit.min(Some(last)),
        });
        *prev = Some(last);
    };
    for entry in entries {
        let size = entry_bytes(&entry);
        if !current.is_empty() && bytes + size > limit {
            flush(&mut current, &mut prev_log_id);
            bytes = 0;
        }
        bytes += size;
        current.push(entry);
    }
    flush(&mut current, &mut prev_log_id);
    if let Some(last) = parts.last_mut() {
        last.leader_commit = leader_commit;
    }
    parts
}

#[derive(Clone)]
pub struct Network {
    pub self_id: NodeId,
    pub identity: Arc<ClusterIdentity>,
    pub dialer: Arc<Dialer>,
    /// Told of every AppendEntries a follower accepted (the leader's read lease).
    pub lease: Arc<LeaderLease>,
    /// Sends this leader's new entries before its own log flush (see `early`).
    pub early: Arc<EarlyReplication>,
}

pub struct PeerConnection {
    link: PeerLink,
    lease: Arc<LeaderLease>,
    /// The AppendEntries sent early to this peer (see `early`).
    early: Arc<Slot>,
    /// Entries too large for one of openraft's calls, on their way (see `transfer`).
    transfer: Option<Transfer>,
}

/// What a call to one peer needs: shared by openraft's replication stream and the early
/// AppendEntries sent to the same peer.
#[derive(Clone)]
pub(super) struct PeerLink {
    pub(super) self_id: NodeId,
    pub(super) target: NodeId,
    pub(super) identity: Arc<ClusterIdentity>,
    pub(super) client: Result<PeerProtoClient, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerConnection {
        let link = PeerLink {
            self_id: self.self_id,
            target,
            identity: self.identity.clone(),
            client: self.dialer.proto_client(&node.peer),
        };
        PeerConnection {
            early: self.early.slot(link.clone()),
            link,
            lease: self.lease.clone(),
            transfer: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct PeerError(pub(super) String);

fn unreachable<E>(msg: impl std::fmt::Display) -> RPCError<NodeId, NodeAddr, E>
where
    E: std::error::Error,
{
    RPCError::Unreachable(Unreachable::new(&PeerError(msg.to_string())))
}

/// A node that cannot be reached (connection refused or reset) is `Unreachable`: openraft then
/// pauses replication to it for 500 ms. An RPC that merely ran out of time (the deadline is one
/// heartbeat interval, so one slow fsync on the follower does it) is not: pausing would leave
/// that follower without heartbeats for five intervals, and with a second slow one a quorum
/// could lose the leader and elect another for nothing. openraft resends it at once.
fn from_status<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, NodeAddr, E> {
    match status.code() {
        tonic::Code::Unavailable => unreachable(&status),
        _ => RPCError::Network(NetworkError::new(&PeerError(format!(
            "{}: {}",
            status.code(),
            status.message()
        )))),
    }
}

impl PeerLink {
    pub(super) fn envelope(&self, payload: Vec<u8>) -> RaftMessage {
        RaftMessage {
            cluster_id: self.identity.get().unwrap_or_default(),
            from: self.self_id,
            payload,
        }
    }

    /// What a peer's reply payload says: its answer, or the error it returned.
    pub(super) fn decode_reply<Resp, E>(
        &self,
        payload: &[u8],
    ) -> Result<Resp, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let decoded: Result<Resp, RaftError<NodeId, E>> = codec::decode(payload).map_err(|e| {
            RPCError::Network(NetworkError::new(&PeerError(format!(
                "undecodable reply: {e}"
            ))))
        })?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    pub(super) async fn call<Req, Resp, E>(
        &self,
        req: &Req,
        ttl: Duration,
        rpc: impl AsyncFnOnce(
            PeerProtoClient,
            tonic::Request<RaftMessage>,
        ) -> Result<tonic::Response<RaftMessage>, tonic::Status>,
    ) -> Result<Resp, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(unreachable(e)),
        };
        let payload = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(self.envelope(payload));
        request.set_timeout(ttl);
        let reply = rpc(client, request)
            .await
            .map_err(from_status)?
            .into_inner();
        self.decode_reply(&reply.payload)
    }
}

/// The follower took this leader's term and counts it as heard (raftlite's own election
/// check, `prevote.rs`, counts only these answers), as of a message sent no earlier than
/// `sent`.
fn heard(
    lease: &LeaderLease,
    early: &Slot,
    target: NodeId,
    reply: &AppendEntriesResponse<NodeId>,
    term: u64,
    sent: Instant,
) {
    if matches!(
        reply,
        AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)
    ) {
        lease.acknowledged(target, term, sent);
        early.heard();
    }
}

impl PeerConnection {
    fn heard(&self, reply: &AppendEntriesResponse<NodeId>, term: u64, sent: Instant) {
        heard(
            &self.lease,
            &self.early,
            self.link.target,
            reply,
            term,
            sent,
        );
    }

    /// Starts or joins the transfer of `rpc`'s entries and waits for it for `ttl`, minus a
    /// margin to answer before openraft drops the call (see `transfer`).
    async fn transfer(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
        term: u64,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        let asked = rpc.entries.last().map(|e| e.log_id);
        let leader_commit = rpc.leader_commit;
        match &self.transfer {
            Some(under_way) => {
                // Keep the follower hearing from its leader while the entries travel.
                let beat = under_way.heartbeat(leader_commit);
                let (link, lease, early) =
                    (self.link.clone(), self.lease.clone(), self.early.clone());
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let reply: Result<AppendEntriesResponse<NodeId>, RPCError<_, _, RaftError<_>>> =
                        link.call(&beat, ttl, async |mut c, r| c.append_entries(r).await)
                            .await;
                    if let Ok(reply) = reply {
                        heard(&lease, &early, link.target, &reply, term, sent);
                    }
                });
            }
            None => self.transfer = Transfer::start(&self.link, rpc, ttl),
        }
        let Some(transfer) = self.transfer.as_mut() else {
            return Ok(AppendEntriesResponse::Success);
        };
        match transfer.wait(asked, ttl * 3 / 4).await {
            Waited::Pending(e) => Err(e),
            Waited::Answer(reply) => {
                let sent = transfer.sent;
                self.transfer = None;
                let reply = reply?;
                self.heard(&reply, term, sent);
                Ok(reply)
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        // Several RPCs when the entries would not fit one peer message: each part is a valid
        // AppendEntries continuing the previous one, so the follower never refuses a batch the
        // leader assembled from entries it accepted one by one.
        let term = rpc.vote.leader_id().term;
        let called = Instant::now();
        crate::stamp!(
            "repl.call",
            rpc.entries.last().map_or(0, |e| e.log_id.index)
        );
        // This request went out already, as the leader appended its entries: its answer is
        // this request's answer, as of when it was sent.
        if let Some((sent, reply)) = self.early.take(&rpc) {
            if let Ok(Some(AppendEntriesResponse::Success)) = reply.await {
                self.early.used();
                crate::stamp!(
                    "repl.used",
                    rpc.entries.last().map_or(0, |e| e.log_id.index)
                );
                self.lease.acknowledged(self.link.target, term, sent);
                return Ok(AppendEntriesResponse::Success);
            }
        }
        // Only a new commit index: the next early request carries it.
        let hold = COMMIT_HOLD.min(option.hard_ttl() / 4);
        if let Some(sent) = self.early.carried(&rpc, called, hold).await {
            self.lease.acknowledged(self.link.target, term, sent);
            return Ok(AppendEntriesResponse::Success);
        }
        // A call with entries that does not continue the transfer under way ends it (an
        // entry-less heartbeat leaves it be).
        if self.transfer.as_ref().is_some_and(|t| t.ended_by(&rpc)) {
            self.transfer = None;
        }
        if !rpc.entries.is_empty()
            && (self.transfer.is_some() || entries_bytes(&rpc.entries) > TRANSFER_BYTES)
        {
            return self.transfer(rpc, option.hard_ttl(), term).await;
        }
        let sent = Instant::now();
        let reply = self
            .link
            .call(&rpc, option.hard_ttl(), async |mut c, r| {
                c.append_entries(r).await
            })
            .await?;
        self.heard(&reply, term, sent);
        Ok(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.link
            .call(&rpc, option.hard_ttl(), async |mut c, r| c.vote(r).await)
            .await
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        // Snapshots are sent whole by `full_snapshot`; openraft only calls this from its default
        // `full_snapshot`, which is overridden below.
        Err(RPCError::Network(NetworkError::new(&PeerError(
            "chunked snapshot RPC is not used".into(),
        ))))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut client = match &self.link.client {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(StreamingError::Unreachable(Unreachable::new(&PeerError(
                    e.clone(),
                ))))
            }
        };
        let header = codec::encode(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        let cluster_id = self.link.identity.get().unwrap_or_default();
        let from = self.link.self_id;
        let mut file = snapshot.snapshot;
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(0)).await?;
            let mut first = Some(header);
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                let chunk = SnapshotChunk {
                    cluster_id: if first.is_some() {
                        cluster_id.clone()
                    } else {
                        String::new()
                    },
                    from,
                    header: first.take().unwrap_or_default(),
                    data: buf,
                };
                if tx.send(chunk).await.is_err() || filled == 0 {
                    return Ok::<_, std::io::Error>(());
                }
            }
        });
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.set_timeout(option.hard_ttl().max(Duration::from_secs(600)));
        let send = client.install_snapshot(request);
        let reply = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            r = send => r,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
            Err(e) => {
                return Err(StreamingError::Network(NetworkError::new(&PeerError(
                    e.to_string(),
                ))))
            }
        }
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                StreamingError::Unreachable(Unreachable::new(&PeerError(status.to_string())))
            }
            _ => StreamingError::Network(NetworkError::new(&PeerError(status.to_string()))),
        })?;
        let decoded: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            codec::decode(&reply.into_inner().payload).map_err(|e| {
                StreamingError::Network(NetworkError::new(&PeerError(format!(
                    "undecodable reply: {e}"
                ))))
            })?;
        decoded.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.link.target, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{Command, Entry};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    #[test]
    fn only_a_refused_connection_pauses_replication() {
        type Error = RPCError<NodeId, NodeAddr, RaftError<NodeId>>;
        let refused: Error = from_status(tonic::Status::unavailable("connection refused"));
        assert!(matches!(refused, RPCError::Unreachable(_)));
        for slow in [
            tonic::Status::cancelled("Timeout expired"),
            tonic::Status::deadline_exceeded("deadline"),
        ] {
            let slow: Error = from_status(slow);
            assert!(matches!(slow, RPCError::Network(_)), "{slow}");
        }
    }

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Delta(bytes::Bytes::from(vec![0u8; bytes]))),
        }
    }

    #[test]
    fn large_appends_are_split_into_consecutive_parts() {
        let prev = Some(LogId::new(CommittedLeaderId::new(1, 1), 9));
        let commit = Some(LogId::new(CommittedLeaderId::new(1, 1), 14));
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: prev,
            entries: vec![
                entry(10, 600),
                entry(11, 600),
                entry(12, 2000),
                entry(13, 10),
                entry(14, 10),
            ],
            leader_commit: commit,
        };
        let parts = split_append(rpc.clone(), 1000);
        let indexes: Vec<Vec<u64>> = parts
            .iter()
            .map(|p| p.entries.iter().map(|e| e.log_id.index).collect())
            .collect();
        assert_eq!(indexes, [vec![10], vec![11], vec![12], vec![13, 14]]);
        let mut expected_prev = prev;
        for p in &parts {
            assert_eq!(
                p.prev_log_id, expected_prev,
                "each part continues the previous one"
            );
            let last = p.entries.last().map(|e| e.log_id);
            assert!(
                p.leader_commit <= last,
                "no commit announced beyond the part"
            );
            expected_prev = last;
        }
        assert_eq!(parts.last().map(|p| p.leader_commit), Some(commit));
        assert_eq!(
            split_append(rpc.clone(), 1 << 20).len(),
            1,
            "small batches stay whole"
        );
        assert_eq!(split_append(rpc, 1 << 20)[0].entries.len(), 5);
    }
}
