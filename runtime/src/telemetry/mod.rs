//! Logs and traces. Logs: `tracing` as text or JSON lines, on stderr; a warning about a
//! message names its tenant, integration, message, trace and span ids. Traces:
//! OpenTelemetry over OTLP, configured by the standard variables alone:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; unset: nothing
//! is exported and no span is made), `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the
//! default, or `grpc`), `OTEL_SERVICE_NAME` (default `vrsky`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER(_ARG)` (see [`sampler`]) and `OTEL_BSP_*` for the batch exporter
//! (spans leave within `OTEL_BSP_SCHEDULE_DELAY`, 5 s by default).

mod export;
pub mod sampler;

use anyhow::Context as _;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; `RUST_LOG` overrides the configured filter.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Logs go to stderr; stdout is for what a command prints for people and scripts.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The installed tracer provider, flushed and shut down by [`Tracing::shutdown`].
#[derive(Debug, Default)]
pub struct Tracing(Option<SdkTracerProvider>);

/// Which OTLP transport the standard variables ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention).
    HttpProtobuf,
}

/// A standard variable's value, trace-specific one first; empty counts as unset.
fn var(specific: &str, general: &str) -> Option<String> {
    [specific, general]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

/// The protocol the variables name.
pub fn protocol_from(value: Option<&str>) -> anyhow::Result<Protocol> {
    match value.map(str::trim) {
        None | Some("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => {
            anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported; use grpc or http/protobuf")
        }
    }
}

/// Ids from the SDK's random generator, except a span id preset for a span recorded after
/// the fact (see `vrsky_actors::telemetry::with_span_id`).
#[derive(Debug, Default)]
struct PresetIds(RandomIdGenerator);

impl IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        self.0.new_trace_id()
    }
    fn new_span_id(&self) -> SpanId {
        vrsky_actors::telemetry::take_preset_span_id().unwrap_or_else(|| self.0.new_span_id())
    }
}

impl Tracing {
    /// Installs the OTLP exporter when an endpoint is configured; otherwise nothing is
    /// made or exported. Must run inside the Tokio runtime (the exporter runs on it).
    pub fn from_env() -> anyhow::Result<Tracing> {
        if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
            return Ok(Tracing(None));
        }
        let protocol =
            protocol_from(var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL").as_deref())?;
        Tracing::install(protocol, None)
    }

    /// Installs the exporter for `protocol`, sending to `endpoint` (the full URL, with
    /// `/v1/traces` for HTTP), or where the standard variables say when `None`. The
    /// sampler always comes from the variables.
    pub fn install(protocol: Protocol, endpoint: Option<String>) -> anyhow::Result<Tracing> {
        // The HTTP exporter's client uses rustls with ring, like every other client here.
        crate::app::install_crypto_provider();
        let sampler = sampler::VrskySampler::from_env_values(
            std::env::var("OTEL_TRACES_SAMPLER").ok().as_deref(),
            std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().as_deref(),
        )?;
        // Without an explicit endpoint the exporter reads the endpoint, headers and
        // timeout variables itself, with the specification's rules (`/v1/traces` appended
        // to a generic HTTP endpoint).
        let exporter = match protocol {
            Protocol::Grpc => {
                let b = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                match endpoint {
                    Some(e) => b.with_endpoint(e).build(),
                    None => b.build(),
                }
            }
            Protocol::HttpProtobuf => {
                let b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_http_client(reqwest::Client::new());
                match endpoint {
                    Some(e) => b.with_endpoint(e).build(),
                    None => b.build(),
                }
            }
        }
        .context("building the OTLP span exporter")?;
        let mut resource = Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
            resource = resource.with_service_name("vrsky");
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        // The SDK's batch thread queues spans without a wake per span; each export runs
        // on this runtime (see `export`).
        let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(export::OnRuntime::new(exporter)).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(sampler)
            .with_id_generator(PresetIds::default())
            .with_resource(resource)
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        vrsky_actors::telemetry::set_enabled(true);
        tracing::info!(?protocol, "exporting traces over OTLP");
        Ok(Tracing(Some(provider)))
    }

    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Exports what is still batched and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.0 else { return };
        vrsky_actors::telemetry::set_enabled(false);
        // The provider's shutdown blocks until the batch thread has exported, and the
        // export runs on this runtime, so the wait happens off its worker threads.
        let done = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(std::time::Duration::from_secs(10), done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "trace exporter shutdown failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter shutdown panicked"),
            Err(_) => tracing::warn!("trace exporter did not shut down within 10 s"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn protocols() {
        assert_eq!(protocol_from(None).unwrap(), Protocol::HttpProtobuf);
        assert_eq!(protocol_from(Some("grpc")).unwrap(), Protocol::Grpc);
        assert_eq!(protocol_from(Some("http/protobuf")).unwrap(), Protocol::HttpProtobuf);
        let e = protocol_from(Some("http/json")).unwrap_err().to_string();
        assert!(e.contains("http/json") && e.contains("grpc or http/protobuf"), "{e}");
    }
}
