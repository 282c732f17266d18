//! turnout processes: in-process ws-nodes, routers, gateways and whole
//! clusters; ws-nodes as real processes; a TCP proxy to cut links.

use crate::*;
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use turnout_proto::Strategy;

/// An in-process turnout process.
pub struct Proc {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Proc {
    /// Waits until the process serves its real app, not just the start-up
    /// one (which answers everything but `/healthz` with 503).
    pub async fn serving(self) -> Proc {
        let url = format!("{}/metrics", self.http());
        wait_for("the process to serve", DEADLINE, || {
            let url = url.clone();
            async move {
                let (status, _) = http("GET", &url, None, &[]).await.ok()?;
                (status == 200).then_some(())
            }
        })
        .await
        .expect("process serving");
        self
    }

    /// Stops cleanly and waits for the process to finish; fails the test
    /// when it does not end within [`DEADLINE`], or ends in an error (its
    /// `run` returned one, which panics its task).
    pub async fn stop(self) {
        self.stop.cancel();
        match tokio::time::timeout(DEADLINE, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the process at {} did not end cleanly: {e}", self.addr),
            Err(_) => panic!(
                "the process at {} did not stop within {DEADLINE:?}",
                self.addr
            ),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

pub fn node_settings(redis: &str, strategy: Strategy) -> turnout_ws_node::Settings {
    turnout_ws_node::Settings {
        strategy,
        redis_url: redis.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        // Tests run without secrets unless they test them.
        insecure: true,
        drain_grace: Duration::from_secs(3),
        // Tests publish and join as fast as they can; the limits have their
        // own tests.
        max_frame_rate: 1e6,
        max_frame_burst: 1_000_000,
        max_publish_rate: 1e6,
        max_publish_burst: 1_000_000,
        max_join_rate: 1e6,
        max_join_burst: 1_000_000,
        max_rooms_per_minute: 1_000_000,
        max_connect_rate_per_ip: 1e6,
        max_connect_burst_per_ip: 1_000_000,
        max_accept_rate: 1e6,
        max_accept_burst: 1_000_000,
        ..Default::default()
    }
}

/// Starts a ws-node and waits until it serves.
pub async fn start_node(settings: turnout_ws_node::Settings) -> Proc {
    spawn_node(settings).serving().await
}

/// Starts a ws-node without waiting (it may still wait for Redis).
pub fn spawn_node(settings: turnout_ws_node::Settings) -> Proc {
    spawn_node_at(0, settings)
}

/// Starts a ws-node on `port` (0: any) and waits until it serves.
pub async fn start_node_at(port: u16, settings: turnout_ws_node::Settings) -> Proc {
    spawn_node_at(port, settings).serving().await
}

fn spawn_node_at(port: u16, settings: turnout_ws_node::Settings) -> Proc {
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    l.set_nonblocking(true).unwrap();
    let l = tokio::net::TcpListener::from_std(l).unwrap();
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = turnout_ws_node::run(l, settings, s).await {
            panic!("ws-node failed: {e}");
        }
    });
    Proc { addr, stop, task }
}

pub fn router_settings(redis: &str, strategy: Strategy) -> turnout_router::Settings {
    turnout_router::Settings {
        strategy,
        redis_url: redis.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        insecure: true,
        poll_interval: Duration::from_millis(100),
        ..Default::default()
    }
}

pub async fn start_router(redis: &str, strategy: Strategy) -> Proc {
    start_router_with(router_settings(redis, strategy)).await
}

pub async fn start_router_with(settings: turnout_router::Settings) -> Proc {
    spawn_router(settings).await.serving().await
}

/// Starts a router without waiting (it may still wait for Redis).
pub async fn spawn_router(settings: turnout_router::Settings) -> Proc {
    let l = listener().await;
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = turnout_router::run(l, settings, s).await {
            panic!("router failed: {e}");
        }
    });
    Proc { addr, stop, task }
}

pub fn gateway_settings(
    redis: &str,
    strategy: Strategy,
    routers: &[&Proc],
) -> turnout_gateway::Settings {
    let router_url = routers
        .iter()
        .map(|r| r.http())
        .collect::<Vec<_>>()
        .join(",");
    turnout_gateway::Settings {
        strategy,
        redis_url: redis.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        insecure: true,
        router_url,
        max_connect_rate_per_ip: 1e6,
        max_connect_burst_per_ip: 1_000_000,
        ..Default::default()
    }
}

pub async fn start_gateway(redis: &str, strategy: Strategy, routers: &[&Proc]) -> Proc {
    start_gateway_with(gateway_settings(redis, strategy, routers)).await
}

pub async fn start_gateway_with(settings: turnout_gateway::Settings) -> Proc {
    spawn_gateway(settings).await.serving().await
}

/// Starts a gateway without waiting (it may still wait for Redis).
pub async fn spawn_gateway(settings: turnout_gateway::Settings) -> Proc {
    let l = listener().await;
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = turnout_gateway::run(l, settings, s).await {
            panic!("gateway failed: {e}");
        }
    });
    Proc { addr, stop, task }
}

/// Redis + router + gateway + n ws-nodes, all in this process.
pub struct Cluster {
    pub redis: Redis,
    pub router: Proc,
    pub gateway: Proc,
    pub nodes: Vec<Proc>,
    pub strategy: Strategy,
}

impl Cluster {
    pub async fn start(n: usize, strategy: Strategy) -> Result<Cluster> {
        Self::start_with(n, strategy, |_| {}).await
    }

    /// Like [`Cluster::start`], with a hook to adjust each node's settings.
    pub async fn start_with(
        n: usize,
        strategy: Strategy,
        tweak: impl Fn(&mut turnout_ws_node::Settings),
    ) -> Result<Cluster> {
        Self::start_on(Redis::start().await?, n, strategy, tweak).await
    }

    /// A cluster on a given Redis (e.g. a persistent one).
    pub async fn start_on(
        redis: Redis,
        n: usize,
        strategy: Strategy,
        tweak: impl Fn(&mut turnout_ws_node::Settings),
    ) -> Result<Cluster> {
        let url = redis.url();
        let router = start_router(&url, strategy).await;
        let mut nodes = Vec::new();
        for _ in 0..n {
            let mut s = node_settings(&url, strategy);
            tweak(&mut s);
            nodes.push(start_node(s).await);
        }
        let gateway = start_gateway(&url, strategy, &[&router]).await;
        let c = Cluster {
            redis,
            router,
            gateway,
            nodes,
            strategy,
        };
        c.wait_nodes(n).await?;
        Ok(c)
    }

    /// Waits until the gateway's `/api/cluster` lists exactly `n` nodes.
    pub async fn wait_nodes(&self, n: usize) -> Result<serde_json::Value> {
        live_nodes(&self.gateway, n).await
    }
}

/// Waits until `gateway`'s `/api/cluster` lists exactly `n` nodes; returns it.
pub async fn live_nodes(gateway: &Proc, n: usize) -> Result<serde_json::Value> {
    let url = format!("{}/api/cluster", gateway.http());
    wait_for(&format!("{n} nodes in /api/cluster"), DEADLINE, || {
        let url = url.clone();
        async move {
            let v = http_get_json(&url).await.ok()?.1;
            (v["nodes"].as_array()?.len() == n).then_some(v)
        }
    })
    .await
}

/// Waits until `p`'s `/readyz` answers 503 with `needle` in its body (what
/// the process waits for, and the reply it got); returns the body.
pub async fn readyz_refusal(p: &Proc, needle: &str) -> Result<String> {
    let url = format!("{}/readyz", p.http());
    wait_for(&format!("/readyz to say {needle:?}"), DEADLINE, || {
        let url = url.clone();
        async move {
            let (status, body) = http("GET", &url, None, &[]).await.ok()?;
            let body = String::from_utf8_lossy(&body).into_owned();
            (status == 503 && body.contains(needle)).then_some(body)
        }
    })
    .await
}

/// A ws-node as a real process (the built binary), for faults an
/// in-process node cannot show: SIGSTOP/SIGCONT, SIGKILL. Killed on drop.
pub struct NodeProcess {
    child: Child,
    pub id: String,
    pub port: u16,
}

impl NodeProcess {
    /// Starts `turnout-ws-node` on a free port with `env` (TURNOUT_* settings)
    /// and waits until it serves. A port taken in between by another
    /// process is found out (the node exits, or another node answers) and
    /// another port is tried.
    pub async fn start(id: &str, env: &[(&str, &str)]) -> Result<NodeProcess> {
        Self::spawn("turnout-ws-node", id, &[], env).await
    }

    /// Another binary of the workspace (`turnout-gateway`, `turnout-router`)
    /// as a real process, with `args` and `env`: serving once its
    /// `/metrics` carry its id.
    pub async fn start_other(
        binary: &str,
        id: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<NodeProcess> {
        Self::spawn(binary, id, args, env).await
    }

    async fn spawn(
        name: &str,
        id: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<NodeProcess> {
        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_port();
            let mut cmd = Command::new(binary(name));
            cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--node-id", id])
                .args(args)
                .env("TURNOUT_INSECURE", "true")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
            let mut p = NodeProcess {
                child,
                id: id.to_owned(),
                port,
            };
            let node = name == "turnout-ws-node";
            // A node serves once it is in the cluster; another process
            // once its metrics name it (not another process on the port).
            let url = if node {
                format!("{}/api/cluster", p.http())
            } else {
                format!("{}/metrics", p.http())
            };
            let end = Instant::now() + DEADLINE;
            let exited = loop {
                if let Some(status) = p.child.try_wait()? {
                    break status;
                }
                if let Ok((200, body)) = http("GET", &url, None, &[]).await {
                    let serving = if node {
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        v["nodes"][0]["id"] == id
                    } else {
                        String::from_utf8_lossy(&body).contains(&format!("=\"{id}\""))
                    };
                    if serving {
                        return Ok(p);
                    }
                }
                if Instant::now() > end {
                    bail!("{id} did not serve on port {port} within {DEADLINE:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if tries == 5 {
                bail!("{id} exited at start ({exited}), on 5 ports in turn");
            }
        }
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// SIGSTOP: the process stops without dying (a long pause).
    pub fn pause(&self) -> Result<()> {
        signal(self.child.id(), "-STOP")
    }

    /// SIGCONT: the paused process goes on.
    pub fn resume(&self) -> Result<()> {
        signal(self.child.id(), "-CONT")
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a drain), and wait until the process has exited; fails
    /// unless it exited with status 0.
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        signal(self.child.id(), "-TERM")?;
        let child = &mut self.child;
        let status = wait_for("the node to exit after SIGTERM", DEADLINE, || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await?;
        if !status.success() {
            bail!("{} exited with {status} after SIGTERM", self.id);
        }
        Ok(status)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.resume();
        self.kill();
    }
}

/// A TCP proxy in front of a server, to cut the network between a process
/// and it (`cut`, `heal`, `sever`; see `turnout_loadtest::proxy`).
pub struct Proxy(turnout_loadtest::proxy::Proxy);

impl Proxy {
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let p = turnout_loadtest::proxy::Proxy::start("127.0.0.1:0", &target.to_string()).await?;
        Ok(Proxy(p))
    }

    /// A Redis URL through the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.0.addr)
    }

    pub fn cut(&self) {
        self.0.cut()
    }

    pub fn heal(&self) {
        self.0.heal()
    }

    pub fn sever(&self) {
        self.0.sever()
    }

    /// While on, each connection through the proxy is closed when its
    /// next reply comes back, the reply lost (the command ran).
    pub fn lose_replies(&self, on: bool) {
        self.0.lose_replies(on)
    }
}
