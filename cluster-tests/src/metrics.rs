//! What Kubernetes and Prometheus see of a node: its `/metrics` (started with
//! `--metrics-addr 127.0.0.1:0`) and its `grpc.health.v1` answers.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Cluster;

/// The ephemeral port a node logged for `/metrics` (`--metrics-addr 127.0.0.1:0`).
pub fn metrics_addr(cluster: &Cluster, id: u64) -> String {
    let log = cluster.node(id).log_since_start();
    let marker = "metrics served at http://";
    let start = log.find(marker).expect("the node logs its metrics address") + marker.len();
    let rest = &log[start..];
    rest[..rest.find("/metrics").expect("address ends with /metrics")].to_owned()
}

/// The OpenMetrics text the node at `addr` serves (the whole HTTP response).
pub async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: raftlite\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("application/openmetrics-text"),
        "{response}"
    );
    response
}

/// The value of the series whose line starts with `series` (name and labels).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// What `grpc.health.v1` on the plaintext node at `addr` says of `service` ("": readiness).
pub async fn health(
    addr: &str,
    service: &str,
) -> anyhow::Result<tonic_health::pb::health_check_response::ServingStatus> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_millis(500))
        .timeout(std::time::Duration::from_secs(1))
        .connect()
        .await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}
