//! Partial failures: a process that stops without dying (SIGSTOP), a node
//! cut off from Redis while its clients stay connected, a node that
//! accepts and never answers, a Redis that refuses or is not there yet.
//! Every member follows the protocol (`Follower`) and must end with every
//! message, exactly once, in order.

use anyhow::Result;
use serde_json::json;
use std::time::{Duration, Instant};
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

/// Settings of node processes in these tests: short leases so faults show
/// within seconds.
fn fast(strategy: &str, redis: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TURNOUT_STRATEGY", strategy.to_owned()),
        ("TURNOUT_REDIS_URL", redis.to_owned()),
        ("TURNOUT_HEARTBEAT_INTERVAL", "200ms".into()),
        ("TURNOUT_HEARTBEAT_TTL", "1s".into()),
        ("TURNOUT_PRESENCE_TTL", "1500ms".into()),
        ("TURNOUT_MAX_PUBLISH_RATE", "1000".into()),
    ]
}

async fn node(id: &str, env: &[(&'static str, String)]) -> Result<NodeProcess> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    NodeProcess::start(id, &env).await
}

/// Router and gateway in this process, on `redis`.
async fn front(redis: &str, strategy: Strategy) -> (Proc, Proc) {
    let router = start_router(redis, strategy).await;
    let gateway = start_gateway(redis, strategy, &[&router]).await;
    (router, gateway)
}

/// A publisher through the gateway that follows `wrong_node` too.
async fn publish_all(gw_ws: &str, room: &str, from: u64, to: u64) -> Result<()> {
    let mut i = from;
    while i <= to {
        let mut c = match Client::connect(&format!("{gw_ws}?room={room}")).await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if c.join(room).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        while i <= to {
            match c.publish(room, json!(i), &format!("p{i}")).await {
                Ok(_) => i += 1,
                Err(_) => break,
            }
        }
    }
    Ok(())
}

fn exactly(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

/// A sticky owner paused past its lease loses its rooms to another node;
/// when it resumes, its members who only read are moved at once and
/// recover everything with `since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sticky_owner_moves_its_members_when_it_resumes() -> Result<()> {
    let redis = Redis::start().await?;
    let env = fast("sticky", &redis.url());
    let (_router, gateway) = front(&redis.url(), Strategy::Sticky).await;
    let n1 = node("n1", &env).await?;
    let n2 = node("n2", &env).await?;
    live_nodes(&gateway, 2).await?;
    let gw = gateway.ws_url();
    // The reader is connected to the owner itself, not through the gateway
    // (whose health checks would move it first): the owner must do it.
    let (_, route) = http_get_json(&format!("{}/api/route?room=p", gateway.http())).await?;
    let owner = route["node"].as_str().unwrap().to_owned();
    let owner_url = format!("{}?room=p", route["url"].as_str().unwrap());
    let reader = Follower::start(&owner_url, &format!("{gw}?room=p"), "p").await?;
    publish_all(&gw, "p", 1, 5).await?;
    assert_eq!(reader.until(5).await?, exactly(5));
    let (paused, other) = if owner == "n1" {
        (&n1, &n2)
    } else {
        (&n2, &n1)
    };
    paused.pause()?;
    // Its heartbeat runs out; the room is placed on the other node by the
    // next member, who publishes there.
    live_nodes(&gateway, 1).await?;
    publish_all(&gw, "p", 6, 10).await?;
    let (_, route) = http_get_json(&format!("{}/api/route?room=p", gateway.http())).await?;
    assert_eq!(route["node"], other.id.as_str());
    paused.resume()?;
    let resumed = Instant::now();
    assert_eq!(
        reader.until(10).await?,
        exactly(10),
        "moved and recovered, once each"
    );
    let log = reader.log();
    assert!(log.moves >= 1, "{log:?}");
    assert!(log.told.contains(&"wrong_node".to_owned()), "{log:?}");
    assert_eq!(
        log.repairs, 0,
        "a move recovers with since, no gap: {log:?}"
    );
    eprintln!("reader recovered {:?} after SIGCONT", resumed.elapsed());
    Ok(())
}

/// A pubsub node paused past its lease, whose pub/sub connection Redis
/// dropped meanwhile (as it does a subscriber that stops reading): what
/// was published meanwhile reached it nowhere, and when it resumes it
/// reconnects, subscribes again and reads it from history; its members get
/// everything, in order, with no gap for them to repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_pubsub_node_delivers_everything_when_it_resumes() -> Result<()> {
    let redis = Redis::start().await?;
    let env = fast("pubsub", &redis.url());
    let (_router, gateway) = front(&redis.url(), Strategy::Pubsub).await;
    let a = node("a", &env).await?;
    let b = node("b", &env).await?;
    live_nodes(&gateway, 2).await?;
    let entry = format!("{}?room=q", gateway.ws_url());
    let reader = Follower::start(&format!("{}?room=q", a.ws_url()), &entry, "q").await?;
    let mut writer = Client::connect(&b.ws_url()).await?;
    writer.join("q").await?;
    writer.publish("q", json!(1), "1").await?;
    assert_eq!(reader.until(1).await?, exactly(1));
    a.pause()?;
    // Its lease runs out: the cluster counts it gone.
    live_nodes(&gateway, 1).await?;
    // Redis drops the paused node's pub/sub connection (b's too; b
    // subscribes again at once), before anything is published to it.
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"][..])
        .query_async(&mut redis.con().await?)
        .await?;
    assert!(killed >= 2, "{killed}");
    for i in 2..=20 {
        writer.publish("q", json!(i), &i.to_string()).await?;
    }
    a.resume()?;
    assert_eq!(reader.until(20).await?, exactly(20));
    let log = reader.log();
    assert_eq!((log.moves, log.repairs), (0, 0), "{log:?}");
    let a_http = a.http();
    for m in ["turnout_lease_lapses_total", "turnout_resubscribed_total"] {
        assert!(metric_at(&a_http, m).await? >= 1.0, "{m}");
    }
    assert!(
        metric_at(&a_http, "turnout_gaps_repaired_total").await? >= 19.0,
        "2..=20 read back from history"
    );
    Ok(())
}

/// Presence repairs itself: the members of a node whose lease lapsed
/// vanish and come back when it resumes; a node restarted under the same
/// id does not bring back the dead process's members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_pauses_and_restarts() -> Result<()> {
    let redis = Redis::start().await?;
    let env = fast("pubsub", &redis.url());
    let (_router, gateway) = front(&redis.url(), Strategy::Pubsub).await;
    let mut a = node("a", &env).await?;
    let b = node("b", &env).await?;
    live_nodes(&gateway, 2).await?;
    let presence = |want: Vec<&'static str>| {
        let url = format!("{}/api/rooms/lobby/presence", gateway.http());
        async move {
            wait_for(&format!("presence {want:?}"), DEADLINE, || {
                let (url, want) = (url.clone(), want.clone());
                async move {
                    let (_, v) = http_get_json(&url).await.ok()?;
                    (v["users"] == json!(want)).then_some(())
                }
            })
            .await
        }
    };
    let mut alice = Client::connect(&format!("{}?user=alice", a.ws_url())).await?;
    alice.join("lobby").await?;
    let mut bob = Client::connect(&format!("{}?user=bob", b.ws_url())).await?;
    bob.join("lobby").await?;
    presence(vec!["alice", "bob"]).await?;
    a.pause()?;
    presence(vec!["bob"]).await?;
    a.resume()?;
    presence(vec!["alice", "bob"]).await?;
    // It wrote its members again, having found its lease lapsed.
    assert!(metric_at(&a.http(), "turnout_presence_reasserted_total").await? >= 1.0);
    // A crash, and a new process under the same id: alice was the old
    // process's member and must not come back with it.
    a.kill();
    drop(alice);
    let a2 = node("a", &env).await?;
    let mut carol = Client::connect(&format!("{}?user=carol", a2.ws_url())).await?;
    carol.join("lobby").await?;
    presence(vec!["bob", "carol"]).await?;
    Ok(())
}

/// A router removes a node only if its heartbeat record is still the one
/// it read: a node that heartbeated meanwhile keeps its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_dropped_only_by_the_record_that_was_read() -> Result<()> {
    let redis = Redis::start().await?;
    let mut con = redis.con().await?;
    let key = turnout_proto::keys::node("n9");
    let _: () = redis::pipe()
        .set(&key, "record-2")
        .sadd(turnout_proto::keys::NODES, "n9")
        .query_async(&mut con)
        .await?;
    let stale: u8 = turnout_common::redis::scripts::drop_node("n9", "record-1")
        .invoke_async(&mut con)
        .await?;
    assert_eq!(stale, 0);
    let kept: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
    assert_eq!(kept.as_deref(), Some("record-2"));
    let dropped: u8 = turnout_common::redis::scripts::drop_node("n9", "record-2")
        .invoke_async(&mut con)
        .await?;
    assert_eq!(dropped, 1);
    let member: bool = redis::cmd("SISMEMBER")
        .arg(turnout_proto::keys::NODES)
        .arg("n9")
        .query_async(&mut con)
        .await?;
    assert!(!member);
    Ok(())
}

/// Writes a heartbeat for a node that accepts connections and never
/// answers, every 200 ms, until dropped.
struct Wedged {
    _listener: std::net::TcpListener,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Wedged {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wedged_node(redis: &Redis, id: &str, strategy: &str) -> Result<Wedged> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let info = turnout_proto::v1::NodeInfo {
        id: id.into(),
        url: format!("ws://127.0.0.1:{port}/ws"),
        internal_url: format!("http://127.0.0.1:{port}"),
        strategy: strategy.into(),
        ..Default::default()
    };
    let mut con = redis.con().await?;
    let id = id.to_owned();
    let task = tokio::spawn(async move {
        loop {
            let record = turnout_proto::v1::NodeInfo {
                heartbeat_ms: turnout_proto::now_ms(),
                ..info.clone()
            };
            let _: redis::RedisResult<()> = redis::pipe()
                .cmd("SET")
                .arg(turnout_proto::keys::node(&id))
                .arg(serde_json::to_string(&record).unwrap())
                .arg("PX")
                .arg(1000)
                .sadd(turnout_proto::keys::NODES, &id)
                .publish(turnout_proto::keys::MEMBERSHIP_CHANNEL, &id)
                .query_async(&mut con)
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(Wedged {
        _listener: listener,
        task,
    })
}

/// The gateway's upgrade to a node that accepts and never answers gives
/// up after `upstream_timeout`, and the client lands on a live node
/// (pubsub: another node; sticky: the room is placed anew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_node_is_passed_over() -> Result<()> {
    for strategy in [Strategy::Pubsub, Strategy::Sticky] {
        let redis = Redis::start().await?;
        let _wedged = wedged_node(&redis, "a-wedged", strategy.as_str()).await?;
        let router = start_router(&redis.url(), strategy).await;
        let mut settings = gateway_settings(&redis.url(), strategy, &[&router]);
        settings.upstream_timeout = Duration::from_millis(500);
        let gateway = start_gateway_with(settings).await;
        let real = start_node(node_settings(&redis.url(), strategy)).await;
        live_nodes(&gateway, 2).await?;
        if strategy == Strategy::Sticky {
            // The room's owner is the wedged node.
            let mut con = redis.con().await?;
            let _: () = redis::cmd("HSET")
                .arg(turnout_proto::keys::room_owner("w"))
                .arg("node")
                .arg("a-wedged")
                .arg("epoch")
                .arg(1)
                .query_async(&mut con)
                .await?;
        }
        for _ in 0..2 {
            let c = Client::connect(&format!("{}?room=w", gateway.ws_url())).await?;
            let real_id = match &c.welcome {
                ServerFrame::Welcome { node, .. } => node.clone(),
                _ => unreachable!(),
            };
            let (_, v) = http_get_json(&format!("{}/api/cluster", real.http())).await?;
            assert_eq!(v["nodes"][0]["id"], real_id.as_str(), "{strategy}");
        }
        assert!(metric(&gateway, "turnout_upstream_errors_total").await? >= 1.0);
    }
    Ok(())
}

/// With Redis not there yet, processes serve `/healthz` at once and
/// `/readyz` says what they wait for and what they got; they get ready
/// when Redis comes. A Redis that wants a password is named as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_wait_for_redis_and_say_why() -> Result<()> {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let n = spawn_node(node_settings(&url, Strategy::Pubsub));
    let router = spawn_router(router_settings(&url, Strategy::Pubsub)).await;
    let gateway = spawn_gateway(gateway_settings(&url, Strategy::Pubsub, &[&router])).await;
    for p in [&n, &router, &gateway] {
        let base = p.http();
        let why = wait_for("a /readyz that names Redis", DEADLINE, || {
            let (base, url) = (base.clone(), url.clone());
            async move {
                let (h, _) = http("GET", &format!("{base}/healthz"), None, &[])
                    .await
                    .ok()?;
                let (r, body) = http("GET", &format!("{base}/readyz"), None, &[])
                    .await
                    .ok()?;
                let body = String::from_utf8_lossy(&body).into_owned();
                (h == 200 && r == 503 && body.contains(&url)).then_some(body)
            }
        })
        .await?;
        assert!(why.to_lowercase().contains("refused"), "{why}");
    }
    let _redis = Redis::start_at(port).await?;
    let ready = format!("{}/readyz", n.http());
    wait_for("the node to be ready", DEADLINE, || {
        let ready = ready.clone();
        async move { (http("GET", &ready, None, &[]).await.ok()?.0 == 200).then_some(()) }
    })
    .await?;
    let mut c = Client::connect(&n.ws_url()).await?;
    c.join("r").await?;

    // A Redis that requires a password, and a node without one.
    let locked = Redis::start_locked("sesame-sesame-sesame").await?;
    let n2 = spawn_node(node_settings(&locked.url(), Strategy::Pubsub));
    let why = readyz_refusal(&n2, "uth").await?;
    assert!(
        why.contains("NOAUTH") || why.contains("uthentication"),
        "{why}"
    );
    Ok(())
}

/// A pubsub node cut off from Redis while its clients stay connected: a
/// short cut delays messages, a cut that ends with the connections lost
/// is caught up from history; no member misses anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_node_cut_from_redis_catches_up() -> Result<()> {
    let redis = Redis::start().await?;
    let proxy = Proxy::start(format!("127.0.0.1:{}", redis.port).parse()?).await?;
    let (_router, gateway) = front(&redis.url(), Strategy::Pubsub).await;
    let cut_off = start_node(node_settings(&proxy.url(), Strategy::Pubsub)).await;
    let direct = start_node(node_settings(&redis.url(), Strategy::Pubsub)).await;
    live_nodes(&gateway, 2).await?;
    let entry = format!("{}?room=c", gateway.ws_url());
    let reader = Follower::start(&format!("{}?room=c", cut_off.ws_url()), &entry, "c").await?;
    let mut writer = Client::connect(&direct.ws_url()).await?;
    writer.join("c").await?;
    writer.publish("c", json!(1), "1").await?;
    reader.until(1).await?;
    // A short cut: nothing is lost, it arrives late.
    proxy.cut();
    for i in 2..=10 {
        writer.publish("c", json!(i), &i.to_string()).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the cut
    proxy.heal();
    assert_eq!(reader.until(10).await?, exactly(10));
    // A cut that ends with the connections gone.
    proxy.cut();
    for i in 11..=20 {
        writer.publish("c", json!(i), &i.to_string()).await?;
    }
    proxy.sever();
    proxy.heal();
    assert_eq!(reader.until(20).await?, exactly(20));
    let log = reader.log();
    assert_eq!((log.moves, log.repairs), (0, 0), "{log:?}");
    Ok(())
}

/// A sticky owner cut off from Redis cannot know whether its rooms are
/// still its own once its lease runs out: it sends its members away, they
/// come back through the gateway to a live owner and recover everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_owner_cut_from_redis_sends_its_members_away() -> Result<()> {
    let redis = Redis::start().await?;
    let proxy = Proxy::start(format!("127.0.0.1:{}", redis.port).parse()?).await?;
    let (_router, gateway) = front(&redis.url(), Strategy::Sticky).await;
    let fast = |url: &str| {
        let mut s = node_settings(url, Strategy::Sticky);
        s.heartbeat_interval = Duration::from_millis(200);
        s.heartbeat_ttl = Duration::from_secs(1);
        s.presence_ttl = Duration::from_millis(1500);
        s
    };
    let mut cut_settings = fast(&proxy.url());
    cut_settings.node_id = Some("cut".into());
    let cut_off = start_node(cut_settings).await;
    live_nodes(&gateway, 1).await?;
    let gw = gateway.ws_url();
    // The room is placed on the only node, the one about to be cut off.
    let reader = Follower::start(&format!("{gw}?room=s"), &format!("{gw}?room=s"), "s").await?;
    publish_all(&gw, "s", 1, 3).await?;
    assert_eq!(reader.until(3).await?, exactly(3));
    let _direct = start_node(fast(&redis.url())).await;
    live_nodes(&gateway, 2).await?;
    proxy.cut();
    // The cut node's heartbeat runs out; new members go to the other node.
    live_nodes(&gateway, 1).await?;
    // It cannot tell which rooms are still its own: it takes nobody, and
    // has sent its members away.
    assert_eq!(upgrade_status(&cut_off.ws_url()).await?, 503);
    publish_all(&gw, "s", 4, 8).await?;
    assert_eq!(reader.until(8).await?, exactly(8));
    let log = reader.log();
    assert!(log.told.contains(&"lease_lost".to_owned()), "{log:?}");
    assert!(log.closes.contains(&Some(1012)), "{log:?}");
    assert_eq!(log.repairs, 0, "{log:?}");
    proxy.heal();
    Ok(())
}

/// A cut between the gateway and one node: the clients spliced to it are
/// let go (the node no longer answers the gateway's health checks) and come
/// back on another node; clients of other nodes do not notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_between_gateway_and_node_moves_only_its_clients() -> Result<()> {
    let redis = Redis::start().await?;
    let (_router, gateway) = front(&redis.url(), Strategy::Pubsub).await;
    // Node a is reached by the gateway through a proxy (its advertised URL).
    let port = free_port();
    let mut a_settings = node_settings(&redis.url(), Strategy::Pubsub);
    let proxy = Proxy::start(format!("127.0.0.1:{port}").parse()?).await?;
    let via = proxy.url().replace("redis://", "ws://");
    a_settings.advertise_url = Some(format!("{via}/ws"));
    a_settings.node_id = Some("a".into());
    let _a = start_node_at(port, a_settings).await;
    live_nodes(&gateway, 1).await?;
    let entry = format!("{}?room=g", gateway.ws_url());
    let cut_off = Follower::start(&entry, &entry, "g").await?;
    let mut b_settings = node_settings(&redis.url(), Strategy::Pubsub);
    b_settings.node_id = Some("b".into());
    let b = start_node(b_settings).await;
    live_nodes(&gateway, 2).await?;
    let other = Follower::start(&format!("{}?room=g", b.ws_url()), &entry, "g").await?;
    let mut writer = Client::connect(&b.ws_url()).await?;
    writer.join("g").await?;
    writer.publish("g", json!(1), "1").await?;
    cut_off.until(1).await?;
    other.until(1).await?;
    proxy.cut();
    for i in 2..=10 {
        writer.publish("g", json!(i), &i.to_string()).await?;
        tokio::time::sleep(Duration::from_millis(200)).await; // a steady chat
    }
    assert_eq!(cut_off.until(10).await?, exactly(10));
    assert!(cut_off.moves() >= 1, "moved off the cut node");
    assert_eq!(other.until(10).await?, exactly(10));
    assert_eq!(other.moves(), 0, "a client of another node did not notice");
    assert_eq!((cut_off.repairs(), other.repairs()), (0, 0));
    assert!(metric(&gateway, "turnout_links_cut_total").await? >= 1.0);
    Ok(())
}

/// A node that did not answer an upgrade in time is avoided for a while,
/// but not when it is the only one: once it answers again (a pause ended),
/// clients get through at once instead of after the avoidance runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_node_is_tried_again_as_soon_as_it_answers() -> Result<()> {
    let redis = Redis::start().await?;
    let (_router, gateway) = front(&redis.url(), Strategy::Pubsub).await;
    let n = node("only", &fast("pubsub", &redis.url())).await?;
    live_nodes(&gateway, 1).await?;
    let gw = format!("{}?room=one", gateway.ws_url());
    n.pause()?;
    // The upgrade waits for the paused node (upstream_timeout), fails,
    // and the gateway marks the node slow.
    assert_ne!(upgrade_status(&gw).await.unwrap_or(0), 101);
    n.resume()?;
    // Well within the ten seconds a slow node is avoided for.
    let within = Duration::from_secs(5);
    wait_for("an upgrade through the gateway", within, || async {
        (upgrade_status(&gw).await.ok()? == 101).then_some(())
    })
    .await?;
    Ok(())
}

/// A node whose rooms have no members left here writes nothing when it
/// writes its presence again: an empty pipeline is an error to Redis's
/// client, which the node counted and logged as a Redis failure (seen in a
/// saturated run, after the node had sent every client away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_presence_again_with_nobody_here_writes_nothing() -> Result<()> {
    let redis = Redis::start().await?;
    let mut con = turnout_common::redis::client(&redis.url(), None, false)?
        .commands()
        .await?;
    let ttl = |_: &str| Duration::from_secs(60);
    use turnout_common::redis::rooms::reassert;
    reassert(&mut con, &[], &ttl).await?;
    reassert(&mut con, &[("empty".into(), vec![])], &ttl).await?;
    reassert(
        &mut con,
        &[
            ("empty".into(), vec![]),
            ("lobby".into(), vec![("n1/1/c1".into(), "alice".into())]),
        ],
        &ttl,
    )
    .await?;
    let mut plain = redis.con().await?;
    let lobby: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(turnout_proto::keys::room_presence("lobby"))
        .query_async(&mut plain)
        .await?;
    assert_eq!(lobby.get("n1/1/c1").map(String::as_str), Some("alice"));
    let empty: u8 = redis::cmd("EXISTS")
        .arg(turnout_proto::keys::room_presence("empty"))
        .query_async(&mut plain)
        .await?;
    assert_eq!(empty, 0);
    Ok(())
}
