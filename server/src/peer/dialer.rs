//! Connections to peers: one lazily connected, pooled gRPC channel per peer address; with TLS,
//! over mutual TLS (`crate::tls::dial`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftlite_proto::v1::peer_client::PeerClient as ProtoClient;
use tonic::transport::Channel;

use super::PEER_MESSAGE_LIMIT;
use crate::tls::Tls;

/// Builds (and keeps) the connections this node opens to its peers.
pub struct Dialer {
    channels: Mutex<HashMap<String, ProtoClient<Channel>>>,
    /// With TLS, peers are dialed with this node's certificate and only the cluster CA trusted.
    tls: Option<Arc<Tls>>,
}

impl Dialer {
    pub fn new(tls: Option<Arc<Tls>>) -> Self {
        Dialer {
            channels: Mutex::new(HashMap::new()),
            tls,
        }
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
        let channel = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => {
                let tls = tls.clone();
                endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: http::Uri| {
                    let tls = tls.clone();
                    async move { crate::tls::dial(&tls, &uri).await }
                }))
            }
        };
        let client = ProtoClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_LIMIT)
            .max_encoding_message_size(PEER_MESSAGE_LIMIT);
        channels.insert(addr.to_owned(), client.clone());
        Ok(client)
    }
}
