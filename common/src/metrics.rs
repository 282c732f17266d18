//! A Prometheus registry per process instance (several run in one test
//! process, so nothing is global) and the `/metrics` handler.

use axum::http::header;
use axum::response::IntoResponse;
use prometheus::{Encoder, Registry, TextEncoder};

/// A new registry with the process collector (CPU, RSS, open files) and the
/// given constant labels.
pub fn registry(process: &str, labels: &[(&str, &str)]) -> Registry {
    let mut map = std::collections::HashMap::new();
    map.insert("process".to_owned(), process.to_owned());
    for (k, v) in labels {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    let registry = Registry::new_custom(Some("turnout".into()), Some(map))
        .expect("valid registry prefix and labels");
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        let _ = registry.register(Box::new(pc));
    }
    registry
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> impl IntoResponse + use<> {
    let mut buf = Vec::with_capacity(4096);
    let encoder = TextEncoder::new();
    let _ = encoder.encode(&registry.gather(), &mut buf);
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
        buf,
    )
}

/// Registers a metric, panicking on a duplicate name (a programming error).
pub fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

/// Registers a new counter.
pub fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    register(
        registry,
        prometheus::IntCounter::new(name, help).expect("valid metric"),
    )
}

/// Registers a new gauge.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::IntGauge {
    register(
        registry,
        prometheus::IntGauge::new(name, help).expect("valid metric"),
    )
}
