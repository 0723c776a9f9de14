//! Logs and traces: the `tracing` subscriber a node runs with (text or JSON
//! lines on stderr, and spans exported over OTLP/gRPC when
//! `--otlp-endpoint` is set), and the W3C trace context (`traceparent`)
//! carried from a client, across a mesh hop and on to the instance.
//!
//! Spans exported: `mesh.request` (one per request per node it crosses),
//! `api` (one per public API call), `raft.proposal` (one per write this node
//! proposes) and `instance.start` with its phases (`pull`, `create`,
//! `start`).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

impl LogFormat {
    /// `text` or `json`; the error names the rule.
    pub fn parse(v: &str) -> Result<Self, String> {
        match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not text or json")),
        }
    }
}

/// Checks an OTLP/gRPC endpoint: `http://HOST:PORT` or `https://HOST:PORT`.
pub fn check_endpoint(v: &str) -> Result<(), String> {
    let uri: http::Uri = v
        .parse()
        .map_err(|_| format!("{v:?} is not a URL (http://HOST:4317)"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(a)) if a.port_u16().is_some() => Ok(()),
        _ => Err(format!(
            "{v:?} must be http://HOST:PORT or https://HOST:PORT"
        )),
    }
}

/// Whether spans leave the node: without an exporter the trace context is
/// not read or written, so requests pay nothing for it.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The installed subscriber; dropping it flushes the spans not yet sent.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("rouse-node: flushing traces: {e}");
            }
        }
    }
}

/// Installs the node's subscriber. With `otlp`, must run inside the Tokio
/// runtime (the exporter's gRPC client lives on it).
pub fn init(
    filter: &str,
    format: LogFormat,
    otlp: Option<&str>,
    node: u64,
) -> anyhow::Result<Tracing> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let (provider, spans) = match otlp {
        None => (None, None),
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("rouse-node")
                .with_attribute(opentelemetry::KeyValue::new("rouse.node", node as i64))
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("rouse"))
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.is_span() && EXPORTED.contains(&m.name())
                }));
            EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
            (Some(provider), Some(layer))
        }
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()?;
    Ok(Tracing { provider })
}

/// The spans sent over OTLP (the rest only name log lines' context).
const EXPORTED: &[&str] = &[
    "mesh.request",
    "api",
    "raft.proposal",
    "instance.start",
    "pull",
    "create",
    "start",
];

/// Makes `span` a child of the trace a request's `traceparent` names (a
/// client's, or the previous node's across a hop). No-op without one, or
/// when traces are off.
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}

/// Writes `span`'s trace context into `headers` for the next hop (another
/// node's mesh, or the instance). No-op when traces are off.
pub fn carry(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_with_the_rule() {
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert!(LogFormat::parse("yaml")
            .unwrap_err()
            .contains("text or json"));
        assert!(check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint("https://otel.example:4317").is_ok());
        assert!(check_endpoint("127.0.0.1:4317").is_err());
        assert!(check_endpoint("http://otel.example").is_err());
        assert!(check_endpoint("ftp://x:1").is_err());
    }
}
