//! Binding, serving and shutdown.

use crate::settings::ListenSpec;
use std::io;
use std::net::SocketAddr;
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
/// `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    use axum::serve::ListenerExt;
    // Small frames must leave at once: without TCP_NODELAY, Nagle's algorithm
    // and delayed ACKs add up to 40 ms to a reply.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}
