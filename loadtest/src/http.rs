//! The few HTTP calls the bench makes (route, cluster, history).

use anyhow::{Context, Result};
use http_body_util::BodyExt;
use tokio::net::TcpStream;

/// GET a JSON document.
pub(crate) async fn get_json(url: &str) -> Result<serde_json::Value> {
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().context("URL without host")?.to_string();
    let stream = TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", authority)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "GET {url}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(serde_json::from_slice(&body)?)
}
