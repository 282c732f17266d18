//! The pubsub strategy end to end: real Redis, real sockets, in-process processes.

use anyhow::Result;
use serde_json::json;
use std::time::Duration;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

async fn numsub(redis: &Redis, room: &str) -> Result<i64> {
    let mut con = redis.con().await?;
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(turnout_proto::keys::room_channel(room))
        .query_async(&mut con)
        .await?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_without_duplicates() -> Result<()> {
    let c = Cluster::start(3, Strategy::Pubsub).await?;
    // In a cluster the gateway serves the demo page, not the nodes (a
    // `local` node alone serves it: tests/tests/local.rs).
    let demo = |body: &[u8]| String::from_utf8_lossy(body).contains("turnout demo");
    let (_, body) = http("GET", &format!("{}/", c.nodes[0].http()), None, &[]).await?;
    assert!(!demo(&body), "a pubsub node's / is not the demo page");
    let (status, body) = http("GET", &format!("{}/", c.gateway.http()), None, &[]).await?;
    assert!(status == 200 && demo(&body), "the gateway's / is");
    let mut a1 = Client::connect(&c.nodes[0].ws_url()).await?;
    let mut a2 = Client::connect(&c.nodes[0].ws_url()).await?;
    let mut b = Client::connect(&c.nodes[1].ws_url()).await?;
    assert_ne!(a1.node(), b.node());
    for cl in [&mut a1, &mut a2, &mut b] {
        assert_eq!(cl.join("r1").await?, 0);
    }
    let n = 50;
    let mut last = 0;
    for i in 0..n {
        last = a1.publish("r1", json!({"i": i}), &format!("c-{i}")).await?;
    }
    assert_eq!(last, n);
    // Every member, on the publisher's node or not, sees 1..=n exactly once, in order.
    for cl in [&mut a1, &mut a2, &mut b] {
        let seqs = cl.messages_until("r1", last).await?;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "client on {}", cl.node());
    }
    // And nothing more arrives: a marker published afterwards is the very next frame.
    let marker = b.publish("r1", json!("end"), "end").await?;
    for cl in [&mut a1, &mut a2] {
        match cl.recv().await? {
            ServerFrame::Message { seq, node, .. } => {
                assert_eq!(seq, marker);
                assert_eq!(node, b.node(), "message names its origin node");
            }
            other => panic!("expected the marker, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publish_reaches_every_node_and_clients_via_gateway() -> Result<()> {
    let c = Cluster::start(3, Strategy::Pubsub).await?;
    // Clients through the gateway spread over the nodes (least loaded first).
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut cl = Client::connect(&c.gateway.ws_url()).await?;
        cl.join("lobby").await?;
        clients.push(cl);
    }
    let mut nodes: Vec<_> = clients.iter().map(|c| c.node().to_owned()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(
        nodes.len(),
        3,
        "least-loaded placement spreads 3 clients over 3 nodes"
    );

    let (status, body) = http(
        "POST",
        &format!("{}/api/rooms/lobby/publish", c.gateway.http()),
        Some(json!({"data": {"text": "hello"}}).to_string()),
        &[],
    )
    .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seq = serde_json::from_slice::<serde_json::Value>(&body)?["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(seq, 1);
    for cl in &mut clients {
        // (Presence events of the later joiners may come first.)
        match cl
            .expect("the message", |f| matches!(f, ServerFrame::Message { .. }))
            .await?
        {
            ServerFrame::Message {
                seq: s, data, from, ..
            } => {
                assert_eq!(s, seq);
                assert_eq!(data["text"], "hello");
                assert_eq!(from, "api");
            }
            other => panic!("expected message, got {other:?}"),
        }
    }
    // History over HTTP has it too.
    let (status, h) = http_get_json(&format!(
        "{}/api/rooms/lobby/history?since=0",
        c.gateway.http()
    ))
    .await?;
    assert_eq!(status, 200);
    assert_eq!(h["seq"], 1);
    assert_eq!(h["messages"][0]["data"]["text"], "hello");
    // Bad input gets a clear error.
    let (status, body) = http(
        "POST",
        &format!("{}/api/rooms/lobby/publish", c.gateway.http()),
        Some("{\"nodata\":1}".into()),
        &[],
    )
    .await?;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("bad_json"));
    let (status, _) = http(
        "POST",
        &format!("{}/api/rooms/bad%20room/publish", c.gateway.http()),
        Some(json!({"data": 1}).to_string()),
        &[],
    )
    .await?;
    assert_eq!(status, 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_only_while_the_room_has_members() -> Result<()> {
    let c = Cluster::start(2, Strategy::Pubsub).await?;
    assert_eq!(numsub(&c.redis, "quiet").await?, 0);
    let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
    let mut a2 = Client::connect(&c.nodes[0].ws_url()).await?;
    a.join("quiet").await?;
    a2.join("quiet").await?;
    assert_eq!(
        numsub(&c.redis, "quiet").await?,
        1,
        "one subscription per node, not per client"
    );
    a.send_json(json!({"type": "leave", "room": "quiet"}))
        .await?;
    a.expect("left", |f| matches!(f, ServerFrame::Left { .. }))
        .await?;
    assert_eq!(
        numsub(&c.redis, "quiet").await?,
        1,
        "still a member on the node"
    );
    drop(a2); // the last member goes away by closing its socket
    wait_for("unsubscribe after the room emptied", DEADLINE, || async {
        (numsub(&c.redis, "quiet").await.ok()? == 0).then_some(())
    })
    .await?;
    // Joining again subscribes again, and delivery works.
    a.join("quiet").await?;
    assert_eq!(numsub(&c.redis, "quiet").await?, 1);
    let seq = a.publish("quiet", json!(1), "x").await?;
    assert_eq!(a.messages_until("quiet", seq).await?, vec![seq]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_since_replays_the_missed_range() -> Result<()> {
    let c = Cluster::start(2, Strategy::Pubsub).await?;
    let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
    a.join("h").await?;
    for i in 0..10 {
        a.publish("h", json!(i), &i.to_string()).await?;
    }
    let mut b = Client::connect(&c.nodes[1].ws_url()).await?;
    b.send_json(json!({"type": "join", "room": "h", "since": 4}))
        .await?;
    match b.recv().await? {
        ServerFrame::Joined { seq, recovered, .. } => {
            assert_eq!(seq, 10);
            assert_eq!(recovered, Some(true));
        }
        other => panic!("expected joined, got {other:?}"),
    }
    let seq = a.publish("h", json!("live"), "live").await?;
    assert_eq!(
        b.messages_until("h", seq).await?,
        (5..=11).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_connection_stays() -> Result<()> {
    let c = Cluster::start(1, Strategy::Pubsub).await?;
    let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
    for (text, code) in [
        ("not json", "bad_json"),
        ("{}", "unknown_type"),
        (r#"{"type":"fly"}"#, "unknown_type"),
        (r#"{"type":"join"}"#, "bad_frame"),
        (r#"{"type":"join","room":"has space"}"#, "bad_name"),
        (r#"{"type":"publish","room":"r","data":1}"#, "not_joined"),
        (r#"{"type":"leave","room":"r"}"#, "not_joined"),
    ] {
        a.send_text(text.into()).await?;
        match a.recv().await? {
            ServerFrame::Error { code: got, .. } => assert_eq!(got, code, "for {text}"),
            other => panic!("for {text}: expected error, got {other:?}"),
        }
    }
    a.send_json(json!({"type": "ping"})).await?;
    assert_eq!(a.recv().await?, ServerFrame::Pong);
    // Joining twice answers joined again.
    a.join("r").await?;
    a.join("r").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stop_leaves_the_live_set_at_once_and_drains_clients() -> Result<()> {
    let mut c = Cluster::start(2, Strategy::Pubsub).await?;
    let mut a = Client::connect(&c.nodes[1].ws_url()).await?;
    a.join("d").await?;
    let node = c.nodes.pop().unwrap();
    let started = std::time::Instant::now();
    node.stop.cancel();
    let (frames, code) = a.recv_close().await?;
    assert!(
        frames.contains(&ServerFrame::Reconnect {
            reason: "draining".into()
        }),
        "{frames:?}"
    );
    assert_eq!(code, Some(1012));
    // It ran to its end without an error (a failed run panics its task).
    node.task.await?;
    // The node deregistered itself on the way out: its heartbeat record is
    // gone at once, where a crash leaves it for its TTL (3 s) and a router
    // needs two refused probes to drop it.
    let id = a.node().to_owned();
    let mut con = c.redis.con().await?;
    let (record, member): (bool, bool) = redis::pipe()
        .exists(turnout_proto::keys::node(&id))
        .sismember(turnout_proto::keys::NODES, &id)
        .query_async(&mut con)
        .await?;
    assert_eq!((record, member), (false, false), "{id} left the live set");
    // And the gateway hears of it from the announcement, before the
    // heartbeat (3 s, written every second) could have expired.
    let url = format!("{}/api/cluster", c.gateway.http());
    wait_for(
        "node gone from /api/cluster",
        Duration::from_secs(2),
        || {
            let url = url.clone();
            async move {
                let v = http_get_json(&url).await.ok()?.1;
                (v["nodes"].as_array()?.len() == 1).then_some(())
            }
        },
    )
    .await?;
    // The stop itself is bounded by drain_grace (3 s here), with a margin.
    assert!(started.elapsed() < Duration::from_secs(3) + Duration::from_secs(2));
    Ok(())
}
