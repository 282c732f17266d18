//! turnout-client (clients/js) end to end: a chat of library clients on
//! Node, through the gateway, publishing without pause while a node is
//! SIGKILLed, another drained and Redis restarted. Every member must end
//! with every acked message exactly once, in order, publishes in flight
//! included (the library resends them with their ids; the server takes
//! each once).
//!
//! Needs Node.js ≥ 20 (`node`, or `TURNOUT_TEST_NODE`); the library's
//! compiled `dist/` is in the repository.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use turnout_proto::Strategy;
use turnout_tests::*;

/// Node settings: short leases so faults show within seconds.
fn env(strategy: Strategy, redis: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TURNOUT_STRATEGY", strategy.as_str().to_owned()),
        ("TURNOUT_REDIS_URL", redis.to_owned()),
        ("TURNOUT_HEARTBEAT_INTERVAL", "200ms".into()),
        ("TURNOUT_HEARTBEAT_TTL", "1s".into()),
        ("TURNOUT_PRESENCE_TTL", "1500ms".into()),
        ("TURNOUT_DRAIN_GRACE", "2s".into()),
    ]
}

struct Chat {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Chat {
    async fn start(gateway_ws: &str) -> Result<Chat> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
        let node = std::env::var("TURNOUT_TEST_NODE").unwrap_or_else(|_| "node".into());
        let mut child = Command::new(&node)
            .arg("--experimental-websocket")
            .arg(dir.join("e2e/chat.mjs"))
            .env("GATEWAY", gateway_ws)
            .env("ROOMS", "2")
            .env("MEMBERS", "4")
            .env("RATE", "20")
            .env("BETWEEN", "100")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {node} (Node.js >= 20; .ci/run installs it)"))?;
        let stdin = child.stdin.take().context("stdin")?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut chat = Chat {
            child,
            stdin,
            lines,
        };
        chat.expect("ready").await?;
        Ok(chat)
    }

    async fn line(&mut self, within: Duration) -> Result<String> {
        match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Ok(l),
            Ok(Ok(None)) => bail!("the chat exited: {:?}", self.child.try_wait()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("the chat said nothing for {within:?}"),
        }
    }

    async fn expect(&mut self, want: &str) -> Result<()> {
        let got = self.line(Duration::from_secs(30)).await?;
        if got != want {
            bail!("expected {want:?} from the chat, got {got:?}");
        }
        Ok(())
    }

    async fn say(&mut self, cmd: &str) -> Result<()> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// A fresh message reached every member: the cluster delivers again.
    async fn mark(&mut self, n: u32) -> Result<()> {
        self.say(&format!("mark {n}")).await?;
        self.expect(&format!("marked {n}"))
            .await
            .with_context(|| format!("delivery after fault {n}"))
    }
}

impl Chat {
    /// The node holding the most members now.
    async fn busiest(&mut self, nodes: &[NodeProcess]) -> Result<usize> {
        self.say("where").await?;
        let line = self.line(Duration::from_secs(10)).await?;
        let count: std::collections::HashMap<String, u64> =
            serde_json::from_str(&line).with_context(|| line.clone())?;
        let on = |i: usize| count.get(&nodes[i].id).copied().unwrap_or(0);
        let i = (0..nodes.len()).max_by_key(|&i| on(i)).context("a node")?;
        eprintln!("members per node: {line}");
        if on(i) == 0 {
            bail!("no member on any of the nodes left: {line}");
        }
        Ok(i)
    }
}

async fn exactly_once_through_faults(strategy: Strategy) -> Result<()> {
    let mut redis = Redis::start_persistent().await?;
    let url = redis.url();
    let router = start_router(&url, strategy).await;
    let gateway = start_gateway(&url, strategy, &[&router]).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let env = env(strategy, &url);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        nodes.push(NodeProcess::start(&format!("js-{i}"), &env).await?);
    }
    live_nodes(&gateway, 3).await?;
    let mut chat = Chat::start(&gateway.ws_url()).await?;
    chat.mark(1).await?;

    // A node dies with publishes in flight to it.
    let i = chat.busiest(&nodes).await?;
    let mut dead = nodes.remove(i);
    dead.kill();
    chat.mark(2).await?;
    live_nodes(&gateway, 2).await?;

    // Another one drains (SIGTERM): `reconnect`, 1012, nothing lost.
    let i = chat.busiest(&nodes).await?;
    let mut drained = nodes.remove(i);
    drained.terminate().await?;
    chat.mark(3).await?;

    // Redis restarts (its append-only file keeps seq, history and ids).
    redis.restart().await?;
    chat.mark(4).await?;

    chat.say("stop").await?;
    let line = chat.line(Duration::from_secs(60)).await?;
    let r: serde_json::Value = serde_json::from_str(&line).with_context(|| line.clone())?;
    eprintln!("{strategy}: {r}");
    assert_eq!(r["rejected"], 0, "every publish was acked: {r}");
    assert!(r["acked"].as_u64().unwrap_or(0) >= 400, "{r}");
    assert_eq!(r["seq_clashes"], 0, "two publishes never share a seq: {r}");
    for m in r["members"].as_array().context("members")? {
        assert_eq!(m["missing"], 0, "member lost acked messages: {m}");
        assert_eq!(
            m["delivered_twice"], 0,
            "a message reached a member twice: {m}"
        );
        assert_eq!(m["out_of_order"], 0, "a member saw a jump in seq: {m}");
    }
    drop(dead);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_members_get_everything_once_through_faults_pubsub() -> Result<()> {
    exactly_once_through_faults(Strategy::Pubsub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_members_get_everything_once_through_faults_sticky() -> Result<()> {
    exactly_once_through_faults(Strategy::Sticky).await
}

/// A user in 100 rooms (the default `max_rooms_per_conn`) through a drain
/// of its node, with a join burst of half that: the library rejoins every
/// room on the node it lands on, paced within the limits, and stays
/// connected (it used to rejoin all at once, be closed 1008 by the join
/// rate limit, and give up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_a_hundred_rooms_comes_through_a_drain() -> Result<()> {
    let redis = Redis::start().await?;
    let url = redis.url();
    let router = start_router(&url, Strategy::Pubsub).await;
    let gateway = start_gateway(&url, Strategy::Pubsub, &[&router]).await;
    let defaults = turnout_ws_node::Settings::default();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut s = node_settings(&url, Strategy::Pubsub);
        s.max_join_rate = defaults.max_join_rate;
        // Half the default burst, so that half the joins are refused and
        // the library must pace the rest (the default takes 100 at once).
        s.max_join_burst = defaults.max_join_burst / 2;
        s.max_rooms_per_minute = defaults.max_rooms_per_minute;
        s.max_rooms_per_conn = defaults.max_rooms_per_conn;
        nodes.push(start_node(s).await);
    }
    live_nodes(&gateway, 2).await?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let node = std::env::var("TURNOUT_TEST_NODE").unwrap_or_else(|_| "node".into());
    let mut child = Command::new(&node)
        .arg("--experimental-websocket")
        .arg(dir.join("e2e/many-rooms.mjs"))
        .env("GATEWAY", gateway.ws_url())
        .env("ROOMS", defaults.max_rooms_per_conn.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {node}"))?;
    let mut chat = Chat {
        stdin: child.stdin.take().context("stdin")?,
        lines: BufReader::new(child.stdout.take().context("stdout")?).lines(),
        child,
    };
    chat.expect("ready").await?;
    chat.say("where").await?;
    let on = chat.line(Duration::from_secs(10)).await?;
    let i = nodes
        .iter()
        .position(|n| on.ends_with(&format!("-{}", n.addr.port())))
        .with_context(|| format!("the client's node {on}"))?;
    nodes.remove(i).stop().await;
    chat.say("publish").await?;
    let answer = chat.line(Duration::from_secs(60)).await?;
    chat.say("stop").await?;
    let summary = chat.line(Duration::from_secs(10)).await?;
    assert_eq!(answer, "published 100", "{summary}");
    let s: serde_json::Value = serde_json::from_str(&summary)?;
    assert_eq!(s["state"], "open", "{s}");
    assert!(
        s["joins"].as_u64() >= Some(200),
        "every room joined twice: {s}"
    );
    assert!(
        !s["closes"].as_array().unwrap().contains(&1008.into()),
        "never closed for going over limits: {s}"
    );
    Ok(())
}
