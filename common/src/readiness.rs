//! What a process is waiting for: each dependency (Redis, the router…)
//! says whether it works and, when not, the reply it got. `/readyz` shows
//! it; a change is logged once, not at every retry.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared by every part of one process.
#[derive(Clone, Default)]
pub struct Readiness {
    waiting: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Readiness {
    fn waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `part` works again.
    pub fn ok(&self, part: &'static str) {
        if self.waiting().remove(part).is_some() {
            tracing::info!(part, "ready again");
        }
    }

    /// `part` does not work: `why` says what is awaited and what answered.
    pub fn waiting_for(&self, part: &'static str, why: impl Into<String>) {
        let why = why.into();
        let mut w = self.waiting();
        if w.get(part) != Some(&why) {
            tracing::warn!(part, "waiting: {why}");
            w.insert(part, why);
        }
    }

    /// Ok, or everything awaited, one `part: why` per line.
    pub fn check(&self) -> Result<(), String> {
        let w = self.waiting();
        if w.is_empty() {
            return Ok(());
        }
        Err(w
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

/// The app a process serves while it starts: `/healthz` answers at once,
/// `/readyz` and everything else say what the process waits for.
pub fn startup_app(readiness: Readiness) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let starting = move || {
        let r = readiness.clone();
        async move {
            let why = r.check().err().unwrap_or_else(|| "starting".into());
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("starting; waiting for\n{why}\n"),
            )
        }
    };
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(starting.clone()))
        .fallback(starting)
        // A WebSocket upgrade refused while starting closes its connection
        // too (see `close_unless_upgraded`).
        .layer(axum::middleware::map_response(
            crate::serve::close_unless_upgraded,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_wait_and_recover() {
        let r = Readiness::default();
        assert!(r.check().is_ok());
        r.waiting_for("redis", "Redis at redis://h:1: connection refused");
        r.waiting_for("router", "no router reachable");
        let why = r.check().unwrap_err();
        assert!(
            why.contains("redis: Redis at") && why.contains("router: no router"),
            "{why}"
        );
        r.ok("redis");
        r.ok("router");
        assert!(r.check().is_ok());
    }
}
