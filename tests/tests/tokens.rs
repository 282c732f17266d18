//! Client tokens over time: a connection lives as long as its token unless
//! a fresh one comes (`refresh`); SSE streams end with their token;
//! `aud`, `iss` and `nbf` are checked; a backend's `Disconnect` ends the
//! user's streams too; one user cannot hold all the streams.

use anyhow::Result;
use serde_json::json;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

const SECRET: &str = "tokens-test-secret-0123456789";
const API_KEY: &str = "tokens-test-api-key-0123456789";

fn token(sub: &str, ttl_s: u64, extra: serde_json::Value) -> String {
    let mut claims = json!({"sub": sub, "exp": unix_now() + ttl_s});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    hs256(claims, SECRET)
}

async fn secured(audience: Option<&str>) -> Result<Cluster> {
    let aud = audience.map(str::to_owned);
    let c = Cluster::start_with(1, Strategy::Pubsub, move |s| {
        s.jwt_secret = Some(SECRET.into());
        s.jwt_audience = aud.clone();
        s.jwt_issuer = aud.as_ref().map(|_| "issuer-1".into());
    })
    .await?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_live_as_long_as_their_token() -> Result<()> {
    let c = secured(None).await?;
    let url = |t: &str| format!("{}?token={t}", c.nodes[0].ws_url());
    // No refresh: closed at expiry with the reconnect-range code 3010.
    let mut short = Client::connect(&url(&token("ann", 2, json!({})))).await?;
    short.join("r").await?;
    let (frames, code) = short.recv_close().await?;
    assert_eq!(code, Some(3010));
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Error { code, .. } if code == "token_expired")),
        "{frames:?}"
    );
    // A refresh before the end keeps it open; one for another user is refused.
    let first_exp = unix_now() + 2;
    let mut kept = Client::connect(&url(&token("bob", 2, json!({})))).await?;
    kept.join("r").await?;
    kept.send_json(json!({"type": "refresh", "token": token("eve", 600, json!({}))}))
        .await?;
    kept.expect(
        "a refused refresh",
        |f| matches!(f, ServerFrame::Error { code, .. } if code == "unauthorized"),
    )
    .await?;
    kept.send_json(json!({"type": "refresh", "token": token("bob", 600, json!({}))}))
        .await?;
    match kept
        .expect("refreshed", |f| matches!(f, ServerFrame::Refreshed { .. }))
        .await?
    {
        ServerFrame::Refreshed { exp } => assert!(exp >= unix_now() + 590, "refreshed.exp {exp}"),
        _ => unreachable!(),
    }
    // The first token's end passes (exp is in whole seconds: one more).
    wait_for("the first token's end", DEADLINE, || async {
        (unix_now() > first_exp + 1).then_some(())
    })
    .await?;
    assert_eq!(kept.publish("r", json!("still here"), "k").await?, 1);
    // A fresh token with fewer rooms takes the connection out of the others.
    let rooms = json!({"rooms": ["r"]});
    kept.join("other").await?;
    kept.send_json(json!({"type": "refresh", "token": token("bob", 600, rooms)}))
        .await?;
    kept.expect("forbidden", |f| {
        matches!(f, ServerFrame::Error { code, room: Some(r), .. } if code == "forbidden" && r == "other")
    })
    .await?;
    assert!(metric(&c.nodes[0], "turnout_tokens_expired_total").await? >= 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_issuer_and_not_before_are_checked() -> Result<()> {
    let c = secured(Some("turnout-test")).await?;
    let status = |t: String| {
        let url = format!("{}?token={t}", c.nodes[0].ws_url());
        async move {
            match tokio_tungstenite::connect_async(url).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let good = json!({"aud": "turnout-test", "iss": "issuer-1"});
    assert_eq!(status(token("u", 600, good)).await, 101);
    assert_eq!(
        status(token("u", 600, json!({"iss": "issuer-1"}))).await,
        401,
        "no aud"
    );
    let wrong_aud = json!({"aud": "other", "iss": "issuer-1"});
    assert_eq!(status(token("u", 600, wrong_aud)).await, 401);
    let wrong_iss = json!({"aud": "turnout-test", "iss": "someone"});
    assert_eq!(status(token("u", 600, wrong_iss)).await, 401);
    let later = json!({"aud": "turnout-test", "iss": "issuer-1", "nbf": unix_now() + 300});
    assert_eq!(status(token("u", 600, later)).await, 401, "not valid yet");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_with_their_token_and_with_disconnect() -> Result<()> {
    let c = Cluster::start(1, Strategy::Pubsub).await?;
    let mut gs = gateway_settings(&c.redis.url(), Strategy::Pubsub, &[&c.router]);
    gs.jwt_secret = Some(SECRET.into());
    gs.api_key = Some(API_KEY.into());
    gs.max_streams_per_user = 2;
    let gw = start_gateway_with(gs).await;
    let events = |t: &str| format!("{}/api/rooms/news/events?token={t}", gw.http());
    // The stream ends when its token does.
    let mut s = Sse::open(&events(&token("ann", 2, json!({}))), &[]).await?;
    assert_eq!(s.status, 200);
    let end = s.next().await?;
    assert_eq!(end.event.as_deref(), Some("error"));
    assert!(end.data.contains("token_expired"), "{}", end.data);
    // One user holds at most max_streams_per_user streams.
    let long = token("bob", 600, json!({}));
    let mut a = Sse::open(&events(&long), &[]).await?;
    let _b = Sse::open(&events(&long), &[]).await?;
    assert_eq!(Sse::open(&events(&long), &[]).await?.status, 429);
    // A backend disconnecting the user ends its streams.
    let (status, _) = http(
        "POST",
        &format!("{}/api/users/bob/disconnect", gw.http()),
        None,
        &[("x-api-key", API_KEY)],
    )
    .await?;
    assert_eq!(status, 200);
    let end = a.next().await?;
    assert_eq!(end.event.as_deref(), Some("error"));
    assert!(end.data.contains("disconnected"), "{}", end.data);
    assert_eq!(
        Sse::open(&events(&long), &[]).await?.status,
        200,
        "places freed"
    );
    Ok(())
}
