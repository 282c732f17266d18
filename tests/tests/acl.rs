//! An ACL user that may touch only `turnout:*` keys and channels and no
//! dangerous command: every process runs on it, in both strategies, with
//! the default user switched off. A wrong password is named at `/readyz`.

use anyhow::Result;
use serde_json::json;
use turnout_proto::Strategy;
use turnout_tests::*;

/// The rule docs/OPERATIONS.md gives for a turnout user.
const RULE: &[&str] = &[
    "on",
    ">turnout-acl-password",
    "~turnout:*",
    "&turnout:*",
    "+@all",
    "-@dangerous",
];

async fn restricted_redis() -> Result<Redis> {
    let redis = Redis::start().await?;
    let mut con = redis.con().await?;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("turnout")
        .arg(RULE)
        .query_async(&mut con)
        .await?;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("off")
        .query_async(&mut con)
        .await?;
    Ok(redis)
}

fn as_user(redis: &Redis, password: &str) -> String {
    redis
        .url()
        .replace("redis://", &format!("redis://turnout:{password}@"))
}

async fn chat_as_acl_user(strategy: Strategy) -> Result<()> {
    let redis = restricted_redis().await?;
    let url = as_user(&redis, "turnout-acl-password");
    let router = start_router(&url, strategy).await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut s = node_settings(&url, strategy);
        s.inbox = true;
        nodes.push(start_node(s).await);
    }
    let gateway = start_gateway(&url, strategy, &[&router]).await;
    live_nodes(&gateway, 2).await?;
    // Two members through the gateway (pubsub: on two nodes; sticky: on
    // the room's owner), a publish each way, the server API, history.
    let ws = format!("{}?room=acl", gateway.ws_url());
    let mut a = Client::connect(&format!("{ws}&user=a")).await?;
    let mut b = Client::connect(&format!("{ws}&user=b")).await?;
    a.join("acl").await?;
    b.join("acl").await?;
    let s1 = a.publish("acl", json!("from a"), "a-1").await?;
    let s2 = b.publish("acl", json!("from b"), "b-1").await?;
    let (status, body) = http(
        "POST",
        &format!("{}/api/rooms/acl/publish", gateway.http()),
        Some(json!({"data": "from the api"}).to_string()),
        &[("Idempotency-Key", "api-1")],
    )
    .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    for c in [&mut a, &mut b] {
        assert_eq!(c.messages_until("acl", s2 + 1).await?, vec![s1, s2, s2 + 1]);
    }
    let (_, history) =
        http_get_json(&format!("{}/api/rooms/acl/history?since=0", gateway.http())).await?;
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(3),
        "{history}"
    );
    let (status, _) = http("GET", &format!("{}/readyz", gateway.http()), None, &[]).await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_acl_user_runs_the_cluster_pubsub() -> Result<()> {
    chat_as_acl_user(Strategy::Pubsub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_acl_user_runs_the_cluster_sticky() -> Result<()> {
    chat_as_acl_user(Strategy::Sticky).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_named() -> Result<()> {
    let redis = restricted_redis().await?;
    let node = spawn_node(node_settings(
        &as_user(&redis, "not-the-password"),
        Strategy::Pubsub,
    ));
    let why = readyz_refusal(&node, "WRONGPASS").await?;
    assert!(
        !why.contains("not-the-password"),
        "the password is not shown: {why}"
    );
    Ok(())
}
