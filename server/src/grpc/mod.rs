//! tonic services: translate wire types, delegate to the node, map errors. No business logic.
//!
//! The client listener serves the public `Sql` and `Admin` services, `grpc.health.v1`
//! (readiness and liveness, see [`health`]) and server reflection (listing only those). They
//! sit behind a concurrency limit, a budget of request bytes and deadlines ([`limits`]). The
//! peer-only `Peer` service has a listener of its own (`crate::peer::service::serve`).

pub mod admin;
pub mod auth;
pub mod convert;
pub mod execute_stream;
pub mod health;
pub mod limits;
pub mod sql;

use std::net::SocketAddr;

use raftlite_proto::v1::admin_server::AdminServer;
use raftlite_proto::v1::sql_server::SqlServer;

use crate::node::Node;

/// tonic refuses a message over its decode limit with OUT_OF_RANGE before our handlers run;
/// gRPC's convention (and our contract) for "request too large" is RESOURCE_EXHAUSTED.
fn too_large_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    if headers.get("grpc-status").is_some_and(|s| s == "11") {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "request%20is%20over%20the%20size%20limit%20(max_request_bytes)",
            ),
        );
    }
    response
}

/// Serves the client services of `node` on `listen` until `stop` turns true.
pub async fn serve(
    node: Node,
    listen: SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let max_request = node.config().max_request_bytes;
    // tonic's own limit sits above ours so an oversized request reaches our check and gets
    // RESOURCE_EXHAUSTED with a readable message.
    let decode_limit = max_request.saturating_mul(2).max(8 << 20);
    let (health, health_service) = tonic_health::server::health_reporter();
    // Not ready until the node is caught up; `health::report` keeps the statuses current.
    health.set_not_serving::<SqlServer<sql::SqlService>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    tokio::spawn(health::report(node.clone(), health));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(raftlite_proto::FILE_DESCRIPTOR_SET)
        .with_service_name("raftlite.v1.Sql")
        .with_service_name("raftlite.v1.Admin")
        .with_service_name("grpc.health.v1.Health")
        .build_v1()
        .context("build reflection service")?;
    let auth_file = match &node.config().auth_file {
        Some(path) => {
            let file = auth::AuthFile::load(path).context("auth file (auth_file)")?;
            tokio::spawn(file.clone().watch());
            Some(file)
        }
        None => None,
    };
    let auth = auth::AuthLayer::new(auth_file.clone());
    let limits = limits::LimitsLayer::new(
        limits::Limits {
            max_concurrent_requests: node.config().max_concurrent_requests,
            request_timeout: node.config().request_timeout,
            max_request_bytes: max_request,
        },
        Some(node.inner.metrics.clone()),
    );
    let mut stopped = stop.clone();
    let shutdown = async move { crate::serve::until_stopped(&mut stopped).await };
    let sql = SqlServer::new(sql::SqlService {
        node: node.clone(),
        max_request_bytes: max_request,
        admission: limits.admission(),
        auth: auth_file,
        // Long-lived call streams end when the node stops: the listener's graceful shutdown
        // waits for every open stream, and a client keeps its stream open as long as it lives.
        stop,
    })
    .max_decoding_message_size(decode_limit)
    .max_encoding_message_size(64 << 20);
    let admin = AdminServer::new(admin::AdminService { node: node.clone() });
    let incoming = crate::tls::incoming(
        listen,
        node.tls(),
        crate::tls::Port::Client,
        crate::tls::client_connections(node.config().max_connections),
        Some(node.database().answers().clone()),
    )
    .await
    .context("client listener (listen)")?;
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            too_large_is_resource_exhausted,
        ))
        .layer(auth)
        .layer(limits)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(sql)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .with_context(|| format!("serve gRPC on {listen}"))
}
