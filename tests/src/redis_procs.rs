//! `redis-server` and Redis Cluster child processes on free ports.

use crate::*;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
