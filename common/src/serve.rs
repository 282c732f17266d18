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

/// Serves HTTP/1.1 (with upgrades) and HTTP/2 (gRPC) on one listener until
/// `shutdown` is cancelled. A client must send its request headers within
/// `handshake_timeout` or the connection is closed (slow-loris guard).
/// Each request goes to the app `apps` holds when it arrives, so a process
/// serves its start-up app (health, readiness) until its real one is built.
pub async fn serve(
    listener: TcpListener,
    apps: tokio::sync::watch::Receiver<axum::Router>,
    shutdown: CancellationToken,
    handshake_timeout: std::time::Duration,
) -> io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
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
        let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = apps.borrow().clone();
            app.oneshot(req)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
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
pub async fn demo_page() -> impl axum::response::IntoResponse {
    (
        [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../assets/demo.html"),
    )
}

/// Serves one fixed app (see [`serve`]).
pub async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
    handshake_timeout: std::time::Duration,
) -> io::Result<()> {
    let (_keep, apps) = tokio::sync::watch::channel(app);
    serve(listener, apps, shutdown, handshake_timeout).await
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

/// The body of every binary's `main`: settings, logging, bind, run until
/// SIGINT/SIGTERM. A settings problem exits with code 2 and a message naming
/// the setting.
pub async fn main<S, F, Fut>(
    name: &str,
    settings: Result<S, SettingsError>,
    listen: impl Fn(&S) -> &ListenSpec,
    run: F,
) -> ExitCode
where
    F: FnOnce(TcpListener, S, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), RunError>>,
{
    crate::init_logging();
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match bind(listen(&settings)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "{name}: setting `listen`: cannot bind {}: {e}",
                listen(&settings)
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
