//! Logging, and traces over OTLP/HTTP when `otlp_endpoint` is set.
//!
//! Traces follow a publish across processes: the gateway's API call, the
//! ws-node that takes it, the room's owner (relay), and the Redis call that
//! stores it. Their spans use the target [`TARGET`]: the log never shows
//! them, and with tracing off no layer wants them, so each costs one
//! disabled-callsite check. Trace context crosses internal gRPC in the
//! W3C `traceparent` header (added by [`inject`], read back by [`extract`]),
//! and a process samples a trace it starts at `otlp_sample_ratio`, one it
//! continues as its caller did.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The target of the spans that make up traces.
pub const TARGET: &str = "otel";

/// Where and how much to trace (the `otlp_*` settings).
#[derive(Debug, Clone, Default)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP URL (`http://host:4318`; `/v1/traces` is
    /// added unless the URL names its path). None: tracing is off.
    pub endpoint: Option<String>,
    /// The share of traces this process starts that are kept, 0 to 1.
    pub sample_ratio: f64,
}

/// The propagator, set when tracing is on (None: nothing is added to or
/// read from calls).
static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

/// Flushes the traces still in the exporter's queue when dropped.
pub struct Telemetry(Option<SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("traces not all sent at exit: {e}");
        }
    }
}

/// The URL spans are posted to.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Installs the global `tracing` subscriber: the log (`RUST_LOG`, default
/// `info`) and, with an endpoint, the OTLP exporter of `service`'s spans
/// (`instance`: this process's id). Keep the returned value for the life
/// of the process.
pub fn init(service: &str, instance: &str, settings: &TraceSettings) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(format!("{TARGET}=off").parse().expect("a valid directive"));
    let log = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_filter(filter);
    let provider = settings.endpoint.as_deref().and_then(|endpoint| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(endpoint))
            .build();
        match exporter {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                        settings.sample_ratio,
                    ))))
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service.to_owned())
                            .with_attribute(opentelemetry::KeyValue::new(
                                "service.instance.id",
                                instance.to_owned(),
                            ))
                            .with_attribute(opentelemetry::KeyValue::new(
                                "service.version",
                                crate::VERSION,
                            ))
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                eprintln!("{service}: OTLP exporter for {endpoint}: {e}; tracing is off");
                None
            }
        }
    });
    let registry = tracing_subscriber::registry().with(log);
    // Without an exporter, no layer at all (not an empty one): a span of
    // TARGET is then never wanted, and its callsite stays disabled.
    let _ = match &provider {
        Some(p) => {
            let _ = PROPAGATOR.set(TraceContextPropagator::new());
            let traces = tracing_opentelemetry::layer()
                .with_tracer(p.tracer(service.to_owned()))
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target(TARGET, tracing::Level::TRACE),
                );
            registry.with(traces).try_init()
        }
        None => registry.try_init(),
    };
    Telemetry(provider)
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct ReadMetadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for ReadMetadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Adds the current span's trace context to an outgoing gRPC call.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(p) = PROPAGATOR.get() {
        let cx = tracing::Span::current().context();
        p.inject_context(&cx, &mut Metadata(metadata));
    }
}

/// The caller's trace context of an incoming gRPC call, kept in the
/// request's extensions for [`continue_trace`].
#[derive(Clone)]
pub struct Remote(opentelemetry::Context);

/// Reads an incoming call's trace context (a server-side interceptor's job).
pub fn extract(req: &mut tonic::Request<()>) {
    if let Some(p) = PROPAGATOR.get() {
        let cx = p.extract(&ReadMetadata(req.metadata()));
        req.extensions_mut().insert(Remote(cx));
    }
}

/// Makes `span` a child of the caller's span, when the call carried one.
pub fn continue_trace(span: &tracing::Span, extensions: &http::Extensions) {
    if let Some(Remote(cx)) = extensions.get::<Remote>() {
        let _ = span.set_parent(cx.clone());
    }
}

/// The current span's trace context as fields, for a message that
/// carries it itself (a publish on a relay follow stream); empty when
/// tracing is off.
pub fn context_fields() -> std::collections::HashMap<String, String> {
    let mut fields = std::collections::HashMap::new();
    if let Some(p) = PROPAGATOR.get() {
        let cx = tracing::Span::current().context();
        p.inject_context(&cx, &mut fields);
    }
    fields
}

/// Makes `span` a child of the span whose context `fields` carry
/// ([`context_fields`]), if they carry one.
pub fn continue_trace_from(
    span: &tracing::Span,
    fields: &std::collections::HashMap<String, String>,
) {
    if let Some(p) = PROPAGATOR.get()
        && !fields.is_empty()
    {
        let _ = span.set_parent(p.extract(fields));
    }
}

/// Checks the `otlp_*` settings: an http:// URL (the exporter speaks plain
/// HTTP: run a collector beside the process), a ratio from 0 to 1.
pub fn check(endpoint: Option<&str>, ratio: f64) -> Result<(), crate::settings::SettingsError> {
    use crate::settings::SettingsError;
    if let Some(url) = endpoint {
        crate::settings::check_http_url("otlp_endpoint", url)?;
        if url.starts_with("https:") {
            return Err(SettingsError::invalid(
                "otlp_endpoint",
                "https is not supported: send to a collector over http (on the host, or beside the process)",
            ));
        }
    }
    if !(0.0..=1.0).contains(&ratio) {
        return Err(SettingsError::invalid(
            "otlp_sample_ratio",
            format!("{ratio} is not between 0 and 1"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(traces_url("http://c/otlp"), "http://c/otlp/v1/traces");
    }

    #[test]
    fn otlp_settings_are_checked() {
        assert!(check(None, 1.0).is_ok());
        assert!(check(Some("http://collector:4318"), 0.25).is_ok());
        for (endpoint, ratio, key) in [
            (Some("collector:4318"), 1.0, "otlp_endpoint"),
            (Some("https://collector:4318"), 1.0, "otlp_endpoint"),
            (None, 1.5, "otlp_sample_ratio"),
            (None, -0.1, "otlp_sample_ratio"),
            (None, f64::NAN, "otlp_sample_ratio"),
        ] {
            let e = check(endpoint, ratio).unwrap_err().to_string();
            assert!(e.contains(key), "{endpoint:?} {ratio}: {e}");
        }
    }
}
