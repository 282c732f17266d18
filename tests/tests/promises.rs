//! Promises the docs make that no other test held the server to: presence
//! past `presence_limit`, anonymous ids, `/readyz` while draining or with a
//! lapsed lease, a strategy conflict, a router that is down, the drain's
//! grace bound, `room_ttl`.

use anyhow::Result;
use futures_util::SinkExt;
use serde_json::json;
use std::time::{Duration, Instant};
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

/// `joined` lists at most `presence_limit` users, and a room with more
/// connections than that sends no join or leave events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_stops_at_presence_limit() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| s.presence_limit = 2).await?;
    let url = |u: &str| format!("{}?user={u}", c.nodes[0].ws_url());
    let mut a = Client::connect(&url("a")).await?;
    a.join("crowd").await?;
    let mut b = Client::connect(&url("b")).await?;
    b.join("crowd").await?;
    // Two connections: events flow.
    a.expect("b's join", |f| {
        matches!(f, ServerFrame::Presence { user, event, .. } if user == "b" && event == "join")
    })
    .await?;
    let mut third = Client::connect(&url("c")).await?;
    third
        .send_json(json!({"type": "join", "room": "crowd"}))
        .await?;
    match third
        .expect("joined", |f| matches!(f, ServerFrame::Joined { .. }))
        .await?
    {
        ServerFrame::Joined { presence, .. } => assert!(presence.len() <= 2, "{presence:?}"),
        _ => unreachable!(),
    }
    // Past the limit, no event. A session takes its frames in turn, so
    // `c`'s publish goes out after its join announced itself (if it did),
    // on the room's channel too: the next of either that `a` sees is the
    // message.
    third
        .send_json(json!({"type": "publish", "room": "crowd", "data": "after", "id": "p1"}))
        .await?;
    third
        .expect("the ack", |f| matches!(f, ServerFrame::Ack { .. }))
        .await?;
    let f = a
        .expect("the next frame", |f| {
            matches!(
                f,
                ServerFrame::Message { .. } | ServerFrame::Presence { .. }
            )
        })
        .await?;
    assert!(
        matches!(f, ServerFrame::Message { .. }),
        "no presence event past the limit: {f:?}"
    );
    Ok(())
}

/// A client without a user id (and without a token) is `anon-` and 16 hex
/// digits, random per connection: two never share one, on one node or two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_users_get_random_ids() -> Result<()> {
    let c = Cluster::start(2, Strategy::Pubsub).await?;
    let mut one = Client::connect(&c.nodes[0].ws_url()).await?;
    one.join("anon").await?;
    let mut two = Client::connect(&c.nodes[1].ws_url()).await?;
    two.join("anon").await?;
    let (_, v) = http_get_json(&format!("{}/api/rooms/anon/presence", c.gateway.http())).await?;
    let users: Vec<&str> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    assert_eq!(users.len(), 2, "{v}");
    for u in &users {
        let hex = u.strip_prefix("anon-").unwrap_or("");
        assert!(
            hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{u}"
        );
    }
    Ok(())
}

/// `/readyz` on a node says 503 while it drains (it takes nobody new), and
/// the drain ends within `drain_grace` even when a client never answers
/// the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_is_not_ready_and_stops_within_its_grace() -> Result<()> {
    let redis = Redis::start().await?;
    let grace = Duration::from_millis(1500);
    let mut s = node_settings(&redis.url(), Strategy::Pubsub);
    s.drain_grace = grace;
    let node = start_node(s).await;
    // A client that never reads: it cannot take its `reconnect` or close.
    let (mut deaf, _) = tokio_tungstenite::connect_async(node.ws_url()).await?;
    deaf.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "join", "room": "deaf"}).to_string().into(),
    ))
    .await?;
    let ready = format!("{}/readyz", node.http());
    assert_eq!(http("GET", &ready, None, &[]).await?.0, 200);
    let started = Instant::now();
    node.stop.cancel();
    let why = wait_for("/readyz to say draining", DEADLINE, || {
        let ready = ready.clone();
        async move {
            let (status, body) = http("GET", &ready, None, &[]).await.ok()?;
            (status == 503).then(|| String::from_utf8_lossy(&body).into_owned())
        }
    })
    .await?;
    assert!(why.contains("draining"), "{why}");
    tokio::time::timeout(grace + Duration::from_secs(5), node.task)
        .await
        .map_err(|_| anyhow::anyhow!("the drain did not end within its grace"))??;
    // The grace, and the few seconds a closing connection may take.
    assert!(
        started.elapsed() < grace + Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(deaf);
    Ok(())
}

/// A node that lost contact with Redis past its lease says so on
/// `/readyz` (503, naming the lease) until it has checked what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_lapsed_lease_is_not_ready() -> Result<()> {
    let redis = Redis::start().await?;
    let proxy = Proxy::start(format!("127.0.0.1:{}", redis.port).parse()?).await?;
    let mut s = node_settings(&proxy.url(), Strategy::Pubsub);
    s.heartbeat_interval = Duration::from_millis(200);
    s.heartbeat_ttl = Duration::from_secs(1);
    s.presence_ttl = Duration::from_secs(1);
    let node = start_node(s).await;
    let ready = format!("{}/readyz", node.http());
    assert_eq!(http("GET", &ready, None, &[]).await?.0, 200);
    proxy.cut();
    let why = wait_for("/readyz to name the lease", DEADLINE, || {
        let ready = ready.clone();
        async move {
            let (status, body) = http("GET", &ready, None, &[]).await.ok()?;
            let body = String::from_utf8_lossy(&body).into_owned();
            (status == 503 && body.contains("lease")).then_some(body)
        }
    })
    .await?;
    assert!(why.contains("lapsed"), "{why}");
    assert_eq!(upgrade_status(&node.ws_url()).await?, 503);
    proxy.sever();
    proxy.heal();
    wait_for("/readyz again", DEADLINE, || {
        let ready = ready.clone();
        async move { (http("GET", &ready, None, &[]).await.ok()?.0 == 200).then_some(()) }
    })
    .await?;
    assert!(metric(&node, "turnout_lease_lapses_total").await? >= 1.0);
    Ok(())
}

/// A node of another strategy in the cluster: the gateway names the
/// conflict in `/api/cluster` and fails `/readyz` (503) rather than mix
/// them silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_conflict_fails_readiness_at_the_gateway() -> Result<()> {
    let c = Cluster::start(1, Strategy::Pubsub).await?;
    let ready = format!("{}/readyz", c.gateway.http());
    assert_eq!(http("GET", &ready, None, &[]).await?.0, 200);
    let _odd = start_node(node_settings(&c.redis.url(), Strategy::Sticky)).await;
    let why = wait_for("/readyz to fail on the conflict", DEADLINE, || {
        let ready = ready.clone();
        async move {
            let (status, body) = http("GET", &ready, None, &[]).await.ok()?;
            (status == 503).then(|| String::from_utf8_lossy(&body).into_owned())
        }
    })
    .await?;
    assert!(why.contains("strateg"), "{why}");
    let (_, v) = http_get_json(&format!("{}/api/cluster", c.gateway.http())).await?;
    assert!(!v["conflicts"].as_array().unwrap().is_empty(), "{v}");
    Ok(())
}

/// A gateway given two routers, the first of which is down, follows the
/// second: it is ready, and routes clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_the_next_router_when_one_is_down() -> Result<()> {
    let redis = Redis::start().await?;
    let router = start_router(&redis.url(), Strategy::Sticky).await;
    let _node = start_node(node_settings(&redis.url(), Strategy::Sticky)).await;
    let mut gs = gateway_settings(&redis.url(), Strategy::Sticky, &[&router]);
    gs.router_url = format!("http://127.0.0.1:{},{}", free_port(), router.http());
    let gateway = start_gateway_with(gs).await;
    live_nodes(&gateway, 1).await?;
    let (status, route) = http_get_json(&format!("{}/api/route?room=next", gateway.http())).await?;
    assert_eq!(status, 200, "{route}");
    let mut c = Client::connect(&format!("{}?room=next", gateway.ws_url())).await?;
    c.join("next").await?;
    Ok(())
}

/// An idle room's keys expire after `room_ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_rooms_keys_expire_after_room_ttl() -> Result<()> {
    let ttl = Duration::from_secs(2);
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| s.room_ttl = ttl).await?;
    let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
    a.join("brief").await?;
    a.publish("brief", json!(1), "b-1").await?;
    let mut con = c.redis.con().await?;
    for key in [
        turnout_proto::keys::room_seq("brief"),
        turnout_proto::keys::room_history("brief"),
        turnout_proto::keys::room_epoch("brief"),
    ] {
        let left: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut con).await?;
        assert!(
            left > 0 && left <= ttl.as_millis() as i64,
            "{key}: {left} ms"
        );
    }
    drop(a);
    wait_for("the room's keys to expire", DEADLINE, || {
        let mut con = con.clone();
        async move {
            let n: i64 = redis::cmd("EXISTS")
                .arg(turnout_proto::keys::room_seq("brief"))
                .arg(turnout_proto::keys::room_history("brief"))
                .query_async(&mut con)
                .await
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await?;
    Ok(())
}
