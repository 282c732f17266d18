//! Namespaces: a room's options come from the part of its name before the
//! first `:`, in every strategy; a room outside any configured namespace
//! runs with the global settings (and is each check's control).

use anyhow::{Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use turnout_common::namespaces::NamespaceSettings;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

fn namespaces() -> BTreeMap<String, NamespaceSettings> {
    [
        (
            "chat".to_owned(),
            NamespaceSettings {
                history_size: Some(2),
                history_ttl: Some(Duration::from_secs(600)),
                presence: Some(false),
                ..Default::default()
            },
        ),
        (
            "news".to_owned(),
            NamespaceSettings {
                client_publish: Some(false),
                ..Default::default()
            },
        ),
    ]
    .into()
}

struct Setup {
    redis: Redis,
    _router: Proc,
    gateway: Proc,
    nodes: Vec<Proc>,
    strategy: Strategy,
}

impl Setup {
    async fn start(strategy: Strategy) -> Result<Setup> {
        let redis = Redis::start().await?;
        let url = redis.url();
        let router = start_router(&url, strategy).await;
        let n = if strategy == Strategy::Local { 1 } else { 2 };
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(
                start_node(turnout_ws_node::Settings {
                    namespaces: namespaces(),
                    ..node_settings(&url, strategy)
                })
                .await,
            );
        }
        let gateway = start_gateway_with(turnout_gateway::Settings {
            namespaces: namespaces(),
            ..gateway_settings(&url, strategy, &[&router])
        })
        .await;
        live_nodes(&gateway, n).await?;
        Ok(Setup {
            redis,
            _router: router,
            gateway,
            nodes,
            strategy,
        })
    }

    /// The `i`th member of `room`: through the gateway to the room's owner
    /// (sticky), else on node `i` (members on different nodes).
    async fn member(&self, room: &str, user: &str, i: usize) -> Result<Client> {
        let url = match self.strategy {
            Strategy::Sticky => format!("{}?room={room}&user={user}", self.gateway.ws_url()),
            _ => format!("{}?user={user}", self.nodes[i % self.nodes.len()].ws_url()),
        };
        Client::connect(&url).await
    }
}

/// Reads `c`'s frames until message `seq` of `room`; returns the presence
/// events of `room` on the way (a room's presence events travel the path
/// of its messages, so one sent before the message comes before it).
async fn presence_before(c: &mut Client, room: &str, seq: u64) -> Result<Vec<String>> {
    let mut events = Vec::new();
    loop {
        match c.recv().await? {
            ServerFrame::Message {
                room: r, seq: s, ..
            } if r == room && s >= seq => {
                return Ok(events);
            }
            ServerFrame::Presence {
                room: r,
                event,
                user,
            } if r == room => events.push(format!("{event} {user}")),
            _ => {}
        }
    }
}

/// Joins `room` with `since`; returns `recovered` and the replayed seqs up
/// to the room's latest.
async fn rejoin(c: &mut Client, room: &str, since: u64) -> Result<(Option<bool>, Vec<u64>)> {
    c.send_json(json!({"type": "join", "room": room, "since": since}))
        .await?;
    let (seq, recovered) = match c
        .expect("joined", |f| {
            matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. })
        })
        .await?
    {
        ServerFrame::Joined { seq, recovered, .. } => (seq, recovered),
        other => bail!("join refused: {other:?}"),
    };
    Ok((recovered, c.messages_until(room, seq).await?))
}

async fn check(strategy: Strategy) -> Result<()> {
    let s = Setup::start(strategy).await?;
    // Presence: none shown in `chat`, shown in the control room.
    for (room, shown) in [("chat:x", false), ("plain", true)] {
        let mut a = s.member(room, "alice", 0).await?;
        a.join(room).await?;
        let mut b = s.member(room, "bob", 1).await?;
        b.send_json(json!({"type": "join", "room": room})).await?;
        let users = match b
            .expect("joined", |f| matches!(f, ServerFrame::Joined { .. }))
            .await?
        {
            ServerFrame::Joined { presence, .. } => presence,
            _ => unreachable!(),
        };
        // Joining again answers `joined` again, with the same list.
        b.send_json(json!({"type": "join", "room": room})).await?;
        let again = match b
            .expect("joined", |f| matches!(f, ServerFrame::Joined { .. }))
            .await?
        {
            ServerFrame::Joined { presence, .. } => presence,
            _ => unreachable!(),
        };
        assert_eq!(
            again.is_empty(),
            users.is_empty(),
            "{strategy:?} {room}: {again:?}"
        );
        let seq = b.publish(room, json!("hi"), "b-1").await?;
        let events = presence_before(&mut a, room, seq).await?;
        if shown {
            assert!(
                users.contains(&"alice".to_owned()),
                "{strategy:?} {room}: {users:?}"
            );
            assert_eq!(events, ["join bob"], "{strategy:?} {room}");
        } else {
            assert!(users.is_empty(), "{strategy:?} {room}: {users:?}");
            assert!(events.is_empty(), "{strategy:?} {room}: {events:?}");
        }
        // The API answers presence only where it is on.
        let (status, body) = http(
            "GET",
            &format!("{}/api/rooms/{room}/presence", s.gateway.http()),
            None,
            &[],
        )
        .await?;
        let body = String::from_utf8_lossy(&body);
        if shown {
            assert_eq!(status, 200, "{strategy:?} {room}: {body}");
            assert!(body.contains("alice") && body.contains("bob"), "{body}");
        } else {
            assert_eq!(status, 403, "{strategy:?} {room}: {body}");
            assert!(
                body.contains("forbidden") && body.contains("presence"),
                "{body}"
            );
        }

        // History: `chat` keeps its last 2, the control room all of them.
        let mut last = seq;
        for i in 0..4 {
            last = a.publish(room, json!(i), &format!("a-{i}")).await?;
        }
        let mut c = s.member(room, "carol", 0).await?;
        let (recovered, seqs) = rejoin(&mut c, room, 0).await?;
        if shown {
            assert_eq!(recovered, Some(true), "{strategy:?} {room}");
            assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{strategy:?} {room}");
        } else {
            assert_eq!(
                recovered,
                Some(false),
                "{strategy:?} {room}: history lost some"
            );
            assert_eq!(seqs, [last - 1, last], "{strategy:?} {room}");
        }

        // The room's state lives the namespace's history_ttl in Redis.
        if strategy != Strategy::Local {
            let mut con = s.redis.con().await?;
            let ttl: i64 = redis::cmd("PTTL")
                .arg(turnout_proto::keys::room_seq(room))
                .query_async(&mut con)
                .await?;
            if shown {
                assert!(
                    ttl > 600_000,
                    "{strategy:?} {room}: the global room_ttl: {ttl}"
                );
            } else {
                assert!(ttl > 0 && ttl <= 600_000, "{strategy:?} {room}: {ttl}");
            }
        }
    }

    // `news`: clients may not publish, the server API may.
    let room = "news:today";
    let mut a = s.member(room, "alice", 0).await?;
    a.join(room).await?;
    a.send_json(json!({"type": "publish", "room": room, "data": 1, "id": "n-1"}))
        .await?;
    match a
        .expect(
            "the refusal",
            |f| matches!(f, ServerFrame::Error { id: Some(i), .. } if i == "n-1"),
        )
        .await?
    {
        ServerFrame::Error { code, room: r, .. } => {
            assert_eq!(code, "forbidden", "{strategy:?}");
            assert_eq!(r.as_deref(), Some(room));
        }
        _ => unreachable!(),
    }
    let mut forbidden = 0.0;
    for n in &s.nodes {
        forbidden += metric(n, "turnout_publishes_forbidden_total").await?;
    }
    assert_eq!(forbidden, 1.0, "{strategy:?}: counted");
    let (status, body) = http(
        "POST",
        &format!("{}/api/rooms/{room}/publish", s.gateway.http()),
        Some(json!({"data": "from the backend"}).to_string()),
        &[],
    )
    .await?;
    assert_eq!(
        status,
        200,
        "{strategy:?}: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        a.messages_until(room, 1).await?,
        [1],
        "{strategy:?}: nothing stored before"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_sticky() -> Result<()> {
    check(Strategy::Sticky).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_pubsub() -> Result<()> {
    check(Strategy::Pubsub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_relay() -> Result<()> {
    check(Strategy::Relay).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_local() -> Result<()> {
    check(Strategy::Local).await
}
