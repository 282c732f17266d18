//! Redis: connections, the scripts every process must run the same way, and
//! room state on top of them.
//!
//! Connections speak RESP3 (pub/sub pushes share the connection machinery),
//! use TCP keepalive so a dead peer is noticed without traffic, and reconnect
//! with exponential backoff; see `docs/OPERATIONS.md` for what is logged.
//!
//! - [`scripts`]: the Lua scripts (`lua/*.lua`) and one builder per script.
//! - [`rooms`]: room operations: publish, history, join, presence, claims.
//! - [`push`]: the one reader of room-channel pushes.
//! - [`channels`]: subscriptions that follow what their owner wants.

pub mod channels;
pub mod memory;
pub mod push;
pub mod rooms;
pub mod scripts;

pub use channels::Channels;
pub use push::{Pushes, RoomPushes, read_room_pushes};
pub use rooms::{HistorySlice, Origin, Ownership, Presence, Published, Publisher, RoomConfig};

use ::redis::aio::{AsyncPushSender, ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::io::tcp::{TcpSettings, socket2};
use ::redis::{
    Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisError,
    RedisFuture, RedisResult, TlsCertificates, Value,
};
use std::time::Duration;
use turnout_proto::keys;

/// Where Redis is: one server (`redis_url`), or a Redis Cluster reached
/// through seed nodes (`redis_cluster`, `redis_url` a comma-separated list).
#[derive(Clone)]
pub enum Redis {
    One(Box<Client>),
    Cluster(Box<ClusterClient>),
}

/// The connection every command goes through: reconnecting and
/// multiplexed, to one server or to every node of a cluster (commands go
/// to the master of their keys' slot; topology changes are followed).
#[derive(Clone)]
pub enum Con {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::One(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::One(c) => c.req_packed_commands(pipeline, offset, count),
            Con::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::One(c) => c.get_db(),
            Con::Cluster(c) => c.get_db(),
        }
    }
}

impl Con {
    /// Whether this is a Redis Cluster connection: room channels are then
    /// sharded channels, and commands on several rooms go room by room.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Con::Cluster(_))
    }

    /// The command that publishes on a room's channel (`SPUBLISH` on a
    /// cluster, which keeps the message on the shard of the room's slot).
    pub fn room_publish(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Subscribes to a classic channel (a node's control channel, the
    /// membership channel); on a cluster every node hears those.
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Con::One(c) => c.subscribe(channel).await,
            Con::Cluster(c) => c.subscribe(channel).await,
        }
    }

    /// Subscribes to room channels: one `SUBSCRIBE`, or on a cluster one
    /// `SSUBSCRIBE` per hash slot, sent to the shard that owns it.
    pub async fn subscribe_rooms(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Con::One(c) => c.subscribe(channels).await,
            Con::Cluster(c) => {
                let calls = by_slot(channels).into_iter().map(|group| {
                    let mut c = c.clone();
                    async move { c.ssubscribe(group).await }
                });
                futures_util::future::try_join_all(calls).await.map(drop)
            }
        }
    }

    /// After the server unsubscribed room channels (their slot moved, or
    /// their shard failed over): makes the connection learn where the
    /// slots are now before subscribing again. The client library routes
    /// by its own slot map, which nothing has corrected yet, and the old
    /// node, a replica now, would accept the subscription and never carry
    /// the new master's messages. A read of each slot is answered `MOVED`
    /// by the old node, which makes the client refresh its map.
    pub async fn relearn_slots(&mut self, channels: &[String]) {
        let Con::Cluster(c) = self else { return };
        let calls = by_slot(channels).into_iter().map(|group| {
            let mut c = c.clone();
            async move {
                let _ = ::redis::cmd("EXISTS")
                    .arg(group[0])
                    .query_async::<i64>(&mut c)
                    .await;
            }
        });
        futures_util::future::join_all(calls).await;
    }

    /// Unsubscribes from room channels (see [`Con::subscribe_rooms`]).
    pub async fn unsubscribe_rooms(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Con::One(c) => c.unsubscribe(channels).await,
            Con::Cluster(c) => {
                let calls = by_slot(channels).into_iter().map(|group| {
                    let mut c = c.clone();
                    async move { c.sunsubscribe(group).await }
                });
                futures_util::future::try_join_all(calls).await.map(drop)
            }
        }
    }
}

/// Channels grouped by hash slot: a sharded command names one slot.
fn by_slot(channels: &[String]) -> Vec<Vec<&str>> {
    let mut groups: std::collections::HashMap<::redis::cluster_routing::Slot, Vec<&str>> =
        Default::default();
    for c in channels {
        groups
            .entry(::redis::cluster_routing::Slot::for_key(c))
            .or_default()
            .push(c);
    }
    groups.into_values().collect()
}

fn tcp_settings() -> TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2));
    // A peer that vanishes (a cut cable, a blackholed route) is noticed by
    // keepalive when the connection is idle, and by the user timeout when
    // data is in flight, which keepalive does not cover.
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(Duration::from_secs(10))
}

fn read_ca(ca_file: Option<&std::path::Path>) -> RedisResult<Option<TlsCertificates>> {
    let Some(path) = ca_file else { return Ok(None) };
    let pem = std::fs::read(path).map_err(|e| {
        RedisError::from((
            ::redis::ErrorKind::InvalidClientConfig,
            "redis_ca_file cannot be read",
            format!("{}: {e}", path.display()),
        ))
    })?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

fn resp3(info: ConnectionInfo) -> ConnectionInfo {
    let redis = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.set_redis_settings(redis)
}

/// The seed nodes of `redis_url` in cluster mode: a comma-separated list
/// of URLs; `user:password@`, `rediss://` and `?` options are those of the
/// first, and a bare `host:port` after it inherits them.
pub fn cluster_seeds(url: &str) -> RedisResult<Vec<ConnectionInfo>> {
    let parts: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let Some(first) = parts.first() else {
        return Err(RedisError::from((
            ::redis::ErrorKind::InvalidClientConfig,
            "redis_url names no seed node",
        )));
    };
    let scheme_end = first.find("://").map(|i| i + 3).unwrap_or(0);
    let prefix = match first.rfind('@') {
        Some(at) if at > scheme_end => &first[..at + 1],
        _ => &first[..scheme_end],
    };
    parts
        .iter()
        .map(|p| {
            let full = if p.contains("://") {
                p.to_string()
            } else {
                format!("{prefix}{p}")
            };
            full.as_str().into_connection_info()
        })
        .collect()
}

/// A client for `url` with RESP3 and TCP keepalive; for `rediss://`, TLS
/// checked against `ca_file` (PEM) when given, else the system's roots.
/// With `cluster`, `url` lists seed nodes of a Redis Cluster.
pub fn client(url: &str, ca_file: Option<&std::path::Path>, cluster: bool) -> RedisResult<Redis> {
    let certs = read_ca(ca_file)?;
    if cluster {
        let seeds: Vec<ConnectionInfo> = cluster_seeds(url)?.into_iter().map(resp3).collect();
        let mut b = ClusterClientBuilder::new(seeds)
            .use_protocol(ProtocolVersion::RESP3)
            .tcp_settings(tcp_settings())
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(5))
            .retries(8)
            .min_retry_wait(50)
            .max_retry_wait(2_000);
        if let Some(certs) = certs {
            b = b.certs(certs);
        }
        return Ok(Redis::Cluster(Box::new(b.build()?)));
    }
    let info = resp3(url.into_connection_info()?).set_tcp_settings(tcp_settings());
    Ok(Redis::One(Box::new(match certs {
        Some(certs) => Client::build_with_tls(info, certs)?,
        None => Client::open(info)?,
    })))
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(usize::MAX)
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
}

/// `url` with any password replaced, for logs and messages (each URL of a
/// comma-separated list).
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(redacted_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redacted_one(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{}{shown}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Redis {
    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Redis::Cluster(_))
    }

    /// One plain connection attempt: a refusal or a wrong password answers
    /// at once, where the reconnecting connection would retry silently.
    pub async fn probe(&self) -> RedisResult<()> {
        match self {
            Redis::One(c) => c.get_multiplexed_async_connection().await.map(drop),
            Redis::Cluster(c) => {
                let mut con = c.get_async_connection().await?;
                ::redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .map(drop)
            }
        }
    }

    /// A reconnecting, multiplexed connection for commands.
    pub async fn commands(&self) -> RedisResult<Con> {
        match self {
            Redis::One(c) => Ok(Con::One(
                c.get_connection_manager_with_config(manager_config())
                    .await?,
            )),
            Redis::Cluster(c) => Ok(Con::Cluster(c.get_async_connection().await?)),
        }
    }

    /// A reconnecting connection for pub/sub: pushes go to `push`, and
    /// subscriptions are restored by the client after a reconnect (on a
    /// cluster, on the node that owns each sharded channel's slot then).
    pub async fn pubsub(&self, push: impl AsyncPushSender) -> RedisResult<Con> {
        match self {
            Redis::One(c) => {
                let config = manager_config()
                    .set_push_sender(push)
                    .set_automatic_resubscription();
                Ok(Con::One(
                    c.get_connection_manager_with_config(config).await?,
                ))
            }
            Redis::Cluster(c) => {
                let config = ::redis::cluster::ClusterConfig::new().set_push_sender(push);
                Ok(Con::Cluster(
                    c.get_async_connection_with_config(config).await?,
                ))
            }
        }
    }
}

/// One attempt to reach Redis, given up after `wait`: a plain connection
/// first, then the reconnecting one.
pub async fn try_commands(client: &Redis, wait: Duration) -> RedisResult<Con> {
    let timed_out = || RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
    match tokio::time::timeout(wait, client.probe()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(timed_out()),
    }
    match tokio::time::timeout(wait, client.commands()).await {
        Ok(r) => r,
        Err(_) => Err(timed_out()),
    }
}

/// Connects to Redis, however long it takes: each failure is told to
/// `readiness` (and so logged once and shown by `/readyz`) with the reply
/// Redis gave, and retried with backoff. None when `stop` comes first.
pub async fn commands_patiently(
    client: &Redis,
    url: &str,
    readiness: &crate::readiness::Readiness,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<Con> {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match try_commands(client, Duration::from_secs(3)).await {
            Ok(con) => {
                readiness.ok("redis");
                return Some(con);
            }
            Err(e) => readiness.waiting_for("redis", format!("Redis at {}: {e}", redacted(url))),
        }
        tokio::select! {
            _ = backoff.wait() => {}
            _ = stop.cancelled() => return None,
        }
    }
}

/// A pub/sub connection whose pushes go into a bounded buffer of `buffer`
/// messages and `max_bytes` bytes: a full buffer drops the push (the client library would
/// otherwise drop it silently) and counts it in `dropped`, so the reader can
/// repair the gap from history instead of stalling the connection.
pub async fn pubsub_bounded(
    client: &Redis,
    buffer: usize,
    max_bytes: usize,
    dropped: prometheus::IntCounter,
) -> RedisResult<(Con, Pushes)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<::redis::PushInfo>(buffer);
    let bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held = bytes.clone();
    let sender = move |info: ::redis::PushInfo| {
        use std::sync::atomic::Ordering;
        let n = push::size(&info);
        if held.load(Ordering::Acquire) + n > max_bytes {
            dropped.inc();
            return Err(tokio::sync::mpsc::error::TrySendError::Full(info));
        }
        held.fetch_add(n, Ordering::AcqRel);
        tx.try_send(info).inspect_err(|_| {
            held.fetch_sub(n, Ordering::AcqRel);
            dropped.inc();
        })
    };
    Ok((client.pubsub(sender).await?, Pushes { rx, bytes }))
}

/// Pings a pub/sub connection every 5 s so a silent failure is noticed (and
/// the connection replaced) even when no room is busy; failures count in
/// `errors` and go to `readiness` as part `redis pub/sub`.
pub async fn watchdog(
    mut con: Con,
    errors: prometheus::IntCounter,
    readiness: crate::readiness::Readiness,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let ping = tokio::time::timeout(
            Duration::from_secs(3),
            ::redis::cmd("PING").query_async::<String>(&mut con),
        )
        .await;
        match ping {
            Ok(Ok(_)) => {
                if !healthy {
                    tracing::info!("Redis pub/sub connection healthy again");
                }
                healthy = true;
                readiness.ok("redis pub/sub");
            }
            other => {
                if healthy {
                    errors.inc();
                }
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer to PING within 3s".into(),
                };
                readiness.waiting_for("redis pub/sub", why);
                healthy = false;
            }
        }
    }
}

/// Reads a node's heartbeat record.
pub async fn node_info(
    con: &mut Con,
    id: &str,
) -> RedisResult<Option<turnout_proto::v1::NodeInfo>> {
    let raw: Option<String> = ::redis::cmd("GET")
        .arg(keys::node(id))
        .query_async(con)
        .await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            super::redacted("redis://u:secret@h:1/0"),
            "redis://u:***@h:1/0"
        );
        assert_eq!(super::redacted("rediss://:secret@h:1"), "rediss://:***@h:1");
        assert_eq!(super::redacted("redis://secret@h"), "redis://***@h");
        assert_eq!(super::redacted("redis://h:1"), "redis://h:1");
        assert_eq!(
            super::redacted("redis://u:a@h:1,redis://u:b@h:2"),
            "redis://u:***@h:1,redis://u:***@h:2"
        );
    }

    #[test]
    fn seed_lists_take_the_first_urls_user_and_scheme() {
        let seeds = super::cluster_seeds("rediss://u:pw@h1:7000, h2:7001,,").unwrap();
        assert_eq!(seeds.len(), 2);
        for (s, port) in seeds.iter().zip([7000, 7001]) {
            assert!(
                matches!(s.addr(), ::redis::ConnectionAddr::TcpTls { port: p, .. } if *p == port),
                "{:?}",
                s.addr()
            );
            assert_eq!(s.redis_settings().username(), Some("u"));
            assert_eq!(s.redis_settings().password(), Some("pw"));
        }
        assert!(super::cluster_seeds(" , ").is_err());
        assert!(super::cluster_seeds("redis://h1:1,notaurl://x").is_err());
    }

    #[test]
    fn a_list_without_redis_cluster_is_refused() {
        let e = crate::settings::check_redis_url("redis_url", "redis://a:1,redis://b:2", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis_cluster"), "{e}");
        assert!(crate::settings::check_redis_url("redis_url", "redis://a:1,b:2", true).is_ok());
    }
}
