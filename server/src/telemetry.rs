//! Logs and traces of a process.
//!
//! Logs go to stderr (text, or JSON for collectors). With an OTLP endpoint
//! (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`), the same `tracing` spans are exported
//! as OpenTelemetry traces over OTLP/gRPC (`tracing-opentelemetry`, batched on a background
//! thread; a collector that is down costs dropped spans, never a blocked request).
//!
//! One trace follows a write across nodes: the follower that received it injects the W3C
//! trace context (`traceparent`) of its `forward` span into the gRPC metadata of
//! `Peer.ForwardExecute`, and the leader's `peer.forward_execute` span takes it as parent.
//! Spans of a write: `sql.execute` (receiving node) → `forward` → `peer.forward_execute` →
//! `write.batch` (group commit; the first request's trace is the parent, the others are
//! linked) → `raft.propose` → `raft.apply` (all on the leader).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes what is buffered.
#[must_use = "dropping it does not flush the buffered spans: call shutdown()"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // Blocks until the batch thread has exported: keep it off the async workers.
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                eprintln!("warning: flushing traces at exit failed: {e}");
            }
        }
    }
}

/// openraft's chatter, capped at warn unless asked for. Its responder warns whenever nobody
/// waits for a proposal's answer, and the write path stops waiting once the state machine
/// announced the commit (`node::write_path`): one warning per write, saying nothing.
const QUIET: &str = "openraft=warn,openraft::raft::responder=error";

/// Installs the global subscriber: logs filtered by `level` (openraft's chatter capped at
/// warn unless asked for), and OTLP export of spans when `otlp_endpoint` is set. Call it
/// inside the Tokio runtime (the exporter's gRPC channel lives there).
pub fn init(
    level: &str,
    json: bool,
    otlp_endpoint: Option<&str>,
    service_instance: Option<String>,
) -> anyhow::Result<Telemetry> {
    use anyhow::Context;
    let filter = EnvFilter::try_new(format!("{QUIET},{level}"))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    // Colour only on a terminal: container logs (kubectl logs, docker logs) stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    });
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    let provider = match otlp_endpoint {
        None => None,
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .with_context(|| format!("build the OTLP exporter for {endpoint}"))?;
            let mut resource = opentelemetry_sdk::Resource::builder().with_service_name("raftlite");
            if let Some(instance) = service_instance {
                resource = resource.with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    instance,
                ));
            }
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.build())
                    .build(),
            )
        }
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("raftlite")));
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel)
        .try_init()
        .context("install the log subscriber")?;
    Ok(Telemetry { provider })
}

/// Writes the W3C trace context of the current span into outgoing gRPC metadata (nothing
/// when no trace is being exported).
pub fn inject_current(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// Makes `span` a child of the trace context carried by incoming gRPC metadata, if any.
pub fn continue_trace(span: &tracing::Span, metadata: &MetadataMap) {
    let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    if opentelemetry::trace::TraceContextExt::has_active_span(&parent) {
        let _ = span.set_parent(parent);
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_round_trips_through_metadata() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
        let span_context = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            TraceFlags::SAMPLED,
            true,
            Default::default(),
        );
        let context = opentelemetry::Context::new().with_remote_span_context(span_context);
        let mut metadata = MetadataMap::new();
        TraceContextPropagator::new()
            .inject_context(&context, &mut MetadataInjector(&mut metadata));
        assert_eq!(
            metadata.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let back = TraceContextPropagator::new().extract(&MetadataExtractor(&metadata));
        assert_eq!(
            back.span().span_context().trace_id(),
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128)
        );
    }
}
