//! The campaign's cluster: `redis-server`, a router, a gateway and the
//! ws-nodes as processes of the built binaries, each node behind two
//! proxies (one to Redis, one that the gateway and redirected clients reach
//! it through) so that either link can be cut; and the faults, as actions on
//! them.

use super::schedule::{Fault, Kind};
use crate::proxy::Proxy;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use turnout_proto::Strategy;

/// Settings every node of the campaign runs with: short leases so that
/// faults show (and heal) within seconds.
pub(crate) struct NodeTuning {
    pub(crate) heartbeat_interval_ms: u64,
    pub(crate) heartbeat_ttl_ms: u64,
    pub(crate) presence_ttl_ms: u64,
    pub(crate) drain_grace_ms: u64,
    pub(crate) max_connections: u64,
    pub(crate) send_queue: u64,
}

impl Default for NodeTuning {
    fn default() -> Self {
        NodeTuning {
            heartbeat_interval_ms: 250,
            heartbeat_ttl_ms: 1500,
            presence_ttl_ms: 3000,
            drain_grace_ms: 3000,
            max_connections: 80,
            send_queue: 256,
        }
    }
}

/// A free TCP port on loopback (bound, then released: a process started on
/// it may lose a race, and is then started again on another).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Sends `sig` (`-STOP`, `-CONT`, `-TERM`) to `pid` with kill(1).
pub(crate) async fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .await?
        .success();
    if !ok {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

/// One process of the cluster, started again on the same port after a
/// fault took it down.
pub(crate) struct Proc {
    pub(crate) name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    pub(crate) port: u16,
    child: Option<Child>,
    /// A URL that answers 200 once the process serves.
    ready: String,
}

impl Proc {
    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the process and waits until it serves.
    pub(crate) async fn start(&mut self) -> Result<()> {
        self.spawn().await?;
        self.wait_ready(Duration::from_secs(20)).await
    }

    async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "{} exited at start ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            if crate::http::get_status(&self.ready).await == Some(200) {
                return Ok(());
            }
            if tokio::time::Instant::now() > end {
                bail!("{} did not serve within {within:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL, and wait until it is gone.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGTERM (a drain, a clean stop); waits for the exit within `within`
    /// (then SIGKILL). Returns its exit status.
    pub(crate) async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        if let Some(pid) = c.id() {
            let _ = signal(pid, "-TERM").await;
        }
        match tokio::time::timeout(within, c.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = c.kill().await;
                None
            }
        }
    }

    pub(crate) fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// A ws-node and its two proxies.
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) proc: Proc,
    /// Between the node and Redis.
    pub(crate) to_redis: Proxy,
    /// Between the node and everyone who reaches it (its advertised URL).
    pub(crate) edge: Proxy,
}

/// The cluster of one run.
pub(crate) struct Cluster {
    pub(crate) redis: Proc,
    pub(crate) router: Proc,
    pub(crate) gateway: Proc,
    pub(crate) nodes: Vec<Node>,
    pub(crate) tuning: NodeTuning,
}

/// Where the binaries are: next to this one, or `bin_dir`.
pub(crate) fn binary(bin_dir: Option<&Path>, name: &str) -> Result<PathBuf> {
    let dir = match bin_dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench's folder")?
            .to_path_buf(),
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found (build the workspace: cargo build --release; or pass --bin-dir)",
            path.display()
        );
    }
    Ok(path)
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

impl Cluster {
    /// Starts Redis (append-only, fsync always: a restart keeps every
    /// acknowledged write), a router, `nodes` ws-nodes and a gateway.
    pub(crate) async fn start(
        strategy: Strategy,
        nodes: usize,
        tuning: NodeTuning,
        bin_dir: Option<&Path>,
        dir: &Path,
    ) -> Result<Cluster> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let data = dir.join("redis");
        std::fs::create_dir_all(&data)?;
        let redis_port = free_port()?;
        let mut redis = Proc {
            name: "redis".into(),
            program: PathBuf::from("redis-server"),
            args: vec![
                "--port".into(),
                redis_port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                "always".into(),
                "--dir".into(),
                data.display().to_string(),
            ],
            env: Vec::new(),
            log: logs.join("redis.log"),
            port: redis_port,
            child: None,
            ready: String::new(),
        };
        redis.spawn().await?;
        wait_redis(redis_port).await?;
        let redis_url = format!("redis://127.0.0.1:{redis_port}");
        let common = |port: u16| {
            vec![
                ("TURNOUT_STRATEGY", strategy.as_str().to_owned()),
                ("TURNOUT_INSECURE", "true".to_owned()),
                ("TURNOUT_LISTEN", format!("127.0.0.1:{port}")),
                ("RUST_LOG", "info".to_owned()),
            ]
        };
        let router_port = free_port()?;
        let mut renv = common(router_port);
        renv.push(("TURNOUT_REDIS_URL", redis_url.clone()));
        let mut router = Proc {
            name: "router".into(),
            program: binary(bin_dir, "turnout-router")?,
            args: Vec::new(),
            env: env(&renv),
            log: logs.join("router.log"),
            port: router_port,
            child: None,
            ready: format!("http://127.0.0.1:{router_port}/readyz"),
        };
        router.start().await?;
        let mut cluster_nodes = Vec::new();
        for i in 1..=nodes {
            let id = format!("node-{i}");
            let port = free_port()?;
            let to_redis = Proxy::start("127.0.0.1:0", &format!("127.0.0.1:{redis_port}")).await?;
            let edge = Proxy::start("127.0.0.1:0", &format!("127.0.0.1:{port}")).await?;
            let mut nenv = common(port);
            nenv.extend([
                ("TURNOUT_NODE_ID", id.clone()),
                ("TURNOUT_REDIS_URL", format!("redis://{}", to_redis.addr)),
                ("TURNOUT_ADVERTISE_URL", format!("ws://{}/ws", edge.addr)),
                (
                    "TURNOUT_HEARTBEAT_INTERVAL",
                    format!("{}ms", tuning.heartbeat_interval_ms),
                ),
                (
                    "TURNOUT_HEARTBEAT_TTL",
                    format!("{}ms", tuning.heartbeat_ttl_ms),
                ),
                (
                    "TURNOUT_PRESENCE_TTL",
                    format!("{}ms", tuning.presence_ttl_ms),
                ),
                (
                    "TURNOUT_DRAIN_GRACE",
                    format!("{}ms", tuning.drain_grace_ms),
                ),
                (
                    "TURNOUT_MAX_CONNECTIONS",
                    tuning.max_connections.to_string(),
                ),
                ("TURNOUT_SEND_QUEUE", tuning.send_queue.to_string()),
                // Every client of the campaign comes from 127.0.0.1.
                ("TURNOUT_MAX_CONNECTIONS_PER_IP", "100000".to_owned()),
                ("TURNOUT_MAX_CONNECT_RATE_PER_IP", "100000".to_owned()),
                ("TURNOUT_MAX_CONNECT_BURST_PER_IP", "100000".to_owned()),
                // The slow-reader fault bursts into a room.
                ("TURNOUT_MAX_PUBLISH_RATE", "1000".to_owned()),
                ("TURNOUT_MAX_PUBLISH_BURST", "1000".to_owned()),
            ]);
            let mut proc = Proc {
                name: id.clone(),
                program: binary(bin_dir, "turnout-ws-node")?,
                args: Vec::new(),
                env: env(&nenv),
                log: logs.join(format!("{id}.log")),
                port,
                child: None,
                ready: format!("http://127.0.0.1:{port}/readyz"),
            };
            proc.start().await?;
            cluster_nodes.push(Node {
                id,
                proc,
                to_redis,
                edge,
            });
        }
        let gateway_port = free_port()?;
        let mut genv = common(gateway_port);
        genv.extend([
            ("TURNOUT_REDIS_URL", redis_url.clone()),
            (
                "TURNOUT_ROUTER_URL",
                format!("http://127.0.0.1:{router_port}"),
            ),
            ("TURNOUT_MAX_CONNECTIONS_PER_IP", "100000".to_owned()),
            ("TURNOUT_MAX_CONNECT_RATE_PER_IP", "100000".to_owned()),
            ("TURNOUT_MAX_CONNECT_BURST_PER_IP", "100000".to_owned()),
        ]);
        let mut gateway = Proc {
            name: "gateway".into(),
            program: binary(bin_dir, "turnout-gateway")?,
            args: Vec::new(),
            env: env(&genv),
            log: logs.join("gateway.log"),
            port: gateway_port,
            child: None,
            ready: format!("http://127.0.0.1:{gateway_port}/readyz"),
        };
        gateway.start().await?;
        let cluster = Cluster {
            redis,
            router,
            gateway,
            nodes: cluster_nodes,
            tuning,
        };
        cluster.wait_nodes(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    pub(crate) fn gateway_http(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway.port)
    }

    pub(crate) fn gateway_ws(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.gateway.port)
    }

    /// Waits until the gateway serves and sees every node.
    pub(crate) async fn wait_nodes(&self, within: Duration) -> Result<()> {
        let end = tokio::time::Instant::now() + within;
        let url = format!("{}/api/cluster", self.gateway_http());
        let ready = format!("{}/readyz", self.gateway_http());
        loop {
            let live = crate::http::get_json(&url)
                .await
                .ok()
                .and_then(|v| v["nodes"].as_array().map(|n| n.len()));
            if live == Some(self.nodes.len()) && crate::http::get_status(&ready).await == Some(200)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > end {
                bail!(
                    "the gateway sees {live:?} of {} nodes after {within:?}",
                    self.nodes.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After the faults: every process runs and serves again, and the
    /// gateway sees every node.
    pub(crate) async fn heal(&mut self) -> Result<()> {
        for n in &mut self.nodes {
            n.to_redis.lose_replies(false);
            n.to_redis.heal();
            n.edge.heal();
        }
        let _ = redis_cmd(self.redis.port, &["CONFIG", "SET", "maxmemory", "0"]).await;
        let mut procs = vec![&mut self.router, &mut self.gateway];
        procs.extend(self.nodes.iter_mut().map(|n| &mut n.proc));
        // All run again before any is waited for: a gateway is ready only
        // once it sees a node.
        for p in &mut procs {
            if let Some(pid) = p.pid() {
                let _ = signal(pid, "-CONT").await;
            }
            if !p.running() {
                p.spawn().await?;
            }
        }
        for p in procs {
            p.wait_ready(Duration::from_secs(30)).await?;
        }
        self.wait_nodes(Duration::from_secs(30)).await
    }

    fn node(&mut self, id: &str) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    /// Every process's pid, by name (for memory samples).
    pub(crate) fn pids(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for p in [&self.router, &self.gateway]
            .into_iter()
            .chain(self.nodes.iter().map(|n| &n.proc))
        {
            if let Some(pid) = p.pid() {
                out.push((p.name.clone(), pid));
            }
        }
        out
    }

    /// Stops every process cleanly (SIGTERM); returns those that did not
    /// exit with status 0 within their grace time.
    pub(crate) async fn stop(&mut self) -> Vec<String> {
        let mut bad = Vec::new();
        let grace = Duration::from_millis(self.tuning.drain_grace_ms) + Duration::from_secs(5);
        let mut stops = Vec::new();
        stops.push(&mut self.gateway);
        for n in &mut self.nodes {
            stops.push(&mut n.proc);
        }
        stops.push(&mut self.router);
        for p in stops {
            if !p.running() {
                continue;
            }
            match p.terminate(grace).await {
                Some(s) if s.success() => {}
                other => bad.push(format!("{}: {other:?}", p.name)),
            }
        }
        self.redis.kill().await;
        bad
    }
}

/// Waits until Redis answers PING on `port`.
pub(crate) async fn wait_redis(port: u16) -> Result<()> {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if redis_cmd(port, &["PING"]).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > end {
            bail!("redis-server on {port} does not answer");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One command on a fresh connection, with a deadline.
pub(crate) async fn redis_cmd(port: u16, args: &[&str]) -> Result<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let run = async {
        let mut con = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async::<redis::Value>(&mut con).await
    };
    Ok(tokio::time::timeout(Duration::from_secs(5), run).await??)
}

/// Publish ids older than this (by what is left of their `dedupe_window`)
/// are what an LRU policy would evict: no client resends that late.
const IDS_OLDER_THAN: Duration = Duration::from_secs(15);
/// The nodes' `dedupe_window` (the default).
const DEDUPE_WINDOW: Duration = Duration::from_secs(120);

impl Cluster {
    /// Starts a fault. Quick: nothing here waits for a process to serve,
    /// so that the faults after it start (and end) on time.
    pub(crate) async fn begin(&mut self, f: &Fault) -> Result<()> {
        match f.kind {
            Kind::RedisLostReplies => self.node(&f.target)?.to_redis.lose_replies(true),
            Kind::RedisStallShort | Kind::RedisStallLong => {
                signal(self.redis.pid().context("redis not running")?, "-STOP").await?
            }
            Kind::RedisRestart => {
                self.redis.kill().await;
                self.redis.spawn().await?;
                wait_redis(self.redis.port).await?;
            }
            Kind::EvictHistory | Kind::EvictSeq | Kind::EvictEpoch => {
                let key = match f.kind {
                    Kind::EvictHistory => "hist",
                    Kind::EvictSeq => "seq",
                    _ => "epoch",
                };
                let key = format!("turnout:{{{}}}:{key}", f.target);
                redis_cmd(self.redis.port, &["DEL", &key]).await?;
            }
            Kind::EvictIds => self.evict_old_ids(&f.target).await?,
            Kind::RedisOom => {
                // Well below what it uses: every write that may grow memory
                // is refused.
                let full = self.redis_used_memory().await? / 2;
                redis_cmd(
                    self.redis.port,
                    &["CONFIG", "SET", "maxmemory", &full.to_string()],
                )
                .await?;
            }
            Kind::NodeKill => self.node(&f.target)?.proc.kill().await,
            Kind::NodeStop => {
                let pid = self
                    .node(&f.target)?
                    .proc
                    .pid()
                    .context("node not running")?;
                signal(pid, "-STOP").await?
            }
            Kind::NodeDrain => {
                let pid = self
                    .node(&f.target)?
                    .proc
                    .pid()
                    .context("node not running")?;
                signal(pid, "-TERM").await?
            }
            Kind::GatewayRestart => self.gateway.kill().await,
            Kind::RouterRestart => self.router.kill().await,
            Kind::CutRedis => self.node(&f.target)?.to_redis.cut(),
            Kind::CutGateway => self.node(&f.target)?.edge.cut(),
            // Load faults: the campaign's clients make them.
            Kind::SlowReaders | Kind::Crowd => {}
        }
        Ok(())
    }

    /// Ends a fault: heals what it broke, starts again what it stopped.
    pub(crate) async fn end(&mut self, f: &Fault) -> Result<()> {
        match f.kind {
            Kind::RedisLostReplies => self.node(&f.target)?.to_redis.lose_replies(false),
            Kind::RedisStallShort | Kind::RedisStallLong => {
                signal(self.redis.pid().context("redis not running")?, "-CONT").await?
            }
            Kind::RedisOom => {
                redis_cmd(self.redis.port, &["CONFIG", "SET", "maxmemory", "0"]).await?;
            }
            Kind::NodeKill => self.node(&f.target)?.proc.spawn().await?,
            Kind::NodeStop => {
                let pid = self
                    .node(&f.target)?
                    .proc
                    .pid()
                    .context("node not running")?;
                signal(pid, "-CONT").await?
            }
            Kind::NodeDrain => {
                let grace =
                    Duration::from_millis(self.tuning.drain_grace_ms) + Duration::from_secs(5);
                let node = self.node(&f.target)?;
                // A drain that outlasts the fault is waited for: it must end
                // within its grace time.
                let was_running = node.proc.running();
                let status = node.proc.terminate(grace).await;
                // Back either way, so that one bad drain does not leave the
                // rest of the run a node short.
                let respawned = node.proc.spawn().await;
                match status {
                    Some(s) if s.success() => {}
                    Some(s) => bail!("{} did not drain cleanly: it exited with {s}", node.id),
                    None if !was_running => {
                        bail!("{} was not running when its drain ended", node.id)
                    }
                    None => bail!(
                        "{} did not drain cleanly: it still ran {grace:?} after SIGTERM (killed)",
                        node.id
                    ),
                }
                respawned?;
            }
            Kind::GatewayRestart => self.gateway.spawn().await?,
            Kind::RouterRestart => self.router.spawn().await?,
            Kind::CutRedis | Kind::CutGateway => {
                let node = self.node(&f.target)?;
                let proxy = if f.kind == Kind::CutRedis {
                    &node.to_redis
                } else {
                    &node.edge
                };
                // Half the cuts end with the connections gone (what a long
                // partition ends in), half just heal.
                if f.duration_s.fract() >= 0.5 {
                    proxy.sever();
                }
                proxy.heal();
            }
            Kind::RedisRestart
            | Kind::EvictHistory
            | Kind::EvictSeq
            | Kind::EvictEpoch
            | Kind::EvictIds
            | Kind::SlowReaders
            | Kind::Crowd => {}
        }
        Ok(())
    }

    async fn redis_used_memory(&self) -> Result<u64> {
        let text = match redis_cmd(self.redis.port, &["INFO", "memory"]).await? {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            other => format!("{other:?}"),
        };
        text.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("used_memory in INFO memory")
    }

    async fn evict_old_ids(&self, room: &str) -> Result<()> {
        let pattern = format!("turnout:{{{room}}}:id:*");
        let keys = match redis_cmd(self.redis.port, &["KEYS", &pattern]).await? {
            redis::Value::Array(v) => v,
            _ => Vec::new(),
        };
        let oldest_left = (DEDUPE_WINDOW - IDS_OLDER_THAN).as_millis() as i64;
        for k in keys {
            let redis::Value::BulkString(k) = k else {
                continue;
            };
            let k = String::from_utf8_lossy(&k).into_owned();
            let left = match redis_cmd(self.redis.port, &["PTTL", &k]).await? {
                redis::Value::Int(n) => n,
                _ => continue,
            };
            if left >= 0 && left < oldest_left {
                redis_cmd(self.redis.port, &["DEL", &k]).await?;
            }
        }
        Ok(())
    }
}
