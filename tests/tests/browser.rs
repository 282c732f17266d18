//! The demo page in a real headless Chromium, driven over WebDriver:
//! two pages chat, the node under one of them stops, the page reconnects
//! by itself and its history has no hole.
//!
//! Needs `chromium` and `chromedriver` (Debian: chromium, chromium-driver);
//! `.ci/run` installs them.

use anyhow::{Context, Result, bail};
use fantoccini::{Client as Browser, Locator};
use std::time::Duration;
use turnout_proto::Strategy;
use turnout_tests::*;

async fn open_and_join(b: &Browser, url: &str, user: &str, room: &str) -> Result<String> {
    b.goto(url).await?;
    let name = b.wait().for_element(Locator::Id("user")).await?;
    name.clear().await?;
    name.send_keys(user).await?;
    let r = b.find(Locator::Id("room")).await?;
    r.clear().await?;
    r.send_keys(room).await?;
    b.find(Locator::Id("join-btn")).await?.click().await?;
    let where_ = wait_text(b, "#where", "you are on").await?;
    wait_text(b, "#log", "joined").await?;
    Ok(where_
        .trim_start_matches("you are on ")
        .split(' ')
        .next()
        .unwrap_or("")
        .to_owned())
}

async fn say(b: &Browser, text: &str) -> Result<()> {
    let input = b
        .wait()
        .for_element(Locator::Css("#text:not([disabled])"))
        .await?;
    input.send_keys(text).await?;
    b.find(Locator::Id("send-btn")).await?.click().await?;
    Ok(())
}

async fn scenario(strategy: Strategy) -> Result<()> {
    let mut c = Cluster::start(2, strategy).await?;
    let d = driver().await?;
    let (a, b) = (browser(&d).await?, browser(&d).await?);
    let url = format!("{}/", c.gateway.http());
    let node_a = open_and_join(&a, &url, "ana", "demo").await?;
    let node_b = open_and_join(&b, &url, "ben", "demo").await?;
    match strategy {
        Strategy::Pubsub | Strategy::Relay | Strategy::Local => assert_ne!(
            node_a, node_b,
            "least-loaded placement puts two pages on two nodes"
        ),
        Strategy::Sticky => assert_eq!(node_a, node_b, "a room's members meet on its owner"),
    }
    wait_text(&a, "#strategy", strategy.as_str()).await?;
    wait_text(&a, "#nodes", &node_b).await?;
    if strategy == Strategy::Relay {
        // The panel names the node that owns the room.
        wait_text(&a, "#nodes", "(owns demo)").await?;
    }

    say(&a, "hello from ana").await?;
    let shown = wait_text(&b, "#messages", "hello from ana").await?;
    assert!(shown.contains(&format!("published on {node_a}")), "{shown}");

    // Stop ben's node the way the cluster runner does (SIGTERM: drain).
    let idx = node_index(&c, &node_b).await?;
    let node = c.nodes.remove(idx);
    node.stop.cancel();
    wait_text(&b, "#log", "asks everyone to reconnect").await?;
    let moved = wait_for("ben on another node", Duration::from_secs(20), || async {
        let w = text_of(&b, "#where").await;
        (w.contains("you are on") && !w.contains(&node_b)).then_some(w)
    })
    .await?;
    node.task.await?;
    // ana (moved too in sticky mode) says more; ben sees it, and all of it in order.
    wait_text(&a, "#where", "you are on").await?;
    say(&a, "after the move").await?;
    let msgs = wait_text(&b, "#messages", "after the move").await?;
    let first = msgs.find("hello from ana").context("first message kept")?;
    let second = msgs.find("after the move").unwrap();
    assert!(first < second, "{msgs}");
    assert_eq!(
        msgs.matches("hello from ana").count(),
        1,
        "no duplicate after the reconnect: {msgs}"
    );
    eprintln!("{strategy}: ben moved from {node_b}: {moved}");

    if let Ok(dir) = std::env::var("TURNOUT_SCREENSHOTS") {
        std::fs::write(format!("{dir}/demo-{strategy}.png"), b.screenshot().await?)?;
    }
    a.close().await?;
    b.close().await?;
    Ok(())
}

async fn node_index(c: &Cluster, id: &str) -> Result<usize> {
    let (_, v) = http_get_json(&format!("{}/api/cluster", c.gateway.http())).await?;
    let url = v["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["id"] == id))
        .and_then(|n| n["url"].as_str())
        .context("node in the cluster view")?
        .to_owned();
    match c.nodes.iter().position(|p| p.ws_url() == url) {
        Some(i) => Ok(i),
        None => bail!("no in-process node at {url}"),
    }
}

/// Two local servers behind the gateway: the pages land on different
/// ones, and neither sees what the other says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_local_servers_share_nothing() -> Result<()> {
    let c = Cluster::start(2, Strategy::Local).await?;
    let d = driver().await?;
    let (a, b) = (browser(&d).await?, browser(&d).await?);
    let url = format!("{}/", c.gateway.http());
    let node_a = open_and_join(&a, &url, "ana", "demo").await?;
    let node_b = open_and_join(&b, &url, "ben", "demo").await?;
    assert_ne!(
        node_a, node_b,
        "least-loaded placement puts two pages on two nodes"
    );
    wait_text(&a, "#strategy", "local").await?;
    wait_text(&a, "#hint", "share nothing").await?;
    say(&a, "hello from ana").await?;
    wait_text(&a, "#messages", "hello from ana").await?;
    say(&b, "hello from ben").await?;
    let seen_by_ben = wait_text(&b, "#messages", "hello from ben").await?;
    assert!(!seen_by_ben.contains("hello from ana"), "{seen_by_ben}");
    let seen_by_ana = text_of(&a, "#messages").await;
    assert!(!seen_by_ana.contains("hello from ben"), "{seen_by_ana}");
    if let Ok(dir) = std::env::var("TURNOUT_SCREENSHOTS") {
        std::fs::write(format!("{dir}/demo-local.png"), b.screenshot().await?)?;
    }
    a.close().await?;
    b.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_chats_and_survives_a_node_stop_pubsub() -> Result<()> {
    scenario(Strategy::Pubsub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_chats_and_survives_a_node_stop_sticky() -> Result<()> {
    scenario(Strategy::Sticky).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_chats_and_survives_a_node_stop_relay() -> Result<()> {
    scenario(Strategy::Relay).await
}
