//! History, recovery and presence: nothing that history holds is lost.

use anyhow::Result;
use serde_json::json;
use std::time::Duration;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_is_dense_under_concurrent_publishers_on_three_nodes() -> Result<()> {
    let c = Cluster::start(3, Strategy::Pubsub).await?;
    let mut listeners = Vec::new();
    for node in &c.nodes {
        let mut l = Client::connect(&node.ws_url()).await?;
        l.join("dense").await?;
        listeners.push(l);
    }
    let mut tasks = Vec::new();
    for node in &c.nodes {
        let url = node.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut p = Client::connect(&url).await?;
            p.join("dense").await?;
            let mut seqs = Vec::new();
            for i in 0..100 {
                seqs.push(p.publish("dense", json!(i), &format!("{i}")).await?);
            }
            Ok::<_, anyhow::Error>(seqs)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=300).collect::<Vec<_>>(),
        "every publish got its own seq, no gaps"
    );
    for l in &mut listeners {
        assert_eq!(
            l.messages_until("dense", 300).await?,
            (1..=300).collect::<Vec<_>>(),
            "on {}",
            l.node()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_live_meet_without_gap_or_duplicate() -> Result<()> {
    for strategy in [Strategy::Pubsub, Strategy::Sticky, Strategy::Relay] {
        let c = Cluster::start_with(2, strategy, |s| s.history_size = 10_000).await?;
        let url = match strategy {
            Strategy::Pubsub | Strategy::Relay | Strategy::Local => c.nodes[0].ws_url(),
            Strategy::Sticky => format!("{}?room=flow", c.gateway.ws_url()),
        };
        let mut p = Client::connect(&url).await?;
        p.join("flow").await?;
        let total = 1500u64;
        let publisher = tokio::spawn(async move {
            for i in 0..total {
                p.publish("flow", json!(i), &i.to_string()).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
        // Join with since while the publisher runs at full speed.
        let joiner_url = match strategy {
            Strategy::Pubsub | Strategy::Relay | Strategy::Local => c.nodes[1].ws_url(),
            Strategy::Sticky => url.clone(),
        };
        let mut since = 0;
        wait_for("some history", DEADLINE, || async {
            let (_, h) = http_get_json(&format!(
                "{}/api/rooms/flow/history?since=0&limit=1",
                c.gateway.http()
            ))
            .await
            .ok()?;
            let seq = h["seq"].as_u64()?;
            (seq >= 200).then_some(seq)
        })
        .await
        .map(|s| since = s / 2)?;
        let mut j = Client::connect(&joiner_url).await?;
        j.send_json(json!({"type": "join", "room": "flow", "since": since}))
            .await?;
        match j
            .expect("joined", |f| matches!(f, ServerFrame::Joined { .. }))
            .await?
        {
            ServerFrame::Joined { recovered, .. } => assert_eq!(recovered, Some(true)),
            _ => unreachable!(),
        }
        publisher.await??;
        let seqs = j.messages_until("flow", total).await?;
        assert_eq!(
            seqs,
            (since + 1..=total).collect::<Vec<_>>(),
            "{strategy}: gap or duplicate at the hand-over"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_bounded_and_says_when_it_cannot_recover() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| s.history_size = 10).await?;
    let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
    a.join("short").await?;
    for i in 0..25 {
        a.publish("short", json!(i), &i.to_string()).await?;
    }
    let mut con = c.redis.con().await?;
    let len: u64 = redis::cmd("XLEN")
        .arg(turnout_proto::keys::room_history("short"))
        .query_async(&mut con)
        .await?;
    assert_eq!(len, 10);
    let mut b = Client::connect(&c.nodes[0].ws_url()).await?;
    b.send_json(json!({"type": "join", "room": "short", "since": 3}))
        .await?;
    let epoch = match b.recv().await? {
        ServerFrame::Joined {
            recovered,
            seq,
            epoch,
            ..
        } => {
            assert_eq!(seq, 25);
            assert_eq!(recovered, Some(false), "messages 4..15 are gone");
            assert!(!epoch.is_empty());
            epoch
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        b.messages_until("short", 25).await?,
        (16..=25).collect::<Vec<_>>()
    );
    // A client from another epoch gets nothing replayed and is told so.
    let mut d = Client::connect(&c.nodes[0].ws_url()).await?;
    d.send_json(json!({"type": "join", "room": "short", "since": 20, "epoch": "older"}))
        .await?;
    match d.recv().await? {
        ServerFrame::Joined {
            recovered,
            epoch: e,
            ..
        } => {
            assert_eq!(recovered, Some(false));
            assert_eq!(e, epoch);
        }
        other => panic!("{other:?}"),
    }
    let seq = a.publish("short", json!("live"), "live").await?;
    assert_eq!(
        d.messages_until("short", seq).await?,
        vec![seq],
        "no replay across epochs"
    );
    // Same epoch, nothing missed: recovered.
    let mut e = Client::connect(&c.nodes[0].ws_url()).await?;
    e.send_json(json!({"type": "join", "room": "short", "since": seq, "epoch": epoch}))
        .await?;
    match e.recv().await? {
        ServerFrame::Joined { recovered, .. } => assert_eq!(recovered, Some(true)),
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing_and_every_node_resumes() -> Result<()> {
    restart_loses_nothing(Strategy::Pubsub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing_sticky() -> Result<()> {
    restart_loses_nothing(Strategy::Sticky).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing_relay() -> Result<()> {
    restart_loses_nothing(Strategy::Relay).await
}

async fn restart_loses_nothing(strategy: Strategy) -> Result<()> {
    let redis = Redis::start_persistent().await?;
    let mut c = Cluster::start_on(redis, 3, strategy, |_| {}).await?;
    let url = |i: usize| match strategy {
        Strategy::Pubsub | Strategy::Relay | Strategy::Local => c.nodes[i].ws_url(),
        Strategy::Sticky => format!("{}?room=chaos", c.gateway.ws_url()),
    };
    let mut listeners = Vec::new();
    for i in 0..c.nodes.len() {
        let mut l = Client::connect(&url(i)).await?;
        l.join("chaos").await?;
        listeners.push(l);
    }
    let mut p = Client::connect(&url(0)).await?;
    p.join("chaos").await?;
    let mut last = 0;
    for i in 0..50 {
        last = p.publish("chaos", json!(i), &format!("a{i}")).await?;
    }
    c.redis.restart().await?;
    // Keep publishing: failures while Redis is down are answered as errors
    // (never a silent drop); then publishing works again.
    let mut ok_after = 0;
    let mut i = 0;
    while ok_after < 50 {
        i += 1;
        let id = format!("b{i}");
        p.send_json(json!({"type": "publish", "room": "chaos", "data": i, "id": id}))
            .await?;
        match p
            .expect("ack or error", |f| match f {
                ServerFrame::Ack { id: Some(x), .. } | ServerFrame::Error { id: Some(x), .. } => {
                    *x == id
                }
                _ => false,
            })
            .await?
        {
            ServerFrame::Ack { seq, .. } => {
                assert_eq!(seq, last + 1, "seq continues after the restart");
                last = seq;
                ok_after += 1;
            }
            ServerFrame::Error { code, .. } => {
                assert_eq!(code, "unavailable");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => unreachable!(),
        }
    }
    for l in &mut listeners {
        let seqs = l.messages_until("chaos", last).await?;
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "gap or duplicate on {}",
            l.node()
        );
    }
    if strategy == Strategy::Sticky {
        return Ok(());
    }
    // The nodes say what happened.
    let disconnects = metric(&c.nodes[1], "turnout_redis_disconnects_total").await?;
    assert!(disconnects >= 1.0, "disconnect counted: {disconnects}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_tells_members_history_is_gone() -> Result<()> {
    let mut c = Cluster::start(2, Strategy::Pubsub).await?;
    let mut l = Client::connect(&c.nodes[1].ws_url()).await?;
    l.join("amnesia").await?;
    let mut p = Client::connect(&c.nodes[0].ws_url()).await?;
    p.join("amnesia").await?;
    for i in 0..5 {
        p.publish("amnesia", json!(i), &i.to_string()).await?;
    }
    assert_eq!(
        l.messages_until("amnesia", 5).await?,
        (1..=5).collect::<Vec<_>>()
    );
    let (_, h) = http_get_json(&format!("{}/api/rooms/amnesia/history", c.gateway.http())).await?;
    let old_epoch = h["epoch"].as_str().unwrap().to_owned();
    assert!(!old_epoch.is_empty());
    c.redis.restart().await?;
    // The listener is told its position starts over, with a new epoch.
    match l
        .expect("a fresh joined", |f| {
            matches!(f, ServerFrame::Joined { .. })
        })
        .await?
    {
        ServerFrame::Joined {
            recovered, epoch, ..
        } => {
            assert_eq!(recovered, Some(false));
            assert_ne!(epoch, old_epoch);
        }
        _ => unreachable!(),
    }
    // And receives what is published in the new epoch.
    let seq = wait_for("publish after the restart", DEADLINE, || async {
        let (s, b) = http(
            "POST",
            &format!("{}/api/rooms/amnesia/publish", c.gateway.http()),
            Some(json!({"data": "new"}).to_string()),
            &[],
        )
        .await
        .ok()?;
        (s == 200)
            .then(|| serde_json::from_slice::<serde_json::Value>(&b).ok()?["seq"].as_u64())
            .flatten()
    })
    .await?;
    let got = l.messages_until("amnesia", seq).await?;
    assert_eq!(got.last(), Some(&seq));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_nodes_with_events_and_dead_entries_dropped() -> Result<()> {
    let c = Cluster::start(2, Strategy::Pubsub).await?;
    let mut alice = Client::connect(&format!("{}?user=alice", c.nodes[0].ws_url())).await?;
    alice.join("p").await?;
    let mut bob = Client::connect(&format!("{}?user=bob", c.nodes[1].ws_url())).await?;
    bob.send_json(json!({"type": "join", "room": "p"})).await?;
    match bob.recv().await? {
        ServerFrame::Joined { presence, .. } => assert_eq!(presence, vec!["alice", "bob"]),
        other => panic!("{other:?}"),
    }
    alice.expect_presence("p", "join", "bob").await?;
    // A crashed node's entries disappear once its heartbeat is gone.
    let mut con = c.redis.con().await?;
    let _: () = redis::cmd("HSET")
        .arg(turnout_proto::keys::room_presence("p"))
        .arg("crashed-node/crashed-node-1")
        .arg("ghost")
        .query_async(&mut con)
        .await?;
    let (_, v) = http_get_json(&format!("{}/api/rooms/p/presence", c.gateway.http())).await?;
    assert_eq!(v["users"], json!(["alice", "bob"]));
    let left: bool = redis::cmd("HEXISTS")
        .arg(turnout_proto::keys::room_presence("p"))
        .arg("crashed-node/crashed-node-1")
        .query_async(&mut con)
        .await?;
    assert!(!left, "dead entry removed");
    bob.send_json(json!({"type": "leave", "room": "p"})).await?;
    alice.expect_presence("p", "leave", "bob").await?;
    let (_, v) = http_get_json(&format!("{}/api/rooms/p/presence", c.gateway.http())).await?;
    assert_eq!(v["users"], json!(["alice"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_3008_and_others_are_unaffected() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| s.send_queue = 16).await?;
    let url = c.nodes[0].ws_url();
    let mut slow = Client::connect(&url).await?;
    slow.join("firehose").await?;
    let mut fast = Client::connect(&url).await?;
    fast.join("firehose").await?;
    let mut p = Client::connect(&url).await?;
    p.join("firehose").await?;
    // ~16 MB of messages: far beyond the socket buffers of a client that does not read.
    let big = "x".repeat(60_000);
    let mut last = 0;
    let mut got = Vec::new();
    for i in 0..280 {
        p.send_json(
            json!({"type": "publish", "room": "firehose", "data": big, "id": format!("{i}")}),
        )
        .await?;
        if i % 20 == 19 {
            // Keep the publisher's own queue drained while the fast reader keeps up.
            last = p
                .expect(
                    "an ack",
                    |f| matches!(f, ServerFrame::Ack { id: Some(x), .. } if *x == format!("{i}")),
                )
                .await
                .map(|f| match f {
                    ServerFrame::Ack { seq, .. } => seq,
                    _ => 0,
                })?;
            got.extend(fast.messages_until("firehose", last).await?);
        }
    }
    let (_, code) = slow.recv_close().await?;
    assert_eq!(code, Some(3008));
    assert_eq!(last, 280);
    // The other member got everything, once, in order, and still answers.
    assert_eq!(got, (1..=280).collect::<Vec<u64>>());
    fast.send_json(json!({"type": "ping"})).await?;
    fast.expect("pong", |f| *f == ServerFrame::Pong).await?;
    assert_eq!(
        metric(&c.nodes[0], "turnout_slow_consumers_total").await?,
        1.0
    );
    Ok(())
}

/// A join reads history and presence in one pipelined round trip; when Redis
/// lost its script cache (a restart, `SCRIPT FLUSH`), the scripts are loaded
/// again and the join still succeeds.
#[tokio::test]
async fn join_survives_a_flushed_script_cache() -> Result<()> {
    let c = Cluster::start(1, Strategy::Pubsub).await?;
    let mut a = Client::connect(&format!("{}?user=a", c.nodes[0].ws_url())).await?;
    a.join("cache").await?;
    a.publish("cache", json!(1), "p1").await?;
    let mut con = c.redis.con().await?;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await?;
    let mut b = Client::connect(&format!("{}?user=b", c.nodes[0].ws_url())).await?;
    b.send_json(json!({"type": "join", "room": "cache", "since": 0}))
        .await?;
    match b
        .expect("joined", |f| {
            matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. })
        })
        .await?
    {
        ServerFrame::Joined { seq, presence, .. } => {
            assert_eq!(seq, 1);
            assert_eq!(presence, vec!["a".to_owned(), "b".to_owned()]);
        }
        other => panic!("join refused after SCRIPT FLUSH: {other:?}"),
    }
    // The replay after since=0 came with it.
    assert_eq!(b.messages_until("cache", 1).await?, vec![1]);
    Ok(())
}

/// Redis drops a room's keys without restarting (eviction under
/// `maxmemory`, a `FLUSHDB`): no reconnect tells anyone. The room starts
/// over with a new epoch, and members are told so at its next message
/// instead of having it dropped as an old seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_room_state_starts_over_visibly() -> Result<()> {
    for strategy in [Strategy::Pubsub, Strategy::Sticky, Strategy::Relay] {
        let c = Cluster::start(2, strategy).await?;
        let url = |i: usize| match strategy {
            Strategy::Sticky => format!("{}?room=ev", c.gateway.ws_url()),
            _ => c.nodes[i].ws_url(),
        };
        let mut a = Client::connect(&url(0)).await?;
        let mut b = Client::connect(&url(1)).await?;
        a.join("ev").await?;
        b.join("ev").await?;
        for i in 1..=5 {
            a.publish("ev", json!(i), &format!("p{i}")).await?;
        }
        assert_eq!(b.messages_until("ev", 5).await?.len(), 5);
        let mut con = c.redis.con().await?;
        let _: () = redis::cmd("DEL")
            .arg(turnout_proto::keys::room_seq("ev"))
            .arg(turnout_proto::keys::room_history("ev"))
            .arg(turnout_proto::keys::room_epoch("ev"))
            .query_async(&mut con)
            .await?;
        assert_eq!(a.publish("ev", json!("new"), "n1").await?, 1);
        for cl in [&mut a, &mut b] {
            let reset = cl
                .expect("a fresh joined", |f| {
                    matches!(f, ServerFrame::Joined { .. })
                })
                .await?;
            match reset {
                ServerFrame::Joined { recovered, seq, .. } => {
                    assert_eq!(recovered, Some(false), "{strategy}");
                    assert_eq!(seq, 0);
                }
                _ => unreachable!(),
            }
            assert_eq!(cl.messages_until("ev", 1).await?, vec![1], "{strategy}");
        }
        let mut resets = 0.0;
        for n in &c.nodes {
            resets += metric(n, "turnout_room_resets_total").await?;
        }
        assert!(resets >= 1.0, "{strategy}: the reset was counted");
    }
    Ok(())
}

/// Only the counter is evicted, history survives: publishing goes on after
/// the last kept message instead of failing forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_seq_counter_continues_after_history() -> Result<()> {
    let c = Cluster::start(1, Strategy::Pubsub).await?;
    let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
    a.join("cnt").await?;
    for i in 1..=3 {
        a.publish("cnt", json!(i), &format!("p{i}")).await?;
    }
    let mut con = c.redis.con().await?;
    let _: () = redis::cmd("DEL")
        .arg(turnout_proto::keys::room_seq("cnt"))
        .query_async(&mut con)
        .await?;
    assert_eq!(a.publish("cnt", json!(4), "p4").await?, 4);
    assert_eq!(a.messages_until("cnt", 4).await?, vec![1, 2, 3, 4]);
    Ok(())
}

/// A node told to stop while Redis does not answer (its heartbeat, a publish
/// and the drain's own announcement all waiting on it) still stops within
/// `drain_grace` and the two leaving steps: whatever runs it (Kubernetes,
/// compose, the fault campaign) kills it soon after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_within_its_grace_while_redis_stalls() -> Result<()> {
    for strategy in [
        Strategy::Sticky,
        Strategy::Pubsub,
        Strategy::Relay,
        Strategy::Local,
    ] {
        let redis = Redis::start().await?;
        let grace = Duration::from_secs(1);
        let node = start_node(turnout_ws_node::Settings {
            drain_grace: grace,
            ..node_settings(&redis.url(), strategy)
        })
        .await;
        let mut c = Client::connect(&node.ws_url()).await?;
        c.join("stall").await?;
        c.publish("stall", json!(1), "p1").await?;
        redis.pause()?;
        // A publish waits on Redis, and so does the heartbeat: the node
        // says its lease may have lapsed once one went unanswered (a local
        // node, which has no lease, once one timed out).
        c.send_json(json!({"type": "publish", "room": "stall", "data": 2, "id": "p2"}))
            .await?;
        let needle = match strategy {
            Strategy::Local => "heartbeat not acknowledged",
            _ => "lease",
        };
        readyz_refusal(&node, needle).await?;
        let bound = grace + 2 * turnout_ws_node::LEAVE_CALL;
        let started = tokio::time::Instant::now();
        node.stop.cancel();
        let ended = tokio::time::timeout(bound + Duration::from_millis(500), node.task).await;
        redis.resume()?;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "{strategy:?}: the node did not stop cleanly within {bound:?} (+0.5 s) while Redis \
             stalled: {ended:?} after {:?}",
            started.elapsed()
        );
    }
    Ok(())
}
