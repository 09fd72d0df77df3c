//! `raftlite serve`: run one node until SIGTERM or Ctrl-C.

use crate::config::Config;
use crate::node::Node;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let archive = match &config.archive {
        // Objects read back (recovery) are bounded by this node's own limits.
        Some(a) => Some((
            crate::archive::Archive::open(&a.location)?.with_limits(
                crate::archive::format::BodyLimits::for_node(config.max_snapshot_bytes),
            ),
            a.settings.clone(),
        )),
        None => None,
    };
    let node = Node::start(config).await?;
    tracing::info!(
        node = node.id(),
        %listen,
        peer_listen = %node.config().peer_listen,
        advertise = %node.config().advertise_addr,
        data_dir = %node.config().data_dir.display(),
        node_id_from = node.config().node_id_source.as_deref().unwrap_or("configuration"),
        "raftlite node started"
    );
    let bootstrapping = node.clone();
    // Whole-cluster recovery reads a shared archive; the default one inside this node's own
    // data directory is empty whenever the node has no Raft state, so it is not consulted
    // (keeping a fresh node's bootstrap as quick as without an archive).
    let data_dir = node.config().data_dir.clone();
    let bootstrap_archive = archive
        .as_ref()
        .map(|(a, _)| a.clone())
        .filter(|a| !matches!(a.url(), crate::archive::ArchiveUrl::File { dir } if dir.starts_with(&data_dir)));
    tokio::spawn(async move {
        if let Err(e) = crate::cluster::bootstrap::bootstrap(bootstrapping, bootstrap_archive).await
        {
            tracing::error!(error = %format!("{e:#}"), "bootstrap failed");
        }
    });
    tokio::spawn(crate::cluster::join::join(node.clone()));
    if let Some((archive, settings)) = archive {
        tracing::info!(archive = %archive.url(), encrypted = archive.key().is_some(), "archiving to");
        tokio::spawn(crate::archive::archiver::run(
            node.clone(),
            archive,
            settings,
        ));
    }
    tokio::spawn(exit_when_raft_stops(node.clone()));
    tokio::spawn(crate::node::events::log_raft_events(node.clone()));
    if let Some(addr) = node.config().metrics_addr {
        tokio::spawn(crate::metrics::serve(node.clone(), addr));
    }
    if let Some(tls) = node.tls() {
        tokio::spawn(tls.watch());
    }
    if node.config().insecure {
        tracing::warn!(
            tls = node.config().tls.is_some(),
            auth = node.config().auth_file.is_some(),
            "--insecure: serving without TLS or without tokens; anyone who can reach the ports can read, change or replace the data"
        );
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut peers_stopped = stopped.clone();
    let peers = tokio::spawn(crate::peer::service::serve(
        node.clone(),
        node.config().peer_listen,
        async move { until_stopped(&mut peers_stopped).await },
    ));
    let clients = crate::grpc::serve(node.clone(), listen, stopped);
    tokio::pin!(clients);
    // Either listener failing (a port taken) stops the node; so does a signal.
    let result = tokio::select! {
        r = &mut clients => r,
        r = peers => r.unwrap_or_else(|e| Err(anyhow::anyhow!("peer listener: {e}"))),
        () = shutdown_signal() => {
            let _ = stop.send(true);
            clients.await
        }
    };
    let _ = stop.send(true);
    result?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Resolves once the node's stop signal turns true (or its sender is gone).
pub(crate) async fn until_stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A node whose Raft core stopped on a fatal error must not keep answering as if it were
/// healthy: log it and exit non-zero so the supervisor (Kubernetes, `raftlite dev`) restarts it.
async fn exit_when_raft_stops(node: Node) {
    let mut metrics = node.raft().metrics();
    loop {
        match &metrics.borrow().running_state {
            Ok(()) => {}
            // A normal shutdown (SIGTERM): `run` finishes on its own.
            Err(openraft::error::Fatal::Stopped) => return,
            Err(fatal) => {
                tracing::error!(error = %fatal, "raft stopped on a fatal error; exiting so the node is restarted");
                std::process::exit(70);
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
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
