//! t96: OTLP traces. The nodes export spans to a tiny OTLP/gRPC receiver running in this test
//! (the real `opentelemetry.proto.collector.trace.v1.TraceService`, on loopback); a write sent
//! to a follower must come out as ONE trace spanning both nodes: `sql.execute` and `forward`
//! on the follower, `peer.forward_execute`, `write.batch`, `raft.propose` and `raft.apply` on
//! the leader, each the child of the one before. The operator's log lines (`became leader`,
//! `follower connected`, `follower caught up`, `following leader`) appear once per event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_tests::{init_tracing, wait_until, Cluster, ClusterOptions};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use tracing::info;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct SpanRecord {
    /// `service.instance.id` of the exporting process (`node-N`).
    instance: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for resource_spans in request.into_inner().resource_spans {
            let instance = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.instance.id")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(SpanRecord {
                        instance: instance.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The chain of a forwarded write, in order, with the node that must export each span.
const CHAIN: [(&str, Role); 6] = [
    ("sql.execute", Role::Follower),
    ("forward", Role::Follower),
    ("peer.forward_execute", Role::Leader),
    ("write.batch", Role::Leader),
    ("raft.propose", Role::Leader),
    ("raft.apply", Role::Leader),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Follower,
    Leader,
}

/// The spans of the forwarded write's trace, in chain order, once all have arrived.
fn find_chain(spans: &[SpanRecord], follower: u64, leader: u64) -> anyhow::Result<Vec<SpanRecord>> {
    let instance = |role| match role {
        Role::Follower => format!("node-{follower}"),
        Role::Leader => format!("node-{leader}"),
    };
    let root = spans
        .iter()
        .find(|s| s.name == "sql.execute" && s.instance == instance(Role::Follower))
        .ok_or_else(|| anyhow::anyhow!("no sql.execute span from the follower yet"))?;
    let trace: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    let by_id: HashMap<&[u8], &SpanRecord> =
        trace.iter().map(|s| (s.span_id.as_slice(), *s)).collect();
    let mut chain = Vec::new();
    for (name, role) in CHAIN {
        let span = trace
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| anyhow::anyhow!("the trace has no {name} span yet: {trace:?}"))?;
        anyhow::ensure!(
            span.instance == instance(role),
            "{name} was exported by {} instead of {}",
            span.instance,
            instance(role)
        );
        if let Some(previous) = chain.last() {
            let previous: &SpanRecord = previous;
            let parent = by_id.get(span.parent_span_id.as_slice());
            anyhow::ensure!(
                parent.is_some_and(|p| p.span_id == previous.span_id),
                "{name}'s parent is {:?}, not {}",
                parent.map(|p| &p.name),
                previous.name
            );
        }
        chain.push((*span).clone());
    }
    Ok(chain)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_a_forwarded_write_through_the_leader() {
    init_tracing();

    info!("phase 1: an OTLP receiver on loopback, and three nodes exporting to it");
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let options = ClusterOptions {
        extra_args: vec!["--otlp-endpoint".into(), endpoint.clone()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).expect("start the cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    let follower = *cluster
        .ids()
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");
    cluster
        .client_for(leader)
        .exec("CREATE TABLE traced (v TEXT)", Vec::<String>::new())
        .await
        .expect("create the table on the leader");

    info!(
        follower,
        leader, "phase 2: a write sent to a follower, which forwards it"
    );
    cluster
        .client_for(follower)
        .exec("INSERT INTO traced VALUES (?1)", ["through the follower"])
        .await
        .expect("the forwarded write");

    info!("phase 3: one trace holds the whole chain, across both nodes");
    // The exporters batch spans (every 5 s by default); wait for them to arrive.
    let chain = wait_until(
        "the forwarded write's trace",
        Duration::from_secs(30),
        || {
            let spans = receiver
                .spans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            async move { find_chain(&spans, follower, leader).map(Some) }
        },
    )
    .await
    .expect("one trace from the follower through the leader");
    for span in &chain {
        info!(name = %span.name, node = %span.instance, "span");
    }
    assert!(chain.iter().all(|s| s.trace_id == chain[0].trace_id));

    info!("phase 4: the operator's log lines, once per event");
    let term = cluster.status_of(leader).await.expect("status").term;
    let leader_log = cluster.node(leader).log_since_start();
    let became = format!("became leader term={term}");
    assert_eq!(leader_log.matches(&became).count(), 1, "{became}");
    let this_term = &leader_log[leader_log.find(&became).expect("logged")..];
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        for event in ["follower connected", "follower caught up"] {
            let line = format!("{event} follower={id}");
            assert_eq!(this_term.matches(&line).count(), 1, "{line}");
        }
        let follower_log = cluster.node(id).log_since_start();
        let following = format!("following leader leader={leader} term={term}");
        assert_eq!(follower_log.matches(&following).count(), 1, "{following}");
    }
    server.abort();
}
