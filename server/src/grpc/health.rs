//! `grpc.health.v1` statuses for the Kubernetes probes.
//!
//! - `""` (the whole server) and `raftlite.v1.Sql`: SERVING only while the node is caught up
//!   ([`Node::readiness`]) — the readiness probe. A pod that is catching up, has no leader or
//!   is cut off from it gets no client traffic and does not count as available for the
//!   PodDisruptionBudget.
//! - `raftlite.v1.Admin`: SERVING while the process answers — the liveness probe. A node that
//!   is merely behind must not be restarted (that would only put it further behind).

use std::time::Duration;

use raftlite_proto::v1::admin_server::AdminServer;
use raftlite_proto::v1::sql_server::SqlServer;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::{admin::AdminService, sql::SqlService};
use crate::node::status::Readiness;
use crate::node::Node;

/// How often readiness is re-evaluated (it also depends on time: "heard from the leader").
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Keeps the health statuses in step with the node until its Raft core stops.
pub async fn report(node: Node, reporter: HealthReporter) {
    reporter.set_serving::<AdminServer<AdminService>>().await;
    let mut metrics = node.raft().metrics();
    let mut last: Option<bool> = None;
    loop {
        let readiness = node.readiness();
        let ready = readiness.is_ready();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(
                    <SqlServer<SqlService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            match &readiness {
                Readiness::Ready => tracing::info!("ready: caught up with the leader"),
                Readiness::NotReady(why) => tracing::info!(reason = %why, "not ready"),
            }
            last = Some(ready);
        }
        if metrics.borrow().running_state.is_err() {
            return;
        }
        // At most one look per `crate::node::METRICS_GAP`: openraft's metrics change several
        // times per write, and a readiness a few milliseconds late changes nothing.
        tokio::time::sleep(crate::node::METRICS_GAP).await;
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}
