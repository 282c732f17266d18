//! turnout on a Redis Cluster (`redis_cluster = true`): three masters and
//! three replicas of Debian's redis-server on loopback, made with
//! `redis-cli --cluster create`. Both strategies deliver across nodes, room
//! keys spread over every master, pubsub relays over sharded channels only,
//! and a failover or a slot migration of a busy room loses nothing.

use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use turnout_proto::{Strategy, keys};
use turnout_tests::*;

struct Turnout {
    _router: Proc,
    gateway: Proc,
    nodes: Vec<Proc>,
}

async fn start(rc: &RedisCluster, n: usize, strategy: Strategy) -> Result<Turnout> {
    start_with(rc, n, strategy, |_| {}).await
}

async fn start_with(
    rc: &RedisCluster,
    n: usize,
    strategy: Strategy,
    tweak: impl Fn(&mut turnout_ws_node::Settings),
) -> Result<Turnout> {
    let url = rc.url();
    let mut rs = router_settings(&url, strategy);
    rs.redis_cluster = true;
    let router = start_router_with(rs).await;
    let mut nodes = Vec::new();
    for _ in 0..n {
        let mut s = node_settings(&url, strategy);
        s.redis_cluster = true;
        tweak(&mut s);
        nodes.push(start_node(s).await);
    }
    let mut gs = gateway_settings(&url, strategy, &[&router]);
    gs.redis_cluster = true;
    let gateway = start_gateway_with(gs).await;
    live_nodes(&gateway, n).await?;
    Ok(Turnout {
        _router: router,
        gateway,
        nodes,
    })
}

/// Members of `room` for the strategy: pubsub, one on each node (so every
/// message crosses the bus); sticky, two through the gateway (which puts
/// both on the room's owner).
async fn members(t: &Turnout, strategy: Strategy, room: &str) -> Result<Vec<Client>> {
    let mut out = Vec::new();
    for i in 0..2 {
        let url = match strategy {
            Strategy::Pubsub => t.nodes[i % t.nodes.len()].ws_url(),
            _ => format!("{}?room={room}", t.gateway.ws_url()),
        };
        let mut cl = Client::connect(&url).await?;
        cl.join(room).await?;
        out.push(cl);
    }
    if strategy == Strategy::Pubsub {
        assert_ne!(out[0].node(), out[1].node());
    } else {
        assert_eq!(out[0].node(), out[1].node(), "sticky: one owner");
    }
    Ok(out)
}

/// Publishes with a resend of the same id on a refusal (a shard failing
/// over or a slot moving answers "unavailable" for a moment), as the client
/// library does; the server accepts each id once.
async fn publish_until_acked(cl: &mut Client, room: &str, i: u64) -> Result<u64> {
    let id = format!("m-{i}");
    let mut last = None;
    for _ in 0..150 {
        match cl.publish(room, json!({ "i": i }), &id).await {
            Ok(seq) => return Ok(seq),
            Err(e) => last = Some(e),
        }
        // A resend's pause, as a client's backoff; not a synchronisation.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap()).context("publish never acknowledged")
}

/// Room keys (`turnout:{room}:seq`) on one node.
async fn seq_keys_on(rc: &RedisCluster, port: u16) -> Result<usize> {
    let mut con = rc.con(port).await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("turnout:{*}:seq")
        .query_async(&mut con)
        .await?;
    Ok(keys.len())
}

async fn delivers_across_nodes(strategy: Strategy) -> Result<()> {
    let rc = RedisCluster::start(3, 1).await?;
    let t = start(&rc, 2, strategy).await?;
    let rooms: Vec<String> = (0..24).map(|i| format!("room-{i}")).collect();
    let n = 5;
    for room in &rooms {
        let mut m = members(&t, strategy, room).await?;
        let mut last = 0;
        for i in 1..=n {
            last = m[0]
                .publish(room, json!({ "i": i }), &format!("m-{i}"))
                .await?;
        }
        assert_eq!(last, n);
        for cl in &mut m {
            let seqs = cl.messages_until(room, last).await?;
            assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{room} on {}", cl.node());
        }
    }
    // Rooms spread by name over every master's slots.
    let masters = rc.masters().await?;
    assert_eq!(masters.len(), 3);
    for &m in &masters {
        let k = seq_keys_on(&rc, m).await?;
        assert!(k > 0, "master {m} holds no room ({strategy:?})");
    }
    // Membership (node set, heartbeats) shares one slot: one master has it all.
    let nodes_slot = rc.slot(keys::NODES).await?;
    assert_eq!(rc.slot(&keys::node("any")).await?, nodes_slot);
    assert_eq!(rc.slot(keys::DRAINING).await?, nodes_slot);
    assert_eq!(rc.slot(keys::MEMBERSHIP_CHANNEL).await?, nodes_slot);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_delivers_on_a_redis_cluster() -> Result<()> {
    delivers_across_nodes(Strategy::Sticky).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_delivers_on_a_redis_cluster_over_sharded_channels_only() -> Result<()> {
    delivers_across_nodes(Strategy::Pubsub).await?;
    // Again with members still joined, to look at the subscriptions.
    let rc = RedisCluster::start(3, 1).await?;
    let t = start(&rc, 2, Strategy::Pubsub).await?;
    let rooms: Vec<String> = (0..12).map(|i| format!("lobby-{i}")).collect();
    let mut held = Vec::new();
    for room in &rooms {
        let mut m = members(&t, Strategy::Pubsub, room).await?;
        let seq = m[0].publish(room, json!("hi"), "hi").await?;
        m[1].messages_until(room, seq).await?;
        held.push(m);
    }
    let (mut sharded, mut classic) = (BTreeSet::new(), BTreeSet::new());
    let mut spublish = 0u64;
    for &p in &rc.ports {
        let mut con = rc.con(p).await?;
        let s: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .query_async(&mut con)
            .await?;
        sharded.extend(s);
        let c: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut con)
            .await?;
        classic.extend(c);
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut con)
            .await?;
        spublish += stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_spublish:calls="))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0);
    }
    for room in &rooms {
        assert!(
            sharded.contains(&keys::room_channel(room)),
            "{room} not on a sharded channel: {sharded:?}"
        );
    }
    let room_classic: Vec<_> = classic.iter().filter(|c| c.ends_with(":bus")).collect();
    assert!(
        room_classic.is_empty(),
        "room channels subscribed classically: {room_classic:?}"
    );
    assert!(spublish >= rooms.len() as u64, "SPUBLISH calls: {spublish}");
    Ok(())
}

/// The members' view of a busy room whose shard changes under load:
/// `change` runs once `before` messages are acked, while the rest are
/// published (the burst goes on until the change is over, and a little
/// after, so the two overlap whatever the change takes); every member must
/// see every seq once, in order.
async fn busy_room_survives(
    strategy: Strategy,
    change: impl AsyncFnOnce(&RedisCluster, &str) -> Result<()>,
) -> Result<()> {
    let rc = RedisCluster::start(3, 1).await?;
    let t = start(&rc, 2, strategy).await?;
    let room = "busy";
    let mut m = members(&t, strategy, room).await?;
    let before = 40;
    let mut publisher = Client::connect(&match strategy {
        Strategy::Pubsub => t.nodes[0].ws_url(),
        _ => format!("{}?room={room}", t.gateway.ws_url()),
    })
    .await?;
    publisher.join(room).await?;
    for i in 1..=before {
        publish_until_acked(&mut publisher, room, i).await?;
    }
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let changed = tokio_util::sync::CancellationToken::new();
    let go = tokio::spawn({
        let (acked, changed) = (acked.clone(), changed.clone());
        async move {
            let mut last = 0;
            // A busy room's pace (50 messages/s), so what the room misses
            // while its shard changes fits in its history (history_size 100).
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            let mut after = 0;
            let mut i = before;
            while after < 20 {
                i += 1;
                pace.tick().await;
                last = publish_until_acked(&mut publisher, room, i).await?;
                acked.store(i, std::sync::atomic::Ordering::Relaxed);
                if changed.is_cancelled() {
                    after += 1;
                }
            }
            anyhow::Ok((i, last))
        }
    });
    change(&rc, room).await?;
    let at_change = acked.load(std::sync::atomic::Ordering::Relaxed);
    changed.cancel();
    let (total, last) = go.await??;
    assert!(
        at_change > before && at_change < total,
        "the change ({at_change} acked when it ended) came in the middle of the burst (after {before}, before {total})"
    );
    assert_eq!(last, total, "one seq per message: no id was taken twice");
    for cl in &mut m {
        let seqs = match cl.messages_until(room, last).await {
            Ok(seqs) => seqs,
            Err(e) => bail!(
                "member on {}: {e:#}\n{}",
                cl.node(),
                diagnose(&t, &rc, room).await
            ),
        };
        if seqs != (1..=total).collect::<Vec<_>>() {
            bail!(
                "member on {} saw {seqs:?}\n{}",
                cl.node(),
                diagnose(&t, &rc, room).await
            );
        }
    }
    Ok(())
}

/// What a failed run looks like from the nodes and the shards: the nodes'
/// bus and repair counters, and per Redis node its role, the room
/// channel's subscribers and the room's history length.
async fn diagnose(t: &Turnout, rc: &RedisCluster, room: &str) -> String {
    let mut why = String::new();
    for n in &t.nodes {
        for name in [
            "bus_messages_total",
            "resubscribed_total",
            "channels_moved_total",
            "gaps_repaired_total",
            "messages_unrecoverable_total",
            "push_dropped_total",
        ] {
            let v = metric(n, &format!("turnout_{name}")).await.unwrap_or(-1.0);
            why.push_str(&format!(" {name}={v}"));
        }
        why.push('\n');
    }
    for &p in &rc.ports {
        let Ok(mut con) = rc.con(p).await else {
            continue;
        };
        let subs: redis::RedisResult<redis::Value> = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(keys::room_channel(room))
            .query_async(&mut con)
            .await;
        let role: redis::RedisResult<redis::Value> = redis::cmd("ROLE").query_async(&mut con).await;
        let len: redis::RedisResult<i64> = redis::cmd("XLEN")
            .arg(keys::room_history(room))
            .query_async(&mut con)
            .await;
        why.push_str(&format!(
            "redis {p}: role {role:?} subscribers {subs:?} history {len:?}\n"
        ));
    }
    why
}

/// `CLUSTER FAILOVER` on a replica of the room's shard.
async fn fail_over(rc: &RedisCluster, room: &str) -> Result<()> {
    let (master, replicas) = rc.shard_of(&keys::room_seq(room)).await?;
    let replica = *replicas.first().context("the shard has no replica")?;
    let mut con = rc.con(replica).await?;
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async(&mut con)
        .await?;
    wait_for(
        "the replica to take over",
        Duration::from_secs(20),
        || async {
            let (now, _) = rc.shard_of(&keys::room_seq(room)).await.ok()?;
            (now == replica).then_some(())
        },
    )
    .await?;
    assert_ne!(master, replica);
    rc.wait_settled().await
}

async fn node_id(rc: &RedisCluster, port: u16) -> Result<String> {
    let mut con = rc.con(port).await?;
    Ok(redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut con)
        .await?)
}

/// Moves the room's slot to another master, keys and all, the way
/// `redis-cli --cluster reshard` does: IMPORTING, MIGRATING, MIGRATE in
/// batches, then SETSLOT NODE on every master.
async fn migrate(rc: &RedisCluster, room: &str) -> Result<()> {
    let slot = rc.slot(&keys::room_seq(room)).await?;
    let (from, _) = rc.shard_of(&keys::room_seq(room)).await?;
    let masters = rc.masters().await?;
    let to = *masters
        .iter()
        .find(|&&m| m != from)
        .context("no other master")?;
    let (from_id, to_id) = (node_id(rc, from).await?, node_id(rc, to).await?);
    let (mut src, mut dst) = (rc.con(from).await?, rc.con(to).await?);
    let setslot = |how: &str, id: &str| {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot).arg(how).arg(id);
        c
    };
    let _: () = setslot("IMPORTING", &from_id).query_async(&mut dst).await?;
    let _: () = setslot("MIGRATING", &to_id).query_async(&mut src).await?;
    loop {
        let batch: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut src)
            .await?;
        if batch.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("REPLACE")
            .arg("KEYS")
            .arg(&batch)
            .query_async(&mut src)
            .await?;
    }
    let _: () = setslot("NODE", &to_id).query_async(&mut dst).await?;
    let _: () = setslot("NODE", &to_id).query_async(&mut src).await?;
    for m in masters.into_iter().filter(|m| *m != from && *m != to) {
        let mut c = rc.con(m).await?;
        let _: () = setslot("NODE", &to_id).query_async(&mut c).await?;
    }
    rc.wait_settled().await?;
    let (now, _) = rc.shard_of(&keys::room_seq(room)).await?;
    if now != to {
        bail!("slot {slot} still served by {now}, not {to}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_failover_of_a_busy_shard_loses_nothing() -> Result<()> {
    busy_room_survives(Strategy::Pubsub, fail_over).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_failover_of_a_busy_shard_loses_nothing() -> Result<()> {
    busy_room_survives(Strategy::Sticky, fail_over).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_slot_migration_of_a_busy_room_loses_nothing() -> Result<()> {
    busy_room_survives(Strategy::Pubsub, migrate).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_slot_migration_of_a_busy_room_loses_nothing() -> Result<()> {
    busy_room_survives(Strategy::Sticky, migrate).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_is_one_stream_on_a_cluster() -> Result<()> {
    let rc = RedisCluster::start(3, 0).await?;
    let t = start_with(&rc, 2, Strategy::Pubsub, |s| s.inbox = true).await?;
    let mut sent = BTreeSet::new();
    for r in 0..6 {
        let room = format!("inbox-{r}");
        let mut m = members(&t, Strategy::Pubsub, &room).await?;
        for i in 1..=5 {
            let seq = m[0]
                .publish(&room, json!({ "i": i }), &format!("m-{i}"))
                .await?;
            sent.insert((room.clone(), seq));
        }
    }
    // Rooms on every shard, one stream on one of them, every message in it.
    let (shard, _) = rc.shard_of(keys::INBOX).await?;
    let mut con = rc.con(shard).await?;
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(keys::INBOX)
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await?;
    let got: BTreeSet<(String, u64)> = entries
        .iter()
        .map(|(_, f)| (f["room"].clone(), f["seq"].parse().unwrap()))
        .collect();
    assert_eq!(got, sent);
    Ok(())
}
