//! The relay strategy end to end: each room owned by one node, which
//! sequences its messages and streams them to the nodes holding members;
//! no room message crosses Redis pub/sub.

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

/// The room's owner as `/api/route` names it.
async fn owner_of(c: &Cluster, room: &str) -> Result<String> {
    let (status, v) = http_get_json(&format!("{}/api/route?room={room}", c.gateway.http())).await?;
    anyhow::ensure!(status == 200, "route: {status} {v}");
    Ok(v["owner"]
        .as_str()
        .context("no owner in /api/route")?
        .to_owned())
}

/// Publishes with `id` until acked (an owner that moves answers
/// `unavailable` meanwhile; the resend with the same id is taken once).
async fn publish_until_acked(cl: &mut Client, room: &str, i: u64) -> Result<u64> {
    Ok(publish_counting_refusals(cl, room, i).await?.0)
}

/// Like [`publish_until_acked`]; also returns how often it was refused.
async fn publish_counting_refusals(cl: &mut Client, room: &str, i: u64) -> Result<(u64, u32)> {
    let id = format!("p-{i}");
    let mut tries = 0;
    loop {
        match cl.publish(room, json!({ "i": i }), &id).await {
            Ok(seq) => return Ok((seq, tries)),
            // Refused (`unavailable` while the room moves): resend.
            Err(_) if tries < 200 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_every_node_get_each_message_once_in_order_and_redis_carries_none() -> Result<()>
{
    let c = Cluster::start(3, Strategy::Relay).await?;
    // A subscriber on the room's channel: with relay, Redis carries none
    // of the room's messages.
    let channel = turnout_proto::keys::room_channel("r1");
    let mut spy = redis::Client::open(c.redis.url())?
        .get_async_pubsub()
        .await?;
    spy.subscribe(&channel).await?;
    let mut members = Vec::new();
    for n in &c.nodes {
        for _ in 0..2 {
            let mut cl = Client::connect(&n.ws_url()).await?;
            assert_eq!(cl.join("r1").await?, 0);
            members.push(cl);
        }
    }
    let owner = owner_of(&c, "r1").await?;
    let mut ids: Vec<String> = members.iter().map(|m| m.node().to_owned()).collect();
    ids.dedup();
    // Every node has members: the owner streams to the two others and
    // delivers to its own.
    let (_, v) = http_get_json(&format!(
        "{}/api/route?room=r1&carriers=true",
        c.gateway.http()
    ))
    .await?;
    let mut carriers: Vec<String> = serde_json::from_value(v["carriers"].clone())?;
    carriers.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(carriers, want, "{v}");
    assert!(
        ids.contains(&owner),
        "the owner {owner} is one of the nodes {ids:?}"
    );
    // Publishers on every node at once.
    let per = 30u64;
    let mut tasks = Vec::new();
    for (k, n) in c.nodes.iter().enumerate() {
        let url = n.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut p = Client::connect(&url).await?;
            p.join("r1").await?;
            let mut seqs = Vec::new();
            for i in 0..per {
                seqs.push(
                    p.publish("r1", json!({"k": k, "i": i}), &format!("{k}-{i}"))
                        .await?,
                );
            }
            Ok::<_, anyhow::Error>(seqs)
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await??);
    }
    acked.sort_unstable();
    let total = per * c.nodes.len() as u64;
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "one seq per publish"
    );
    for m in &mut members {
        let seqs = m.messages_until("r1", total).await?;
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "member on {}",
            m.node()
        );
    }
    // The first message on the channel is a marker of the test's own.
    let mut con = c.redis.con().await?;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("marker")
        .query_async(&mut con)
        .await?;
    let first = tokio::time::timeout(DEADLINE, spy.on_message().next())
        .await?
        .context("spy stream ended")?;
    assert_eq!(
        first.get_payload::<String>()?,
        "marker",
        "a room message went over Redis pub/sub"
    );
    // The owner relayed; the others forwarded their publishes to it.
    for n in &c.nodes {
        let forwarded = metric(n, "turnout_relay_forwarded_total").await?;
        let sent = metric(n, "turnout_relay_items_sent_total").await?;
        let id = id_of(n).await?;
        if id == owner {
            assert_eq!(forwarded, 0.0, "the owner publishes its own");
            assert!(
                sent >= (2 * total) as f64,
                "two followers got every message: {sent}"
            );
        } else {
            assert_eq!(
                forwarded, per as f64,
                "{id} sent its publishes to the owner"
            );
            assert_eq!(sent, 0.0, "{id} owns nothing");
        }
    }
    Ok(())
}

/// A room placed on a node process of its own: the process starts alone
/// and takes the room's first message (so the room is placed there), then
/// two more nodes start and a member of the room joins on each.
struct PlacedAlone {
    _redis: Redis,
    _router: Proc,
    gateway: Proc,
    owner: NodeProcess,
    a: Proc,
    b: Proc,
    on_a: Client,
    on_b: Client,
}

async fn placed_alone(owner: &str, room: &str) -> Result<PlacedAlone> {
    let redis = Redis::start().await?;
    let url = redis.url();
    let router = start_router(&url, Strategy::Relay).await;
    let gateway = start_gateway(&url, Strategy::Relay, &[&router]).await;
    let owner_proc = NodeProcess::start(
        owner,
        &[("TURNOUT_REDIS_URL", &url), ("TURNOUT_STRATEGY", "relay")],
    )
    .await?;
    live_nodes(&gateway, 1).await?;
    let (status, body) = http(
        "POST",
        &format!("{}/api/rooms/{room}/publish", gateway.http()),
        Some(json!({"data": "first"}).to_string()),
        &[],
    )
    .await?;
    anyhow::ensure!(
        status == 200,
        "first publish: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let a = start_node(node_settings(&url, Strategy::Relay)).await;
    let b = start_node(node_settings(&url, Strategy::Relay)).await;
    live_nodes(&gateway, 3).await?;
    let (_, v) = http_get_json(&format!("{}/api/route?room={room}", gateway.http())).await?;
    anyhow::ensure!(v["owner"] == owner, "not placed on {owner}: {v}");
    let mut on_a = Client::connect(&a.ws_url()).await?;
    anyhow::ensure!(
        on_a.join(room).await? == 1,
        "a joined after other than seq 1"
    );
    let mut on_b = Client::connect(&b.ws_url()).await?;
    anyhow::ensure!(
        on_b.join(room).await? == 1,
        "b joined after other than seq 1"
    );
    Ok(PlacedAlone {
        _redis: redis,
        _router: router,
        gateway,
        owner: owner_proc,
        a,
        b,
        on_a,
        on_b,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_dies_and_members_elsewhere_lose_nothing() -> Result<()> {
    let mut s = placed_alone("doomed", "hot").await?;
    let (gateway, a, b) = (&s.gateway, &s.a, &s.b);
    let (on_a, on_b, doomed) = (&mut s.on_a, &mut s.on_b, &mut s.owner);
    let total = 200u64;
    let url_b = b.ws_url();
    let publisher = tokio::spawn(async move {
        let mut p = Client::connect(&url_b).await?;
        p.join("hot").await?;
        let mut seqs = Vec::new();
        for i in 0..total {
            seqs.push(publish_until_acked(&mut p, "hot", i).await?);
        }
        Ok::<_, anyhow::Error>(seqs)
    });
    // Kill the owner mid-stream.
    let early = on_a.messages_until("hot", 40).await?;
    doomed.kill();
    let rest = on_a.messages_until("hot", total + 1).await?;
    let mut seqs = publisher.await??;
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (2..=total + 1).collect::<Vec<_>>(),
        "one seq per publish"
    );
    let got: Vec<u64> = early.into_iter().chain(rest).collect();
    assert_eq!(
        got,
        (2..=total + 1).collect::<Vec<_>>(),
        "member on a: every message once, in order"
    );
    assert_eq!(
        on_b.messages_until("hot", total + 1).await?,
        (2..=total + 1).collect::<Vec<_>>(),
        "member on b"
    );
    let (_, v) = http_get_json(&format!("{}/api/route?room=hot", gateway.http())).await?;
    assert_ne!(v["owner"], "doomed", "the room was placed again: {v}");
    assert!(
        metric(a, "turnout_relay_reattached_total").await? >= 1.0,
        "a attached the room again"
    );
    // Both stayed connected: nothing told them to leave.
    for cl in [on_a, on_b] {
        cl.send_json(json!({"type": "ping"})).await?;
        loop {
            match cl.recv().await? {
                ServerFrame::Pong => break,
                ServerFrame::Reconnect { .. } => panic!("a member was sent away"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The node id a node process reports (its `welcome`).
async fn id_of(p: &Proc) -> Result<String> {
    Ok(Client::connect(&p.ws_url()).await?.node().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_owner_hands_its_rooms_on_and_members_elsewhere_lose_nothing() -> Result<()> {
    let mut c = Cluster::start(3, Strategy::Relay).await?;
    let mut ids = Vec::new();
    for n in &c.nodes {
        ids.push(id_of(n).await?);
    }
    // Members on two nodes; the room's owner (placed when the first
    // attached it) is one of the three. Find a room owned by a third node.
    let mut room = String::new();
    let mut members = None;
    for k in 0..20 {
        let r = format!("calm-{k}");
        let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
        let mut b = Client::connect(&c.nodes[1].ws_url()).await?;
        assert_eq!(a.join(&r).await?, 0);
        assert_eq!(b.join(&r).await?, 0);
        if owner_of(&c, &r).await? == ids[2] {
            room = r;
            members = Some((a, b));
            break;
        }
    }
    let (mut on_x, mut on_y) = members.context("no room of 20 was placed on the third node")?;
    let owner_node = c.nodes.remove(2);
    let total = 150u64;
    let url_y = c.nodes[1].ws_url();
    let r = room.clone();
    let publisher = tokio::spawn(async move {
        let mut p = Client::connect(&url_y).await?;
        p.join(&r).await?;
        let mut seqs = Vec::new();
        for i in 0..total {
            seqs.push(publish_until_acked(&mut p, &r, i).await?);
        }
        Ok::<_, anyhow::Error>(seqs)
    });
    let early = on_x.messages_until(&room, 30).await?;
    owner_node.stop().await;
    let rest = on_x.messages_until(&room, total).await?;
    let mut seqs = publisher.await??;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "one seq per publish");
    let got: Vec<u64> = early.into_iter().chain(rest).collect();
    assert_eq!(got, (1..=total).collect::<Vec<_>>(), "member on x");
    assert_eq!(
        on_y.messages_until(&room, total).await?,
        (1..=total).collect::<Vec<_>>()
    );
    let now = owner_of(&c, &room).await?;
    assert!(
        now != ids[2] && ids.contains(&now),
        "placed on a live node: {now}"
    );
    Ok(())
}

/// Seqs of `room` until `last`. A member that only listens is sent
/// nothing else meanwhile: an `error` without an `id` answers a join or a
/// leave, and a client would take one for that.
async fn follow_until(cl: &mut Client, room: &str, last: u64) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    loop {
        match cl.recv().await? {
            ServerFrame::Message { room: r, seq, .. } if r == room => {
                seqs.push(seq);
                if seq >= last {
                    return Ok(seqs);
                }
            }
            f @ ServerFrame::Error { id: None, .. } => anyhow::bail!("sent unasked: {f:?}"),
            ServerFrame::Reconnect { .. } => anyhow::bail!("a member was sent away"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_owner_is_replaced_publishes_are_refused_meanwhile_and_nothing_is_lost_or_doubled()
-> Result<()> {
    let mut s = placed_alone("stalled", "slow").await?;
    let (gateway, b, stalled) = (&s.gateway, &s.b, &s.owner);
    let (on_a, on_b) = (&mut s.on_a, &mut s.on_b);
    let total = 60u64;
    let url_b = b.ws_url();
    let publisher = tokio::spawn(async move {
        let mut p = Client::connect(&url_b).await?;
        p.join("slow").await?;
        let (mut seqs, mut refused) = (Vec::new(), 0);
        for i in 0..total {
            let (seq, n) = publish_counting_refusals(&mut p, "slow", i).await?;
            seqs.push(seq);
            refused += n;
        }
        Ok::<_, anyhow::Error>((seqs, refused))
    });
    let early = follow_until(on_a, "slow", 11).await?;
    stalled.pause()?;
    let rest = follow_until(on_a, "slow", total + 1).await?;
    let (mut seqs, refused) = publisher.await??;
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (2..=total + 1).collect::<Vec<_>>(),
        "one seq per publish"
    );
    let got: Vec<u64> = early.into_iter().chain(rest).collect();
    assert_eq!(
        got,
        (2..=total + 1).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let on_b_got = follow_until(on_b, "slow", total + 1).await?;
    assert_eq!(on_b_got, (2..=total + 1).collect::<Vec<_>>(), "member on b");
    // The silent owner's publishes were answered `unavailable`, not lost.
    assert!(
        refused > 0,
        "no publish was refused while the owner was stalled"
    );
    let (_, v) = http_get_json(&format!("{}/api/route?room=slow", gateway.http())).await?;
    assert_ne!(
        v["owner"], "stalled",
        "placed anew while the owner was stalled: {v}"
    );
    // The stalled owner wakes up: it must not deliver or store anything more.
    stalled.resume()?;
    let mut p = Client::connect(&b.ws_url()).await?;
    p.join("slow").await?;
    let marker = publish_until_acked(&mut p, "slow", 1000).await?;
    assert_eq!(marker, total + 2);
    let after = follow_until(on_a, "slow", marker).await?;
    assert_eq!(after, vec![marker], "nothing doubled after the owner woke");
    Ok(())
}

/// Presence crosses nodes through the room's owner both ways, including
/// the leave of the last member on a node that does not own the room: that
/// node stops following the room as the member goes, and the leave must
/// still reach the owner's members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_member_leaving_a_node_that_does_not_own_the_room_is_heard_leaving() -> Result<()>
{
    let c = Cluster::start(2, Strategy::Relay).await?;
    let mut alice = Client::connect(&format!("{}?user=alice", c.nodes[0].ws_url())).await?;
    alice.join("p").await?;
    let mut bob = Client::connect(&format!("{}?user=bob", c.nodes[1].ws_url())).await?;
    bob.join("p").await?;
    alice.expect_presence("p", "join", "bob").await?;
    let owner = owner_of(&c, "p").await?;
    // `stays` is on the owner; `goes` is the only member on the other node.
    let (mut stays, mut goes, gone) = if owner == alice.node() {
        (alice, bob, "bob")
    } else {
        (bob, alice, "alice")
    };
    assert_ne!(stays.node(), goes.node());
    goes.send_json(json!({"type": "leave", "room": "p"}))
        .await?;
    stays.expect_presence("p", "leave", gone).await?;
    // And the other way: a member joining on the non-owner node is heard,
    // and so is its connection closing.
    goes.send_json(json!({"type": "join", "room": "p"})).await?;
    stays.expect_presence("p", "join", gone).await?;
    drop(goes);
    stays.expect_presence("p", "leave", gone).await?;
    // Then that node stops following the room: only the owner carries it.
    let route = format!("{}/api/route?room=p&carriers=true", c.gateway.http());
    wait_for("the emptied node to stop following", DEADLINE, || async {
        let (_, v) = http_get_json(&route).await.ok()?;
        (v["carriers"] == json!([owner])).then_some(())
    })
    .await?;
    Ok(())
}
