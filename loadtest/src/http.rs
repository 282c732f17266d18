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

/// GET a text document (a metrics page) within 3 s.
pub(crate) async fn get_text(url: &str) -> Result<String> {
    let uri: http::Uri = url.parse()?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(3), CLIENT.get(uri)).await??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "GET {url}: {status}");
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The status a GET of `url` gets within 3 s; None when nothing answered.
pub(crate) async fn get_status(url: &str) -> Option<u16> {
    let uri: http::Uri = url.parse().ok()?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(3), CLIENT.get(uri))
        .await
        .ok()?
        .ok()?;
    Some(resp.status().as_u16())
}

static POST: LazyLock<Client<HttpConnector, http_body_util::Full<bytes::Bytes>>> =
    LazyLock::new(|| {
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(8)
            .build_http()
    });

/// POSTs a JSON body; the status and the body of the answer. Gives up
/// after `timeout`.
pub(crate) async fn post_json(
    url: &str,
    body: String,
    headers: &[(&str, &str)],
    timeout: std::time::Duration,
) -> Result<(u16, bytes::Bytes)> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let run = async {
        let resp = POST.request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| anyhow::anyhow!("POST {url}: no answer within {timeout:?}"))?
}

/// `turnout-bench probe`: a 2xx answer within the timeout, or an error
/// (the binary then exits 1).
pub(crate) async fn probe(o: &crate::cli::ProbeOpts) -> Result<()> {
    let uri: http::Uri = o.url.parse()?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(o.timeout), CLIENT.get(uri))
        .await
        .map_err(|_| anyhow::anyhow!("GET {}: no answer within {} s", o.url, o.timeout))??;
    anyhow::ensure!(
        resp.status().is_success(),
        "GET {}: {}",
        o.url,
        resp.status()
    );
    Ok(())
}

/// Opens a long response (an SSE stream) on a connection of its own, from
/// the attackers' address. Ok(None)
/// when it was refused; otherwise a future that ends with the stream.
pub(crate) async fn open_stream(
    url: &str,
) -> Result<Option<impl std::future::Future<Output = ()> + use<>>> {
    let uri: http::Uri = url.parse()?;
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| anyhow::anyhow!("{url} has no host"))?;
    let stream = crate::member::tcp_from(
        crate::abuse::ATTACKER,
        uri.host().unwrap_or("127.0.0.1"),
        uri.port_u16().unwrap_or(80),
    )
    .await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", authority)
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        return Ok(None);
    }
    let mut body = resp.into_body();
    Ok(Some(async move {
        while let Some(Ok(_)) = body.frame().await {}
    }))
}
