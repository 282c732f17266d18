//! The few HTTP calls the bench makes (route, cluster, history), over one
//! pooled keep-alive client: thousands of clients asking `/api/route` reuse
//! a few connections instead of leaving a socket in TIME_WAIT each.

use anyhow::Result;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::LazyLock;

static CLIENT: LazyLock<Client<HttpConnector, http_body_util::Empty<bytes::Bytes>>> =
    LazyLock::new(|| {
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build_http()
    });

/// GET a JSON document.
pub(crate) async fn get_json(url: &str) -> Result<serde_json::Value> {
    let uri: http::Uri = url.parse()?;
    let resp = CLIENT.get(uri).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "GET {url}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(serde_json::from_slice(&body)?)
}
