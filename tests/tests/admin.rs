//! The admin page (`GET /admin` on the gateway) in a real headless Chromium,
//! against a relay cluster whose gateway has an API key: a wrong key is
//! refused, the right one shows the live nodes, the rooms by members with
//! their message rate and owner, and a user's connections; from the page an
//! operator disconnects a user (close 3500) and drains a node (its clients
//! are told to reconnect). The calls behind it need the key.

use anyhow::{Context, Result};
use fantoccini::Locator;
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use turnout_proto::Strategy;
use turnout_proto::codes::close;
use turnout_proto::frames::ServerFrame;
use turnout_tests::*;

const KEY: &str = "admin-test-key-0123456789";

/// The ids of the live nodes, in the order of `nodes`.
async fn node_ids(gateway: &Proc, nodes: &[Proc]) -> Result<Vec<String>> {
    let v = live_nodes(gateway, nodes.len()).await?;
    nodes
        .iter()
        .map(|n| {
            let port = n.ws_url();
            v["nodes"]
                .as_array()
                .and_then(|all| all.iter().find(|x| x["url"] == port.as_str()))
                .and_then(|x| x["id"].as_str())
                .map(str::to_owned)
                .with_context(|| format!("{port} in {v}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_the_cluster_disconnects_a_user_and_drains_a_node() -> Result<()> {
    let redis = Redis::start().await?;
    let url = redis.url();
    let router = start_router(&url, Strategy::Relay).await;
    let nodes = vec![
        start_node(node_settings(&url, Strategy::Relay)).await,
        start_node(node_settings(&url, Strategy::Relay)).await,
    ];
    let mut settings = gateway_settings(&url, Strategy::Relay, &[&router]);
    settings.api_key = Some(KEY.into());
    let gateway = start_gateway_with(settings).await;
    let ids = node_ids(&gateway, &nodes).await?;

    // The calls behind the page need the key.
    for (method, path) in [
        ("GET", "/api/admin/rooms"),
        ("GET", "/api/admin/users/alice"),
        ("POST", &format!("/api/nodes/{}/drain", ids[1])),
    ] {
        let (status, _) = http(method, &format!("{}{path}", gateway.http()), None, &[]).await?;
        assert_eq!(status, 401, "{method} {path} without the key");
    }

    // alice on the first node, bob on the second, both in one room; carol
    // publishes there all along (the page shows the room's message rate).
    let mut alice = Client::connect(&format!("{}?user=alice", nodes[0].ws_url())).await?;
    let mut bob = Client::connect(&format!("{}?user=bob", nodes[1].ws_url())).await?;
    let mut carol = Client::connect(&format!("{}?user=carol", nodes[0].ws_url())).await?;
    alice.join("admin-room").await?;
    bob.join("admin-room").await?;
    carol.join("admin-room").await?;
    let stop = CancellationToken::new();
    let publishing = stop.clone();
    let publisher = tokio::spawn(async move {
        let mut n = 0u64;
        while !publishing.is_cancelled() {
            n += 1;
            carol
                .publish("admin-room", json!({"n": n}), &format!("c{n}"))
                .await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(n)
    });

    let d = driver().await?;
    let b = browser(&d).await?;
    b.goto(&format!("{}/admin", gateway.http())).await?;
    let key = b.wait().for_element(Locator::Id("key")).await?;
    key.send_keys("not-the-key").await?;
    b.find(Locator::Id("sign-in")).await?.click().await?;
    wait_text(&b, "#login-error", "Wrong API key").await?;
    let key = b.find(Locator::Id("key")).await?;
    key.clear().await?;
    key.send_keys(KEY).await?;
    b.find(Locator::Id("sign-in")).await?.click().await?;

    // Live nodes; the room with its three members, its owner (one of the
    // nodes) and a message rate above 0.
    for id in &ids {
        wait_text(&b, "#nodes", id).await?;
    }
    let row = "#rooms tr[data-room='admin-room']";
    wait_text(&b, row, "admin-room").await?;
    let rate = wait_for(
        "a message rate above 0",
        Duration::from_secs(15),
        || async {
            let cells = b.find_all(Locator::Css(&format!("{row} td"))).await.ok()?;
            let mut texts = Vec::new();
            for c in cells {
                texts.push(c.text().await.ok()?);
            }
            let rate: f64 = texts.get(2)?.parse().ok()?;
            (texts[1] == "3" && rate > 0.0).then_some(texts)
        },
    )
    .await?;
    // The owner is the one Redis records.
    let mut con = turnout_common::redis::client(&url, None, false)?
        .commands()
        .await?;
    let owner =
        turnout_common::redis::rooms::claim(&mut con, "admin-room", "", Duration::ZERO, &[])
            .await?;
    assert!(ids.contains(&owner.node), "{owner:?}");
    assert_eq!(rate[3], owner.node, "the owner column: {rate:?}");

    // alice's connection, then the disconnect: she is closed with 3500.
    b.find(Locator::Id("user"))
        .await?
        .send_keys("alice")
        .await?;
    b.find(Locator::Id("find")).await?.click().await?;
    let shown = wait_text(&b, "#connections", "admin-room").await?;
    assert!(
        shown.contains(&ids[0]),
        "alice is on the first node: {shown}"
    );
    b.wait()
        .for_element(Locator::Css("#disconnect:not([disabled])"))
        .await?
        .click()
        .await?;
    wait_text(&b, "#status", "Disconnected alice: 1 connection(s)").await?;
    // A picture of the page for the docs, on request.
    if let Ok(path) = std::env::var("TURNOUT_ADMIN_SCREENSHOT") {
        std::fs::write(path, b.screenshot().await?)?;
    }
    let closed = alice.recv_close_frame().await?;
    assert_eq!(closed.map(|c| c.0), Some(close::KICKED));

    // Drain the second node from its row (the page asks first): bob is
    // told to reconnect. The table is redrawn every 2 s: a click on a row
    // just replaced is tried again.
    let button = format!("button.drain[data-node='{}']", ids[1]);
    wait_for("the drain button clicked", DEADLINE, || async {
        b.find(Locator::Css(&button)).await.ok()?.click().await.ok()
    })
    .await?;
    wait_for("the confirmation accepted", DEADLINE, || async {
        b.accept_alert().await.ok()
    })
    .await?;
    wait_text(&b, "#status", &format!("Draining {}", ids[1])).await?;
    let (frames, code) = bob.recv_close().await?;
    assert!(
        frames.contains(&ServerFrame::Reconnect {
            reason: "draining".into()
        }),
        "{frames:?}"
    );
    assert_eq!(code, Some(close::SERVICE_RESTART));
    // The last node serving is not drained.
    let (status, body) = http(
        "POST",
        &format!("{}/api/nodes/{}/drain", gateway.http(), ids[0]),
        None,
        &[("x-api-key", KEY)],
    )
    .await?;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    stop.cancel();
    assert!(publisher.await?? > 0);
    // Ends the browser (chromedriver alone would leave it running).
    b.close().await?;
    Ok(())
}
