//! Hostile clients and anonymous callers: nobody can hurt others or make
//! the cluster keep state by flooding joins, hoarding rooms, asking for
//! huge replays, opening connections from one address, routing fresh rooms
//! anonymously, or sending frames over the limit.

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

const SECRET: &str = "abuse-test-secret-0123456789";
const API_KEY: &str = "abuse-test-api-key-0123456789";

fn is_rate_limited(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Error { code, .. } if code == "rate_limited")
}

/// A connection that joins and leaves as fast as it can is refused
/// (`rate_limited`), then closed (1008); a neighbour on the same node is
/// served throughout. New rooms per minute are bounded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_floods_are_limited() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| {
        s.max_join_rate = 5.0;
        s.max_join_burst = 5;
        s.max_rooms_per_minute = 3;
    })
    .await?;
    let url = c.nodes[0].ws_url();
    let mut neighbour = Client::connect(&url).await?;
    neighbour.join("calm").await?;

    let mut hoarder = Client::connect(&url).await?;
    for room in ["r1", "r2", "r3"] {
        hoarder.join(room).await?;
    }
    hoarder
        .send_json(json!({"type": "join", "room": "r4"}))
        .await?;
    match hoarder.recv().await? {
        ServerFrame::Error { code, message, .. } => {
            assert_eq!(code, "rate_limited");
            assert!(message.contains("different rooms"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    let mut flooder = Client::connect(&url).await?;
    for _ in 0..200 {
        flooder
            .send_json(json!({"type": "join", "room": "flood"}))
            .await?;
        flooder
            .send_json(json!({"type": "leave", "room": "flood"}))
            .await?;
    }
    flooder.expect("rate_limited", is_rate_limited).await?;
    let (_, code) = flooder.recv_close().await?;
    assert_eq!(code, Some(1008), "a connection that keeps at it is closed");
    // The neighbour was served all along.
    assert_eq!(
        neighbour.publish("calm", json!("still here"), "n1").await?,
        1
    );
    assert!(metric(&c.nodes[0], "turnout_rate_limited_total").await? > 0.0);
    Ok(())
}

/// A join with `since` far back sends at most `max_replay_bytes`; the
/// client asks for the rest and ends with every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_come_in_bounded_pages() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| s.max_replay_bytes = 2048).await?;
    let url = c.nodes[0].ws_url();
    let mut writer = Client::connect(&url).await?;
    writer.join("big").await?;
    for i in 1..=60u64 {
        writer
            .publish(
                "big",
                json!({"i": i, "pad": "x".repeat(100)}),
                &i.to_string(),
            )
            .await?;
    }
    // A raw join from 0 gets a cut replay, and says where it was cut.
    let mut raw = Client::connect(&url).await?;
    raw.send_json(json!({"type": "join", "room": "big", "since": 0}))
        .await?;
    let until = match raw.recv().await? {
        ServerFrame::Joined {
            replay_until, seq, ..
        } => {
            assert_eq!(seq, 60);
            replay_until.expect("the replay was cut")
        }
        other => panic!("{other:?}"),
    };
    assert!(until < 60);
    assert_eq!(
        raw.messages_until("big", until).await?,
        (1..=until).collect::<Vec<_>>()
    );
    // A client that follows the protocol gets everything, page by page.
    let mut reader = Client::connect(&url).await?;
    let mut since = 0u64;
    let mut got = Vec::new();
    loop {
        reader
            .send_json(json!({"type": "join", "room": "big", "since": since}))
            .await?;
        let cut = match reader
            .expect("joined", |f| matches!(f, ServerFrame::Joined { .. }))
            .await?
        {
            ServerFrame::Joined { replay_until, .. } => replay_until,
            _ => unreachable!(),
        };
        let to = cut.unwrap_or(60);
        got.extend(reader.messages_until("big", to).await?);
        since = to;
        if cut.is_none() {
            break;
        }
        reader
            .send_json(json!({"type": "leave", "room": "big"}))
            .await?;
        reader
            .expect("left", |f| matches!(f, ServerFrame::Left { .. }))
            .await?;
    }
    assert_eq!(got, (1..=60).collect::<Vec<_>>());
    assert!(metric(&c.nodes[0], "turnout_replays_cut_total").await? >= 2.0);
    Ok(())
}

/// A node counts connections per client address (an IPv6 /64 counts as
/// one), and believes an address a gateway vouches for only next to the
/// internal token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_on_nodes() -> Result<()> {
    let redis = Redis::start().await?;
    let mut s = node_settings(&redis.url(), Strategy::Pubsub);
    s.max_connections_per_ip = 2;
    s.internal_token = Some("abuse-internal-token-0123".into());
    let node = start_node(s).await;
    let _a = Client::connect(&node.ws_url()).await?;
    let _b = Client::connect(&node.ws_url()).await?;
    let refused = |headers: Vec<(&'static str, String)>| {
        let url = node.ws_url();
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut req = url.into_client_request().unwrap();
            for (k, v) in headers {
                req.headers_mut().insert(k, v.parse().unwrap());
            }
            match tokio_tungstenite::connect_async(req).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Ok(_) => 101,
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(refused(vec![]).await, 429);
    // A client claiming another address is not believed.
    assert_eq!(
        refused(vec![("x-turnout-client-ip", "203.0.113.9".into())]).await,
        429
    );
    // A gateway (with the token) vouching for another client is.
    assert_eq!(
        refused(vec![
            ("x-turnout-client-ip", "203.0.113.9".into()),
            ("x-internal-token", "abuse-internal-token-0123".into()),
        ])
        .await,
        101
    );
    Ok(())
}

/// An address opens connections at most `max_connect_rate_per_ip` per
/// second past a burst: one closed for abuse cannot come straight back with
/// fresh per-connection budgets, closing does not give the budget back, and
/// it refills with time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_fast_is_refused() -> Result<()> {
    let redis = Redis::start().await?;
    let mut s = node_settings(&redis.url(), Strategy::Pubsub);
    s.max_connect_burst_per_ip = 3;
    // A token every 5 s: the four connections below need not come within
    // one second, however busy the machine.
    s.max_connect_rate_per_ip = 0.2;
    let node = start_node(s).await;
    for _ in 0..3 {
        drop(Client::connect(&node.ws_url()).await?);
    }
    match tokio_tungstenite::connect_async(node.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 429);
            let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default());
            assert!(body.contains("too fast"), "{body}");
        }
        other => panic!("a fourth connection at once was not refused: {other:?}"),
    }
    assert!(metric(&node, "turnout_rate_limited_total").await? >= 1.0);
    wait_for("a refilled bucket", DEADLINE, || async {
        Client::connect(&node.ws_url()).await.ok().map(drop)
    })
    .await?;
    Ok(())
}

/// A connection closed for abuse (1008) costs its address a second of its
/// opening rate (at least one connection): it cannot come back at once
/// with a fresh budget as often as its burst would allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_costs_the_address() -> Result<()> {
    let redis = Redis::start().await?;
    let mut s = node_settings(&redis.url(), Strategy::Pubsub);
    s.max_connect_burst_per_ip = 4;
    s.max_connect_rate_per_ip = 0.01;
    s.max_join_rate = 1.0;
    s.max_join_burst = 1;
    let node = start_node(s).await;
    let mut flooder = Client::connect(&node.ws_url()).await?;
    for _ in 0..200 {
        if flooder
            .send_json(json!({"type": "join", "room": "flood"}))
            .await
            .is_err()
        {
            break;
        }
        let _ = flooder
            .send_json(json!({"type": "leave", "room": "flood"}))
            .await;
    }
    assert_eq!(flooder.recv_close().await?.1, Some(1008));
    wait_for("the abusive close counted", DEADLINE, || async {
        (metric(&node, "turnout_abusive_closed_total").await.ok()? >= 1.0).then_some(())
    })
    .await?;
    // 4 at once, 1 taken by the flooder, 1 charged for its abuse.
    let mut held = Vec::new();
    loop {
        match tokio_tungstenite::connect_async(node.ws_url()).await {
            Ok((ws, _)) => held.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 429);
                break;
            }
            Err(e) => return Err(e.into()),
        }
        assert!(held.len() <= 2, "abuse cost the address nothing");
    }
    assert_eq!(held.len(), 2);
    Ok(())
}

/// With auth on, `/api/route` needs a client token that may join the room,
/// or the API key; placements nobody joins do not stay; a router writes at
/// most `max_placement_rate` placements per second and answers the rest
/// with an unwritten hint, and the node claims such a room at its first
/// join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_routes_write_nothing() -> Result<()> {
    let redis = Redis::start().await?;
    let url = redis.url();
    let mut rs = router_settings(&url, Strategy::Sticky);
    rs.max_placement_rate = 1.0;
    let router = start_router_with(rs).await;
    let node = start_node(node_settings(&url, Strategy::Sticky)).await;
    let mut gs = gateway_settings(&url, Strategy::Sticky, &[&router]);
    gs.jwt_secret = Some(SECRET.into());
    gs.api_key = Some(API_KEY.into());
    let gateway = start_gateway_with(gs).await;
    let route = |room: &str, headers: Vec<(&'static str, String)>| {
        let u = format!("{}/api/route?room={room}", gateway.http());
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http("GET", &u, None, &h).await.unwrap().0
        }
    };
    wait_for("the gateway to see the node", DEADLINE, || async {
        (route("x", vec![("x-api-key", API_KEY.into())]).await == 200).then_some(())
    })
    .await?;
    let token = |rooms: serde_json::Value| {
        hs256(
            json!({"sub": "u1", "exp": unix_now() + 600, "rooms": rooms}),
            SECRET,
        )
    };
    assert_eq!(route("fresh", vec![]).await, 401);
    let bearer = |t: String| vec![("authorization", format!("Bearer {t}"))];
    assert_eq!(route("fresh", bearer(token(json!(["other"])))).await, 403);
    assert_eq!(route("fresh", bearer(token(json!(["fresh"])))).await, 200);
    let mut con = redis.con().await?;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(turnout_proto::keys::room_claims("fresh"))
        .query_async(&mut con)
        .await?;
    assert!(
        pttl > 0 && pttl <= 60_000,
        "a placement nobody joined lapses within a minute: {pttl}"
    );
    // Past the budget (1/s, burst 2), routes are hints: nothing is written.
    let deferred_before = metric(&router, "turnout_placements_deferred_total").await?;
    let started = std::time::Instant::now();
    for i in 0..5 {
        assert_eq!(
            route(&format!("hint-{i}"), vec![("x-api-key", API_KEY.into())]).await,
            200
        );
    }
    // At most the burst, plus what the rate refilled meanwhile, was written.
    let budget = 2 + started.elapsed().as_secs_f64().ceil() as usize;
    let owners: Vec<String> = redis::cmd("KEYS")
        .arg("turnout:{hint-*}:owner")
        .query_async(&mut con)
        .await?;
    assert!(
        owners.len() <= budget.min(4),
        "{owners:?} past a budget of {budget}"
    );
    let deferred = metric(&router, "turnout_placements_deferred_total").await? - deferred_before;
    assert_eq!(
        deferred as usize,
        5 - owners.len(),
        "every route not written was a hint"
    );
    // A member joining a hinted room at the node claims it there.
    let mut m = Client::connect(&node.ws_url()).await?;
    m.join("hint-4").await?;
    let owner: Option<String> = redis::cmd("HGET")
        .arg(turnout_proto::keys::room_owner("hint-4"))
        .arg("node")
        .query_async(&mut con)
        .await?;
    assert_eq!(owner.as_deref(), Some(m.node()));
    Ok(())
}

/// A frame over `max_frame_bytes`, through the gateway too: the client
/// sees close 1009, not a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_get_1009_through_the_gateway() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| s.max_frame_bytes = 4096).await?;
    for url in [c.gateway.ws_url(), c.nodes[0].ws_url()] {
        for _ in 0..5 {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
            let _welcome = ws.next().await;
            let big = json!({"type": "publish", "room": "r", "data": "x".repeat(1 << 20)});
            ws.send(Message::Text(big.to_string().into())).await?;
            // And more behind it: input the server has not read when it
            // closes turns its close into a reset, unless it reads on.
            for _ in 0..50 {
                if ws
                    .send(Message::Text(r#"{"type":"ping"}"#.into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let code = loop {
                match tokio::time::timeout(DEADLINE, ws.next()).await? {
                    Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => panic!("{url}: no close frame, {e}"),
                    None => panic!("{url}: closed without a close frame"),
                }
            };
            assert_eq!(code, Some(1009), "{url}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_per_connection_are_bounded_and_the_refusal_names_the_room() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| s.max_rooms_per_conn = 2).await?;
    let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
    a.join("one").await?;
    a.join("two").await?;
    a.send_json(json!({"type": "join", "room": "three"}))
        .await?;
    match a.recv().await? {
        ServerFrame::Error { code, room, .. } => {
            assert_eq!(code, "too_many_rooms");
            assert_eq!(room.as_deref(), Some("three"));
        }
        other => panic!("{other:?}"),
    }
    // The connection stays, and its rooms with it.
    assert_eq!(a.join("one").await?, 0);
    Ok(())
}

/// Every frame costs: a client flooding pings, refreshes, garbage or
/// publishes to rooms it never joined is refused (`rate_limited`; refused
/// frames are strikes) and closed 1008, while a neighbour is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_cheap_or_refused_frames_are_limited() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| {
        let d = turnout_ws_node::Settings::default();
        s.max_frame_rate = d.max_frame_rate;
        s.max_frame_burst = d.max_frame_burst;
        s.max_join_rate = d.max_join_rate;
        s.max_join_burst = d.max_join_burst;
    })
    .await?;
    let url = c.nodes[0].ws_url();
    let mut neighbour = Client::connect(&url).await?;
    neighbour.join("calm").await?;
    let floods: [(&str, serde_json::Value); 4] = [
        ("pings", json!({"type": "ping"})),
        ("garbage", json!("not an object")),
        ("unknown types", json!({"type": "shout"})),
        (
            "publishes to a room not joined",
            json!({"type": "publish", "room": "elsewhere", "data": 1}),
        ),
    ];
    for (what, frame) in floods {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        let text = frame.to_string();
        let mut sent = 0;
        // Sends until the node closes the connection (or 5000 frames).
        while sent < 5000 {
            if ws.send(Message::Text(text.clone().into())).await.is_err() {
                break;
            }
            sent += 1;
        }
        let mut code = None;
        let mut limited = 0;
        while let Ok(Some(m)) = tokio::time::timeout(DEADLINE, ws.next()).await {
            match m {
                Ok(Message::Close(f)) => {
                    code = f.map(|f| u16::from(f.code));
                    break;
                }
                Ok(Message::Text(t)) if t.contains("rate_limited") => limited += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        assert_eq!(
            code,
            Some(1008),
            "{what}: closed for abuse ({sent} sent, {limited} limited)"
        );
        assert_eq!(
            neighbour
                .publish("calm", json!(what), what)
                .await
                .map(|_| ())
                .ok(),
            Some(()),
            "the neighbour is served during the flood of {what}"
        );
    }
    wait_for("four connections counted as abusive", DEADLINE, || async {
        (metric(&c.nodes[0], "turnout_abusive_closed_total")
            .await
            .ok()?
            >= 4.0)
            .then_some(())
    })
    .await?;
    Ok(())
}

/// A reconnect storm is admitted at the node's pace (`max_accept_rate`):
/// past its burst, upgrades get 503 `busy` with a `Retry-After`, straight
/// at the node and through the gateway; connections already open are not
/// disturbed, and a retry a little later gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_is_admitted_at_the_nodes_pace() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| {
        s.max_accept_rate = 2.0;
        s.max_accept_burst = 3;
    })
    .await?;
    let url = c.nodes[0].ws_url();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::connect(&url).await?);
    }
    let busy = tokio_tungstenite::connect_async(url.as_str()).await;
    match busy {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 503);
            assert_eq!(r.headers()["x-turnout-refusal"], "busy");
            assert!(r.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503 busy, got {other:?}"),
    }
    assert_eq!(upgrade_status(&c.gateway.ws_url()).await?, 503);
    held[0].join("still").await?;
    wait_for("a slot at the node's pace", DEADLINE, || async {
        (upgrade_status(&url).await.ok()? == 101).then_some(())
    })
    .await?;
    Ok(())
}

/// A join or publish refused for sending frames too fast names its room
/// (and the publish its id): a client can tell which one to retry, instead
/// of waiting on it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_refused_for_its_rate_names_what_it_refused() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| {
        // One frame back every ten seconds: none while the test sends.
        s.max_frame_rate = 0.1;
        s.max_frame_burst = 3;
    })
    .await?;
    let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
    a.join("fast").await?; // one frame of the burst
    for i in 0..6 {
        a.send_json(json!({"type": "publish", "room": "fast", "data": i, "id": format!("p{i}")}))
            .await?;
    }
    a.send_json(json!({"type": "join", "room": "other"}))
        .await?;
    let mut refused = Vec::new();
    while refused.len() < 5 {
        match a
            .expect("a refusal", |f| matches!(f, ServerFrame::Error { .. }))
            .await?
        {
            ServerFrame::Error { code, room, id, .. } => {
                assert_eq!(code, "rate_limited");
                refused.push((room.unwrap_or_default(), id.unwrap_or_default()));
            }
            _ => unreachable!(),
        }
    }
    // Two publishes fit the burst after the join; the rest are refused,
    // each by name.
    let want: Vec<(String, String)> = [
        ("fast", "p2"),
        ("fast", "p3"),
        ("fast", "p4"),
        ("fast", "p5"),
        ("other", ""),
    ]
    .iter()
    .map(|(r, i)| (r.to_string(), i.to_string()))
    .collect();
    assert_eq!(refused, want);
    Ok(())
}
