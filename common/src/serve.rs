//! Binding, serving and shutdown.

use crate::settings::{ListenSpec, SettingsError};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Binds the first free port of `spec` (port 0: any free port).
pub async fn bind(spec: &ListenSpec) -> io::Result<TcpListener> {
    let mut last = None;
    for port in spec.ports.clone() {
        match TcpListener::bind(SocketAddr::new(spec.ip, port)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "empty port range")))
}

/// Makes a TCP connection notice a peer that vanished (a cut, a blackholed
/// route, a host that froze): keep-alive probes after 5 s of silence, every
/// 2 s, and a user timeout of 10 s for data in flight, which keep-alive
/// does not cover.
pub fn keep_alive(stream: &tokio::net::TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(5))
        .with_interval(std::time::Duration::from_secs(2))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&ka);
    #[cfg(target_os = "linux")]
    let _ = sock.set_tcp_user_timeout(Some(std::time::Duration::from_secs(10)));
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A token cancelled on SIGINT/SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}

/// What every connection to a process may cost in time (all settings).
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A new connection must send a whole request within this, whatever it
    /// sent before (nothing, half a request line, part of an HTTP/2
    /// preface): protocol detection does not wait forever.
    pub handshake: std::time::Duration,
    /// A connection with no request under way this long is closed.
    pub idle: std::time::Duration,
    /// HTTP/2 keep-alive pings: interval, and how long an answer may take.
    pub http2_keepalive: std::time::Duration,
}

/// Requests of one connection: how many are under way (a streaming response
/// counts until its body ends) and when the last one ended.
#[derive(Default)]
struct Activity {
    requests: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
    /// When the connection was last busy, ms after it was accepted.
    last: std::sync::atomic::AtomicU64,
}

/// A response body that counts its request as under way until it ends.
struct Counted {
    inner: axum::body::Body,
    _busy: Busy,
}

struct Busy(std::sync::Arc<Activity>, tokio::time::Instant);

impl Drop for Busy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.0
            .last
            .store(self.1.elapsed().as_millis() as u64, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl hyper::body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves HTTP/1.1 (with upgrades) and HTTP/2 (gRPC) on one listener until
/// `shutdown` is cancelled. Each connection is bounded in time by `limits`:
/// a whole first request within `handshake` (slow loris, silent sockets,
/// half a preface), nothing under way for `idle` at most, HTTP/2 peers that
/// answer keep-alive pings. Each request goes to the app `apps` holds when
/// it arrives, so a process serves its start-up app (health, readiness)
/// until its real one is built.
pub async fn serve(
    listener: TcpListener,
    apps: tokio::sync::watch::Receiver<axum::Router>,
    shutdown: CancellationToken,
    limits: ServeLimits,
) -> io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    use std::sync::atomic::Ordering;
    use tower::ServiceExt;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.http2_keepalive))
        .keep_alive_timeout(limits.http2_keepalive);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of files or similar: say so, back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Small frames must leave at once: without TCP_NODELAY, Nagle's
        // algorithm and delayed ACKs add up to 40 ms to a reply.
        let _ = tcp.set_nodelay(true);
        // A client whose host vanished does not hold its socket forever.
        keep_alive(&tcp);
        let apps = apps.clone();
        let accepted = tokio::time::Instant::now();
        let activity = std::sync::Arc::new(Activity::default());
        let act = activity.clone();
        let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            act.requests.fetch_add(1, Ordering::AcqRel);
            act.in_flight.fetch_add(1, Ordering::AcqRel);
            let busy = Busy(act.clone(), accepted);
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = apps.borrow().clone();
            async move {
                let resp = app.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(
                    resp.map(|inner| axum::body::Body::new(Counted { inner, _busy: busy })),
                )
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            tokio::pin!(conn);
            let mut tick = tokio::time::interval(limits.handshake.min(limits.idle) / 4);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    r = &mut conn => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = tick.tick() => {
                        let age = accepted.elapsed();
                        if activity.requests.load(Ordering::Acquire) == 0 {
                            if age >= limits.handshake {
                                tracing::debug!(%peer, "no request within handshake_timeout: closed");
                                return;
                            }
                            continue;
                        }
                        let last = std::time::Duration::from_millis(activity.last.load(Ordering::Acquire));
                        if activity.in_flight.load(Ordering::Acquire) == 0
                            && age.saturating_sub(last) >= limits.idle
                        {
                            tracing::debug!(%peer, "idle past http_idle_timeout: closed");
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    // Requests in flight finish; upgraded connections (WebSockets) are the
    // process's own to close.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// The demo page: one self-contained file, no external assets. Served by
/// the gateway, and by a `local` ws-node (a complete single-server chat).
/// For `/ws`: a refused upgrade closes its connection (`Connection:
/// close`). The connection was asked for a WebSocket; kept alive for more
/// HTTP, it leaves a browser's (or Node's) WebSocket waiting for its close
/// before it reports the failure, and the client's reconnect waits with it.
pub async fn close_unless_upgraded(mut resp: axum::response::Response) -> axum::response::Response {
    if resp.status() != axum::http::StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

pub async fn demo_page() -> impl axum::response::IntoResponse {
    (
        [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../assets/demo.html"),
    )
}

/// turnout-client (clients/js, compiled), which the demo page runs on:
/// served beside it, so a page needs nothing else.
pub async fn client_library() -> impl axum::response::IntoResponse {
    (
        [
            (http::header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../clients/js/dist/index.js"),
    )
}

/// Why a process could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Settings(#[from] SettingsError),
}

/// What [`main`] needs of a process's settings.
pub trait Served {
    fn listen(&self) -> &ListenSpec;
    fn node_id(&self) -> Option<&str>;
    fn traces(&self) -> crate::telemetry::TraceSettings;
}

/// Implements [`Served`] for a process's settings struct, from its
/// `listen`, `node_id`, `otlp_endpoint` and `otlp_sample_ratio` fields.
#[macro_export]
macro_rules! impl_served {
    ($settings:ty) => {
        impl $crate::serve::Served for $settings {
            fn listen(&self) -> &$crate::settings::ListenSpec {
                &self.listen
            }

            fn node_id(&self) -> Option<&str> {
                self.node_id.as_deref()
            }

            fn traces(&self) -> $crate::telemetry::TraceSettings {
                $crate::telemetry::TraceSettings {
                    endpoint: self.otlp_endpoint.clone(),
                    sample_ratio: self.otlp_sample_ratio,
                }
            }
        }
    };
}

/// The body of every binary's `main`: settings, logging (and tracing),
/// bind, run until SIGINT/SIGTERM, then send the traces still queued. A
/// settings problem exits with code 2 and a message naming the setting.
pub async fn main<S, F, Fut>(name: &str, settings: Result<S, SettingsError>, run: F) -> ExitCode
where
    S: Served,
    F: FnOnce(TcpListener, S, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), RunError>>,
{
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let instance = settings
        .node_id()
        .map_or_else(crate::settings::host_name, str::to_owned);
    let _telemetry = crate::telemetry::init(name, &instance, &settings.traces());
    let listener = match bind(settings.listen()).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "{name}: setting `listen`: cannot bind {}: {e}",
                settings.listen()
            );
            return ExitCode::from(2);
        }
    };
    match run(listener, settings, shutdown_on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Settings(e)) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
