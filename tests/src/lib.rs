//! Test harness: a real `redis-server` on a free port, whole turnout
//! processes (in-process `run()` on port 0, or the built binaries), and a
//! small WebSocket client. Every wait is a condition polled against a
//! deadline, never a fixed sleep.

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use turnout_proto::Strategy;
use turnout_proto::frames::ServerFrame;

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `f` until it returns `Some`, failing after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released: whatever binds it
/// next may lose it to another process, and must check it got it, as
/// [`Redis`] does).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` child process on a free port, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// With persistence (append-only file, fsync always) in this folder.
    dir: Option<PathBuf>,
    /// `requirepass`, when the server asks for one.
    password: Option<String>,
}

impl Redis {
    pub async fn start() -> Result<Redis> {
        Self::start_on_a_free_port(None, None).await
    }

    /// A server on a given port (e.g. one a process was told to use before
    /// Redis was there).
    pub async fn start_at(port: u16) -> Result<Redis> {
        let mut r = Redis {
            port,
            child: None,
            dir: None,
            password: None,
        };
        r.spawn().await?;
        Ok(r)
    }

    /// A server that keeps its data across restarts (AOF, fsync always).
    pub async fn start_persistent() -> Result<Redis> {
        let dir = std::env::temp_dir().join(format!(
            "turnout-redis-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir)?;
        Self::start_on_a_free_port(Some(dir), None).await
    }

    /// A server that requires `password` (`requirepass`).
    pub async fn start_locked(password: &str) -> Result<Redis> {
        Self::start_on_a_free_port(None, Some(password.to_owned())).await
    }

    /// Starts on a free port; when another process took the port first,
    /// on another one.
    async fn start_on_a_free_port(dir: Option<PathBuf>, password: Option<String>) -> Result<Redis> {
        let mut last = None;
        for _ in 0..5 {
            let mut r = Redis {
                port: free_port(),
                child: None,
                dir: dir.clone(),
                password: password.clone(),
            };
            match r.spawn().await {
                Ok(()) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried")).context("no free port for redis-server")
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(redis_server());
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
        match &self.dir {
            Some(dir) => cmd
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => cmd.args(["--appendonly", "no"]),
        };
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed? .ci/run installs it)")?;
        let pid = child.id();
        let url = self.auth_url();
        // The server that answers must be this child: one that lost its
        // port to another process exits, and a PING would reach the other.
        let answered = wait_for("redis-server to answer PING", DEADLINE, || {
            let url = url.clone();
            let exited = child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    return Some(Err(anyhow::anyhow!("redis-server exited: {status}")));
                }
                let client = redis::Client::open(url.as_str()).ok()?;
                let mut con = client.get_multiplexed_async_connection().await.ok()?;
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut con)
                    .await
                    .ok()?;
                let theirs = info
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse::<u32>().ok());
                Some(match theirs {
                    Some(p) if p == pid => Ok(()),
                    other => Err(anyhow::anyhow!(
                        "{url} answered by another redis-server ({other:?})"
                    )),
                })
            }
        })
        .await
        .and_then(|r| r);
        if let Err(e) = answered {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.child = Some(child);
        Ok(())
    }

    /// The URL with the password, when there is one.
    pub fn auth_url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => self.url(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and starts an empty one on the same port.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server stalls, holding every connection open.
    pub fn pause(&self) -> Result<()> {
        signal(self.child.as_ref().context("no server")?.id(), "-STOP")
    }

    /// SIGCONT after [`Redis::pause`].
    pub fn resume(&self) -> Result<()> {
        signal(self.child.as_ref().context("no server")?.id(), "-CONT")
    }

    pub async fn con(&self) -> Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.auth_url())?
            .get_multiplexed_async_connection()
            .await?)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.resume();
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A Redis Cluster of `redis-server` child processes on loopback: masters
/// and replicas on free ports (each below 55536, with its cluster-bus port
/// 10000 above it free too), made with `redis-cli --cluster create`; killed and
/// removed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    replicas: usize,
    children: Vec<Child>,
    dir: PathBuf,
}

/// A cluster port: free, below 55536, with port + 10000 free as well.
fn cluster_port(taken: &[u16]) -> u16 {
    loop {
        let p = free_port();
        if p < 55536
            && !taken.contains(&p)
            && !taken.contains(&(p + 10000))
            && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        {
            return p;
        }
    }
}

impl RedisCluster {
    /// `masters` masters, each with `replicas` replicas; returns once every
    /// node reports `cluster_state:ok` and agrees on every slot's owner.
    pub async fn start(masters: usize, replicas: usize) -> Result<RedisCluster> {
        let n = masters * (1 + replicas);
        let mut ports = Vec::new();
        for _ in 0..n {
            let p = cluster_port(&ports);
            ports.push(p);
        }
        let dir = std::env::temp_dir().join(format!(
            "turnout-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir)?;
        let mut c = RedisCluster {
            ports: ports.clone(),
            replicas: masters * replicas,
            children: Vec::new(),
            dir: dir.clone(),
        };
        for &p in &ports {
            let child = Command::new(redis_server())
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{p}.conf")))
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server (is it installed? .ci/run installs it)")?;
            c.children.push(child);
        }
        for &p in &ports {
            wait_for("a cluster node to answer PING", DEADLINE, || async move {
                let mut con = node_con(p).await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .ok()
            })
            .await?;
        }
        let mut create = Command::new(redis_cli());
        create.arg("--cluster").arg("create");
        for p in &ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .context("redis-cli --cluster create (redis-tools)")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        c.wait_settled().await?;
        Ok(c)
    }

    /// Seed-node list for `redis_url` with `redis_cluster = true`.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A plain connection to one node.
    pub async fn con(&self, port: u16) -> Result<redis::aio::MultiplexedConnection> {
        node_con(port).await
    }

    /// Ports of the nodes that are masters now.
    pub async fn masters(&self) -> Result<Vec<u16>> {
        let mut out = Vec::new();
        for &p in &self.ports {
            let mut con = node_con(p).await?;
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut con).await?;
            if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The hash slot of `key`, as Redis computes it (`CLUSTER KEYSLOT`).
    pub async fn slot(&self, key: &str) -> Result<u16> {
        let mut con = node_con(self.ports[0]).await?;
        Ok(redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut con)
            .await?)
    }

    /// The port of the master that serves `key`'s slot now, and its replicas'.
    pub async fn shard_of(&self, key: &str) -> Result<(u16, Vec<u16>)> {
        let mut con = node_con(self.ports[0]).await?;
        let slot = self.slot(key).await?;
        let shards: Vec<(u16, u16, Vec<redis::Value>)> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut con)
            .await
            .map(|v: Vec<Vec<redis::Value>>| {
                v.into_iter()
                    .filter_map(|r| {
                        let lo = redis::from_redis_value_ref::<u16>(r.first()?).ok()?;
                        let hi = redis::from_redis_value_ref::<u16>(r.get(1)?).ok()?;
                        Some((lo, hi, r[2..].to_vec()))
                    })
                    .collect()
            })?;
        let port_of = |v: &redis::Value| -> Option<u16> {
            let node: Vec<redis::Value> = redis::from_redis_value_ref(v).ok()?;
            redis::from_redis_value_ref::<u16>(node.get(1)?).ok()
        };
        let (_, _, nodes) = shards
            .into_iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            .context("no shard serves the slot")?;
        let master = port_of(nodes.first().context("shard without master")?)
            .context("bad CLUSTER SLOTS entry")?;
        Ok((master, nodes[1..].iter().filter_map(port_of).collect()))
    }

    /// Waits until every node says `cluster_state:ok`, all nodes agree on
    /// who serves every slot, and every replica is linked to its master
    /// (after a create, failover or migration).
    pub async fn wait_settled(&self) -> Result<()> {
        let ports = self.ports.clone();
        let want_replicas = self.replicas;
        wait_for(
            "the Redis Cluster to settle",
            Duration::from_secs(30),
            || {
                let ports = ports.clone();
                async move {
                    let mut views = Vec::new();
                    let mut linked = 0;
                    for p in ports {
                        let mut con = node_con(p).await.ok()?;
                        let repl: String = redis::cmd("INFO")
                            .arg("replication")
                            .query_async(&mut con)
                            .await
                            .ok()?;
                        if repl.contains("role:slave") && repl.contains("master_link_status:up") {
                            linked += 1;
                        }
                        let info: String = redis::cmd("CLUSTER")
                            .arg("INFO")
                            .query_async(&mut con)
                            .await
                            .ok()?;
                        if !info.contains("cluster_state:ok") {
                            return None;
                        }
                        // Every shard lists its replicas (a master learns of
                        // them by gossip, after they linked).
                        let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
                            .arg("SLOTS")
                            .query_async(&mut con)
                            .await
                            .ok()?;
                        let listed: std::collections::HashSet<String> = slots
                            .iter()
                            .flat_map(|r| r.iter().skip(3))
                            .filter_map(|n| {
                                let n: Vec<redis::Value> = redis::from_redis_value_ref(n).ok()?;
                                redis::from_redis_value_ref::<String>(n.get(2)?).ok()
                            })
                            .collect();
                        if listed.len() != want_replicas {
                            return None;
                        }
                        let nodes: String = redis::cmd("CLUSTER")
                            .arg("NODES")
                            .query_async(&mut con)
                            .await
                            .ok()?;
                        // Who is master of which slots, as this node sees it.
                        // Fields: id addr flags master ping pong epoch link slots...
                        let mut view: Vec<String> = nodes
                            .lines()
                            .map(|l| l.split(' ').collect::<Vec<_>>())
                            .filter(|f| f.len() > 8 && f[2].contains("master"))
                            .map(|f| format!("{} {}", f[1], f[8..].join(" ")))
                            .collect();
                        view.sort();
                        if view.iter().any(|v| v.contains('[')) {
                            return None; // a slot still migrating or importing
                        }
                        views.push(view);
                    }
                    (linked == want_replicas && views.windows(2).all(|w| w[0] == w[1]))
                        .then_some(())
                }
            },
        )
        .await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn node_con(port: u16) -> Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await?)
}

fn redis_cli() -> String {
    std::env::var("TURNOUT_TEST_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

fn redis_server() -> String {
    std::env::var("TURNOUT_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

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

/// GET returning (status, JSON body).
pub async fn http_get_json(url: &str) -> Result<(u16, serde_json::Value)> {
    let (status, body) = http("GET", url, None, &[]).await?;
    Ok((
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    ))
}

/// An HTTP/1.1 connection to `url`'s host, and a request to its path with
/// `method`, `host` and `headers` set.
async fn http1<B>(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(
    hyper::client::conn::http1::SendRequest<B>,
    http::request::Builder,
)>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().context("url without host")?.to_string();
    let stream = TcpStream::connect(&authority).await?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", authority);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok((sender, req))
}

/// A minimal HTTP/1.1 client call with hyper.
pub async fn http(
    method: &str,
    url: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>)> {
    use http_body_util::BodyExt;
    let (mut sender, req) = http1(method, url, headers).await?;
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(b)).boxed())?,
        None => req.body(
            http_body_util::Empty::<bytes::Bytes>::new()
                .map_err(|e| match e {})
                .boxed(),
        )?,
    };
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}

/// One Server-Sent Event, or a comment line (`comment` set, e.g. keep-alives).
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub comment: Option<String>,
}

/// An open SSE response: status, and events as they arrive.
pub struct Sse {
    pub status: u16,
    pub events: tokio::sync::mpsc::Receiver<SseEvent>,
}

impl Sse {
    /// Opens `GET url` and parses the event stream in a task.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Sse> {
        use http_body_util::BodyExt;
        let (mut sender, req) = http1("GET", url, headers).await?;
        let req = req.header("accept", "text/event-stream");
        let resp = sender
            .send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new())?)
            .await?;
        let status = resp.status().as_u16();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            let mut buf = String::new();
            let mut ev = SseEvent::default();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(nl) = buf.find('\n') {
                    let line: String = buf.drain(..=nl).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if tx.send(std::mem::take(&mut ev)).await.is_err() {
                            return;
                        }
                    } else if let Some(c) = line.strip_prefix(':') {
                        let comment = SseEvent {
                            comment: Some(c.trim().to_owned()),
                            ..Default::default()
                        };
                        if tx.send(comment).await.is_err() {
                            return;
                        }
                    } else {
                        let (field, value) = line.split_once(':').unwrap_or((line, ""));
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "id" => ev.id = Some(value.to_owned()),
                            "event" => ev.event = Some(value.to_owned()),
                            "data" => {
                                if !ev.data.is_empty() {
                                    ev.data.push('\n');
                                }
                                ev.data.push_str(value)
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
        Ok(Sse { status, events: rx })
    }

    /// The next event that is not a comment.
    pub async fn next(&mut self) -> Result<SseEvent> {
        loop {
            let ev = tokio::time::timeout(DEADLINE, self.events.recv())
                .await
                .context("no SSE event within the deadline")?
                .context("SSE stream ended")?;
            if ev.comment.is_none() {
                return Ok(ev);
            }
        }
    }

    /// Seqs (`id:` is `<seq>:<epoch>`) of message events until one with seq `last`.
    pub async fn seqs_until(&mut self, last: u64) -> Result<Vec<u64>> {
        let mut seqs = Vec::new();
        loop {
            let ev = self.next().await?;
            if ev.event.is_some() {
                bail!("unexpected event {ev:?}");
            }
            let id = ev.id.as_deref().context("message without id")?;
            let seq: u64 = id.split(':').next().unwrap_or(id).parse()?;
            seqs.push(seq);
            if seq >= last {
                return Ok(seqs);
            }
        }
    }
}

/// A WebSocket test client speaking the turnout protocol.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: ServerFrame,
    /// Frames read while waiting for another one, returned by later reads.
    backlog: std::collections::VecDeque<ServerFrame>,
}

impl Client {
    /// Connects and reads the `welcome` frame.
    pub async fn connect(url: &str) -> Result<Client> {
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .context("connect timed out")??;
        let mut c = Client {
            ws,
            welcome: ServerFrame::Pong,
            backlog: Default::default(),
        };
        let w = c.recv().await?;
        if !matches!(w, ServerFrame::Welcome { .. }) {
            bail!("expected welcome, got {w:?}");
        }
        c.welcome = w;
        Ok(c)
    }

    /// Connects to a server expected to refuse the connection after the
    /// upgrade: returns its close code and reason, with the frames before it
    /// (an `error`, never a `welcome`).
    pub async fn refused(url: &str) -> Result<(Vec<ServerFrame>, Option<(u16, String)>)> {
        let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .context("connect timed out")??;
        let mut frames = Vec::new();
        loop {
            let m = tokio::time::timeout(DEADLINE, ws.next())
                .await
                .context("no close within the deadline")?;
            match m {
                None | Some(Err(_)) => return Ok((frames, None)),
                Some(Ok(Message::Close(f))) => {
                    return Ok((frames, f.map(|f| (u16::from(f.code), f.reason.to_string()))));
                }
                Some(Ok(Message::Text(t))) => {
                    let f: ServerFrame = serde_json::from_str(t.as_str())?;
                    if matches!(f, ServerFrame::Welcome { .. }) {
                        bail!("welcomed: {f:?}");
                    }
                    frames.push(f);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The node this client landed on.
    pub fn node(&self) -> &str {
        match &self.welcome {
            ServerFrame::Welcome { node, .. } => node,
            _ => "",
        }
    }

    pub async fn send_json(&mut self, v: serde_json::Value) -> Result<()> {
        self.send_text(v.to_string()).await
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, m: Message) -> Result<()> {
        self.ws.send(m).await?;
        Ok(())
    }

    /// Next server frame (skipping WebSocket control frames).
    pub async fn recv(&mut self) -> Result<ServerFrame> {
        if let Some(f) = self.backlog.pop_front() {
            return Ok(f);
        }
        self.recv_socket().await
    }

    async fn recv_socket(&mut self) -> Result<ServerFrame> {
        loop {
            let m = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .context("no frame within the deadline")?
                .context("connection closed")??;
            match m {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str())
                        .with_context(|| format!("unparsable frame {t}"));
                }
                Message::Close(f) => bail!("closed: {f:?}"),
                _ => continue,
            }
        }
    }

    /// Reads until the connection closes; returns the close code.
    pub async fn recv_close(&mut self) -> Result<(Vec<ServerFrame>, Option<u16>)> {
        let mut frames: Vec<ServerFrame> = self.backlog.drain(..).collect();
        loop {
            let m = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .context("no close within the deadline")?;
            match m {
                None => return Ok((frames, None)),
                Some(Err(_)) => return Ok((frames, None)),
                Some(Ok(Message::Close(f))) => return Ok((frames, f.map(|f| u16::from(f.code)))),
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(t.as_str())?),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads until the connection closes; returns the close code and reason.
    pub async fn recv_close_frame(&mut self) -> Result<Option<(u16, String)>> {
        loop {
            let m = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .context("no close within the deadline")?;
            match m {
                None | Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Close(f))) => {
                    return Ok(f.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Returns the first frame matching `pred`; frames read past on the way
    /// stay queued, in order, for later reads.
    pub async fn expect(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> Result<ServerFrame> {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return Ok(self.backlog.remove(i).expect("index in range"));
        }
        let end = Instant::now() + DEADLINE;
        loop {
            if Instant::now() > end {
                bail!("no {what} within the deadline");
            }
            let f = self
                .recv_socket()
                .await
                .with_context(|| format!("waiting for {what}"))?;
            if pred(&f) {
                return Ok(f);
            }
            self.backlog.push_back(f);
        }
    }

    /// Joins and waits for `joined`; returns its seq.
    pub async fn join(&mut self, room: &str) -> Result<u64> {
        self.send_json(serde_json::json!({"type": "join", "room": room}))
            .await?;
        match self
            .expect("joined", |f| {
                matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. })
            })
            .await?
        {
            ServerFrame::Joined { seq, .. } => Ok(seq),
            other => bail!("join refused: {other:?}"),
        }
    }

    /// Publishes and waits for the ack; returns the seq.
    pub async fn publish(&mut self, room: &str, data: serde_json::Value, id: &str) -> Result<u64> {
        self.send_json(
            serde_json::json!({"type": "publish", "room": room, "data": data, "id": id}),
        )
        .await?;
        let want = id.to_owned();
        match self
            .expect("ack", |f| match f {
                ServerFrame::Ack { id, .. } => id.as_deref() == Some(want.as_str()),
                ServerFrame::Error { id, .. } => id.as_deref() == Some(want.as_str()),
                _ => false,
            })
            .await?
        {
            ServerFrame::Ack { seq, .. } => Ok(seq),
            other => bail!("publish refused: {other:?}"),
        }
    }

    /// Collects `message` frames of `room` until one with `seq == last`.
    pub async fn messages_until(&mut self, room: &str, last: u64) -> Result<Vec<u64>> {
        let mut seqs = Vec::new();
        loop {
            match self.recv().await? {
                ServerFrame::Message { room: r, seq, .. } if r == room => {
                    seqs.push(seq);
                    if seq >= last {
                        return Ok(seqs);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The status a WebSocket upgrade at `url` gets: 101 when it is taken.
pub async fn upgrade_status(url: &str) -> Result<u16> {
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .context("upgrade timed out")?
    {
        Ok(_) => Ok(101),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Ok(r.status().as_u16()),
        Err(e) => Err(e.into()),
    }
}

/// The value of a counter or gauge on a process's `/metrics`, its first
/// series (0 when it is not there yet).
pub async fn metric(p: &Proc, name: &str) -> Result<f64> {
    metric_at(&p.http(), name).await
}

/// [`metric`] of the process serving `base` (`http://host:port`).
pub async fn metric_at(base: &str, name: &str) -> Result<f64> {
    let (_, body) = http("GET", &format!("{base}/metrics"), None, &[]).await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0))
}

/// Path of a built binary of this workspace, building it if needed.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(name);
    let package = match name {
        "turnout-bench" => "turnout-loadtest",
        other => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Always ask cargo: it is a no-op when the binary is fresh.
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", name])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {name} failed");
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// A few random bits, for names that must not meet another test's.
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Sends `sig` (e.g. `-STOP`) to process `pid` with kill(1).
fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
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
        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_port();
            let mut cmd = Command::new(binary("turnout-ws-node"));
            cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--node-id", id])
                .env("TURNOUT_INSECURE", "true")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().context("starting turnout-ws-node")?;
            let mut p = NodeProcess {
                child,
                id: id.to_owned(),
                port,
            };
            let url = format!("{}/api/cluster", p.http());
            let end = Instant::now() + DEADLINE;
            let exited = loop {
                if let Some(status) = p.child.try_wait()? {
                    break status;
                }
                if let Ok((200, body)) = http("GET", &url, None, &[]).await {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if v["nodes"][0]["id"] == id {
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

/// A member that follows the protocol like a careful client: on
/// `wrong_node` it moves to `redirect`; on `reconnect`, a close or a broken
/// connection it comes back through `entry` (the gateway); after a seq jump
/// it rejoins; it always rejoins with `since` = the last seq it holds. What
/// it received is recorded, so a test can check that every message arrived
/// exactly once, in order; and so is every repair it made (a rejoin after a
/// seq jump: history papered over a gap the server let through), every
/// move, and what the server told it, so a test can say which of those its
/// fault should cause, and that none happen without one.
pub struct Follower {
    log: std::sync::Arc<std::sync::Mutex<FollowLog>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`Follower`] saw.
#[derive(Debug, Clone, Default)]
pub struct FollowLog {
    /// Seqs received, in order (a seq received twice appears twice).
    pub got: Vec<u64>,
    /// Connections it had to leave (moved, told to reconnect, closed).
    pub moves: u64,
    /// Rejoins after a jump in seq.
    pub repairs: u64,
    /// Rejoins for the rest of a replay cut at `replay_until`.
    pub pages: u64,
    /// Reconnect reasons (`reconnect` frames) and error codes, in order.
    pub told: Vec<String>,
    /// Close codes of the connections that ended (None: no close frame).
    pub closes: Vec<Option<u16>>,
}

impl Follower {
    /// Joins `room` at `first` (a node or gateway `/ws` URL with query) and
    /// follows it; `entry` is where it reconnects when told to.
    pub async fn start(first: &str, entry: &str, room: &str) -> Result<Follower> {
        let log = std::sync::Arc::new(std::sync::Mutex::new(FollowLog::default()));
        let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(follow(
            first.to_owned(),
            entry.to_owned(),
            room.to_owned(),
            log.clone(),
            joined_tx,
        ));
        tokio::time::timeout(DEADLINE, joined_rx)
            .await
            .context("follower did not join")???;
        Ok(Follower { log, task })
    }

    /// Waits until seq `last` arrived; returns everything received.
    pub async fn until(&self, last: u64) -> Result<Vec<u64>> {
        wait_for(&format!("seq {last} at the follower"), DEADLINE, || async {
            let got = self.log().got;
            got.contains(&last).then_some(got)
        })
        .await
    }

    /// What it saw so far.
    pub fn log(&self) -> FollowLog {
        self.log.lock().unwrap().clone()
    }

    /// How often it had to move or reconnect.
    pub fn moves(&self) -> u64 {
        self.log().moves
    }

    /// How often it rejoined to fill a jump in seq.
    pub fn repairs(&self) -> u64 {
        self.log().repairs
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(
    first: String,
    entry: String,
    room: String,
    log: std::sync::Arc<std::sync::Mutex<FollowLog>>,
    joined: tokio::sync::oneshot::Sender<Result<()>>,
) {
    let mut joined = Some(joined);
    let mut url = first;
    let mut last: Option<u64> = None;
    let record = |f: &dyn Fn(&mut FollowLog)| f(&mut log.lock().unwrap());
    loop {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            url = entry.clone();
            tokio::time::sleep(Duration::from_millis(100)).await; // a client's backoff
            continue;
        };
        let join = |last: Option<u64>| match last {
            Some(s) => serde_json::json!({"type": "join", "room": room, "since": s}),
            None => serde_json::json!({"type": "join", "room": room}),
        };
        if ws
            .send(Message::Text(join(last).to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        let mut next = entry.clone();
        // A cut replay ends at this seq: then ask for the rest.
        let mut page_end: Option<u64> = None;
        let mut close = None;
        while let Some(Ok(m)) = ws.next().await {
            let t = match m {
                Message::Text(t) => t,
                Message::Close(f) => {
                    close = f.map(|f| u16::from(f.code));
                    break;
                }
                _ => continue,
            };
            let Ok(f) = serde_json::from_str::<ServerFrame>(t.as_str()) else {
                continue;
            };
            match f {
                ServerFrame::Joined {
                    seq, replay_until, ..
                } => {
                    if last.is_none() {
                        last = Some(seq);
                    }
                    page_end = replay_until;
                    if let Some(j) = joined.take() {
                        let _ = j.send(Ok(()));
                    }
                }
                ServerFrame::Message { seq, .. } => {
                    let l = last.unwrap_or(0);
                    if seq <= l {
                        // Delivered twice: record it, the test will see.
                        record(&|g| g.got.push(seq));
                    } else if seq == l + 1 {
                        record(&|g| g.got.push(seq));
                        last = Some(seq);
                        if page_end == Some(seq) {
                            page_end = None;
                            record(&|g| g.pages += 1);
                            let leave = serde_json::json!({"type": "leave", "room": room});
                            let _ = ws.send(Message::Text(leave.to_string().into())).await;
                            let _ = ws.send(Message::Text(join(last).to_string().into())).await;
                        }
                    } else {
                        // A jump: ask for what is missing.
                        record(&|g| g.repairs += 1);
                        let leave = serde_json::json!({"type": "leave", "room": room});
                        let _ = ws.send(Message::Text(leave.to_string().into())).await;
                        let _ = ws.send(Message::Text(join(last).to_string().into())).await;
                    }
                }
                ServerFrame::Error { code, redirect, .. } => {
                    record(&|g| g.told.push(code.clone()));
                    if code == "wrong_node" {
                        if let Some(r) = redirect {
                            next = format!("{r}?room={room}");
                        }
                        break;
                    }
                }
                ServerFrame::Reconnect { reason } => record(&|g| g.told.push(reason.clone())),
                _ => {}
            }
        }
        record(&|g| {
            g.moves += 1;
            g.closes.push(close);
        });
        url = next;
        tokio::time::sleep(Duration::from_millis(50)).await; // a client's backoff
    }
}

/// An HS256 client token with `claims`, signed with `secret`.
pub fn hs256(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token")
}

/// Seconds since the Unix epoch (for token claims).
pub fn unix_now() -> u64 {
    turnout_proto::now_ms() / 1000
}
