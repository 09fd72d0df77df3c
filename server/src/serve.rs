//! `raftlite serve`: run one node until SIGTERM or Ctrl-C.

use crate::config::Config;
use crate::node::Node;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let node = Node::start(config).await?;
    tracing::info!(
        node = node.id(),
        %listen,
        advertise = %node.config().advertise_addr,
        data_dir = %node.config().data_dir.display(),
        "raftlite node started"
    );
    let bootstrapping = node.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::cluster::bootstrap::bootstrap(bootstrapping).await {
            tracing::error!(error = %e, "bootstrap failed");
        }
    });
    crate::grpc::serve(node.clone(), listen, shutdown_signal()).await?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
