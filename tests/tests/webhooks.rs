//! Webhooks: room and member events reach a real HTTP receiver in signed
//! batches, through its failures; a dead receiver holds nobody up.

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use turnout_proto::Strategy;
use turnout_tests::*;

const SECRET: &str = "a-webhook-secret-of-32-bytes-ok!";

#[derive(Default)]
struct Receiver {
    /// Every event taken, in the order batches came.
    events: Mutex<Vec<Value>>,
    /// Requests to answer 500 before taking any.
    fail_first: Mutex<usize>,
    /// Requests whose signature did not match.
    bad_signatures: Mutex<usize>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let got = headers
        .get("x-turnout-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if got != format!("sha256={want}") {
        *r.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    {
        let mut fail = r.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    let batch: Value = serde_json::from_slice(&body).unwrap_or_default();
    let events = batch["events"].as_array().cloned().unwrap_or_default();
    r.events.lock().unwrap().extend(events);
    StatusCode::NO_CONTENT
}

async fn start_receiver(r: Arc<Receiver>) -> Result<String> {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

/// (kind, room, user) of the events taken so far, once there are `n`.
async fn events(r: &Receiver, n: usize) -> Result<Vec<(String, String, String)>> {
    wait_for(&format!("{n} webhook events"), DEADLINE, || async {
        let events = r.events.lock().unwrap().clone();
        (events.len() >= n).then(|| {
            events
                .iter()
                .map(|e| {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                    (s("kind"), s("room"), s("user"))
                })
                .collect()
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_and_member_events_reach_the_backend_signed_through_its_failures() -> Result<()> {
    let receiver = Arc::new(Receiver {
        fail_first: Mutex::new(2),
        ..Default::default()
    });
    let url = start_receiver(receiver.clone()).await?;
    let c = Cluster::start_with(2, Strategy::Pubsub, |s| {
        s.webhook_url = Some(url.clone());
        s.webhook_secret = Some(SECRET.into());
    })
    .await?;
    let mut ann = Client::connect(&format!("{}?user=ann", c.nodes[0].ws_url())).await?;
    ann.join("r").await?;
    let mut bob = Client::connect(&format!("{}?user=bob", c.nodes[1].ws_url())).await?;
    bob.join("r").await?;
    // Each node's events come in order; the two nodes' may interleave.
    let first = events(&receiver, 3).await?;
    let ev = |k: &str, u: &str| (k.to_owned(), "r".to_owned(), u.to_owned());
    let of = |u: &str| {
        first
            .iter()
            .filter(|e| e.2 == u)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("ann"),
        [ev("room_occupied", "ann"), ev("member_joined", "ann")]
    );
    assert_eq!(
        of("bob"),
        [ev("member_joined", "bob")],
        "not occupied again"
    );
    ann.send_json(json!({"type": "leave", "room": "r"})).await?;
    ann.expect("left", |f| {
        matches!(f, turnout_proto::frames::ServerFrame::Left { .. })
    })
    .await?;
    assert_eq!(events(&receiver, 4).await?[3], ev("member_left", "ann"));
    drop(bob);
    let all = events(&receiver, 6).await?;
    assert_eq!(
        all[4..],
        [ev("member_left", "bob"), ev("room_vacated", "bob")]
    );
    // Every event has its own id, a time, and nothing came twice or unsigned.
    let taken = receiver.events.lock().unwrap().clone();
    let mut ids: Vec<&str> = taken.iter().filter_map(|e| e["id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6, "{taken:?}");
    assert!(
        taken
            .iter()
            .all(|e| e["ts"].as_u64().is_some_and(|t| t > 0))
    );
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    assert_eq!(
        *receiver.fail_first.lock().unwrap(),
        0,
        "the failures were tried again"
    );
    let mut sent = 0.0;
    for n in &c.nodes {
        sent += metric_outcome(n, "sent").await?;
    }
    assert_eq!(sent, 6.0);

    // A node's drain sends its members away: their events go out before
    // it exits.
    let mut carol = Client::connect(&format!("{}?user=carol", c.nodes[0].ws_url())).await?;
    carol.join("q").await?;
    events(&receiver, 8).await?;
    let mut c = c;
    c.nodes.remove(0).stop().await;
    let all = events(&receiver, 10).await?;
    let q = |k: &str| (k.to_owned(), "q".to_owned(), "carol".to_owned());
    assert_eq!(all[8..], [q("member_left"), q("room_vacated")]);
    Ok(())
}

async fn metric_outcome(p: &Proc, outcome: &str) -> Result<f64> {
    let (_, body) = http("GET", &format!("{}/metrics", p.http()), None, &[]).await?;
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("turnout_webhook_events_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Nothing listens at the webhook URL: clients are served as ever, the
/// events are given up after their tries (and past the queue, dropped),
/// each counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_endpoint_holds_nobody_up() -> Result<()> {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}/hook", l.local_addr()?)
    };
    let c = Cluster::start_with(1, Strategy::Local, |s| {
        s.webhook_url = Some(dead.clone());
        s.webhook_secret = Some(SECRET.into());
        s.webhook_retries = 2;
        s.webhook_timeout = Duration::from_millis(200);
        s.webhook_batch = 1;
        s.webhook_queue = 2;
    })
    .await?;
    let node = &c.nodes[0];
    let mut a = Client::connect(&node.ws_url()).await?;
    for i in 0..20 {
        let room = format!("r{i}");
        a.join(&room).await?;
        let seq = a.publish(&room, json!(i), &format!("p{i}")).await?;
        assert_eq!(a.messages_until(&room, seq).await?, [seq]);
    }
    wait_for("failed and dropped events counted", DEADLINE, || async {
        let failed = metric_outcome(node, "failed").await.ok()?;
        let dropped = metric_outcome(node, "dropped").await.ok()?;
        (failed >= 1.0 && dropped >= 1.0).then_some(())
    })
    .await?;
    assert_eq!(metric_outcome(node, "sent").await?, 0.0);
    // A webhook needs a secret to sign with, unless the node runs open.
    let mut s = node_settings("redis://127.0.0.1:1", Strategy::Local);
    s.insecure = false;
    s.jwt_secret = Some("0123456789abcdef".into());
    s.internal_token = Some("0123456789abcdef".into());
    s.webhook_url = Some(dead);
    let e = turnout_common::settings::Validate::validate(&s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("webhook_secret"), "{e}");
    Ok(())
}
