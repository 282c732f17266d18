//! Exactly once where the outcome of a step is unknown: a publish whose
//! Redis reply is lost, a server API publish retried during a stall, a
//! sticky owner at its connection limit, a stream resumed across a lost
//! room state. Each test injects the fault that once broke the promise.

use anyhow::{Result, bail};
use serde_json::json;
use std::time::Duration;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

/// Waits for the error a publish with `id` got.
async fn refused(c: &mut Client, id: &str) -> Result<String> {
    match c
        .expect("the publish's answer", |f| match f {
            ServerFrame::Ack { id: i, .. } | ServerFrame::Error { id: i, .. } => {
                i.as_deref() == Some(id)
            }
            _ => false,
        })
        .await?
    {
        ServerFrame::Error { code, .. } => Ok(code),
        other => bail!("expected the publish to fail, got {other:?}"),
    }
}

/// Sticky: the owner delivers from the publish script's reply. When that
/// reply is lost (the connection to Redis dies after the script ran), the
/// publisher hears `unavailable` and the message is in history all the
/// same. The owner must deliver it anyway: in a room that goes quiet (no
/// later publish shows the gap), and when the resend comes back a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_owner_delivers_a_publish_whose_reply_was_lost() -> Result<()> {
    let redis = Redis::start().await?;
    let proxy = Proxy::start(format!("127.0.0.1:{}", redis.port).parse()?).await?;
    let mut s = node_settings(&proxy.url(), Strategy::Sticky);
    // The lease outlives the reconnects the lost replies cause.
    s.heartbeat_ttl = Duration::from_secs(20);
    let node = start_node(s).await;
    let mut reader = Client::connect(&node.ws_url()).await?;
    reader.join("q").await?;
    let mut writer = Client::connect(&node.ws_url()).await?;
    writer.join("q").await?;
    assert_eq!(writer.publish("q", json!("first"), "w-1").await?, 1);
    assert_eq!(reader.messages_until("q", 1).await?, vec![1]);

    // The script runs; its reply never comes back.
    proxy.lose_replies(true);
    writer
        .send_json(json!({"type": "publish", "room": "q", "data": "lost reply", "id": "w-2"}))
        .await?;
    assert_eq!(refused(&mut writer, "w-2").await?, "unavailable");
    proxy.lose_replies(false);
    // Nobody publishes again, nobody resends: the message is delivered.
    assert_eq!(reader.messages_until("q", 2).await?, vec![2]);
    // The resend is a duplicate, and delivered no second time.
    let mut redis_con = redis.con().await?;
    let len: u64 = redis::cmd("XLEN")
        .arg("turnout:{q}:hist")
        .query_async(&mut redis_con)
        .await?;
    assert_eq!(len, 2, "stored once");
    assert_eq!(writer.publish("q", json!("lost reply"), "w-2").await?, 2);
    assert_eq!(writer.publish("q", json!("third"), "w-3").await?, 3);
    assert_eq!(reader.messages_until("q", 3).await?, vec![3]);

    // Again, and this time the publisher resends at once: the duplicate's
    // ack is ahead of what the owner delivered, which reads history.
    proxy.lose_replies(true);
    writer
        .send_json(json!({"type": "publish", "room": "q", "data": "again", "id": "w-4"}))
        .await?;
    assert_eq!(refused(&mut writer, "w-4").await?, "unavailable");
    proxy.lose_replies(false);
    // A refusal while the connection comes back is retried, as a client does.
    let end = std::time::Instant::now() + DEADLINE;
    let seq = loop {
        writer
            .send_json(json!({"type": "publish", "room": "q", "data": "again", "id": "w-4"}))
            .await?;
        match writer
            .expect("ack", |f| {
                matches!(f, ServerFrame::Ack { id, .. } | ServerFrame::Error { id, .. } if id.as_deref() == Some("w-4"))
            })
            .await?
        {
            ServerFrame::Ack { seq, duplicate, .. } => {
                assert!(duplicate, "the first try was stored");
                break seq;
            }
            other if std::time::Instant::now() > end => bail!("resend refused: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await, // a client's backoff
        }
    };
    assert_eq!(seq, 4);
    assert_eq!(reader.messages_until("q", 4).await?, vec![4]);
    // Nothing twice: the next message follows at once.
    assert_eq!(writer.publish("q", json!("fifth"), "w-5").await?, 5);
    assert_eq!(reader.messages_until("q", 5).await?, vec![5]);
    Ok(())
}

/// The server API without an idempotency key, during a Redis stall longer
/// than the node's Redis timeout and the gateway's RPC timeout: the
/// gateway's retry must not store the message a second time (it used to:
/// answered 200 once, stored at seq 2 and 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_publish_retried_through_a_redis_stall_is_stored_once() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Sticky, |s| {
        // The owner keeps its lease through the stall.
        s.heartbeat_ttl = Duration::from_secs(20);
    })
    .await?;
    let url = format!("{}/api/rooms/st/publish", c.gateway.http());
    // A member holds the room at its owner, so the owner publishes at once.
    let mut member = Client::connect(&format!("{}?room=st", c.gateway.ws_url())).await?;
    member.join("st").await?;
    let (status, _) = http("POST", &url, Some(json!({"data": 1}).to_string()), &[]).await?;
    assert_eq!(status, 200);
    c.redis.pause()?;
    let post = tokio::spawn({
        let url = url.clone();
        async move { http("POST", &url, Some(json!({"data": 2}).to_string()), &[]).await }
    });
    // The fault: a stall past both 5 s timeouts, so the first try fails
    // at the gateway while its script waits in Redis.
    tokio::time::sleep(Duration::from_secs(7)).await;
    c.redis.resume()?;
    let (status, body) = post.await??;
    let reply: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["seq"], 2, "{reply}");
    assert!(
        reply.get("duplicate").is_none(),
        "the caller sent no key: {reply}"
    );
    let (_, history) = http_get_json(&format!("{}/api/rooms/st/history", c.gateway.http())).await?;
    let data: Vec<&serde_json::Value> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["data"])
        .collect();
    assert_eq!(data, vec![&json!(1), &json!(2)], "stored once: {history}");
    assert_eq!(member.messages_until("st", 2).await?, vec![1, 2]);
    Ok(())
}

/// A message stored while its push never reached a node (a push dropped
/// at a full buffer, a reply lost) in a room that then goes quiet: no later
/// message shows the gap, so the node's renewal, which reads the room's
/// seq, notices and reads it back. Here the message is written to the
/// room's seq and history by hand, with no push at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_node_never_heard_of_is_read_back_in_a_quiet_room() -> Result<()> {
    for strategy in [Strategy::Pubsub, Strategy::Sticky, Strategy::Relay] {
        let redis = Redis::start().await?;
        let mut s = node_settings(&redis.url(), strategy);
        s.heartbeat_interval = Duration::from_millis(200);
        s.heartbeat_ttl = Duration::from_secs(1);
        s.presence_ttl = Duration::from_millis(1500);
        let node = start_node(s).await;
        let mut member = Client::connect(&node.ws_url()).await?;
        member.join("qq").await?;
        member.publish("qq", json!("heard"), "m-1").await?;
        assert_eq!(member.messages_until("qq", 1).await?, vec![1]);
        let frame = json!({"type": "message", "room": "qq", "seq": 2, "from": "x",
            "node": "elsewhere", "ts": 1, "data": "never pushed"});
        let mut con = redis.con().await?;
        let seq: u64 = redis::cmd("INCR")
            .arg("turnout:{qq}:seq")
            .query_async(&mut con)
            .await?;
        assert_eq!(seq, 2);
        redis::cmd("XADD")
            .arg("turnout:{qq}:hist")
            .arg("2-0")
            .arg("f")
            .arg(frame.to_string())
            .query_async::<String>(&mut con)
            .await?;
        match member
            .expect("the message", |f| matches!(f, ServerFrame::Message { .. }))
            .await?
        {
            ServerFrame::Message { seq, data, .. } => {
                assert_eq!((seq, data), (2, json!("never pushed")), "{strategy}")
            }
            _ => unreachable!(),
        }
        assert!(metric(&node, "turnout_caught_up_quiet_total").await? >= 1.0);
    }
    Ok(())
}

/// Sticky: a room's owner at `max_connections`. A newcomer through the
/// gateway is told to retry later (503): the room is not placed anew on
/// another node, which would send its members away and start its presence
/// over with the newcomer alone. A new room goes to a node with room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sticky_owner_keeps_its_room_and_its_members() -> Result<()> {
    let c = Cluster::start_with(2, Strategy::Sticky, |s| s.max_connections = 5).await?;
    let gw = format!("{}?room=full", c.gateway.ws_url());
    let mut members = Vec::new();
    for i in 0..5 {
        let mut m = Client::connect(&format!("{gw}&user=u{i}")).await?;
        m.join("full").await?;
        members.push(m);
    }
    let owner = members[0].node().to_owned();
    assert!(members.iter().all(|m| m.node() == owner));
    assert_eq!(upgrade_status(&format!("{gw}&user=u5")).await?, 503);
    members[0]
        .publish("full", json!("still here"), "p-1")
        .await?;
    for m in &mut members {
        let f = m
            .expect("the room's next frame", |f| {
                matches!(f, ServerFrame::Message { .. } | ServerFrame::Error { .. })
            })
            .await?;
        assert!(matches!(f, ServerFrame::Message { seq: 1, .. }), "{f:?}");
    }
    let (_, presence) =
        http_get_json(&format!("{}/api/rooms/full/presence", c.gateway.http())).await?;
    assert_eq!(presence["users"], json!(["u0", "u1", "u2", "u3", "u4"]));
    // Once the owner's heartbeat says it is full, a new room goes elsewhere.
    let cluster = format!("{}/api/cluster", c.gateway.http());
    wait_for("the owner reported full", DEADLINE, || {
        let (cluster, owner) = (cluster.clone(), owner.clone());
        async move {
            let v = http_get_json(&cluster).await.ok()?.1;
            v["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["id"] == owner.as_str() && n["connections"] == 5)
                .then_some(())
        }
    })
    .await?;
    // Four new rooms: by hashing alone each would land on the full owner
    // about half the time.
    let mut others = Vec::new();
    for i in 0..4 {
        let other = Client::connect(&format!("{}?room=other-{i}", c.gateway.ws_url())).await?;
        assert_ne!(other.node(), owner, "room other-{i}");
        others.push(other);
    }
    Ok(())
}

/// A room stream resumed after the room's state was lost in Redis (it
/// started over at seq 1 and passed the resume point again): the resume
/// point carries its epoch, so SSE says `reset` and sends the new epoch
/// from its first message, and gRPC `Subscribe` ends `ABORTED`, instead of
/// resuming after a seq that means another message now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_across_a_lost_room_state_starts_over() -> Result<()> {
    use turnout_proto::v1::SubscribeRequest;
    use turnout_proto::v1::gateway_client::GatewayClient;
    for strategy in [Strategy::Pubsub, Strategy::Sticky, Strategy::Relay] {
        let c = Cluster::start(1, strategy).await?;
        let api = c.gateway.http();
        let publish = |i: u64| {
            let url = format!("{api}/api/rooms/ep/publish");
            async move {
                let (status, _) =
                    http("POST", &url, Some(json!({"data": i}).to_string()), &[]).await?;
                anyhow::ensure!(status == 200, "publish answered {status}");
                Ok(())
            }
        };
        for i in 1..=5 {
            publish(i).await?;
        }
        let history = format!("{api}/api/rooms/ep/history");
        let old = http_get_json(&history).await?.1["epoch"].clone();
        let old = old.as_str().unwrap_or_default().to_owned();
        // The room's state is lost (evicted, a Redis without persistence
        // restarted) and the room goes on: seq 1..=10 of a new epoch.
        let mut con = c.redis.con().await?;
        redis::cmd("DEL")
            .arg(
                &[
                    "turnout:{ep}:seq",
                    "turnout:{ep}:hist",
                    "turnout:{ep}:epoch",
                ][..],
            )
            .query_async::<()>(&mut con)
            .await?;
        for i in 101..=110 {
            publish(i).await?;
        }
        let new = http_get_json(&history).await?.1["epoch"].clone();
        let new = new.as_str().unwrap_or_default().to_owned();
        assert_ne!(old, new);

        let url = format!("{api}/api/rooms/ep/events");
        let mut sse = Sse::open(&url, &[("last-event-id", &format!("5:{old}"))]).await?;
        let reset = sse.next().await?;
        assert_eq!(
            reset.event.as_deref(),
            Some("reset"),
            "{strategy}: {reset:?}"
        );
        assert_eq!(sse.seqs_until(10).await?, (1..=10).collect::<Vec<_>>());
        // The query's form says the same.
        let mut sse = Sse::open(&format!("{url}?since=5&epoch={old}"), &[]).await?;
        assert_eq!(sse.next().await?.event.as_deref(), Some("reset"));
        // Resumed in the new epoch: nothing to reset.
        let mut sse = Sse::open(&url, &[("last-event-id", &format!("8:{new}"))]).await?;
        assert_eq!(sse.seqs_until(10).await?, vec![9, 10]);

        let mut gw = GatewayClient::connect(api.clone()).await?;
        let mut stream = gw
            .subscribe(SubscribeRequest {
                room: "ep".into(),
                since: 5,
                epoch: old.clone(),
            })
            .await?
            .into_inner();
        let ended = tokio::time::timeout(DEADLINE, tokio_stream::StreamExt::next(&mut stream))
            .await?
            .expect("an answer");
        assert_eq!(
            ended.unwrap_err().code(),
            tonic::Code::Aborted,
            "{strategy}"
        );
        let mut stream = gw
            .subscribe(SubscribeRequest {
                room: "ep".into(),
                since: 8,
                epoch: new.clone(),
            })
            .await?
            .into_inner();
        let m = tokio::time::timeout(DEADLINE, tokio_stream::StreamExt::next(&mut stream))
            .await?
            .expect("a message")?;
        assert_eq!((m.seq, m.epoch.as_str()), (9, new.as_str()));
    }
    Ok(())
}

/// Eviction takes a room's epoch key while its seq and history survive
/// (or its seq key while history survives): nothing was lost, so the room
/// must not start over. It used to: a new epoch, every member told
/// `recovered: false` and sent the whole history again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_epoch_or_seq_key_does_not_start_the_room_over() -> Result<()> {
    for strategy in [Strategy::Pubsub, Strategy::Sticky, Strategy::Relay] {
        let c = Cluster::start(1, strategy).await?;
        let mut member = Client::connect(&format!("{}?room=ev", c.gateway.ws_url())).await?;
        member.join("ev").await?;
        let mut writer = Client::connect(&format!("{}?room=ev", c.gateway.ws_url())).await?;
        writer.join("ev").await?;
        for i in 1..=3 {
            writer.publish("ev", json!(i), &format!("w-{i}")).await?;
        }
        assert_eq!(member.messages_until("ev", 3).await?, vec![1, 2, 3]);
        let history = format!("{}/api/rooms/ev/history", c.gateway.http());
        let epoch = http_get_json(&history).await?.1["epoch"].clone();
        let mut con = c.redis.con().await?;
        for (key, next) in [("turnout:{ev}:epoch", 4), ("turnout:{ev}:seq", 5)] {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<()>(&mut con)
                .await?;
            assert_eq!(
                http_get_json(&history).await?.1["epoch"],
                epoch,
                "{strategy}: history still names the epoch without {key}"
            );
            let seq = writer
                .publish("ev", json!(next), &format!("w-{next}"))
                .await?;
            assert_eq!(seq, next, "{strategy}: the seq goes on after {key} went");
            let f = member
                .expect("the next frame of the room", |f| {
                    matches!(f, ServerFrame::Message { .. } | ServerFrame::Joined { .. })
                })
                .await?;
            assert!(
                matches!(&f, ServerFrame::Message { seq, .. } if *seq == next),
                "{strategy}: after {key} went, got {f:?}"
            );
            assert_eq!(
                http_get_json(&history).await?.1["epoch"],
                epoch,
                "{strategy}"
            );
        }
    }
    Ok(())
}

/// `used_memory` of a Redis, from `INFO memory`.
async fn used_memory(redis: &Redis) -> Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut redis.con().await?)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no used_memory in {info}"))
}

/// Redis at `maxmemory` with `noeviction` refuses writes. The nodes keep
/// their membership (a heartbeat and a lease renewal rewrite what is there,
/// and may do so past `maxmemory`), so a sticky owner does not send its
/// members away as if Redis were gone; publishes are refused `unavailable`
/// (nothing stored) and go through once Redis has room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_refuses_writes_and_sends_nobody_away() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Sticky, |s| {
        s.heartbeat_interval = Duration::from_millis(200);
        s.heartbeat_ttl = Duration::from_secs(1);
        s.presence_ttl = Duration::from_millis(1500);
    })
    .await?;
    let gw = format!("{}?room=oom", c.gateway.ws_url());
    let mut member = Client::connect(&gw).await?;
    member.join("oom").await?;
    let mut writer = Client::connect(&gw).await?;
    writer.join("oom").await?;
    assert_eq!(writer.publish("oom", json!(1), "o-1").await?, 1);
    assert_eq!(member.messages_until("oom", 1).await?, vec![1]);
    let mut con = c.redis.con().await?;
    // Well below what it uses: every write that may grow memory is refused.
    let full = used_memory(&c.redis).await? / 2;
    redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", &full.to_string()][..])
        .query_async::<()>(&mut con)
        .await?;
    // Three leases long: every heartbeat and renewal meanwhile meets OOM.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut refusals = 0;
    while std::time::Instant::now() < until {
        writer
            .send_json(json!({"type": "publish", "room": "oom", "data": 2, "id": "o-2"}))
            .await?;
        assert_eq!(refused(&mut writer, "o-2").await?, "unavailable");
        refusals += 1;
        tokio::time::sleep(Duration::from_millis(250)).await; // a client's backoff
    }
    assert!(refusals >= 5);
    redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"][..])
        .query_async::<()>(&mut con)
        .await?;
    assert_eq!(writer.publish("oom", json!(2), "o-2").await?, 2);
    let f = member
        .expect("the room's next frame", |f| {
            matches!(
                f,
                ServerFrame::Message { .. }
                    | ServerFrame::Reconnect { .. }
                    | ServerFrame::Error { .. }
            )
        })
        .await?;
    assert!(matches!(f, ServerFrame::Message { seq: 2, .. }), "{f:?}");
    assert_eq!(
        metric(&c.nodes[0], "turnout_lease_lapses_total").await?,
        0.0
    );
    Ok(())
}

/// turnout needs `maxmemory-policy noeviction`: a Redis that may evict its
/// keys is named in every node's metrics (and, once, in its log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_turnouts_state_is_named() -> Result<()> {
    let redis = Redis::start().await?;
    let mut con = redis.con().await?;
    for (k, v) in [("maxmemory", "512mb"), ("maxmemory-policy", "allkeys-lru")] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query_async::<()>(&mut con)
            .await?;
    }
    let node = start_node(node_settings(&redis.url(), Strategy::Pubsub)).await;
    wait_for("the node to read Redis's memory", DEADLINE, || async {
        (metric(&node, "turnout_redis_may_evict").await.ok()? == 1.0).then_some(())
    })
    .await?;
    assert_eq!(
        metric(&node, "turnout_redis_maxmemory_bytes").await?,
        (512u64 << 20) as f64
    );
    assert!(metric(&node, "turnout_redis_used_memory_bytes").await? > 0.0);
    Ok(())
}

/// A member far behind in a room whose history is longer than a send
/// queue: its replay comes in pages of at most half the queue (frames and
/// bytes), each ending in `replay_until`, so it catches up instead of being
/// closed as a slow consumer on every rejoin (3008, then the same `since`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_in_pages_within_its_queue() -> Result<()> {
    let redis = Redis::start().await?;
    let mut s = node_settings(&redis.url(), Strategy::Pubsub);
    s.send_queue = 64;
    s.history_size = 500;
    let node = start_node(s).await;
    let mut writer = Client::connect(&node.ws_url()).await?;
    writer.join("far").await?;
    for i in 1..=300u64 {
        writer.publish("far", json!(i), &format!("f-{i}")).await?;
    }
    let mut reader = Client::connect(&node.ws_url()).await?;
    let mut got = Vec::new();
    let mut since = 0;
    let mut pages = 0;
    while since < 300 {
        if pages > 0 {
            reader
                .send_json(json!({"type": "leave", "room": "far"}))
                .await?;
            reader
                .expect("left", |f| matches!(f, ServerFrame::Left { .. }))
                .await?;
        }
        pages += 1;
        reader
            .send_json(json!({"type": "join", "room": "far", "since": since}))
            .await?;
        let until = match reader
            .expect("joined", |f| matches!(f, ServerFrame::Joined { .. }))
            .await?
        {
            ServerFrame::Joined {
                replay_until,
                recovered,
                ..
            } => {
                assert_eq!(recovered, Some(true), "a page is not a loss");
                replay_until.unwrap_or(300)
            }
            _ => unreachable!(),
        };
        assert!(
            until - since <= 32,
            "a page is at most half the queue: {since}..{until}"
        );
        got.extend(reader.messages_until("far", until).await?);
        since = until;
    }
    assert_eq!(got, (1..=300).collect::<Vec<_>>());
    assert!(pages >= 10, "{pages} pages");
    assert_eq!(metric(&node, "turnout_slow_consumers_total").await?, 0.0);
    Ok(())
}

/// Sticky: a room's epoch counter outlives its owner record (pinned for
/// `placement_ttl`) by as much again, and no longer: a client that joins
/// room after room leaves nothing in Redis past twice `placement_ttl`
/// (it was kept seven days while the room had members).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_epoch_counter_is_kept_twice_placement_ttl() -> Result<()> {
    let pin = Duration::from_secs(2);
    let c = Cluster::start_with(1, Strategy::Sticky, |s| {
        s.heartbeat_interval = Duration::from_millis(200);
        s.heartbeat_ttl = Duration::from_secs(1);
        s.presence_ttl = Duration::from_millis(1500);
        s.placement_ttl = pin;
    })
    .await?;
    let mut member = Client::connect(&format!("{}?room=pin", c.gateway.ws_url())).await?;
    member.join("pin").await?;
    let mut con = c.redis.con().await?;
    // Each renewal sets it to twice the node's placement_ttl (the router's
    // claim set it to the router's own, 60 s here).
    let pin_ms = pin.as_millis() as i64;
    wait_for("a renewal of the room's epoch counter", DEADLINE, || {
        let mut con = con.clone();
        async move {
            let ttl: i64 = redis::cmd("PTTL")
                .arg("turnout:{pin}:claims")
                .query_async(&mut con)
                .await
                .ok()?;
            (ttl > pin_ms && ttl <= 2 * pin_ms).then_some(())
        }
    })
    .await?;
    let owner: i64 = redis::cmd("PTTL")
        .arg("turnout:{pin}:owner")
        .query_async(&mut con)
        .await?;
    assert!(
        owner > 0 && owner <= pin.as_millis() as i64,
        "owner kept {owner} ms"
    );
    Ok(())
}

/// A client's upgrade through the gateway is answered within three
/// `upstream_timeout`s, finding the node included, even when a stalled
/// Redis holds up the router: a refusal it can retry at once, rather than a
/// wait past its own patience while the stall ends and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_through_the_gateway_is_answered_in_bounded_time() -> Result<()> {
    let redis = Redis::start().await?;
    let url = redis.url();
    let router = start_router(&url, Strategy::Sticky).await;
    let mut gs = gateway_settings(&url, Strategy::Sticky, &[&router]);
    gs.upstream_timeout = Duration::from_millis(500);
    let gateway = start_gateway_with(gs).await;
    let mut ns = node_settings(&url, Strategy::Sticky);
    ns.heartbeat_ttl = Duration::from_secs(30);
    let _node = start_node(ns).await;
    live_nodes(&gateway, 1).await?;
    redis.pause()?;
    let started = std::time::Instant::now();
    let status = upgrade_status(&format!("{}?room=fresh", gateway.ws_url())).await?;
    let took = started.elapsed();
    redis.resume()?;
    assert_eq!(status, 503);
    // Three upstream_timeouts, and a margin for a busy machine: the
    // router's own Redis timeout (5 s) would be past it.
    assert!(
        took < Duration::from_millis(1500) + Duration::from_secs(2),
        "{took:?}"
    );
    Ok(())
}

/// A refused upgrade closes its connection, at the gateway and at a node:
/// kept alive for more HTTP, a browser's or Node's WebSocket waits for the
/// close before it reports the failure, and the client's reconnect waited
/// with it (10 s of silence per try, seen by the fault campaign).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_closes_its_connection() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Redis::start().await?;
    let router = start_router(&redis.url(), Strategy::Sticky).await;
    let gateway = start_gateway(&redis.url(), Strategy::Sticky, &[&router]).await;
    let mut ns = node_settings(&redis.url(), Strategy::Sticky);
    ns.max_connections = 1;
    let node = start_node(ns).await;
    live_nodes(&gateway, 1).await?;
    let _held = Client::connect(&node.ws_url()).await?;
    // A gateway still starting (its Redis is not there): 503.
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let starting = spawn_gateway(gateway_settings(&nowhere, Strategy::Sticky, &[&router])).await;
    // The gateway: no room for sticky (400); the node: full (503).
    for (addr, what) in [
        (gateway.addr, "the gateway"),
        (node.addr, "a node"),
        (starting.addr, "a starting gateway"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let req = "GET /ws?user=x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        tcp.write_all(req.as_bytes()).await?;
        let mut answer = Vec::new();
        // Read to the end: the server closes, or the read times out.
        tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer))
            .await
            .map_err(|_| anyhow::anyhow!("{what} kept a refused upgrade's connection open"))??;
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.starts_with("HTTP/1.1 101"), "{what}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{what}: {answer}"
        );
    }
    Ok(())
}

/// A member that joined a room before its first message (`joined` with no
/// epoch) learns the epoch from that message, which names it: no other
/// frame would tell it, and a rejoin after the room's state was lost must
/// say which epoch its `since` counts in. Later messages carry none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_message_of_an_epoch_names_it() -> Result<()> {
    for strategy in [
        Strategy::Pubsub,
        Strategy::Sticky,
        Strategy::Relay,
        Strategy::Local,
    ] {
        let c = Cluster::start(1, strategy).await?;
        let url = c.nodes[0].ws_url();
        let mut early = Client::connect(&format!("{url}?user=early")).await?;
        early
            .send_json(json!({"type": "join", "room": "fresh"}))
            .await?;
        match early
            .expect("joined", |f| matches!(f, ServerFrame::Joined { .. }))
            .await?
        {
            ServerFrame::Joined { seq, epoch, .. } => {
                assert_eq!((seq, epoch.as_str()), (0, ""), "{strategy}: an empty room")
            }
            _ => unreachable!(),
        }
        early.publish("fresh", json!(1), "one").await?;
        early.publish("fresh", json!(2), "two").await?;
        let mut late = Client::connect(&format!("{url}?user=late")).await?;
        late.send_json(json!({"type": "join", "room": "fresh"}))
            .await?;
        let room_epoch = match late
            .expect("joined", |f| matches!(f, ServerFrame::Joined { .. }))
            .await?
        {
            ServerFrame::Joined { epoch, .. } => epoch,
            _ => unreachable!(),
        };
        assert!(!room_epoch.is_empty(), "{strategy}");
        let mut epochs = Vec::new();
        while epochs.len() < 2 {
            if let ServerFrame::Message { seq, epoch, .. } = early.recv().await? {
                epochs.push((seq, epoch));
            }
        }
        assert_eq!(
            epochs,
            vec![(1, Some(room_epoch.clone())), (2, None)],
            "{strategy}"
        );
        // What history replays is the message as sent.
        late.send_json(json!({"type": "leave", "room": "fresh"}))
            .await?;
        late.expect("left", |f| matches!(f, ServerFrame::Left { .. }))
            .await?;
        late.send_json(json!({"type": "join", "room": "fresh", "since": 0, "epoch": room_epoch}))
            .await?;
        let first = late
            .expect("seq 1", |f| matches!(f, ServerFrame::Message { .. }))
            .await?;
        assert!(
            matches!(&first, ServerFrame::Message { seq: 1, epoch: Some(e), .. } if *e == room_epoch),
            "{strategy}: {first:?}"
        );
    }
    Ok(())
}

/// A `join` for a room the connection is already in answers `joined` with
/// the last seq the member was sent. It used to read that seq before the
/// presence read and queue the frame after it, so a message fanned out in
/// between came first and `joined` named the one before it: a client that
/// took `joined` as its place asked for that message again and got it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_while_joined_names_the_last_seq_the_member_was_sent() -> Result<()> {
    for strategy in [Strategy::Pubsub, Strategy::Relay] {
        let c = Cluster::start(2, strategy).await?;
        let mut m = Client::connect(&c.nodes[0].ws_url()).await?;
        m.join("again").await?;
        let url = c.nodes[1].ws_url();
        let total = 1500u64;
        let publisher = tokio::spawn(async move {
            let mut p = Client::connect(&url).await?;
            p.join("again").await?;
            for i in 0..total {
                p.publish("again", json!(i), &format!("a-{i}")).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
        let (mut last, mut asked, mut behind) = (0, 0, Vec::new());
        while last < total {
            match m.recv().await? {
                ServerFrame::Message { seq, .. } => {
                    last = seq;
                    if seq % 5 == 0 {
                        m.send_json(json!({"type": "join", "room": "again"}))
                            .await?;
                        asked += 1;
                    }
                }
                ServerFrame::Joined { seq, .. } if seq < last => behind.push((seq, last)),
                _ => {}
            }
        }
        publisher.await??;
        assert!(asked > 100, "{strategy}: {asked} joins asked");
        assert!(
            behind.is_empty(),
            "{strategy}: `joined` behind what was sent: {behind:?}"
        );
    }
    Ok(())
}
