//! The backend in the loop: connect, join, publish and rpc hooks, asked over
//! HTTP (a real HTTP server here) and gRPC (a real `turnout.v1.Proxy` server
//! generated from proto/), in every strategy, through refusals, timeouts, a
//! full node, and a backend that goes away and comes back.

use anyhow::{Result, bail};
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use turnout_common::namespaces::NamespaceSettings;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_proto::v1::proxy_server::{Proxy, ProxyServer};
use turnout_proto::v1::{ProxyError, ProxyReply, ProxyRequest, ProxyResult};
use turnout_tests::*;

/// What the backend decides, whichever way it is asked.
#[derive(Default)]
struct Logic {
    /// Every call: (hook, user, room, data).
    calls: Mutex<Vec<(String, String, String, Value)>>,
    /// Told when a call the backend is slow to answer has arrived.
    slow_arrived: Notify,
}

type Decision = Result<(Option<String>, Vec<String>, Option<Value>), (u32, String)>;

impl Logic {
    async fn decide(
        &self,
        hook: &str,
        user: &str,
        room: &str,
        data: Value,
        method: &str,
    ) -> Decision {
        self.calls.lock().unwrap().push((
            hook.to_owned(),
            user.to_owned(),
            room.to_owned(),
            data.clone(),
        ));
        let slow = data == json!("slow") || method == "slow";
        if slow {
            self.slow_arrived.notify_one();
            // The backend takes its time: longer than any proxy_timeout here.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        match hook {
            "connect" => match user {
                "eve" => Err((4403, "eve is banned".into())),
                "ben" => Ok((
                    Some("ben-checked".into()),
                    vec!["auto:ben".into()],
                    Some(json!({"plan": "pro"})),
                )),
                _ => Ok((None, vec![], None)),
            },
            "join" if room.ends_with(":secret") => Err((403, "staff only".into())),
            "join" => Ok((None, vec![], None)),
            "publish" => {
                if data.as_str().is_some_and(|s| s.contains("badword")) {
                    return Err((1, "not in this room".into()));
                }
                Ok((None, vec![], Some(json!({"said": data, "checked": true}))))
            }
            "rpc" => match method {
                "echo" => Ok((None, vec![], Some(data))),
                "whoami" => Ok((None, vec![], Some(json!(user)))),
                _ => Err((7, format!("no method {method}"))),
            },
            _ => Err((0, "unknown hook".into())),
        }
    }

    fn count(&self, hook: &str, data: &Value) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.0 == hook && &c.3 == data).count()
    }
}

/// The backend over HTTP: POST /<hook> with turnout's JSON.
struct HttpBackend {
    port: u16,
    stop: CancellationToken,
}

impl HttpBackend {
    async fn start(logic: Arc<Logic>, port: u16) -> Result<HttpBackend> {
        async fn hook(
            State((logic, hook)): State<(Arc<Logic>, &'static str)>,
            Json(req): Json<Value>,
        ) -> Json<Value> {
            let s = |k: &str| req[k].as_str().unwrap_or_default().to_owned();
            let decision = logic
                .decide(
                    hook,
                    &s("user"),
                    &s("room"),
                    req["data"].clone(),
                    &s("method"),
                )
                .await;
            Json(match decision {
                Ok((user, rooms, data)) => {
                    let mut result = json!({});
                    if let Some(u) = user {
                        result["user"] = json!(u);
                    }
                    if !rooms.is_empty() {
                        result["rooms"] = json!(rooms);
                    }
                    if let Some(d) = data {
                        result["data"] = d;
                    }
                    json!({"result": result})
                }
                Err((code, message)) => json!({"error": {"code": code, "message": message}}),
            })
        }
        let mut app = axum::Router::new();
        for name in ["connect", "join", "publish", "rpc"] {
            app = app.route(
                &format!("/{name}"),
                axum::routing::post(hook).with_state((logic.clone(), name)),
            );
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(HttpBackend { port, stop })
    }

    fn url(&self, hook: &str) -> String {
        format!("http://127.0.0.1:{}/{hook}", self.port)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The backend over gRPC: `turnout.v1.Proxy`.
struct GrpcBackend(Arc<Logic>);

impl GrpcBackend {
    async fn answer(
        &self,
        hook: &str,
        r: ProxyRequest,
    ) -> Result<tonic::Response<ProxyReply>, tonic::Status> {
        let data = match r.data {
            Some(d) => serde_json::from_slice(&d)
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?,
            None => Value::Null,
        };
        if r.method == "status" {
            return Err(tonic::Status::internal("the backend broke"));
        }
        let reply = match self.0.decide(hook, &r.user, &r.room, data, &r.method).await {
            Ok((user, rooms, data)) => ProxyReply {
                result: Some(ProxyResult {
                    user,
                    rooms,
                    data: data.map(|d| d.to_string().into_bytes()),
                    expire_at: None,
                }),
                error: None,
            },
            Err((code, message)) => ProxyReply {
                result: None,
                error: Some(ProxyError { code, message }),
            },
        };
        Ok(tonic::Response::new(reply))
    }
}

#[tonic::async_trait]
impl Proxy for GrpcBackend {
    async fn on_connect(
        &self,
        r: tonic::Request<ProxyRequest>,
    ) -> Result<tonic::Response<ProxyReply>, tonic::Status> {
        self.answer("connect", r.into_inner()).await
    }
    async fn on_join(
        &self,
        r: tonic::Request<ProxyRequest>,
    ) -> Result<tonic::Response<ProxyReply>, tonic::Status> {
        self.answer("join", r.into_inner()).await
    }
    async fn on_publish(
        &self,
        r: tonic::Request<ProxyRequest>,
    ) -> Result<tonic::Response<ProxyReply>, tonic::Status> {
        self.answer("publish", r.into_inner()).await
    }
    async fn on_rpc(
        &self,
        r: tonic::Request<ProxyRequest>,
    ) -> Result<tonic::Response<ProxyReply>, tonic::Status> {
        self.answer("rpc", r.into_inner()).await
    }
    async fn on_refresh(
        &self,
        r: tonic::Request<ProxyRequest>,
    ) -> Result<tonic::Response<ProxyReply>, tonic::Status> {
        self.answer("refresh", r.into_inner()).await
    }
}

async fn grpc_backend(logic: Arc<Logic>, port: u16) -> Result<(u16, CancellationToken)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(ProxyServer::new(GrpcBackend(logic)))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { s.cancelled().await },
            )
            .await;
    });
    Ok((port, stop))
}

/// `mod:` rooms ask the join and publish hooks; others ask none.
fn namespaces() -> BTreeMap<String, NamespaceSettings> {
    [(
        "mod".to_owned(),
        NamespaceSettings {
            join_proxy: Some(true),
            publish_proxy: Some(true),
            ..Default::default()
        },
    )]
    .into()
}

/// Hook URLs: (connect, join, publish, rpc).
type Urls = [String; 4];

fn http_urls(b: &HttpBackend) -> Urls {
    ["connect", "join", "publish", "rpc"].map(|h| b.url(h))
}

/// A cluster whose nodes ask `urls`.
async fn cluster(
    strategy: Strategy,
    urls: &Urls,
    tweak: impl Fn(&mut turnout_ws_node::Settings),
) -> Result<Cluster> {
    let n = match strategy {
        Strategy::Sticky | Strategy::Local => 1,
        _ => 2,
    };
    Cluster::start_with(n, strategy, |s| {
        s.namespaces = namespaces();
        s.proxy_connect_url = Some(urls[0].clone());
        s.proxy_join_url = Some(urls[1].clone());
        s.proxy_publish_url = Some(urls[2].clone());
        s.proxy_rpc_url = Some(urls[3].clone());
        s.proxy_timeout = Duration::from_millis(500);
        tweak(s);
    })
    .await
}

/// Where a client of `user` connects: through the gateway (sticky: to the
/// node of its first room), else to the last node.
fn url_for(c: &Cluster, user: &str, room: &str) -> String {
    match c.strategy {
        Strategy::Sticky => format!("{}?room={room}&user={user}", c.gateway.ws_url()),
        _ => format!("{}?user={user}", c.nodes[c.nodes.len() - 1].ws_url()),
    }
}

/// An error frame naming `id`.
async fn error_for(c: &mut Client, id: &str) -> Result<(String, String)> {
    let id = id.to_owned();
    match c
        .expect(
            "an error",
            |f| matches!(f, ServerFrame::Error { id: Some(i), .. } if *i == id),
        )
        .await?
    {
        ServerFrame::Error { code, message, .. } => Ok((code, message)),
        _ => unreachable!(),
    }
}

/// A join's answer: Ok(seq) or Err((code, message)).
async fn try_join(c: &mut Client, room: &str) -> Result<Result<u64, (String, String)>> {
    c.send_json(json!({"type": "join", "room": room})).await?;
    let r = room.to_owned();
    Ok(
        match c
            .expect("the join's answer", |f| match f {
                ServerFrame::Joined { room, .. } => *room == r,
                ServerFrame::Error {
                    room: Some(room), ..
                } => *room == r,
                _ => false,
            })
            .await?
        {
            ServerFrame::Joined { seq, .. } => Ok(seq),
            ServerFrame::Error { code, message, .. } => Err((code, message)),
            _ => unreachable!(),
        },
    )
}

async fn publish_answer(c: &mut Client, room: &str, data: Value, id: &str) -> Result<ServerFrame> {
    c.send_json(json!({"type": "publish", "room": room, "data": data, "id": id}))
        .await?;
    let id = id.to_owned();
    c.expect("the publish's answer", |f| match f {
        ServerFrame::Ack { id: Some(i), .. } | ServerFrame::Error { id: Some(i), .. } => *i == id,
        _ => false,
    })
    .await
}

async fn rpc(c: &mut Client, id: &str, method: &str, data: Value) -> Result<ServerFrame> {
    c.send_json(json!({"type": "rpc", "id": id, "method": method, "data": data}))
        .await?;
    let id = id.to_owned();
    c.expect("the rpc's answer", |f| match f {
        ServerFrame::RpcResult { id: i, .. } => *i == id,
        ServerFrame::Error { id: Some(i), .. } => *i == id,
        _ => false,
    })
    .await
}

/// Every hook's answers reach the client as the protocol says.
async fn every_hook(c: &Cluster, logic: &Logic) -> Result<()> {
    let s = c.strategy;
    // Connect: refused with 4403 and the backend's message.
    let (frames, close) = Client::refused(&url_for(c, "eve", "mod:room")).await?;
    assert_eq!(close, Some((4403, "eve is banned".to_owned())), "{s:?}");
    assert!(frames.is_empty(), "{s:?}: {frames:?}");

    // Connect: the backend names the user, joins a room and attaches data.
    let mut ben = match s {
        Strategy::Sticky => Client::connect(&url_for(c, "ben", "auto:ben")).await?,
        _ => Client::connect(&url_for(c, "ben", "")).await?,
    };
    match &ben.welcome {
        ServerFrame::Welcome { data, .. } => {
            assert_eq!(data.as_ref(), Some(&json!({"plan": "pro"})), "{s:?}")
        }
        other => bail!("{other:?}"),
    }
    ben.expect(
        "auto:ben joined",
        |f| matches!(f, ServerFrame::Joined { room, .. } if room == "auto:ben"),
    )
    .await?;
    let seq = ben.publish("auto:ben", json!("hi"), "b-1").await?;
    match ben
        .expect("ben's message", |f| matches!(f, ServerFrame::Message { room, seq: q, .. } if room == "auto:ben" && *q == seq))
        .await?
    {
        ServerFrame::Message { from, data, .. } => {
            assert_eq!(from, "ben-checked", "{s:?}: the backend's user");
            assert_eq!(data, json!("hi"), "{s:?}: no publish hook outside mod:");
        }
        _ => unreachable!(),
    }

    // Join: refused in a room the backend keeps, let in elsewhere.
    let mut ann = Client::connect(&url_for(c, "ann", "mod:room")).await?;
    let refused = try_join(&mut ann, "mod:secret").await?;
    assert_eq!(
        refused,
        Err(("forbidden".to_owned(), "staff only".to_owned())),
        "{s:?}"
    );
    try_join(&mut ann, "mod:room")
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;

    // Publish: replaced by the backend, or refused and not stored.
    let first = ann.publish("mod:room", json!("hello"), "a-1").await?;
    let refused = publish_answer(&mut ann, "mod:room", json!("a badword"), "a-2").await?;
    assert!(
        matches!(&refused, ServerFrame::Error { code, message, .. } if code == "rejected" && message == "not in this room"),
        "{s:?}: {refused:?}"
    );
    let next = ann.publish("mod:room", json!("again"), "a-3").await?;
    assert_eq!(next, first + 1, "{s:?}: the refused publish took no seq");
    let mut datas = Vec::new();
    while datas.len() < 2 {
        if let ServerFrame::Message { room, data, .. } = ann.recv().await?
            && room == "mod:room"
        {
            datas.push(data);
        }
    }
    assert_eq!(
        datas,
        [
            json!({"said": "hello", "checked": true}),
            json!({"said": "again", "checked": true})
        ],
        "{s:?}: what the backend made of them, and nothing refused"
    );
    // A resend of a publish taken is acked without asking again.
    let again = publish_answer(&mut ann, "mod:room", json!("hello"), "a-1").await?;
    assert!(
        matches!(again, ServerFrame::Ack { seq, duplicate: true, .. } if seq == first),
        "{s:?}: {again:?}"
    );
    assert_eq!(
        logic.count("publish", &json!("hello")),
        1,
        "{s:?}: asked once"
    );

    // Rpc: answered, refused, and with no such hook... (every node has one here).
    let echo = rpc(&mut ann, "r1", "echo", json!({"n": 1})).await?;
    assert_eq!(
        echo,
        ServerFrame::RpcResult {
            id: "r1".into(),
            data: json!({"n": 1})
        },
        "{s:?}"
    );
    let who = rpc(&mut ann, "r2", "whoami", Value::Null).await?;
    assert!(
        matches!(&who, ServerFrame::RpcResult { data, .. } if *data == json!("ann")),
        "{s:?}: {who:?}"
    );
    let nope = rpc(&mut ann, "r3", "nope", Value::Null).await?;
    assert!(
        matches!(&nope, ServerFrame::Error { code, message, .. } if code == "rejected" && message == "no method nope"),
        "{s:?}: {nope:?}"
    );
    // Counted by hook and outcome.
    let mut refused = 0.0;
    for n in &c.nodes {
        refused += metric_labelled(
            n,
            "turnout_hook_calls_total",
            &[("hook", "publish"), ("outcome", "refused")],
        )
        .await?;
    }
    assert_eq!(refused, 1.0, "{s:?}");
    Ok(())
}

/// A metric with these labels (0 when absent).
async fn metric_labelled(p: &Proc, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let (_, body) = http("GET", &format!("{}/metrics", p.http()), None, &[]).await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with('{')
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn over_http(strategy: Strategy) -> Result<()> {
    let logic = Arc::new(Logic::default());
    let backend = HttpBackend::start(logic.clone(), 0).await?;
    let c = cluster(strategy, &http_urls(&backend), |_| {}).await?;
    every_hook(&c, &logic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hooks_sticky() -> Result<()> {
    over_http(Strategy::Sticky).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hooks_pubsub() -> Result<()> {
    over_http(Strategy::Pubsub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hooks_relay() -> Result<()> {
    over_http(Strategy::Relay).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hooks_local() -> Result<()> {
    over_http(Strategy::Local).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_hooks() -> Result<()> {
    let logic = Arc::new(Logic::default());
    let (port, stop) = grpc_backend(logic.clone(), 0).await?;
    let url = format!("grpc://127.0.0.1:{port}");
    let urls = [url.clone(), url.clone(), url.clone(), url];
    let c = cluster(Strategy::Pubsub, &urls, |_| {}).await?;
    every_hook(&c, &logic).await?;
    // A backend that fails the call (a gRPC status) is no answer.
    let mut ann = Client::connect(&url_for(&c, "ann", "")).await?;
    let broke = rpc(&mut ann, "r9", "status", Value::Null).await?;
    assert!(
        matches!(&broke, ServerFrame::Error { code, .. } if code == "unavailable"),
        "{broke:?}"
    );
    // Too slow: unavailable after proxy_timeout.
    let slow = rpc(&mut ann, "r10", "slow", Value::Null).await?;
    assert!(
        matches!(&slow, ServerFrame::Error { code, .. } if code == "unavailable"),
        "{slow:?}"
    );
    // The backend goes away, then comes back on its port: asked again.
    stop.cancel();
    let end = tokio::time::Instant::now() + DEADLINE;
    for i in 0.. {
        match rpc(&mut ann, &format!("g{i}"), "echo", json!(1)).await? {
            ServerFrame::Error { code, .. } if code == "unavailable" => break,
            _ if tokio::time::Instant::now() > end => bail!("the stopped backend still answers"),
            _ => {}
        }
    }
    let (_, _back) = grpc_backend(logic.clone(), port).await?;
    let end = tokio::time::Instant::now() + DEADLINE;
    for i in 0.. {
        match rpc(&mut ann, &format!("h{i}"), "echo", json!(2)).await? {
            ServerFrame::RpcResult { data, .. } => {
                assert_eq!(data, json!(2));
                break;
            }
            other if tokio::time::Instant::now() > end => bail!("not asked again: {other:?}"),
            _ => {}
        }
    }
    Ok(())
}

/// A slow backend: the client hears `unavailable` after `proxy_timeout`,
/// while its own connection keeps receiving and other clients go on; a
/// node at `proxy_max_inflight` answers at once; a backend that goes away
/// and comes back on its port is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_gone_backend_gets_clients_unavailable_and_stalls_nobody() -> Result<()> {
    let logic = Arc::new(Logic::default());
    let backend = HttpBackend::start(logic.clone(), 0).await?;
    let port = backend.port;
    let urls = http_urls(&backend);
    let c = cluster(Strategy::Pubsub, &urls, |s| {
        s.proxy_timeout = Duration::from_secs(2);
        s.proxy_max_inflight = 1;
    })
    .await?;
    let node = c.nodes[1].ws_url();
    let mut slow = Client::connect(&format!("{node}?user=sam")).await?;
    slow.join("mod:room").await?;
    slow.join("open").await?;
    let mut other = Client::connect(&format!("{node}?user=olga")).await?;
    other.join("open").await?;
    slow.send_json(json!({"type": "publish", "room": "mod:room", "data": "slow", "id": "s-1"}))
        .await?;
    logic.slow_arrived.notified().await;
    // Meanwhile: another client publishes, and both hear it, the waiting
    // one included.
    let seq = other.publish("open", json!("meanwhile"), "o-1").await?;
    assert_eq!(slow.messages_until("open", seq).await?, [seq]);
    // The one call the node may make is under way: another hook call is
    // refused at once, and a room without hooks is not held up.
    let busy = publish_answer(&mut other, "mod:room", json!("x"), "o-2").await;
    let busy = match busy {
        Ok(f) => f,
        Err(e) => bail!("{e}"),
    };
    // olga never joined mod:room: not_joined comes first; join is a hook too.
    assert!(
        matches!(&busy, ServerFrame::Error { code, .. } if code == "not_joined"),
        "{busy:?}"
    );
    let joined = try_join(&mut other, "mod:room").await?;
    assert_eq!(
        joined.map_err(|e| e.0),
        Err("unavailable".to_owned()),
        "the node's only hook slot is taken"
    );
    // The slow publish ends as unavailable, not as an allow.
    let (code, _) = error_for(&mut slow, "s-1").await?;
    assert_eq!(code, "unavailable");
    assert_eq!(logic.count("publish", &json!("slow")), 1);

    // The backend goes away: hooks fail, clients hear unavailable.
    drop(backend);
    let (frames, close) = Client::refused(&format!("{node}?user=ann")).await?;
    assert_eq!(close.map(|c| c.0), Some(1013), "connect: try again later");
    assert!(
        matches!(&frames[..], [ServerFrame::Error { code, .. }] if code == "unavailable"),
        "{frames:?}"
    );
    let (code, _) = match rpc(&mut slow, "r1", "echo", json!(1)).await? {
        ServerFrame::Error { code, message, .. } => (code, message),
        other => bail!("{other:?}"),
    };
    assert_eq!(code, "unavailable");
    // It comes back on its port: asked again.
    let _back = HttpBackend::start(logic.clone(), port).await?;
    let echo = rpc(&mut slow, "r2", "echo", json!(2)).await?;
    assert_eq!(
        echo,
        ServerFrame::RpcResult {
            id: "r2".into(),
            data: json!(2)
        }
    );
    let mut ann = Client::connect(&format!("{node}?user=ann")).await?;
    ann.join("mod:room").await?;
    let mut failed = 0.0;
    for n in &c.nodes {
        failed += metric_labelled(n, "turnout_hook_calls_total", &[("outcome", "failed")]).await?;
    }
    assert!(
        failed >= 4.0,
        "timeout, busy, connect and rpc failures counted: {failed}"
    );
    Ok(())
}

/// A node without an rpc hook refuses `rpc` frames by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_without_a_hook_is_rejected_and_bad_hook_urls_stop_the_node() -> Result<()> {
    let c = Cluster::start(1, Strategy::Local).await?;
    let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
    match rpc(&mut a, "r1", "echo", Value::Null).await? {
        ServerFrame::Error { code, message, .. } => {
            assert_eq!(code, "rejected");
            assert!(message.contains("proxy_rpc_url"), "{message}");
        }
        other => bail!("{other:?}"),
    }
    // A namespace that asks a hook needs its URL; a URL must be one.
    let bad = |f: fn(&mut turnout_ws_node::Settings)| {
        let mut s = node_settings("redis://127.0.0.1:1", Strategy::Local);
        f(&mut s);
        turnout_common::settings::Validate::validate(&s)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let e = bad(|s| s.namespaces = namespaces()).unwrap_err();
    assert!(
        e.contains("namespaces.mod.join_proxy") && e.contains("proxy_join_url"),
        "{e}"
    );
    let e = bad(|s| s.proxy_rpc_url = Some("ftp://x".into())).unwrap_err();
    assert!(e.contains("proxy_rpc_url"), "{e}");
    assert!(bad(|s| s.proxy_rpc_url = Some("grpc://backend:9000".into())).is_ok());
    Ok(())
}

/// The example backend (deploy/examples/backend.py), as the demo runs it:
/// a moderated namespace, rpc, and a user it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_backend_moderates_a_namespace() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/backend.py");
    let mut child = tokio::process::Command::new("python3")
        .args([
            script,
            "--port",
            "0",
            "--webhook-secret",
            "example-webhook-secret",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await??
        .unwrap_or_default();
    let base = line
        .strip_prefix("backend: listening on ")
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("unexpected first line {line:?}"))?;
    let urls = ["connect", "join", "publish", "rpc"].map(|h| format!("{base}/{h}"));
    let c = Cluster::start_with(2, Strategy::Pubsub, |s| {
        s.namespaces = [(
            "moderated".to_owned(),
            NamespaceSettings {
                join_proxy: Some(true),
                publish_proxy: Some(true),
                ..Default::default()
            },
        )]
        .into();
        s.proxy_connect_url = Some(urls[0].clone());
        s.proxy_join_url = Some(urls[1].clone());
        s.proxy_publish_url = Some(urls[2].clone());
        s.proxy_rpc_url = Some(urls[3].clone());
        s.webhook_url = Some(format!("{base}/webhook"));
        s.webhook_secret = Some("example-webhook-secret".into());
    })
    .await?;
    let (_, close) = Client::refused(&format!("{}?user=mallory", c.nodes[0].ws_url())).await?;
    assert_eq!(close.map(|c| c.0), Some(4403));

    let mut ann = Client::connect(&format!("{}?user=ann", c.nodes[0].ws_url())).await?;
    assert!(
        matches!(&ann.welcome, ServerFrame::Welcome { data: Some(d), .. } if d["greeting"] == "hello ann, from the backend"),
        "{:?}",
        ann.welcome
    );
    let mut bob = Client::connect(&format!("{}?user=bob", c.nodes[1].ws_url())).await?;
    for cl in [&mut ann, &mut bob] {
        cl.join("moderated:lobby").await?;
    }
    assert!(
        matches!(try_join(&mut bob, "moderated:staff-room").await?, Err((code, _)) if code == "forbidden")
    );
    let seq = ann
        .publish("moderated:lobby", json!({"text": " hi bob "}), "a-1")
        .await?;
    let refused = publish_answer(
        &mut ann,
        "moderated:lobby",
        json!({"text": "buy spam now"}),
        "a-2",
    )
    .await?;
    assert!(
        matches!(&refused, ServerFrame::Error { code, .. } if code == "rejected"),
        "{refused:?}"
    );
    let last = ann
        .publish("moderated:lobby", json!({"text": "bye"}), "a-3")
        .await?;
    assert_eq!(last, seq + 1, "the refused one was not stored");
    let mut got = Vec::new();
    while got.len() < 2 {
        if let ServerFrame::Message { room, data, .. } = bob.recv().await?
            && room == "moderated:lobby"
        {
            got.push(data);
        }
    }
    assert_eq!(
        got,
        [
            json!({"text": "hi bob", "moderated": true}),
            json!({"text": "bye", "moderated": true})
        ]
    );
    let who = rpc(&mut bob, "r1", "whoami", Value::Null).await?;
    assert!(
        matches!(&who, ServerFrame::RpcResult { data, .. } if data["user"] == "bob"),
        "{who:?}"
    );
    // The webhooks it took (signed with the secret it checks).
    let mut printed = Vec::new();
    while !printed.contains(&"webhook: member_joined moderated:lobby bob".to_owned()) {
        match tokio::time::timeout(DEADLINE, lines.next_line()).await?? {
            Some(l) => printed.push(l),
            None => bail!("the backend ended; it printed {printed:?}"),
        }
    }
    assert!(
        printed.contains(&"webhook: room_occupied moderated:lobby ann".to_owned()),
        "{printed:?}"
    );
    Ok(())
}

/// A client that stops reading while its rpc waits on a slow backend: the
/// call still ends at `proxy_timeout` and gives its slot back, though the
/// node cannot write to that client meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_a_hook_call_past_its_timeout() -> Result<()> {
    let logic = Arc::new(Logic::default());
    let backend = HttpBackend::start(logic.clone(), 0).await?;
    let c = cluster(Strategy::Local, &http_urls(&backend), |s| {
        s.proxy_timeout = Duration::from_millis(300);
        s.proxy_max_inflight = 1;
        s.send_queue = 100_000;
        s.send_queue_bytes = 256 << 20;
    })
    .await?;
    let node = c.nodes[0].ws_url();
    let mut stuck = Client::connect(&format!("{node}?user=stuck")).await?;
    stuck.join("big").await?;
    let mut other = Client::connect(&format!("{node}?user=other")).await?;
    other.join("big").await?;
    stuck
        .send_json(json!({"type": "rpc", "id": "s1", "method": "slow"}))
        .await?;
    tokio::time::timeout(DEADLINE, logic.slow_arrived.notified()).await?;
    // While its rpc waits: more than the sockets between the node and
    // `stuck` hold, so the node's writes to it block (it reads nothing from
    // here on).
    let blob = "x".repeat(60_000);
    let mut last = 0;
    for i in 0..300 {
        last = other.publish("big", json!(blob), &format!("b{i}")).await?;
    }
    assert_eq!(other.messages_until("big", last).await?.len(), 300);
    // The node's one hook slot comes back once the stuck call times out.
    let end = tokio::time::Instant::now() + DEADLINE;
    for i in 0.. {
        match rpc(&mut other, &format!("o{i}"), "echo", json!(1)).await? {
            ServerFrame::RpcResult { .. } => break,
            refused if tokio::time::Instant::now() > end => {
                bail!("the slot never came back: {refused:?}")
            }
            _ => {}
        }
    }
    Ok(())
}

/// The connect hook gives a connection an end (`expire_at`): when it comes
/// the refresh hook extends it, then ends it (4403); a refresh hook that does
/// not answer ends it with 1013 (reconnect, asking the connect hook again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_hook_extends_then_ends_a_session() -> Result<()> {
    #[derive(Default)]
    struct Refreshes(Mutex<Vec<String>>);
    async fn connect(Json(req): Json<Value>) -> Json<Value> {
        let soon = turnout_proto::now_ms() / 1000 + 1;
        if req["user"] == "forever" {
            // Not a time: a failed answer, not a session without end.
            return Json(json!({"result": {"expire_at": u64::MAX}}));
        }
        Json(json!({"result": {"expire_at": soon}}))
    }
    async fn refresh(State(seen): State<Arc<Refreshes>>, Json(req): Json<Value>) -> Json<Value> {
        let user = req["user"].as_str().unwrap_or_default().to_owned();
        let n = {
            let mut seen = seen.0.lock().unwrap();
            seen.push(user.clone());
            seen.iter().filter(|u| **u == user).count()
        };
        if user == "flaky" {
            // No answer in time.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        if user == "stale" {
            // The old expire_at back: not an extension.
            let now = turnout_proto::now_ms() / 1000;
            return Json(json!({"result": {"expire_at": now}}));
        }
        let soon = turnout_proto::now_ms() / 1000 + 1;
        Json(match n {
            1 => json!({"result": {"expire_at": soon}}),
            _ => json!({"error": {"code": 1, "message": "session over"}}),
        })
    }
    let seen = Arc::new(Refreshes::default());
    let app = axum::Router::new()
        .route("/connect", axum::routing::post(connect))
        .route("/refresh", axum::routing::post(refresh))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| {
        s.proxy_connect_url = Some(format!("{base}/connect"));
        s.proxy_refresh_url = Some(format!("{base}/refresh"));
        s.proxy_timeout = Duration::from_millis(500);
    })
    .await?;
    let node = c.nodes[0].ws_url();
    let mut temp = Client::connect(&format!("{node}?user=temp")).await?;
    let mut flaky = Client::connect(&format!("{node}?user=flaky")).await?;
    let mut stale = Client::connect(&format!("{node}?user=stale")).await?;
    let (_, close) = Client::refused(&format!("{node}?user=forever")).await?;
    assert_eq!(
        close.map(|c| c.0),
        Some(1013),
        "an expire_at that is no time"
    );
    // Extended once: alive after its first refresh.
    wait_for("the first refresh", DEADLINE, || async {
        seen.0
            .lock()
            .unwrap()
            .contains(&"temp".to_owned())
            .then_some(())
    })
    .await?;
    temp.send_json(json!({"type": "ping"})).await?;
    temp.expect("pong", |f| matches!(f, ServerFrame::Pong))
        .await?;
    // Then ended by the backend.
    assert_eq!(
        temp.recv_close_frame().await?,
        Some((4403, "session over".to_owned()))
    );
    assert_eq!(
        seen.0
            .lock()
            .unwrap()
            .iter()
            .filter(|u| *u == "temp")
            .count(),
        2
    );
    // An expire_at not later than now ends it.
    assert_eq!(
        stale.recv_close_frame().await?,
        Some((3010, "session expired".to_owned()))
    );
    // No answer: ended, to reconnect.
    let (frames, close) = flaky.recv_close().await?;
    assert_eq!(close, Some(1013));
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Error { code, .. } if code == "unavailable")),
        "{frames:?}"
    );
    Ok(())
}
