//! The sticky strategy: placement, fencing, failover and drain.

use anyhow::Result;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_proto::v1::RouteRequest;
use turnout_proto::v1::router_client::RouterClient;
use turnout_tests::*;

async fn route(c: &Cluster, room: &str) -> Result<String> {
    let (status, v) = http_get_json(&format!("{}/api/route?room={room}", c.gateway.http())).await?;
    anyhow::ensure!(status == 200, "route {room}: {status} {v}");
    Ok(v["node"].as_str().unwrap().to_owned())
}

fn gw_ws(c: &Cluster, room: &str) -> String {
    format!("{}?room={room}", c.gateway.ws_url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_room_meet_on_its_owner() -> Result<()> {
    let c = Cluster::start(3, Strategy::Sticky).await?;
    let mut per_room: HashMap<String, Vec<Client>> = HashMap::new();
    for room in ["alpha", "beta", "gamma", "delta"] {
        for _ in 0..4 {
            let mut cl = Client::connect(&gw_ws(&c, room)).await?;
            cl.join(room).await?;
            per_room.entry(room.into()).or_default().push(cl);
        }
    }
    for (room, clients) in &mut per_room {
        let nodes: HashSet<_> = clients.iter().map(|c| c.node().to_owned()).collect();
        assert_eq!(nodes.len(), 1, "{room} split over {nodes:?}");
        assert_eq!(route(&c, room).await?, *nodes.iter().next().unwrap());
        let seq = clients[0].publish(room, json!("hi"), "x").await?;
        for cl in clients.iter_mut() {
            assert_eq!(cl.messages_until(room, seq).await?, vec![seq]);
        }
    }
    // Room traffic stays on the node: no pub/sub channel is used.
    let mut con = c.redis.con().await?;
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("turnout:{*}:bus")
        .query_async(&mut con)
        .await?;
    assert!(channels.is_empty(), "{channels:?}");
    // Without a room a client may start on any node; a join of a room
    // owned elsewhere sends it to the owner.
    let (status, v) = http_get_json(&format!("{}/api/route", c.gateway.http())).await?;
    assert_eq!(status, 200, "{v}");
    let owner = route(&c, "alpha").await?;
    let owner_url = node_url(&c, &owner).await?;
    let (mut elsewhere, mut on_owner) = (None, Vec::new());
    for _ in 0..c.nodes.len() * 4 {
        let cl = Client::connect(&c.gateway.ws_url()).await?;
        if cl.node() != owner {
            elsewhere = Some(cl);
            break;
        }
        // Held, so the next one lands on a less loaded node.
        on_owner.push(cl);
    }
    let mut elsewhere = elsewhere.expect("roomless clients spread over the nodes");
    elsewhere
        .send_json(json!({"type": "join", "room": "alpha"}))
        .await?;
    match elsewhere.recv().await? {
        ServerFrame::Error { code, redirect, .. } => {
            assert_eq!(code, "wrong_node");
            assert_eq!(redirect, Some(owner_url));
        }
        other => panic!("{other:?}"),
    }
    // API publish lands on the owner too.
    let (status, body) = http(
        "POST",
        &format!("{}/api/rooms/alpha/publish", c.gateway.http()),
        Some(json!({"data": 1}).to_string()),
        &[],
    )
    .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let clients = per_room.get_mut("alpha").unwrap();
    match clients[1].recv().await? {
        ServerFrame::Message { seq: 2, from, .. } => assert_eq!(from, "api"),
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_is_bounded_and_pinned() -> Result<()> {
    let mut c = Cluster::start(3, Strategy::Sticky).await?;
    let mut owners = HashMap::new();
    for i in 0..100 {
        let room = format!("room-{i}");
        owners.insert(room.clone(), route(&c, &room).await?);
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in owners.values() {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    let bound = (1.25f64 * 100.0 / 3.0).ceil() as usize;
    assert!(
        counts.values().all(|&n| n <= bound),
        "{counts:?} over {bound}"
    );

    // A node joining later takes no existing room.
    c.nodes
        .push(start_node(node_settings(&c.redis.url(), Strategy::Sticky)).await);
    c.wait_nodes(4).await?;
    for (room, owner) in &owners {
        assert_eq!(
            &route(&c, room).await?,
            owner,
            "{room} moved when a node joined"
        );
    }
    // ...but does take new ones.
    let mut new_nodes = HashSet::new();
    for i in 0..40 {
        new_nodes.insert(route(&c, &format!("later-{i}")).await?);
    }
    assert_eq!(new_nodes.len(), 4, "{new_nodes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_routers_agree_on_one_owner() -> Result<()> {
    let redis = Redis::start().await?;
    let url = redis.url();
    let r1 = start_router(&url, Strategy::Sticky).await;
    let r2 = start_router(&url, Strategy::Sticky).await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start_node(node_settings(&url, Strategy::Sticky)).await);
    }
    let c1 = RouterClient::new(Channel::from_shared(r1.http())?.connect().await?);
    let c2 = RouterClient::new(Channel::from_shared(r2.http())?.connect().await?);
    for c in [&c1, &c2] {
        let c = c.clone();
        wait_for("3 nodes at the router", DEADLINE, || {
            let mut c = c.clone();
            async move {
                let n = c
                    .nodes(turnout_proto::v1::NodesRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .nodes
                    .len();
                (n == 3).then_some(())
            }
        })
        .await?;
    }
    let ask = |c: RouterClient<Channel>| async move {
        let mut out = Vec::new();
        for i in 0..1000 {
            let mut c = c.clone();
            let r = c
                .route(RouteRequest {
                    room: format!("race-{i}"),
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.push((r.node.unwrap().id, r.epoch));
        }
        Ok::<_, tonic::Status>(out)
    };
    let (a, b) = tokio::join!(tokio::spawn(ask(c1)), tokio::spawn(ask(c2)));
    let (a, b) = (a??, b??);
    let mut con = redis.con().await?;
    for i in 0..1000 {
        assert_eq!(a[i], b[i], "race-{i}: routers disagree");
        let owner: String = redis::cmd("HGET")
            .arg(turnout_proto::keys::room_owner(&format!("race-{i}")))
            .arg("node")
            .query_async(&mut con)
            .await?;
        assert_eq!(owner, a[i].0);
        assert_eq!(a[i].1, 1, "race-{i} was claimed more than once");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_cannot_deliver() -> Result<()> {
    let c = Cluster::start(2, Strategy::Sticky).await?;
    let owner = route(&c, "fenced").await?;
    let mut a = Client::connect(&gw_ws(&c, "fenced")).await?;
    assert_eq!(a.node(), owner);
    a.join("fenced").await?;
    assert_eq!(a.publish("fenced", json!(1), "one").await?, 1);
    // The room is taken over elsewhere (as after a failover A did not see).
    let (_, cluster) = http_get_json(&format!("{}/api/cluster", c.gateway.http())).await?;
    let other_id = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .find(|id| *id != owner)
        .unwrap();
    let mut con = c.redis.con().await?;
    let _: () = redis::cmd("HSET")
        .arg(turnout_proto::keys::room_owner("fenced"))
        .arg("node")
        .arg(&other_id)
        .arg("epoch")
        .arg(2)
        .query_async(&mut con)
        .await?;
    a.send_json(json!({"type": "publish", "room": "fenced", "data": 2, "id": "two"}))
        .await?;
    let err = a
        .expect("an error", |f| {
            matches!(f, ServerFrame::Error { id: Some(_), .. })
        })
        .await?;
    match err {
        ServerFrame::Error { code, redirect, .. } => {
            assert_eq!(code, "wrong_node");
            assert_eq!(
                redirect,
                Some(node_url(&c, &other_id).await?),
                "redirect to the new owner"
            );
        }
        _ => unreachable!(),
    }
    // Nothing was assigned a seq or written by the stale owner.
    let (_, h) = http_get_json(&format!("{}/api/rooms/fenced/history", c.gateway.http())).await?;
    assert_eq!(h["seq"], 1);
    // Joining on the stale owner directly is refused with the same redirect,
    // and the connection stays usable.
    let stale_url = node_url(&c, &owner).await?;
    let mut b = Client::connect(&stale_url).await?;
    b.send_json(json!({"type": "join", "room": "fenced"}))
        .await?;
    match b.recv().await? {
        ServerFrame::Error { code, redirect, .. } => {
            assert_eq!(code, "wrong_node");
            assert_eq!(redirect, Some(node_url(&c, &other_id).await?));
        }
        other => panic!("{other:?}"),
    }
    b.send_json(json!({"type": "ping"})).await?;
    assert_eq!(b.recv().await?, ServerFrame::Pong);
    let mut fenced = 0.0;
    for n in &c.nodes {
        fenced += metric(n, "turnout_fenced_total").await?;
    }
    assert!(fenced >= 1.0, "the stale owner counted the fence");
    Ok(())
}

async fn node_url(c: &Cluster, id: &str) -> Result<String> {
    let (_, v) = http_get_json(&format!("{}/api/cluster", c.gateway.http())).await?;
    let url = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    Ok(url)
}

/// A ws-node binary that can be SIGKILLed.
struct NodeProc(std::process::Child);
impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_killed_rooms_come_back_elsewhere_and_others_stay() -> Result<()> {
    let redis = Redis::start().await?;
    let url = redis.url();
    let router = start_router(&url, Strategy::Sticky).await;
    let gateway = start_gateway(&url, Strategy::Sticky, &[&router]).await;
    let bin = binary("turnout-ws-node");
    let mut procs = HashMap::new();
    for i in 1..=3 {
        let child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--node-id", &format!("n{i}")])
            .env("TURNOUT_INSECURE", "true")
            .env("TURNOUT_STRATEGY", "sticky")
            .env("TURNOUT_REDIS_URL", &url)
            .env("TURNOUT_HEARTBEAT_INTERVAL", "200ms")
            .env("TURNOUT_HEARTBEAT_TTL", "1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        procs.insert(format!("n{i}"), NodeProc(child));
    }
    let cluster_url = format!("{}/api/cluster", gateway.http());
    wait_for("3 nodes", DEADLINE, || async {
        let v = http_get_json(&cluster_url).await.ok()?.1;
        (v["nodes"].as_array()?.len() == 3).then_some(())
    })
    .await?;
    let route = |room: String| {
        let gw = gateway.http();
        async move {
            let (s, v) = http_get_json(&format!("{gw}/api/route?room={room}"))
                .await
                .ok()?;
            (s == 200).then(|| v["node"].as_str().unwrap().to_owned())
        }
    };
    let mut owners = HashMap::new();
    for i in 0..30 {
        owners.insert(format!("k{i}"), route(format!("k{i}")).await.unwrap());
    }
    let victim = owners["k0"].clone();
    let mut member = Client::connect(&format!("{}?room=k0", gateway.ws_url())).await?;
    assert_eq!(member.node(), victim);
    member.join("k0").await?;
    // A second member that will come back later than the first.
    let mut late = Client::connect(&format!("{}?room=k0", gateway.ws_url())).await?;
    late.join("k0").await?;
    let mut last = 0;
    for i in 0..5 {
        last = member.publish("k0", json!(i), &format!("p{i}")).await?;
    }
    let late_seen = late.messages_until("k0", last).await?;
    assert_eq!(late_seen, (1..=last).collect::<Vec<_>>());

    let killed = Instant::now();
    drop(procs.remove(&victim)); // SIGKILL
    // The client sees its connection drop, reconnects through the gateway and resumes.
    let _ = member.recv_close().await;
    let mut back = wait_for("k0 served again", Duration::from_secs(5), || async {
        let mut cl = Client::connect(&format!("{}?room=k0", gateway.ws_url()))
            .await
            .ok()?;
        cl.send_json(json!({"type": "join", "room": "k0", "since": last}))
            .await
            .ok()?;
        match cl.recv().await.ok()? {
            ServerFrame::Joined { .. } => Some(cl),
            _ => None,
        }
    })
    .await?;
    let seq = back.publish("k0", json!("after"), "after").await?;
    let recovered_in = killed.elapsed();
    // Published while `late` was away: it reconnects through the gateway with
    // `since` and has every message, once, in order.
    let mut more = seq;
    for i in 0..5 {
        more = back.publish("k0", json!(i), &format!("q{i}")).await?;
    }
    let _ = late.recv_close().await;
    let mut late = Client::connect(&format!("{}?room=k0", gateway.ws_url())).await?;
    late.send_json(json!({"type": "join", "room": "k0", "since": last}))
        .await?;
    match late
        .expect("joined", |f| matches!(f, ServerFrame::Joined { .. }))
        .await?
    {
        ServerFrame::Joined { recovered, .. } => assert_eq!(recovered, Some(true)),
        _ => unreachable!(),
    }
    assert_eq!(
        late.messages_until("k0", more).await?,
        (last + 1..=more).collect::<Vec<_>>()
    );
    assert_ne!(back.node(), victim);
    assert_eq!(seq, last + 1, "history and seq survive the owner");
    // The owner's death shows within its heartbeat TTL (1 s here); the
    // room is placed anew at the next route. Two seconds of margin for a
    // busy machine (the failover bench measures it: docs/BENCHMARKS.md).
    assert!(
        recovered_in < Duration::from_secs(1) + Duration::from_secs(2),
        "took {recovered_in:?}"
    );
    // Rooms of the surviving nodes did not move.
    for (room, owner) in &owners {
        if *owner != victim {
            assert_eq!(route(room.clone()).await.unwrap(), *owner, "{room} moved");
        }
    }
    eprintln!("sticky failover: room delivering again {recovered_in:?} after SIGKILL");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_reconnect_and_nobody_lands_back() -> Result<()> {
    let mut c = Cluster::start(3, Strategy::Sticky).await?;
    let mut rooms_by_node: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..30 {
        let room = format!("d{i}");
        rooms_by_node
            .entry(route(&c, &room).await?)
            .or_default()
            .push(room);
    }
    // The node to drain: the in-process node whose id owns rooms.
    let (_, v) = http_get_json(&format!("{}/api/cluster", c.gateway.http())).await?;
    let ids: Vec<(String, String)> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                n["url"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let idx = c
        .nodes
        .iter()
        .position(|p| {
            ids.iter()
                .any(|(id, u)| rooms_by_node.contains_key(id) && *u == p.ws_url())
        })
        .unwrap();
    let drained_id = ids
        .iter()
        .find(|(_, u)| *u == c.nodes[idx].ws_url())
        .unwrap()
        .0
        .clone();
    let rooms = rooms_by_node[&drained_id].clone();
    let mut clients = Vec::new();
    for room in &rooms {
        let mut cl = Client::connect(&gw_ws(&c, room)).await?;
        assert_eq!(cl.node(), drained_id);
        cl.join(room).await?;
        clients.push((room.clone(), cl));
    }
    let node = c.nodes.remove(idx);
    node.stop.cancel();
    for (_, cl) in &mut clients {
        let (frames, code) = cl.recv_close().await?;
        assert!(
            frames.contains(&ServerFrame::Reconnect {
                reason: "draining".into()
            }),
            "{frames:?}"
        );
        assert_eq!(code, Some(1012));
    }
    for (room, _) in &clients {
        let mut cl = Client::connect(&gw_ws(&c, room)).await?;
        assert_ne!(
            cl.node(),
            drained_id,
            "{room} landed back on the draining node"
        );
        cl.join(room).await?;
    }
    node.task.await?;
    c.wait_nodes(2).await?;
    Ok(())
}

/// Both fan-out paths on the owner: small rooms' messages written to the
/// members' sockets in place, a room over the in-place limit (64 members)
/// through their send queues. Every member sees its room's messages exactly
/// once, in order, while every room is published into at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_fan_out_paths_keep_rooms_in_order() -> Result<()> {
    let c = Cluster::start(1, Strategy::Sticky).await?;
    let url = c.nodes[0].ws_url();
    let rooms: Vec<String> = (0..6).map(|i| format!("fan-{i}")).collect();
    let mut readers = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let members = if i == 0 { 70 } else { 2 };
        for _ in 0..members {
            let mut cl = Client::connect(&url).await?;
            cl.join(room).await?;
            readers.push((room.clone(), cl));
        }
    }
    let n = 40u64;
    let mut publishers = Vec::new();
    for room in rooms.clone() {
        let url = url.clone();
        publishers.push(tokio::spawn(async move {
            let mut p = Client::connect(&url).await?;
            p.join(&room).await?;
            let mut last = 0;
            for k in 0..n {
                last = p.publish(&room, json!({"k": k}), &format!("p-{k}")).await?;
            }
            anyhow::Ok(last)
        }));
    }
    for p in publishers {
        assert_eq!(p.await??, n);
    }
    for (room, cl) in &mut readers {
        let seqs = cl.messages_until(room, n).await?;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{room}");
    }
    let in_place = metric(&c.nodes[0], "turnout_deliveries_in_place_total").await?;
    let sent = metric(&c.nodes[0], "turnout_deliveries_total").await?;
    assert!(in_place > 0.0, "messages written in place");
    // The big room's 40 messages to 71 members (readers and publisher) queued.
    assert!(
        sent - in_place >= 71.0 * 40.0,
        "big room queued: {sent} - {in_place}"
    );
    Ok(())
}

/// A notice that a room was claimed at an epoch this node does not hold
/// it below (the node claimed it back meanwhile, or the notice is stale)
/// moves nobody; a claim above the node's epoch moves the room's members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_claim_notice_moves_nobody() -> Result<()> {
    let c = Cluster::start(1, Strategy::Sticky).await?;
    let mut m = Client::connect(&c.nodes[0].ws_url()).await?;
    m.join("kept").await?;
    m.join("taken").await?;
    let node = m.node().to_owned();
    let mut con = c.redis.con().await?;
    let epoch = |room: &str| {
        let key = turnout_proto::keys::room_owner(room);
        let mut con = con.clone();
        async move {
            let e: Option<u64> = redis::cmd("HGET")
                .arg(key)
                .arg("epoch")
                .query_async(&mut con)
                .await?;
            anyhow::Ok(e.unwrap_or_default())
        }
    };
    let (kept, taken) = (epoch("kept").await?, epoch("taken").await?);
    assert!(kept > 0 && taken > 0);
    let control = turnout_proto::keys::node_control(&node);
    // Stale: at the node's own epoch, and below it. Then a real one for the
    // other room; notices are read in order.
    for notice in [
        format!("moved kept {kept} ghost"),
        format!("moved kept {} ghost", kept - 1),
        format!("moved taken {} ghost", taken + 1),
    ] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&control)
            .arg(notice)
            .query_async(&mut con)
            .await?;
    }
    match m
        .expect("the move", |f| matches!(f, ServerFrame::Error { .. }))
        .await?
    {
        ServerFrame::Error { code, room, .. } => {
            assert_eq!(
                (code.as_str(), room.as_deref()),
                ("wrong_node", Some("taken"))
            )
        }
        _ => unreachable!(),
    }
    // `kept` stayed: its member still publishes and hears itself.
    assert_eq!(m.publish("kept", json!("still here"), "p1").await?, 1);
    Ok(())
}
