//! Backend hooks: the node asks the application's backend before it lets a
//! client connect, join a room of a namespace with `join_proxy`, or publish
//! in one with `publish_proxy`, and forwards a client's `rpc` frames to it.
//!
//! A hook is an `http(s)://` URL (POST of a JSON request, a JSON answer) or a
//! `grpc://host:port` one (service `turnout.v1.Proxy`). Either answers a
//! result or an error; an error refuses what the client asked. A call that
//! times out (`proxy_timeout`), fails, answers something unreadable or finds
//! `proxy_max_inflight` calls already under way on this node is a failure:
//! the client hears `unavailable` (retry), never a silent allow. A call
//! holds up only the frame that caused it, on its own connection.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::{HistogramVec, IntCounterVec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::Instrument;
use turnout_proto::names::{RoomName, UserId};
use turnout_proto::v1::proxy_client::ProxyClient;
use turnout_proto::v1::{ProxyReply, ProxyRequest};

/// The hooks a node may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    Connect,
    Join,
    Publish,
    Rpc,
    Refresh,
}

impl Hook {
    pub(crate) const ALL: [Hook; 5] = [
        Hook::Connect,
        Hook::Join,
        Hook::Publish,
        Hook::Rpc,
        Hook::Refresh,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Join => "join",
            Hook::Publish => "publish",
            Hook::Rpc => "rpc",
            Hook::Refresh => "refresh",
        }
    }

    /// The setting that names this hook's URL.
    pub(crate) fn setting(self) -> &'static str {
        match self {
            Hook::Connect => "proxy_connect_url",
            Hook::Join => "proxy_join_url",
            Hook::Publish => "proxy_publish_url",
            Hook::Rpc => "proxy_rpc_url",
            Hook::Refresh => "proxy_refresh_url",
        }
    }
}

/// What a hook is asked: the connection, its user, and where they apply the
/// room, the client's data (JSON) and the rpc method.
#[derive(Serialize, Debug, Default)]
pub(crate) struct Ask<'a> {
    pub(crate) conn: &'a str,
    pub(crate) user: &'a str,
    pub(crate) node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<&'a str>,
}

/// A hook's result, checked.
#[derive(Debug, Default)]
pub(crate) struct Granted {
    /// Connect: the connection's user from now on.
    pub(crate) user: Option<UserId>,
    /// Connect: rooms joined at once.
    pub(crate) rooms: Vec<RoomName>,
    /// Connect: sent in `welcome`; publish: replaces the data; rpc: the answer.
    pub(crate) data: Option<Box<RawValue>>,
    /// Connect, refresh: when the connection ends (Unix seconds) unless the
    /// refresh hook extends it.
    pub(crate) expire_at: Option<u64>,
}

/// How a hook call ended.
#[derive(Debug)]
pub(crate) enum Answer {
    Granted(Granted),
    /// The backend said no, with its message.
    Refused {
        code: u32,
        message: String,
    },
    /// No usable answer: the client hears `unavailable`.
    Failed(String),
}

/// The JSON answer of an http(s) hook.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    result: Option<ReplyResult>,
    error: Option<ReplyError>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplyResult {
    user: Option<String>,
    #[serde(default)]
    rooms: Vec<String>,
    data: Option<Box<RawValue>>,
    expire_at: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    message: String,
}

pub(crate) type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

enum Target {
    Http {
        uri: http::Uri,
        client: Box<HttpClient>,
    },
    Grpc {
        client: ProxyClient<tonic::transport::Channel>,
    },
}

/// The hook settings of one node.
pub(crate) struct HookSettings<'a> {
    pub(crate) urls: [Option<&'a str>; 5],
    pub(crate) timeout: Duration,
    pub(crate) max_inflight: usize,
    pub(crate) max_reply_bytes: usize,
    /// Most rooms a connect hook may join a connection to.
    pub(crate) max_rooms: usize,
    /// Largest `data` a result may carry (`max_frame_bytes`: it goes to
    /// clients in a frame).
    pub(crate) max_data_bytes: usize,
}

/// Counts and times every call, by hook and outcome.
#[derive(Clone)]
pub(crate) struct HookMetrics {
    pub(crate) calls: IntCounterVec,
    pub(crate) seconds: HistogramVec,
}

/// This node's hooks.
pub(crate) struct Hooks {
    node: String,
    targets: [Option<Target>; 5],
    timeout: Duration,
    inflight: Arc<Semaphore>,
    max_reply_bytes: usize,
    max_rooms: usize,
    max_data_bytes: usize,
    metrics: HookMetrics,
}

/// Why a hook setting cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("setting `{key}`: {message}")]
pub(crate) struct HookError {
    pub(crate) key: &'static str,
    pub(crate) message: String,
}

/// Checks a hook URL: `http://`, `https://` or `grpc://` with a host.
pub(crate) fn check_url(key: &'static str, url: &str) -> Result<(), HookError> {
    let bad = || HookError {
        key,
        message: format!("`{url}` is not an http://, https:// or grpc:// URL"),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https" | "grpc"), Some(_)) => Ok(()),
        _ => Err(bad()),
    }
}

impl Hooks {
    /// Builds the clients of the configured hooks (none connects before its
    /// first call).
    pub(crate) fn new(
        node: &str,
        s: &HookSettings<'_>,
        metrics: HookMetrics,
    ) -> Result<Hooks, HookError> {
        let mut http: Option<HttpClient> = None;
        let mut targets: [Option<Target>; 5] = [None, None, None, None, None];
        for (hook, url) in Hook::ALL.into_iter().zip(s.urls) {
            let Some(url) = url else { continue };
            check_url(hook.setting(), url)?;
            // At 0 from the start: a rate of failures needs the series
            // before the first one.
            for outcome in ["granted", "refused", "failed"] {
                metrics.calls.with_label_values(&[hook.as_str(), outcome]);
            }
            let uri: http::Uri = url.parse().expect("checked above");
            let target = if uri.scheme_str() == Some("grpc") {
                let authority = uri.authority().expect("checked above");
                let endpoint =
                    tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
                        .map_err(|e| HookError {
                            key: hook.setting(),
                            message: e.to_string(),
                        })?
                        .connect_timeout(s.timeout)
                        .timeout(s.timeout);
                let client = ProxyClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(s.max_reply_bytes);
                Target::Grpc { client }
            } else {
                let client = match &http {
                    Some(c) => c.clone(),
                    None => {
                        let https = s.urls.iter().flatten().any(|u| u.starts_with("https:"));
                        let c = http_client(https).map_err(|e| HookError {
                            key: hook.setting(),
                            message: e,
                        })?;
                        http = Some(c.clone());
                        c
                    }
                };
                Target::Http {
                    uri,
                    client: Box::new(client),
                }
            };
            targets[hook as usize] = Some(target);
        }
        Ok(Hooks {
            node: node.to_owned(),
            targets,
            timeout: s.timeout,
            inflight: Arc::new(Semaphore::new(s.max_inflight)),
            max_reply_bytes: s.max_reply_bytes,
            max_rooms: s.max_rooms,
            max_data_bytes: s.max_data_bytes,
            metrics,
        })
    }

    /// Whether `hook` is configured.
    pub(crate) fn has(&self, hook: Hook) -> bool {
        self.targets[hook as usize].is_some()
    }

    /// Calls `hook` (which must be configured) about `ask`.
    pub(crate) async fn call(&self, hook: Hook, mut ask: Ask<'_>) -> Answer {
        let Some(target) = &self.targets[hook as usize] else {
            return Answer::Failed(format!("no {} hook", hook.as_str()));
        };
        ask.node = &self.node;
        let started = std::time::Instant::now();
        let answer = match self.inflight.clone().try_acquire_owned() {
            Err(_) => Answer::Failed("too many hook calls under way (proxy_max_inflight)".into()),
            Ok(_permit) => {
                let span = tracing::debug_span!(
                    "hook",
                    hook = hook.as_str(),
                    conn = ask.conn,
                    room = ask.room
                );
                let call = async {
                    match target {
                        Target::Http { uri, client } => self.http(uri, client, &ask).await,
                        Target::Grpc { client } => self.grpc(hook, client.clone(), &ask).await,
                    }
                }
                .instrument(span);
                match tokio::time::timeout(self.timeout, call).await {
                    Ok(Ok(reply)) => self.check(hook, reply),
                    Ok(Err(e)) => Answer::Failed(e),
                    Err(_) => Answer::Failed(format!("no answer within {:?}", self.timeout)),
                }
            }
        };
        let outcome = match &answer {
            Answer::Granted(_) => "granted",
            Answer::Refused { .. } => "refused",
            Answer::Failed(_) => "failed",
        };
        self.metrics
            .calls
            .with_label_values(&[hook.as_str(), outcome])
            .inc();
        self.metrics
            .seconds
            .with_label_values(&[hook.as_str()])
            .observe(started.elapsed().as_secs_f64());
        match &answer {
            Answer::Failed(why) => {
                tracing::warn!(hook = hook.as_str(), conn = ask.conn, room = ?ask.room, why = %why, "hook failed; the client hears unavailable");
            }
            Answer::Refused { code, message } => {
                tracing::debug!(hook = hook.as_str(), conn = ask.conn, room = ?ask.room, code, message = %message, "hook refused");
            }
            Answer::Granted(_) => {}
        }
        answer
    }

    async fn http(
        &self,
        uri: &http::Uri,
        client: &HttpClient,
        ask: &Ask<'_>,
    ) -> Result<Reply, String> {
        let body = serde_json::to_vec(ask).map_err(|e| e.to_string())?;
        let req = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("turnout/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), self.max_reply_bytes)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("HTTP {status}: {shown}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("unreadable answer: {e}"))
    }

    async fn grpc(
        &self,
        hook: Hook,
        mut client: ProxyClient<tonic::transport::Channel>,
        ask: &Ask<'_>,
    ) -> Result<Reply, String> {
        let req = ProxyRequest {
            conn: ask.conn.to_owned(),
            user: ask.user.to_owned(),
            node: ask.node.to_owned(),
            room: ask.room.unwrap_or_default().to_owned(),
            data: ask.data.map(|d| d.get().as_bytes().to_vec()),
            method: ask.method.unwrap_or_default().to_owned(),
        };
        let req = tonic::Request::new(req);
        let reply: ProxyReply = match hook {
            Hook::Connect => client.on_connect(req).await,
            Hook::Join => client.on_join(req).await,
            Hook::Publish => client.on_publish(req).await,
            Hook::Rpc => client.on_rpc(req).await,
            Hook::Refresh => client.on_refresh(req).await,
        }
        .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))?
        .into_inner();
        let result = match reply.result {
            None => None,
            Some(r) => Some(ReplyResult {
                user: r.user,
                rooms: r.rooms,
                expire_at: r.expire_at,
                data: match r.data {
                    None => None,
                    Some(bytes) => {
                        let text = String::from_utf8(bytes)
                            .map_err(|_| "result data is not UTF-8".to_owned())?;
                        Some(
                            RawValue::from_string(text)
                                .map_err(|e| format!("result data is not JSON: {e}"))?,
                        )
                    }
                },
            }),
        };
        Ok(Reply {
            result,
            error: reply.error.map(|e| ReplyError {
                code: e.code,
                message: e.message,
            }),
        })
    }

    /// A reply the client may act on: one of result or error, with names
    /// that pass the protocol's rules.
    fn check(&self, hook: Hook, reply: Reply) -> Answer {
        match (reply.result, reply.error) {
            (_, Some(e)) => Answer::Refused {
                code: e.code,
                message: if e.message.is_empty() {
                    format!("refused by the {} hook", hook.as_str())
                } else {
                    e.message
                },
            },
            (None, None) => Answer::Failed("the answer holds neither result nor error".into()),
            (Some(r), None) => {
                if let Some(d) = &r.data
                    && d.get().len() > self.max_data_bytes
                {
                    return Answer::Failed(format!(
                        "result data of {} bytes; at most max_frame_bytes ({})",
                        d.get().len(),
                        self.max_data_bytes
                    ));
                }
                let user = match r.user.filter(|_| hook == Hook::Connect) {
                    None => None,
                    Some(u) => match UserId::parse(u) {
                        Ok(u) => Some(u),
                        Err(e) => return Answer::Failed(format!("result user {e}")),
                    },
                };
                let mut rooms = Vec::new();
                if hook == Hook::Connect {
                    if r.rooms.len() > self.max_rooms {
                        return Answer::Failed(format!(
                            "result names {} rooms; at most max_rooms_per_conn ({})",
                            r.rooms.len(),
                            self.max_rooms
                        ));
                    }
                    for room in r.rooms {
                        match RoomName::parse(room) {
                            // The personal room is the user's alone, joined
                            // by itself.
                            Ok(room) if room.personal_user().is_some() => {
                                return Answer::Failed(format!(
                                    "result room {room}: a personal room is not the hook's to give"
                                ));
                            }
                            Ok(room) => rooms.push(room),
                            Err(e) => return Answer::Failed(format!("result room {e}")),
                        }
                    }
                }
                let expire_at = r
                    .expire_at
                    .filter(|_| matches!(hook, Hook::Connect | Hook::Refresh));
                // Unix seconds: past about 2200 is a mistake, not a date.
                if expire_at.is_some_and(|e| e > 7_258_118_400) {
                    return Answer::Failed("result expire_at is not a time (Unix seconds)".into());
                }
                Answer::Granted(Granted {
                    user,
                    rooms,
                    data: r.data,
                    expire_at,
                })
            }
        }
    }
}

/// One client for every http(s) hook: pooled connections, the system's CA
/// certificates for https (none are needed for http alone).
pub(crate) fn http_client(https_needed: bool) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if https_needed && roots.is_empty() {
        return Err("no CA certificates found on this system for an https:// hook".into());
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let mut client = Client::builder(TokioExecutor::new());
    client.pool_idle_timeout(Duration::from_secs(30));
    Ok(client.build(https))
}
