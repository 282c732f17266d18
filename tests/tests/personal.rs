//! Personal rooms: every connection of user U is in `#U`, on any node, in
//! every strategy; the server API publishes there; nobody else may join it.

use anyhow::{Result, bail};
use serde_json::{Value, json};
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_proto::v1::PublishToUserRequest;
use turnout_proto::v1::gateway_client::GatewayClient;
use turnout_tests::*;

/// A connection of `user` on node `i`, once it is in its personal room:
/// joined without a `joined`, before the connection handles a frame.
async fn connect(c: &Cluster, i: usize, user: &str) -> Result<Client> {
    let mut cl = Client::connect(&format!("{}?user={user}", c.nodes[i].ws_url())).await?;
    cl.send_json(json!({"type": "ping"})).await?;
    match cl.recv().await? {
        ServerFrame::Pong => Ok(cl),
        other => bail!("{user}: {other:?} before the pong"),
    }
}

async fn publish_to(c: &Cluster, user: &str, data: Value) -> Result<Value> {
    let (status, body) = http(
        "POST",
        &format!("{}/api/users/{user}/publish", c.gateway.http()),
        Some(json!({"data": data}).to_string()),
        &[],
    )
    .await?;
    let body: Value = serde_json::from_slice(&body)?;
    if status != 200 {
        bail!("publish to {user}: {status} {body}");
    }
    Ok(body)
}

/// The messages `cl` gets, of any room, up to the one carrying `last`
/// (which must be in `#user`): (seq, data) of `#user`'s; any other room's
/// fails.
async fn personal_until(cl: &mut Client, user: &str, last: &Value) -> Result<Vec<(u64, Value)>> {
    let room = format!("#{user}");
    let mut got = Vec::new();
    loop {
        if let ServerFrame::Message {
            room: r, seq, data, ..
        } = cl.recv().await?
        {
            if r != room {
                bail!("a message of {r} reached {user}: {data}");
            }
            let done = &data == last;
            got.push((seq, data));
            if done {
                return Ok(got);
            }
        }
    }
}

async fn check(strategy: Strategy) -> Result<()> {
    let c = Cluster::start(2, strategy).await?;
    let s = strategy;
    let mut ann0 = connect(&c, 0, "ann").await?;
    let mut ann1 = connect(&c, 1, "ann").await?;
    let mut bob = connect(&c, 0, "bob").await?;
    // Nobody else joins it; its own user may (again).
    bob.send_json(json!({"type": "join", "room": "#ann"}))
        .await?;
    match bob
        .expect(
            "the refusal",
            |f| matches!(f, ServerFrame::Error { room: Some(r), .. } if r == "#ann"),
        )
        .await?
    {
        ServerFrame::Error { code, .. } => assert_eq!(code, "forbidden", "{s:?}"),
        _ => unreachable!(),
    }
    ann1.join("#ann").await?;

    let reply = publish_to(&c, "ann", json!("hi")).await?;
    assert_eq!(reply["room"], "#ann", "{s:?}");
    if s == Strategy::Local {
        // Each node has its own copy of the room, numbered by it.
        assert_eq!(
            reply["seqs"].as_object().map(|m| m.len()),
            Some(2),
            "{s:?}: {reply}"
        );
    } else {
        assert_eq!(reply["seq"], 1, "{s:?}: {reply}");
    }
    for (i, cl) in [&mut ann0, &mut ann1].into_iter().enumerate() {
        let got = personal_until(cl, "ann", &json!("hi")).await?;
        assert_eq!(got, [(1, json!("hi"))], "{s:?}: ann on node {i}, once");
    }
    // bob heard nothing of it: his own next message is the first he gets.
    let seq = bob.publish("#bob", json!("mine"), "b-1").await?;
    let got = personal_until(&mut bob, "bob", &json!("mine")).await?;
    assert_eq!(got, [(seq, json!("mine"))], "{s:?}");

    // Over gRPC too.
    let mut gw = GatewayClient::connect(c.gateway.http()).await?;
    let r = gw
        .publish_to_user(PublishToUserRequest {
            user: "ann".into(),
            data_json: "\"over grpc\"".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(r.room, "#ann");
    if s == Strategy::Local {
        assert_eq!(r.node_seqs.len(), 2, "{s:?}");
    } else {
        assert_eq!(r.seq, 2, "{s:?}");
    }
    let got = personal_until(&mut ann1, "ann", &json!("over grpc")).await?;
    assert_eq!(got, [(2, json!("over grpc"))], "{s:?}");

    // Sticky: a client sent through the gateway with its personal room as
    // the hint lands on a node. Sticky and relay: nothing claims the room,
    // published to and joined on two nodes (it goes over its channel).
    if s == Strategy::Sticky {
        let url = format!("{}?room=%23ann&user=ann", c.gateway.ws_url());
        let mut hinted = Client::connect(&url).await?;
        hinted.send_json(json!({"type": "ping"})).await?;
        hinted
            .expect("pong", |f| matches!(f, ServerFrame::Pong))
            .await?;
    }
    if s == Strategy::Relay {
        // Nor does a follower's periodic check of the rooms it holds
        // (it attaches a room that is not attached): two checks from now,
        // one has run from start to end since.
        for n in &c.nodes {
            let from = metric(n, "turnout_relay_rechecks_total").await?;
            wait_for(
                "two rechecks",
                turnout_common::relay::RECHECK * 3,
                || async {
                    let now = metric(n, "turnout_relay_rechecks_total").await.ok()?;
                    (now >= from + 2.0).then_some(())
                },
            )
            .await?;
        }
    }
    if matches!(s, Strategy::Sticky | Strategy::Relay) {
        let mut con = c.redis.con().await?;
        let owner: Option<String> = redis::cmd("HGET")
            .arg(turnout_proto::keys::room_owner("#ann"))
            .arg("node")
            .query_async(&mut con)
            .await?;
        assert_eq!(owner, None, "a personal room has no owner");
    }

    // Missed while away: recovered with `since`, like any room's.
    drop(ann0);
    publish_to(&c, "ann", json!("while away")).await?;
    let mut back = connect(&c, 0, "ann").await?;
    back.send_json(json!({"type": "leave", "room": "#ann"}))
        .await?;
    back.expect("left", |f| matches!(f, ServerFrame::Left { .. }))
        .await?;
    back.send_json(json!({"type": "join", "room": "#ann", "since": 2}))
        .await?;
    let got = personal_until(&mut back, "ann", &json!("while away")).await?;
    assert_eq!(got, [(3, json!("while away"))], "{s:?}");

    // A server's stream of the room at the gateway (SSE) hears what is
    // published to the user (in relay, on the room's channel: it has no
    // owner to follow). Local's rooms are each node's own.
    if s != Strategy::Local {
        let url = format!("{}/api/rooms/%23ann/events", c.gateway.http());
        let mut sse = Sse::open(&url, &[]).await?;
        assert_eq!(sse.status, 200, "{s:?}");
        let reply = publish_to(&c, "ann", json!("streamed")).await?;
        assert_eq!(reply["seq"], 4, "{s:?}: {reply}");
        assert_eq!(sse.seqs_until(4).await?, [4], "{s:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_rooms_sticky() -> Result<()> {
    check(Strategy::Sticky).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_rooms_pubsub() -> Result<()> {
    check(Strategy::Pubsub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_rooms_relay() -> Result<()> {
    check(Strategy::Relay).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_rooms_local() -> Result<()> {
    check(Strategy::Local).await
}
