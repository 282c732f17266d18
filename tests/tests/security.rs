//! Authentication, limits and hostile input.

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tonic::transport::Channel;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

const SECRET: &str = "test-secret-0123456789abcdef";
const API_KEY: &str = "test-api-key-0123456789";
const INTERNAL: &str = "test-internal-token-0123";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn now() -> u64 {
    turnout_proto::now_ms() / 1000
}

fn rs256(claims: serde_json::Value) -> String {
    let pem = std::fs::read(fixture("test-rsa-private.pem")).unwrap();
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

/// An unsigned token (`alg: none`).
fn alg_none(claims: serde_json::Value) -> String {
    use base64_url as b64;
    format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims.to_string())
    )
}

fn base64_url(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

struct Secure {
    redis: Redis,
    router: Proc,
    gateway: Proc,
    node: Proc,
}

async fn secure_cluster(tweak: impl Fn(&mut turnout_ws_node::Settings)) -> Result<Secure> {
    let redis = Redis::start().await?;
    let url = redis.url();
    let mut rs = router_settings(&url, Strategy::Pubsub);
    rs.internal_token = Some(INTERNAL.into());
    let router = start_router_with(rs).await;
    let mut ns = node_settings(&url, Strategy::Pubsub);
    ns.jwt_secret = Some(SECRET.into());
    ns.jwt_public_key = Some(fixture("test-rsa-public.pem"));
    ns.internal_token = Some(INTERNAL.into());
    tweak(&mut ns);
    let node = start_node(ns).await;
    let mut gs = gateway_settings(&url, Strategy::Pubsub, &[&router]);
    gs.jwt_secret = Some(SECRET.into());
    gs.jwt_public_key = Some(fixture("test-rsa-public.pem"));
    gs.api_key = Some(API_KEY.into());
    gs.internal_token = Some(INTERNAL.into());
    gs.max_connections_per_ip = 3;
    let gateway = start_gateway_with(gs).await;
    let url = format!("{}/readyz", gateway.http());
    wait_for(
        "a ready gateway (it reaches the router with the internal token)",
        DEADLINE,
        || {
            let url = url.clone();
            async move { (http("GET", &url, None, &[]).await.ok()?.0 == 200).then_some(()) }
        },
    )
    .await?;
    Ok(Secure {
        redis,
        router,
        gateway,
        node,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tokens_are_checked_at_the_gateway_and_the_node() -> Result<()> {
    let s = secure_cluster(|_| {}).await?;
    let good = hs256(
        json!({"sub": "alice", "exp": now() + 60, "rooms": ["lobby", "team-*"]}),
        SECRET,
    );
    let cases = [
        ("no token", String::new()),
        (
            "wrong signature",
            hs256(
                json!({"sub": "alice", "exp": now() + 60}),
                "another-secret-0123456789",
            ),
        ),
        (
            "expired",
            hs256(json!({"sub": "alice", "exp": now() - 600}), SECRET),
        ),
        (
            "alg none",
            alg_none(json!({"sub": "alice", "exp": now() + 60})),
        ),
        ("garbage", "not.a.token".into()),
        ("no exp", hs256(json!({"sub": "alice"}), SECRET)),
        (
            "bad subject",
            hs256(json!({"sub": "a b", "exp": now() + 60}), SECRET),
        ),
    ];
    for base in [s.gateway.ws_url(), s.node.ws_url()] {
        for (what, token) in &cases {
            let url = if token.is_empty() {
                base.clone()
            } else {
                format!("{base}?token={token}")
            };
            assert_eq!(upgrade_status(&url).await?, 401, "{what} at {base}");
        }
    }
    // A good token: the subject is the user, whatever `user` says.
    for (i, token) in [
        good.clone(),
        rs256(json!({"sub": "alice", "exp": now() + 60, "rooms": ["lobby", "team-*"]})),
    ]
    .into_iter()
    .enumerate()
    {
        let mut a = Client::connect(&format!(
            "{}?user=mallory&token={token}",
            s.gateway.ws_url()
        ))
        .await?;
        a.send_json(json!({"type": "join", "room": "lobby"}))
            .await?;
        match a.recv().await? {
            ServerFrame::Joined { presence, .. } => {
                assert!(presence.contains(&"alice".to_owned()), "{presence:?}")
            }
            other => panic!("{other:?}"),
        }
        a.join("team-blue").await?;
        // Outside the token's rooms: refused, and the connection stays.
        a.send_json(json!({"type": "join", "room": "admin"}))
            .await?;
        match a.recv().await? {
            ServerFrame::Error { code, .. } => assert_eq!(code, "forbidden"),
            other => panic!("{other:?}"),
        }
        // (A publish id of its own each time: alice's ids are deduplicated.)
        let seq = a.publish("lobby", json!("hi"), &format!("hi-{i}")).await?;
        match a
            .expect("message", |f| matches!(f, ServerFrame::Message { .. }))
            .await?
        {
            ServerFrame::Message { from, seq: got, .. } => {
                assert_eq!(from, "alice");
                assert_eq!(got, seq);
            }
            _ => unreachable!(),
        }
    }
    // Authorization: Bearer works too.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        s.node.ws_url(),
    )?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {good}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    drop(s.redis);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_needs_the_key_and_internal_grpc_the_token() -> Result<()> {
    let s = secure_cluster(|_| {}).await?;
    let publish = format!("{}/api/rooms/r/publish", s.gateway.http());
    let body = Some(json!({"data": 1}).to_string());
    assert_eq!(http("POST", &publish, body.clone(), &[]).await?.0, 401);
    assert_eq!(
        http(
            "POST",
            &publish,
            body.clone(),
            &[("x-api-key", "wrong-key-0123456789")]
        )
        .await?
        .0,
        401
    );
    let (status, b) = http("POST", &publish, body, &[("x-api-key", API_KEY)]).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    for read in ["history", "presence"] {
        let url = format!("{}/api/rooms/r/{read}", s.gateway.http());
        assert_eq!(http("GET", &url, None, &[]).await?.0, 401, "{read}");
        assert_eq!(
            http("GET", &url, None, &[("x-api-key", API_KEY)]).await?.0,
            200,
            "{read}"
        );
    }

    // gRPC server API.
    let ch = Channel::from_shared(s.gateway.http())?.connect().await?;
    let mut gw = turnout_proto::v1::gateway_client::GatewayClient::new(ch.clone());
    let req = || turnout_proto::v1::PresenceRequest { room: "r".into() };
    assert_eq!(
        gw.presence(req()).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut r = tonic::Request::new(req());
    r.metadata_mut().insert("x-api-key", API_KEY.parse()?);
    assert!(gw.presence(r).await.is_ok());

    // Internal services.
    let ch = Channel::from_shared(s.router.http())?.connect().await?;
    let mut router = turnout_proto::v1::router_client::RouterClient::new(ch);
    let err = router
        .nodes(turnout_proto::v1::NodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut r = tonic::Request::new(turnout_proto::v1::NodesRequest {});
    r.metadata_mut()
        .insert("x-internal-token", INTERNAL.parse()?);
    assert_eq!(router.nodes(r).await?.into_inner().nodes.len(), 1);
    let ch = Channel::from_shared(s.node.http())?.connect().await?;
    let mut node = turnout_proto::v1::node_client::NodeClient::new(ch);
    let err = node
        .deliver(turnout_proto::v1::DeliverRequest {
            room: "r".into(),
            data_json: "1".into(),
            from: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut r = tonic::Request::new(turnout_proto::v1::StatsRequest::default());
    r.metadata_mut()
        .insert("x-internal-token", "wrong".parse()?);
    assert_eq!(
        node.stats(r).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_and_limits() -> Result<()> {
    let s = secure_cluster(|n| {
        n.max_frame_bytes = 4096;
        n.max_publish_rate = 20.0;
        n.max_publish_burst = 20;
        n.ping_interval = Duration::from_millis(100);
        n.idle_timeout = Duration::from_millis(400);
    })
    .await?;
    let token = hs256(json!({"sub": "bob", "exp": now() + 60}), SECRET);
    let url = format!("{}?token={token}", s.node.ws_url());

    // Oversized frame: close 1009.
    let mut a = Client::connect(&url).await?;
    a.send_text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(5000)))
        .await?;
    assert_eq!(a.recv_close().await?.1, Some(1009));

    // Text frame that is not UTF-8: close 1007.
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    ws.send(Message::Frame(Frame::message(
        vec![0xff, 0xfe, 0x00],
        OpCode::Data(Data::Text),
        true,
    )))
    .await?;
    let mut code = None;
    while let Some(m) = ws.next().await {
        if let Ok(Message::Close(f)) = m {
            code = f.map(|f| u16::from(f.code));
            break;
        }
        if m.is_err() {
            break;
        }
    }
    assert_eq!(code, Some(1007));

    // Binary frames and oversized strings get error frames; the connection stays.
    let mut b = Client::connect(&url).await?;
    b.send_raw(Message::Binary(vec![1, 2, 3].into())).await?;
    assert!(matches!(b.recv().await?, ServerFrame::Error { code, .. } if code == "bad_json"));
    b.send_text(json!({"type": "join", "room": "r".repeat(65)}).to_string())
        .await?;
    assert!(matches!(b.recv().await?, ServerFrame::Error { code, .. } if code == "bad_name"));
    b.send_text(
        json!({"type": "publish", "room": "r", "data": 1, "id": "i".repeat(65)}).to_string(),
    )
    .await?;
    assert!(matches!(b.recv().await?, ServerFrame::Error { code, .. } if code == "bad_frame"));

    // Flooding: refused with rate_limited, while a neighbour on the same node is served.
    let mut flood = Client::connect(&url).await?;
    flood.join("busy").await?;
    let mut calm = Client::connect(&url).await?;
    for i in 0..60 {
        flood
            .send_json(json!({"type": "publish", "room": "busy", "data": i, "id": i.to_string()}))
            .await?;
    }
    // The neighbour is served (how fast, under a flood, the abuse bench
    // measures: docs/BENCHMARKS.md, not a timed test).
    calm.send_json(json!({"type": "ping"})).await?;
    calm.expect("pong", |f| *f == ServerFrame::Pong).await?;
    let limited = flood
        .expect(
            "a rate_limited error",
            |f| matches!(f, ServerFrame::Error { code, .. } if code == "rate_limited"),
        )
        .await?;
    assert!(matches!(limited, ServerFrame::Error { id: Some(_), .. }));
    // Sustained abuse ends the connection (1008).
    for i in 0..300 {
        if flood
            .send_json(json!({"type": "publish", "room": "busy", "data": i}))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(flood.recv_close().await?.1, Some(1008));

    // A client that answers nothing (not even pings) is closed after idle_timeout.
    // Meanwhile an active client (it reads, so it answers pings) stays.
    let (mut idle, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let silent_since = Instant::now();
    while silent_since.elapsed() < Duration::from_millis(900) {
        calm.send_json(json!({"type": "ping"})).await?;
        calm.expect("pong", |f| *f == ServerFrame::Pong).await?;
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing of the active client
    }
    let mut code = None;
    while let Some(Ok(m)) = idle.next().await {
        if let Message::Close(f) = m {
            code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(3009));
    wait_for("the idle close counted", DEADLINE, || async {
        (metric(&s.node, "turnout_idle_closed_total").await.ok()? >= 1.0).then_some(())
    })
    .await?;

    // Connections per client IP at the gateway.
    let gw = format!("{}?token={token}", s.gateway.ws_url());
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::connect(&gw).await?);
    }
    assert_eq!(upgrade_status(&gw).await?, 429);
    drop(held.pop());
    wait_for("a freed slot", DEADLINE, || async {
        (upgrade_status(&gw).await.ok()? == 101).then_some(())
    })
    .await?;
    Ok(())
}

#[test]
fn open_mode_only_when_insecure() {
    // Loopback is no exception: a process behind a local TLS proxy is as
    // exposed as any.
    for listen in ["0.0.0.0:0", "127.0.0.1:0"] {
        for bin in ["turnout-ws-node", "turnout-router", "turnout-gateway"] {
            let out = Command::new(binary(bin))
                .args(["--listen", listen])
                .env("TURNOUT_REDIS_URL", "redis://127.0.0.1:1")
                .env_remove("TURNOUT_INSECURE")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{bin} started open on {listen}");
            assert!(
                err.contains("internal_token") && err.contains("TURNOUT_INSECURE"),
                "{bin}: {err}"
            );
        }
    }
    // A short internal token is refused, and secrets never show in --help.
    let out = Command::new(binary("turnout-router"))
        .args(["--listen", "127.0.0.1:0", "--internal-token", "short"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("at least 16 bytes"),
        "{err}"
    );
    for bin in ["turnout-ws-node", "turnout-gateway"] {
        let out = Command::new(binary(bin))
            .arg("--help")
            .env("TURNOUT_JWT_SECRET", "the-jwt-secret-value")
            .env("TURNOUT_INTERNAL_TOKEN", "the-internal-token-value")
            .env("TURNOUT_API_KEY", "the-api-key-value")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("TURNOUT_JWT_SECRET"), "{help}");
        for secret in [
            "the-jwt-secret-value",
            "the-internal-token-value",
            "the-api-key-value",
        ] {
            assert!(!help.contains(secret), "{bin} --help shows a secret");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Redis::start().await?;
    let mut s = node_settings(&redis.url(), Strategy::Pubsub);
    s.handshake_timeout = Duration::from_millis(300);
    let node = start_node(s).await;
    let mut tcp = tokio::net::TcpStream::connect(node.addr).await?;
    // Half a request, then nothing (slow loris).
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await?;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    // Well below the default (10 s): ignoring the setting would fail here.
    let within = Duration::from_millis(300) * 4;
    let closed = tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // e.g. a 408 before the close
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after {within:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        started.elapsed()
    );
    // A normal client is unaffected.
    let mut c = Client::connect(&node.ws_url()).await?;
    c.send_json(json!({"type": "ping"})).await?;
    assert_eq!(c.recv().await?, ServerFrame::Pong);
    Ok(())
}

/// Connections that never complete a request are closed after
/// `handshake_timeout`, whatever they sent before protocol detection (nothing,
/// part of an HTTP/2 preface); one with nothing under way is closed after
/// `http_idle_timeout`; every listener does it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_open_and_idle_connections_are_closed() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Redis::start().await?;
    let url = redis.url();
    let short = Duration::from_millis(400);
    let mut ns = node_settings(&url, Strategy::Pubsub);
    ns.handshake_timeout = short;
    ns.http_idle_timeout = short;
    let node = start_node(ns).await;
    let mut rs = router_settings(&url, Strategy::Pubsub);
    rs.handshake_timeout = short;
    rs.http_idle_timeout = short;
    let router = start_router_with(rs).await;
    let mut gs = gateway_settings(&url, Strategy::Pubsub, &[&router]);
    gs.handshake_timeout = short;
    gs.http_idle_timeout = short;
    let gateway = start_gateway_with(gs).await;
    async fn closed_within(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
    // Well below the defaults (10 s, 60 s): a process that ignored the
    // settings would keep them open past this.
    let within = short * 3;
    for p in [&node, &router, &gateway] {
        // Nothing at all.
        let mut silent = tokio::net::TcpStream::connect(p.addr).await?;
        assert!(
            closed_within(&mut silent, within).await,
            "silent socket kept by {}",
            p.addr
        );
        // Half an HTTP/2 preface.
        let mut half = tokio::net::TcpStream::connect(p.addr).await?;
        half.write_all(b"PRI * HTTP/2.0\r\n").await?;
        assert!(
            closed_within(&mut half, within).await,
            "half a preface kept by {}",
            p.addr
        );
        // One request, then a keep-alive connection with nothing to do.
        let mut idle = tokio::net::TcpStream::connect(p.addr).await?;
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        assert!(
            closed_within(&mut idle, within).await,
            "idle connection kept by {}",
            p.addr
        );
    }
    Ok(())
}
