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
pub mod push;
pub mod rooms;
pub mod scripts;

pub use channels::Channels;
pub use push::{RoomPushes, read_room_pushes};
pub use rooms::{HistorySlice, Origin, Ownership, Presence, Published, Publisher, RoomConfig};

use ::redis::aio::AsyncPushSender;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::io::tcp::{TcpSettings, socket2};
use ::redis::{Client, IntoConnectionInfo, ProtocolVersion, RedisResult};
use std::time::Duration;
use turnout_proto::keys;

/// The connection every command goes through.
pub type Con = ConnectionManager;

/// A client for `url` with RESP3 and TCP keepalive; for `rediss://`, TLS
/// checked against `ca_file` (PEM) when given, else the system's roots.
pub fn client(url: &str, ca_file: Option<&std::path::Path>) -> RedisResult<Client> {
    let info = url.into_connection_info()?;
    let redis = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2));
    // A peer that vanishes (a cut cable, a blackholed route) is noticed by
    // keepalive when the connection is idle, and by the user timeout when
    // data is in flight, which keepalive does not cover.
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(Duration::from_secs(10));
    let info = info.set_redis_settings(redis).set_tcp_settings(tcp);
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                ::redis::RedisError::from((
                    ::redis::ErrorKind::InvalidClientConfig,
                    "redis_ca_file cannot be read",
                    format!("{}: {e}", path.display()),
                ))
            })?;
            let certs = ::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            Client::build_with_tls(info, certs)
        }
        None => Client::open(info),
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(usize::MAX)
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
}

/// `url` with any password replaced, for logs and messages.
pub fn redacted(url: &str) -> String {
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

/// One attempt to reach Redis, given up after `wait`: a plain connection
/// first (a refusal or a wrong password answers at once, where the
/// reconnecting connection would retry silently), then the reconnecting one.
pub async fn try_commands(client: &Client, wait: Duration) -> RedisResult<ConnectionManager> {
    let timed_out =
        || ::redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
    match tokio::time::timeout(wait, client.get_multiplexed_async_connection()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(timed_out()),
    }
    match tokio::time::timeout(wait, commands(client)).await {
        Ok(r) => r,
        Err(_) => Err(timed_out()),
    }
}

/// Connects to Redis, however long it takes: each failure is told to
/// `readiness` (and so logged once and shown by `/readyz`) with the reply
/// Redis gave, and retried with backoff. None when `stop` comes first.
pub async fn commands_patiently(
    client: &Client,
    url: &str,
    readiness: &crate::readiness::Readiness,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<ConnectionManager> {
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

/// A reconnecting, multiplexed connection for commands.
pub async fn commands(client: &Client) -> RedisResult<ConnectionManager> {
    client
        .get_connection_manager_with_config(manager_config())
        .await
}

/// A reconnecting connection for pub/sub: pushes go to `push`, and
/// subscriptions are restored by the client after a reconnect.
pub async fn pubsub(client: &Client, push: impl AsyncPushSender) -> RedisResult<ConnectionManager> {
    let config = manager_config()
        .set_push_sender(push)
        .set_automatic_resubscription();
    client.get_connection_manager_with_config(config).await
}

/// A pub/sub connection whose pushes go into a bounded buffer of `buffer`
/// messages: a full buffer drops the push (the client library would
/// otherwise drop it silently) and counts it in `dropped`, so the reader can
/// repair the gap from history instead of stalling the connection.
pub async fn pubsub_bounded(
    client: &Client,
    buffer: usize,
    dropped: prometheus::IntCounter,
) -> RedisResult<(
    ConnectionManager,
    tokio::sync::mpsc::Receiver<::redis::PushInfo>,
)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<::redis::PushInfo>(buffer);
    let sender = move |info: ::redis::PushInfo| match tx.try_send(info) {
        Ok(()) => Ok(()),
        Err(e) => {
            dropped.inc();
            Err(e)
        }
    };
    Ok((pubsub(client, sender).await?, rx))
}

/// Pings a pub/sub connection every 5 s so a silent failure is noticed (and
/// the connection replaced) even when no room is busy; failures count in
/// `errors` and go to `readiness` as part `redis pub/sub`.
pub async fn watchdog(
    mut con: ConnectionManager,
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
    }
}
