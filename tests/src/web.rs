//! HTTP calls, Server-Sent Events and `/metrics` reads.

use crate::*;
use anyhow::{Context, Result, bail};
use tokio::net::TcpStream;

/// GET returning (status, JSON body).
pub async fn http_get_json(url: &str) -> Result<(u16, serde_json::Value)> {
    let (status, body) = http("GET", url, None, &[]).await?;
    Ok((
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    ))
}

/// An HTTP/1.1 connection to `url`'s host, and a request to its path with
/// `method`, `host` and `headers` set.
async fn http1<B>(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(
    hyper::client::conn::http1::SendRequest<B>,
    http::request::Builder,
)>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().context("url without host")?.to_string();
    let stream = TcpStream::connect(&authority).await?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", authority);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok((sender, req))
}

/// A minimal HTTP/1.1 client call with hyper.
pub async fn http(
    method: &str,
    url: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>)> {
    use http_body_util::BodyExt;
    let (mut sender, req) = http1(method, url, headers).await?;
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(b)).boxed())?,
        None => req.body(
            http_body_util::Empty::<bytes::Bytes>::new()
                .map_err(|e| match e {})
                .boxed(),
        )?,
    };
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}

/// One Server-Sent Event, or a comment line (`comment` set, e.g. keep-alives).
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub comment: Option<String>,
}

/// An open SSE response: status, and events as they arrive.
pub struct Sse {
    pub status: u16,
    pub events: tokio::sync::mpsc::Receiver<SseEvent>,
}

impl Sse {
    /// Opens `GET url` and parses the event stream in a task.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Sse> {
        use http_body_util::BodyExt;
        let (mut sender, req) = http1("GET", url, headers).await?;
        let req = req.header("accept", "text/event-stream");
        let resp = sender
            .send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new())?)
            .await?;
        let status = resp.status().as_u16();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            let mut buf = String::new();
            let mut ev = SseEvent::default();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(nl) = buf.find('\n') {
                    let line: String = buf.drain(..=nl).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if tx.send(std::mem::take(&mut ev)).await.is_err() {
                            return;
                        }
                    } else if let Some(c) = line.strip_prefix(':') {
                        let comment = SseEvent {
                            comment: Some(c.trim().to_owned()),
                            ..Default::default()
                        };
                        if tx.send(comment).await.is_err() {
                            return;
                        }
                    } else {
                        let (field, value) = line.split_once(':').unwrap_or((line, ""));
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "id" => ev.id = Some(value.to_owned()),
                            "event" => ev.event = Some(value.to_owned()),
                            "data" => {
                                if !ev.data.is_empty() {
                                    ev.data.push('\n');
                                }
                                ev.data.push_str(value)
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
        Ok(Sse { status, events: rx })
    }

    /// The next event that is not a comment.
    pub async fn next(&mut self) -> Result<SseEvent> {
        loop {
            let ev = tokio::time::timeout(DEADLINE, self.events.recv())
                .await
                .context("no SSE event within the deadline")?
                .context("SSE stream ended")?;
            if ev.comment.is_none() {
                return Ok(ev);
            }
        }
    }

    /// Seqs (`id:` is `<seq>:<epoch>`) of message events until one with seq `last`.
    pub async fn seqs_until(&mut self, last: u64) -> Result<Vec<u64>> {
        let mut seqs = Vec::new();
        loop {
            let ev = self.next().await?;
            if ev.event.is_some() {
                bail!("unexpected event {ev:?}");
            }
            let id = ev.id.as_deref().context("message without id")?;
            let seq: u64 = id.split(':').next().unwrap_or(id).parse()?;
            seqs.push(seq);
            if seq >= last {
                return Ok(seqs);
            }
        }
    }
}

/// The value of a counter or gauge on a process's `/metrics`, its first
/// series (0 when it is not there yet).
pub async fn metric(p: &Proc, name: &str) -> Result<f64> {
    metric_at(&p.http(), name).await
}

/// [`metric`] of the process serving `base` (`http://host:port`).
pub async fn metric_at(base: &str, name: &str) -> Result<f64> {
    let (_, body) = http("GET", &format!("{base}/metrics"), None, &[]).await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0))
}

/// Serves `app` (a stand-in backend, a receiver) on a free port of
/// 127.0.0.1 until the returned token is cancelled; returns its base URL.
pub async fn serve_app(app: axum::Router) -> Result<(String, tokio_util::sync::CancellationToken)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Ok((base, stop))
}
