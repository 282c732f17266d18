//! Idempotent publish: a publish whose id the room already accepted from the
//! same sender within `dedupe_window` is acked with the first seq and not
//! delivered again, in every strategy, whichever node the resend reaches.

use anyhow::{Result, bail};
use serde_json::json;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

/// Publishes and returns the ack's (seq, duplicate).
async fn publish(c: &mut Client, room: &str, text: &str, id: &str) -> Result<(u64, bool)> {
    c.send_json(json!({"type": "publish", "room": room, "data": text, "id": id}))
        .await?;
    let want = id.to_owned();
    match c
        .expect("ack", |f| match f {
            ServerFrame::Ack { id, .. } | ServerFrame::Error { id, .. } => {
                id.as_deref() == Some(want.as_str())
            }
            _ => false,
        })
        .await?
    {
        ServerFrame::Ack { seq, duplicate, .. } => Ok((seq, duplicate)),
        other => bail!("publish refused: {other:?}"),
    }
}

/// The data of `room`'s messages up to seq `last`, in the order they came.
async fn texts_until(c: &mut Client, room: &str, last: u64) -> Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    loop {
        if let ServerFrame::Message {
            room: r, seq, data, ..
        } = c.recv().await?
            && r == room
        {
            out.push((seq, data.as_str().unwrap_or_default().to_owned()));
            if seq >= last {
                return Ok(out);
            }
        }
    }
}

async fn resend_is_taken_once(c: &Cluster) -> Result<()> {
    let room = "orders";
    // Sticky: through the gateway, so both meet on the owner; otherwise on
    // two different nodes where there are two.
    let url = |user: &str, i: usize| match c.strategy {
        Strategy::Sticky => format!("{}?room={room}&user={user}", c.gateway.ws_url()),
        _ => format!("{}?user={user}", c.nodes[i % c.nodes.len()].ws_url()),
    };
    let mut alice = Client::connect(&url("alice", 0)).await?;
    let mut bob = Client::connect(&url("bob", 1)).await?;
    alice.join(room).await?;
    bob.join(room).await?;

    let (first, dup) = publish(&mut alice, room, "one", "c-1").await?;
    assert!(!dup, "a new id is published");
    // The same id again (a resend after a lost ack): the first seq, marked.
    assert_eq!(
        publish(&mut alice, room, "one, resent", "c-1").await?,
        (first, true)
    );
    // Ids are per sender: bob's c-1 is his own.
    let (bobs, dup) = publish(&mut bob, room, "bob's", "c-1").await?;
    assert_eq!((bobs, dup), (first + 1, false));
    // A resend from a fresh connection (on another node, in pubsub) is
    // known too.
    drop(alice);
    let mut alice = Client::connect(&url("alice", 1)).await?;
    alice.join(room).await?;
    assert_eq!(
        publish(&mut alice, room, "one, from a new connection", "c-1").await?,
        (first, true)
    );
    let (marker, _) = publish(&mut alice, room, "end", "c-2").await?;
    // Bob saw each message once: the resends were not delivered.
    let got = texts_until(&mut bob, room, marker).await?;
    assert_eq!(
        got,
        vec![
            (first, "one".to_owned()),
            (bobs, "bob's".to_owned()),
            (marker, "end".to_owned())
        ]
    );
    let mut dups = 0.0;
    for n in &c.nodes {
        dups += metric(n, "turnout_publish_duplicates_total").await?;
    }
    assert_eq!(dups, 2.0, "two resends counted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_is_taken_once_pubsub() -> Result<()> {
    resend_is_taken_once(&Cluster::start(2, Strategy::Pubsub).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_is_taken_once_sticky() -> Result<()> {
    resend_is_taken_once(&Cluster::start(2, Strategy::Sticky).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_is_taken_once_local() -> Result<()> {
    resend_is_taken_once(&Cluster::start(1, Strategy::Local).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_window_zero_turns_it_off() -> Result<()> {
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| {
        s.dedupe_window = std::time::Duration::ZERO;
    })
    .await?;
    let mut a = Client::connect(&c.nodes[0].ws_url()).await?;
    a.join("r").await?;
    assert_eq!(publish(&mut a, "r", "x", "same").await?, (1, false));
    assert_eq!(publish(&mut a, "r", "x", "same").await?, (2, false));
    Ok(())
}

/// A publish id is remembered for `dedupe_window`, and then no longer: a
/// resend within it is a duplicate, one after it is published again (the
/// id's key is gone from Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_id_is_forgotten_after_the_window() -> Result<()> {
    let window = std::time::Duration::from_secs(1);
    let c = Cluster::start_with(1, Strategy::Pubsub, |s| s.dedupe_window = window).await?;
    let mut a = Client::connect(&format!("{}?user=w", c.nodes[0].ws_url())).await?;
    a.join("win").await?;
    assert_eq!(publish(&mut a, "win", "x", "once").await?, (1, false));
    assert_eq!(publish(&mut a, "win", "x", "once").await?, (1, true));
    let key = turnout_proto::keys::room_publish_id("win", "w", "once");
    let mut con = c.redis.con().await?;
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut con).await?;
    assert!(ttl > 0 && ttl <= window.as_millis() as i64, "kept {ttl} ms");
    wait_for("the id to be forgotten", DEADLINE, || {
        let (mut con, key) = (con.clone(), key.clone());
        async move {
            let n: i64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut con)
                .await
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await?;
    assert_eq!(publish(&mut a, "win", "x", "once").await?, (2, false));
    Ok(())
}

/// Two copies of one publish (same user, same id) racing on two pubsub
/// nodes, as a client that resends on a new connection before the first
/// answer came: one is stored, the other answered with its seq as a
/// duplicate, and every member gets the message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_racing_the_first_on_another_node_is_taken_once() -> Result<()> {
    let c = Cluster::start(2, Strategy::Pubsub).await?;
    let mut reader = Client::connect(&c.nodes[0].ws_url()).await?;
    reader.join("race").await?;
    for round in 0..20u64 {
        let mut one = Client::connect(&format!("{}?user=racer", c.nodes[0].ws_url())).await?;
        let mut two = Client::connect(&format!("{}?user=racer", c.nodes[1].ws_url())).await?;
        one.join("race").await?;
        two.join("race").await?;
        let id = format!("r-{round}");
        let (a, b) = tokio::join!(
            publish(&mut one, "race", "same", &id),
            publish(&mut two, "race", "same", &id)
        );
        let (a, b) = (a?, b?);
        assert_eq!(a.0, b.0, "one seq for both copies");
        assert!(a.1 != b.1, "exactly one of them a duplicate: {a:?} {b:?}");
        let got = texts_until(&mut reader, "race", a.0).await?;
        assert_eq!(got.len(), 1, "round {round}: delivered once: {got:?}");
    }
    Ok(())
}

async fn post(
    c: &Cluster,
    body: serde_json::Value,
    key: Option<&str>,
) -> Result<(u16, serde_json::Value)> {
    let url = format!("{}/api/rooms/feed/publish", c.gateway.http());
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    let (status, body) = http("POST", &url, Some(body.to_string()), &headers).await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
}

async fn api_idempotency_key(strategy: Strategy) -> Result<()> {
    let c = Cluster::start(2, strategy).await?;
    let (s, first) = post(&c, json!({"data": 1}), Some("batch-9")).await?;
    assert_eq!(s, 200, "{first}");
    assert!(first.get("duplicate").is_none(), "{first}");
    let (s, again) = post(&c, json!({"data": 1}), Some("batch-9")).await?;
    assert_eq!(s, 200);
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(again["duplicate"], true);
    // The body's `id` is the same key.
    let (_, same) = post(&c, json!({"data": 1, "id": "batch-9"}), None).await?;
    assert_eq!(
        (&same["seq"], &same["duplicate"]),
        (&first["seq"], &json!(true))
    );
    let (s, err) = post(&c, json!({"data": 1, "id": "a"}), Some("b")).await?;
    assert_eq!(s, 400, "{err}");
    let (s, err) = post(&c, json!({"data": 1}), Some(&"k".repeat(65))).await?;
    assert_eq!(s, 400, "{err}");
    let (_, next) = post(&c, json!({"data": 2}), None).await?;
    assert_eq!(next["seq"], first["seq"].as_u64().unwrap() + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_idempotency_key_pubsub() -> Result<()> {
    api_idempotency_key(Strategy::Pubsub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_idempotency_key_sticky() -> Result<()> {
    api_idempotency_key(Strategy::Sticky).await
}
