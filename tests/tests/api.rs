//! The server API: gRPC `Gateway` (every method, `Subscribe` live and
//! resumed), SSE with `Last-Event-ID`, `Disconnect`, the backend inbox, and
//! the OpenAPI document against the running routes. Both strategies.

use anyhow::{Context, Result, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use std::time::Duration;
use tokio_stream::StreamExt;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_proto::v1::gateway_client::GatewayClient;
use turnout_proto::v1::*;
use turnout_tests::*;

async fn http_publish(c: &Cluster, room: &str, data: serde_json::Value) -> Result<u64> {
    let url = format!("{}/api/rooms/{room}/publish", c.gateway.http());
    let (status, body) = http("POST", &url, Some(json!({ "data": data }).to_string()), &[]).await?;
    if status != 200 {
        bail!(
            "publish answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v["seq"].as_u64().context("seq")
}

async fn next_message(stream: &mut tonic::Streaming<RoomMessage>) -> Result<RoomMessage> {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .context("no Subscribe message within the deadline")?
        .context("Subscribe stream ended")?
        .map_err(|s| anyhow::anyhow!("Subscribe failed: {s}"))
}

async fn grpc_every_method(strategy: Strategy) -> Result<()> {
    let c = Cluster::start(2, strategy).await?;
    let mut gw = GatewayClient::connect(c.gateway.http()).await?;
    let room = "api-room";

    let cluster = gw.cluster(ClusterRequest {}).await?.into_inner();
    assert_eq!(cluster.strategy, strategy.as_str());
    assert_eq!(cluster.nodes.len(), 2);

    // A live-only Subscribe, opened before anything is published.
    let mut live = gw
        .subscribe(SubscribeRequest {
            room: room.into(),
            since: 0,
            ..Default::default()
        })
        .await?
        .into_inner();

    let seq = gw
        .publish(PublishRequest {
            room: room.into(),
            data_json: r#"{"via":"grpc"}"#.into(),
            from: "backend".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .seq;
    assert_eq!(seq, 1);
    assert_eq!(http_publish(&c, room, json!({"via": "http"})).await?, 2);
    let route = http_get_json(&format!("{}/api/route?room={room}", c.gateway.http()))
        .await?
        .1;
    let url = route["url"].as_str().context("route url")?;
    let mut ws = Client::connect(&format!("{url}?user=alice")).await?;
    ws.join(room).await?;
    assert_eq!(ws.publish(room, json!({"via": "ws"}), "w1").await?, 3);

    let got: Vec<_> = [
        next_message(&mut live).await?,
        next_message(&mut live).await?,
        next_message(&mut live).await?,
    ]
    .into_iter()
    .map(|m| (m.seq, m.from, m.data_json))
    .collect();
    assert_eq!(
        got,
        vec![
            (1, "backend".to_owned(), r#"{"via":"grpc"}"#.to_owned()),
            (2, "api".to_owned(), r#"{"via":"http"}"#.to_owned()),
            (3, "alice".to_owned(), r#"{"via":"ws"}"#.to_owned()),
        ]
    );

    // History, then a resumed Subscribe: history first, then live, no gap.
    let h = gw
        .history(HistoryRequest {
            room: room.into(),
            since: 1,
            limit: 10,
        })
        .await?
        .into_inner();
    assert_eq!(h.seq, 3);
    assert!(h.complete);
    assert_eq!(
        h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let mut resumed = gw
        .subscribe(SubscribeRequest {
            room: room.into(),
            since: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(next_message(&mut resumed).await?.seq, 2);
    assert_eq!(next_message(&mut resumed).await?.seq, 3);
    assert_eq!(http_publish(&c, room, json!(4)).await?, 4);
    assert_eq!(next_message(&mut resumed).await?.seq, 4);
    assert_eq!(next_message(&mut live).await?.seq, 4);

    let presence = gw
        .presence(PresenceRequest { room: room.into() })
        .await?
        .into_inner();
    assert_eq!(presence.users, vec!["alice".to_owned()]);

    // Errors map to gRPC codes as HTTP maps them to statuses.
    let bad = gw
        .subscribe(SubscribeRequest {
            room: "no spaces".into(),
            since: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // Disconnect closes alice's connection with 3500 and the reason.
    let closed = gw
        .disconnect(DisconnectRequest {
            user: "alice".into(),
            reason: "banned for spam".into(),
        })
        .await?
        .into_inner()
        .connections;
    assert_eq!(closed, 1);
    let close = ws.recv_close_frame().await?;
    assert_eq!(
        close,
        Some((
            turnout_proto::codes::close::KICKED,
            "banned for spam".into()
        ))
    );
    let mut kicked = 0.0;
    for n in &c.nodes {
        kicked += metric(n, "turnout_kicked_total").await?;
    }
    assert_eq!(kicked, 1.0);
    let none = gw
        .disconnect(DisconnectRequest {
            user: "alice".into(),
            reason: String::new(),
        })
        .await?
        .into_inner()
        .connections;
    assert_eq!(none, 0);
    Ok(())
}

#[tokio::test]
async fn grpc_every_method_pubsub() -> Result<()> {
    grpc_every_method(Strategy::Pubsub).await
}

#[tokio::test]
async fn grpc_every_method_sticky() -> Result<()> {
    grpc_every_method(Strategy::Sticky).await
}

#[tokio::test]
async fn grpc_every_method_relay() -> Result<()> {
    grpc_every_method(Strategy::Relay).await
}

/// A Subscribe resumed while publishers run sees every seq once, in order:
/// the hand-over from history to live has no gap and no duplicate.
async fn subscribe_handover(strategy: Strategy) -> Result<()> {
    let c = Cluster::start(2, strategy).await?;
    let room = "handover";
    for i in 0..100 {
        http_publish(&c, room, json!(i)).await?;
    }
    let gateway = c.gateway.http();
    let publisher = tokio::spawn(async move {
        for i in 100..400 {
            let url = format!("{gateway}/api/rooms/{room}/publish");
            let (status, _) = http("POST", &url, Some(json!({ "data": i }).to_string()), &[])
                .await
                .expect("publish");
            assert_eq!(status, 200);
        }
    });
    let mut gw = GatewayClient::connect(c.gateway.http()).await?;
    let mut stream = gw
        .subscribe(SubscribeRequest {
            room: room.into(),
            since: 50,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut seqs = Vec::new();
    while seqs.last() != Some(&400) {
        seqs.push(next_message(&mut stream).await?.seq);
    }
    publisher.await?;
    assert_eq!(seqs, (51..=400).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn subscribe_handover_pubsub() -> Result<()> {
    subscribe_handover(Strategy::Pubsub).await
}

#[tokio::test]
async fn subscribe_handover_sticky() -> Result<()> {
    subscribe_handover(Strategy::Sticky).await
}

#[tokio::test]
async fn subscribe_handover_relay() -> Result<()> {
    subscribe_handover(Strategy::Relay).await
}

/// A stream that keeps up holds nothing in its room's ring: messages past
/// `subscriber_buffer_bytes` in all go to it live, not as cues to read
/// history (which, past `history_size`, would no longer hold them).
#[tokio::test]
async fn a_stream_that_keeps_up_is_served_live_past_the_rings_bytes() -> Result<()> {
    let strategy = Strategy::Pubsub;
    let c = Cluster::start(1, strategy).await?;
    let mut settings = gateway_settings(&c.redis.url(), strategy, &[&c.router]);
    settings.subscriber_buffer_bytes = 64 * 1024;
    let gw = start_gateway_with(settings).await;
    let room = "big";
    let mut sse = Sse::open(&format!("{}/api/rooms/{room}/events", gw.http()), &[]).await?;
    assert_eq!(sse.status, 200);
    let data = json!("x".repeat(4096));
    // The first message shows the stream is live.
    http_publish(&c, room, data.clone()).await?;
    assert_eq!(sse.seqs_until(1).await?, vec![1]);
    // 200 × 4 KiB: 800 KiB through a ring of 64 KiB, one at a time.
    for _ in 2..=200 {
        http_publish(&c, room, data.clone()).await?;
    }
    assert_eq!(sse.seqs_until(200).await?, (2..=200).collect::<Vec<_>>());
    assert_eq!(
        metric_at(&gw.http(), "turnout_stream_ring_full_total").await?,
        0.0,
        "no message went as a cue to read history"
    );
    gw.stop().await;
    Ok(())
}

/// SSE: `id:` = `<seq>:<epoch>`, resume with `Last-Event-ID` gives no gap, keep-alives flow.
async fn sse_resume(strategy: Strategy) -> Result<()> {
    let c = Cluster::start(1, strategy).await?;
    let mut settings = gateway_settings(&c.redis.url(), strategy, &[&c.router]);
    settings.sse_keepalive = Duration::from_millis(100);
    let gw = start_gateway_with(settings).await;
    let room = "sse";
    for i in 1..=5 {
        assert_eq!(http_publish(&c, room, json!(i)).await?, i);
    }
    let url = format!("{}/api/rooms/{room}/events", gw.http());
    let (_, history) = http_get_json(&format!("{}/api/rooms/{room}/history", gw.http())).await?;
    let epoch = history["epoch"].as_str().context("epoch")?.to_owned();
    assert!(!epoch.is_empty());
    let mut sse = Sse::open(&url, &[("last-event-id", &format!("2:{epoch}"))]).await?;
    assert_eq!(sse.status, 200);
    let first = sse.next().await?;
    assert_eq!(first.id, Some(format!("3:{epoch}")));
    let frame: ServerFrame = serde_json::from_str(&first.data)?;
    assert!(
        matches!(frame, ServerFrame::Message { seq: 3, .. }),
        "{frame:?}"
    );
    assert_eq!(sse.seqs_until(5).await?, vec![4, 5]);
    http_publish(&c, room, json!(6)).await?;
    assert_eq!(sse.seqs_until(6).await?, vec![6]);
    // Keep-alive comments arrive while the room is quiet.
    let comment = tokio::time::timeout(DEADLINE, async {
        loop {
            match sse.events.recv().await {
                Some(ev) if ev.comment.is_some() => return ev.comment,
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await?;
    assert_eq!(comment.as_deref(), Some("keep-alive"));
    drop(sse);

    // Messages published while disconnected are sent on resume, then live ones.
    for i in 7..=9 {
        http_publish(&c, room, json!(i)).await?;
    }
    let mut sse = Sse::open(&format!("{url}?since=1"), &[("last-event-id", "6")]).await?;
    assert_eq!(sse.seqs_until(9).await?, vec![7, 8, 9]);
    http_publish(&c, room, json!(10)).await?;
    assert_eq!(sse.seqs_until(10).await?, vec![10]);

    // `since` alone resumes too; a bad Last-Event-ID is refused clearly.
    let mut sse = Sse::open(&format!("{url}?since=8"), &[]).await?;
    assert_eq!(sse.seqs_until(10).await?, vec![9, 10]);
    // A plain seq still resumes (in the room's current epoch).
    let mut sse = Sse::open(&url, &[("last-event-id", "9")]).await?;
    assert_eq!(sse.seqs_until(10).await?, vec![10]);
    for id in ["seven", "7:x", "7:1:2"] {
        let bad = Sse::open(&url, &[("last-event-id", id)]).await?;
        assert_eq!(bad.status, 400, "{id}");
    }
    let bad = Sse::open(&format!("{}/api/rooms/bad%20room/events", gw.http()), &[]).await?;
    assert_eq!(bad.status, 400);
    gw.stop().await;
    Ok(())
}

#[tokio::test]
async fn sse_resume_pubsub() -> Result<()> {
    sse_resume(Strategy::Pubsub).await
}

#[tokio::test]
async fn sse_resume_sticky() -> Result<()> {
    sse_resume(Strategy::Sticky).await
}

#[tokio::test]
async fn sse_resume_relay() -> Result<()> {
    sse_resume(Strategy::Relay).await
}

const SECRET: &str = "an-sse-test-secret-of-32-bytes!!";
const KEY: &str = "an-api-key-for-the-sse-test";

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// SSE takes the WebSocket's client tokens (room claims included) or the API key.
#[tokio::test]
async fn sse_auth() -> Result<()> {
    let c = Cluster::start(1, Strategy::Pubsub).await?;
    let mut settings = gateway_settings(&c.redis.url(), Strategy::Pubsub, &[&c.router]);
    settings.jwt_secret = Some(SECRET.into());
    settings.api_key = Some(KEY.into());
    let gw = start_gateway_with(settings).await;
    let url = format!("{}/api/rooms/news/events", gw.http());
    let exp = turnout_proto::now_ms() / 1000 + 600;

    assert_eq!(Sse::open(&url, &[]).await?.status, 401);
    assert_eq!(
        Sse::open(&url, &[("x-api-key", "wrong-key-wrong-key")])
            .await?
            .status,
        401
    );
    let other = token(json!({"sub": "u", "exp": exp, "rooms": ["sports*"]}));
    assert_eq!(
        Sse::open(&format!("{url}?token={other}"), &[])
            .await?
            .status,
        403
    );
    let expired = token(json!({"sub": "u", "exp": 1000, "rooms": ["news"]}));
    assert_eq!(
        Sse::open(&format!("{url}?token={expired}"), &[])
            .await?
            .status,
        401
    );

    let good = token(json!({"sub": "u", "exp": exp, "rooms": ["news"]}));
    let mut by_query = Sse::open(&format!("{url}?token={good}"), &[]).await?;
    assert_eq!(by_query.status, 200);
    let bearer = format!("Bearer {good}");
    let mut by_header = Sse::open(&url, &[("authorization", &bearer)]).await?;
    assert_eq!(by_header.status, 200);
    let mut by_key = Sse::open(&url, &[("x-api-key", KEY)]).await?;
    assert_eq!(by_key.status, 200);

    let (status, _) = http(
        "POST",
        &format!("{}/api/rooms/news/publish", gw.http()),
        Some(json!({"data": "hi"}).to_string()),
        &[("x-api-key", KEY)],
    )
    .await?;
    assert_eq!(status, 200);
    for sse in [&mut by_query, &mut by_header, &mut by_key] {
        assert_eq!(sse.seqs_until(1).await?, vec![1]);
    }
    gw.stop().await;
    Ok(())
}

/// Client publishes (not API ones) land in the bounded inbox stream, where a
/// consumer group reads them.
async fn inbox(strategy: Strategy) -> Result<()> {
    let c = Cluster::start_with(1, strategy, |s| {
        s.inbox = true;
        s.inbox_size = 50;
        s.max_publish_burst = 1000;
        s.max_publish_rate = 1000.0;
    })
    .await?;
    let mut redis = c.redis.con().await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("turnout:inbox")
        .arg("archiver")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut redis)
        .await?;
    let route = http_get_json(&format!("{}/api/route?room=chat", c.gateway.http()))
        .await?
        .1;
    let mut ws = Client::connect(&format!(
        "{}?user=bob",
        route["url"].as_str().context("url")?
    ))
    .await?;
    ws.join("chat").await?;
    assert_eq!(ws.publish("chat", json!({"text": "hello"}), "a").await?, 1);
    http_publish(&c, "chat", json!("from the backend")).await?;
    assert_eq!(ws.publish("chat", json!({"text": "again"}), "b").await?, 3);

    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("archiver")
        .arg("worker-1")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg("turnout:inbox")
        .arg(">")
        .query_async(&mut redis)
        .await?;
    let entries = &reply.keys.first().context("inbox key")?.ids;
    let field = |i: usize, f: &str| -> String {
        redis::from_redis_value_ref(entries[i].map.get(f).expect("field")).expect("string")
    };
    assert_eq!(entries.len(), 2, "the API publish is not a client's");
    assert_eq!(
        (field(0, "room"), field(0, "seq"), field(0, "user")),
        ("chat".into(), "1".into(), "bob".into())
    );
    let message: ServerFrame = serde_json::from_str(&field(1, "message"))?;
    let ServerFrame::Message {
        seq, data, from, ..
    } = message
    else {
        bail!("inbox entry is not a message frame");
    };
    assert_eq!(
        (seq, from, data.to_string()),
        (3, "bob".into(), r#"{"text":"again"}"#.into())
    );
    let acked: u64 = redis::cmd("XACK")
        .arg("turnout:inbox")
        .arg("archiver")
        .arg(&entries[0].id)
        .arg(&entries[1].id)
        .query_async(&mut redis)
        .await?;
    assert_eq!(acked, 2);

    // Bounded by inbox_size.
    for i in 0..120 {
        ws.publish("chat", json!(i), &format!("n{i}")).await?;
    }
    let len: u64 = redis::cmd("XLEN")
        .arg("turnout:inbox")
        .query_async(&mut redis)
        .await?;
    assert_eq!(len, 50);
    Ok(())
}

#[tokio::test]
async fn inbox_pubsub() -> Result<()> {
    inbox(Strategy::Pubsub).await
}

#[tokio::test]
async fn inbox_sticky() -> Result<()> {
    inbox(Strategy::Sticky).await
}

#[tokio::test]
async fn inbox_relay() -> Result<()> {
    inbox(Strategy::Relay).await
}

/// Without the setting nothing is appended.
#[tokio::test]
async fn inbox_off_by_default() -> Result<()> {
    let c = Cluster::start(1, Strategy::Pubsub).await?;
    let mut ws = Client::connect(&c.nodes[0].ws_url()).await?;
    ws.join("quiet").await?;
    ws.publish("quiet", json!(1), "x").await?;
    let mut redis = c.redis.con().await?;
    let exists: u64 = redis::cmd("EXISTS")
        .arg("turnout:inbox")
        .query_async(&mut redis)
        .await?;
    assert_eq!(exists, 0);
    Ok(())
}

/// The served OpenAPI document lists routes the gateway answers: none of
/// them is 404 or 405, and documented response fields are present.
#[tokio::test]
async fn openapi_routes_answer() -> Result<()> {
    let c = Cluster::start(1, Strategy::Pubsub).await?;
    let base = c.gateway.http();
    let (status, doc) = http_get_json(&format!("{base}/api/openapi.json")).await?;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().context("paths")?;
    assert!(paths.len() >= 13, "{}", paths.len());
    for (path, ops) in paths {
        for (method, op) in ops.as_object().context("ops")? {
            let mut url = format!(
                "{base}{}",
                path.replace("{room}", "r").replace("{user}", "u")
            );
            if path.ends_with("/events") {
                // A bad `since` answers at once instead of streaming.
                url.push_str("?since=x");
            }
            let body = (method == "post").then(|| json!({"data": 1}).to_string());
            let (status, answer) = http(&method.to_uppercase(), &url, body, &[]).await?;
            // Served (no 404/405), working (no 5xx on a healthy cluster),
            // and answered as the document says it answers.
            let documented = op["responses"].as_object().context("responses")?;
            assert!(
                status < 500 && documented.contains_key(&status.to_string()),
                "{method} {path} answered {status} ({}), documented: {:?}",
                String::from_utf8_lossy(&answer),
                documented.keys().collect::<Vec<_>>()
            );
        }
    }
    // Responses carry the documented required fields.
    let schemas = &doc["components"]["schemas"];
    for (path, schema) in [
        ("/api/cluster", "Cluster"),
        ("/api/rooms/r/history", "History"),
        ("/api/rooms/r/presence", "Presence"),
        ("/api/route", "Route"),
    ] {
        let (status, body) = http_get_json(&format!("{base}{path}")).await?;
        assert_eq!(status, 200, "{path}");
        for field in schemas[schema]["required"].as_array().context("required")? {
            let field = field.as_str().context("name")?;
            assert!(body.get(field).is_some(), "{path} lacks `{field}`: {body}");
        }
    }
    let (status, body) = http(
        "POST",
        &format!("{base}/api/users/nobody/disconnect"),
        Some(json!({"reason": "test"}).to_string()),
        &[],
    )
    .await?;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(body["connections"], 0);
    for field in schemas["DisconnectReply"]["required"]
        .as_array()
        .context("required")?
    {
        assert!(body.get(field.as_str().context("name")?).is_some());
    }
    Ok(())
}

/// Publishes over HTTP until Redis answers again; returns the seq.
async fn publish_when_up(c: &Cluster, room: &str, data: serde_json::Value) -> Result<u64> {
    wait_for("a publish after the Redis restart", DEADLINE, || {
        let data = data.clone();
        async move { http_publish(c, room, data).await.ok() }
    })
    .await
}

/// Streams ride out a Redis restart: with Redis' data kept, nothing is lost;
/// with it gone, the stream says `reset` and goes on from the new seq 1.
async fn streams_survive_redis_restart(strategy: Strategy) -> Result<()> {
    let mut c = Cluster::start_on(Redis::start_persistent().await?, 1, strategy, |_| {}).await?;
    let room = "steady";
    for i in 1..=3 {
        http_publish(&c, room, json!(i)).await?;
    }
    let url = format!("{}/api/rooms/{room}/events", c.gateway.http());
    let mut sse = Sse::open(&url, &[]).await?;
    let mut gw = GatewayClient::connect(c.gateway.http()).await?;
    let mut sub = gw
        .subscribe(SubscribeRequest {
            room: room.into(),
            since: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(http_publish(&c, room, json!(4)).await?, 4);
    assert_eq!(sse.seqs_until(4).await?, vec![4]);
    assert_eq!(next_message(&mut sub).await?.seq, 4);

    c.redis.restart().await?;
    let mut last = publish_when_up(&c, room, json!("back")).await?;
    assert_eq!(last, 5);
    for i in 0..3 {
        last = http_publish(&c, room, json!(i)).await?;
    }
    assert_eq!(sse.seqs_until(last).await?, (5..=last).collect::<Vec<_>>());
    for want in 5..=last {
        assert_eq!(next_message(&mut sub).await?.seq, want);
    }

    // Now a Redis that forgot everything.
    let mut c = Cluster::start(1, strategy).await?;
    for i in 1..=3 {
        http_publish(&c, room, json!(i)).await?;
    }
    let url = format!("{}/api/rooms/{room}/events", c.gateway.http());
    let mut sse = Sse::open(&url, &[("last-event-id", "3")]).await?;
    let mut gw = GatewayClient::connect(c.gateway.http()).await?;
    let mut sub = gw
        .subscribe(SubscribeRequest {
            room: room.into(),
            since: 3,
            ..Default::default()
        })
        .await?
        .into_inner();
    c.redis.restart().await?;
    assert_eq!(publish_when_up(&c, room, json!("fresh")).await?, 1);
    let reset = sse.next().await?;
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    assert_eq!(sse.seqs_until(1).await?, vec![1]);
    let ended = tokio::time::timeout(DEADLINE, sub.next())
        .await?
        .context("stream ended without a status")?;
    assert_eq!(ended.unwrap_err().code(), tonic::Code::Aborted);
    Ok(())
}

#[tokio::test]
async fn streams_survive_redis_restart_pubsub() -> Result<()> {
    streams_survive_redis_restart(Strategy::Pubsub).await
}

#[tokio::test]
async fn streams_survive_redis_restart_sticky() -> Result<()> {
    streams_survive_redis_restart(Strategy::Sticky).await
}

#[tokio::test]
async fn streams_survive_redis_restart_relay() -> Result<()> {
    streams_survive_redis_restart(Strategy::Relay).await
}

/// A Python client generated from `proto/` with grpcio-tools (PyPI)
/// publishes, subscribes and reads history (`deploy/examples/grpc_client.py`).
#[tokio::test]
async fn python_client_from_proto() -> Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("repo root")?;
    let gen_dir = std::env::temp_dir().join(format!("turnout-py-{}", std::process::id()));
    std::fs::create_dir_all(&gen_dir)?;
    let protoc = tokio::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(repo.join("proto/proto"))
        .arg(format!("--python_out={}", gen_dir.display()))
        .arg(format!("--grpc_python_out={}", gen_dir.display()))
        .arg("turnout/v1/turnout.proto")
        .output()
        .await
        .context("python3 not found")?;
    assert!(
        protoc.status.success(),
        "generating Python stubs failed (pip install grpcio-tools): {}",
        String::from_utf8_lossy(&protoc.stderr)
    );
    for strategy in [Strategy::Pubsub, Strategy::Sticky] {
        let c = Cluster::start(2, strategy).await?;
        http_publish(&c, "py", json!("before")).await?;
        let run = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new("python3")
                .arg(repo.join("deploy/examples/grpc_client.py"))
                .arg("--gen")
                .arg(&gen_dir)
                .arg(c.gateway.addr.to_string())
                .args(["py", "--count", "5"])
                .output(),
        )
        .await??;
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{strategy}: {stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(stdout.contains("ok: 5 messages subscribed"), "{stdout}");
        // The messages really are in the room, published by the Python client.
        let (_, h) = http_get_json(&format!("{}/api/rooms/py/history", c.gateway.http())).await?;
        let from_python = h["messages"]
            .as_array()
            .context("messages")?
            .iter()
            .filter(|m| m["from"] == "python")
            .count();
        assert_eq!(from_python, 5);
    }
    let _ = std::fs::remove_dir_all(&gen_dir);
    Ok(())
}

/// gRPC requests are bounded like HTTP bodies: a `Publish` past
/// `max_body_bytes` (and a `Deliver` past the node's `max_frame_bytes`) is
/// refused, where tonic alone would take 4 MiB.
#[tokio::test]
async fn grpc_bodies_are_bounded_like_http_bodies() -> Result<()> {
    let c = Cluster::start(1, Strategy::Pubsub).await?;
    let big = format!("\"{}\"", "x".repeat(100 * 1024));
    let mut gw = GatewayClient::connect(c.gateway.http()).await?;
    let refused = gw
        .publish(PublishRequest {
            room: "big".into(),
            data_json: big.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a publish past max_body_bytes");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    let small = gw
        .publish(PublishRequest {
            room: "big".into(),
            data_json: format!("\"{}\"", "x".repeat(1024)),
            ..Default::default()
        })
        .await?;
    assert_eq!(small.into_inner().seq, 1);
    let mut node = turnout_proto::v1::node_client::NodeClient::connect(c.nodes[0].http()).await?;
    let refused = node
        .deliver(DeliverRequest {
            room: "big".into(),
            data_json: big,
            ..Default::default()
        })
        .await
        .expect_err("a deliver past max_frame_bytes");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    Ok(())
}
