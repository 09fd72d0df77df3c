//! Connections to peers: one lazily connected, pooled gRPC channel per peer address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use raftlite_proto::v1::peer_client::PeerClient as ProtoClient;
use tonic::transport::Channel;

use crate::raft::codec::MAX_MESSAGE_BYTES;

/// Builds (and keeps) the connections this node opens to its peers.
#[derive(Default)]
pub struct Dialer {
    channels: Mutex<HashMap<String, ProtoClient<Channel>>>,
}

impl Dialer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The peer service at `addr` ("host:port"), connected on first use and reused after.
    pub(crate) fn proto_client(&self, addr: &str) -> Result<ProtoClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let client = ProtoClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES as usize)
            .max_encoding_message_size(MAX_MESSAGE_BYTES as usize);
        channels.insert(addr.to_owned(), client.clone());
        Ok(client)
    }
}
