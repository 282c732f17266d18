//! The `local` strategy: servers that share nothing. One node alone is a
//! complete single-server chat without Redis; several behind a gateway
//! spread the clients, and members on different nodes do not see each
//! other, which is the problem sticky and pubsub solve.

use anyhow::Result;
use serde_json::json;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

/// A Redis URL nothing listens on.
fn no_redis() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_local_node_is_a_complete_chat_without_redis() -> Result<()> {
    let node = start_node(node_settings(&no_redis(), Strategy::Local)).await;
    let base = node.http();
    wait_for("the node to answer", DEADLINE, || async {
        http("GET", &format!("{base}/healthz"), None, &[])
            .await
            .ok()
            .filter(|(s, _)| *s == 200)
    })
    .await?;
    // The demo page is served by the node itself.
    let (status, page) = http("GET", &format!("{base}/"), None, &[]).await?;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("turnout demo"));
    // With the client library it runs on.
    let (status, lib) = http("GET", &format!("{base}/turnout-client.js"), None, &[]).await?;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&lib).contains("export class Client"));
    let (_, cluster) = http_get_json(&format!("{base}/api/cluster")).await?;
    assert_eq!(cluster["strategy"], "local");
    assert_eq!(cluster["redis"], false);

    let mut alice = Client::connect(&format!("{}?user=alice", node.ws_url())).await?;
    match &alice.welcome {
        ServerFrame::Welcome { strategy, .. } => assert_eq!(strategy, "local"),
        other => panic!("{other:?}"),
    }
    alice.join("lobby").await?;
    for i in 1..=3 {
        assert_eq!(alice.publish("lobby", json!(i), &format!("a{i}")).await?, i);
    }
    // Presence, with events.
    let mut bob = Client::connect(&format!("{}?user=bob", node.ws_url())).await?;
    bob.send_json(json!({"type": "join", "room": "lobby"}))
        .await?;
    let epoch = match bob.recv().await? {
        ServerFrame::Joined {
            seq,
            presence,
            epoch,
            ..
        } => {
            assert_eq!(seq, 3);
            assert_eq!(presence, vec!["alice", "bob"]);
            assert!(!epoch.is_empty());
            epoch
        }
        other => panic!("{other:?}"),
    };
    alice
        .expect("bob's join", |f| {
            matches!(f, ServerFrame::Presence { event, user, .. } if event == "join" && user == "bob")
        })
        .await?;
    // Bob goes away; what he missed comes back with `since`.
    drop(bob);
    alice
        .expect("bob's leave", |f| {
            matches!(f, ServerFrame::Presence { event, user, .. } if event == "leave" && user == "bob")
        })
        .await?;
    for i in 4..=5 {
        alice.publish("lobby", json!(i), &format!("a{i}")).await?;
    }
    let mut bob = Client::connect(&format!("{}?user=bob", node.ws_url())).await?;
    bob.send_json(json!({"type": "join", "room": "lobby", "since": 3, "epoch": epoch}))
        .await?;
    match bob.recv().await? {
        ServerFrame::Joined { recovered, seq, .. } => {
            assert_eq!(recovered, Some(true));
            assert_eq!(seq, 5);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bob.messages_until("lobby", 5).await?, vec![4, 5]);
    assert_eq!(
        metric(&node, "turnout_messages_published_total").await?,
        5.0
    );
    node.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_nodes_behind_a_gateway_do_not_see_each_other() -> Result<()> {
    let c = Cluster::start(2, Strategy::Local).await?;
    let v = c.wait_nodes(2).await?;
    assert_eq!(v["strategy"], "local");
    assert!(v["conflicts"].as_array().unwrap().is_empty(), "{v}");
    // The gateway spreads clients over the nodes.
    let mut a = Client::connect(&format!("{}?user=ana", c.gateway.ws_url())).await?;
    let mut b = Client::connect(&format!("{}?user=ben", c.gateway.ws_url())).await?;
    assert_ne!(a.node(), b.node(), "least-loaded placement uses both nodes");
    a.join("room").await?;
    b.send_json(json!({"type": "join", "room": "room"})).await?;
    match b.recv().await? {
        ServerFrame::Joined { presence, .. } => {
            assert_eq!(presence, vec!["ben"], "ana is on the other server")
        }
        other => panic!("{other:?}"),
    }
    // Each node numbers the room on its own, and delivers only to its own.
    assert_eq!(a.publish("room", json!("from ana"), "a1").await?, 1);
    assert_eq!(b.publish("room", json!("from ben"), "b1").await?, 1);
    assert_eq!(b.publish("room", json!("again"), "b2").await?, 2);
    for (cl, from) in [(&mut a, "ana"), (&mut b, "ben")] {
        let last = if from == "ana" { 1 } else { 2 };
        loop {
            match cl.recv().await? {
                ServerFrame::Message { from: f, seq, .. } => {
                    assert_eq!(f, from, "a message crossed servers");
                    if seq == last {
                        break;
                    }
                }
                ServerFrame::Presence { .. } => panic!("presence crossed servers"),
                _ => {}
            }
        }
    }
    // The server API speaks to the room's home node: what it publishes is
    // what its history shows, and reaches that node's members only.
    let (status, body) = http(
        "POST",
        &format!("{}/api/rooms/room/publish", c.gateway.http()),
        Some(json!({"data": {"text": "from the server"}}).to_string()),
        &[],
    )
    .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seq = serde_json::from_slice::<serde_json::Value>(&body)?["seq"]
        .as_u64()
        .unwrap();
    let (_, h) = http_get_json(&format!(
        "{}/api/rooms/room/history?since=0",
        c.gateway.http()
    ))
    .await?;
    assert_eq!(h["seq"], seq);
    let texts: Vec<_> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["from"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts.last().map(String::as_str), Some("api"));
    let (_, p) = http_get_json(&format!("{}/api/rooms/room/presence", c.gateway.http())).await?;
    assert_eq!(
        p["users"].as_array().unwrap().len(),
        1,
        "one server's members: {p}"
    );
    // Room streams need a shared bus, which local does not have.
    let (status, _) = http(
        "GET",
        &format!("{}/api/rooms/room/events", c.gateway.http()),
        None,
        &[],
    )
    .await?;
    assert_eq!(status, 503);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_node_joins_the_live_set_once_redis_answers() -> Result<()> {
    let port = free_port();
    let mut settings = node_settings(&format!("redis://127.0.0.1:{port}"), Strategy::Local);
    settings.node_id = Some("late".into());
    let node = start_node(settings).await;
    // It serves at once, alone.
    let mut a = wait_for("the node to serve", DEADLINE, || async {
        Client::connect(&node.ws_url()).await.ok()
    })
    .await?;
    a.join("r").await?;
    assert_eq!(a.publish("r", json!(1), "1").await?, 1);
    // Redis comes up where the node was told to look: the node heartbeats.
    let redis = Redis::start_at(port).await?;
    let mut con = redis.con().await?;
    wait_for("the node in turnout:nodes", DEADLINE, || {
        let mut con = con.clone();
        async move {
            let ids: Vec<String> = redis::cmd("SMEMBERS")
                .arg(turnout_proto::keys::NODES)
                .query_async(&mut con)
                .await
                .ok()?;
            ids.contains(&"late".to_owned()).then_some(())
        }
    })
    .await?;
    // Room state stayed in the node's memory; nothing of it went to Redis.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("turnout:{*")
        .query_async(&mut con)
        .await?;
    let room_keys: Vec<_> = keys
        .iter()
        .filter(|k| !k.starts_with("turnout:{nodes}"))
        .collect();
    assert!(room_keys.is_empty(), "{keys:?}");
    assert_eq!(a.publish("r", json!(2), "2").await?, 2);
    Ok(())
}
