//! Redis connections and the scripts every process must run the same way.
//!
//! Connections speak RESP3 (pub/sub pushes share the connection machinery),
//! use TCP keepalive so a dead peer is noticed without traffic, and reconnect
//! with exponential backoff; see `docs/OPERATIONS.md` for what is logged.

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::io::tcp::{TcpSettings, socket2};
use ::redis::aio::AsyncPushSender;
use ::redis::{Client, IntoConnectionInfo, ProtocolVersion, RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;
use turnout_proto::{bus, keys};

/// A client for `url` with RESP3 and TCP keepalive.
pub fn client(url: &str) -> RedisResult<Client> {
    let info = url.into_connection_info()?;
    let redis = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2));
    let tcp = TcpSettings::default().set_nodelay(true).set_keepalive(keepalive);
    Client::open(info.set_redis_settings(redis).set_tcp_settings(tcp))
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(usize::MAX)
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
}

/// A reconnecting, multiplexed connection for commands.
pub async fn commands(client: &Client) -> RedisResult<ConnectionManager> {
    client.get_connection_manager_with_config(manager_config()).await
}

/// A reconnecting connection for pub/sub: pushes go to `push`, and
/// subscriptions are restored by the client after a reconnect.
pub async fn pubsub(client: &Client, push: impl AsyncPushSender) -> RedisResult<ConnectionManager> {
    let config = manager_config().set_push_sender(push).set_automatic_resubscription();
    client.get_connection_manager_with_config(config).await
}

/// Assigns the next seq of a room, appends the rendered frame to the room's
/// history and, when `publish` is set, publishes it on the room's channel; all
/// in one atomic step, so a message on the bus always has its seq and is
/// already in history.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local seq = redis.call('INCR', KEYS[1])
local frame = ARGV[1] .. seq .. ARGV[2]
local keep = tonumber(ARGV[3])
local ttl = ARGV[4]
if keep > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', keep, seq .. '-0', 'f', frame)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PEXPIRE', KEYS[1], ttl)
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], seq .. ' ' .. frame)
end
return seq
"#,
    )
});

/// Reads a room's current seq, the seq of its oldest kept message, and up to
/// `limit` messages after `since`, atomically.
static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local oldest = 0
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first > 0 then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
local seqs, frames = {}, {}
if tonumber(ARGV[2]) > 0 then
  local entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
  for i, e in ipairs(entries) do
    seqs[i] = tonumber(string.match(e[1], '^(%d+)'))
    frames[i] = e[2][2]
  end
end
return {seq, oldest, seqs, frames}
"#,
    )
});

/// How a message is stored and relayed.
#[derive(Debug, Clone, Copy)]
pub struct RoomStore {
    /// Messages kept per room (0 = no history).
    pub history_size: u64,
    /// Idle rooms' seq and history expire after this long.
    pub room_ttl: Duration,
}

/// Runs the publish script; returns the message's seq.
pub async fn publish(
    con: &mut ConnectionManager,
    store: RoomStore,
    room: &str,
    parts: &bus::FrameParts,
    relay: bool,
) -> RedisResult<u64> {
    let channel = if relay { keys::room_channel(room) } else { String::new() };
    PUBLISH
        .key(keys::room_seq(room))
        .key(keys::room_history(room))
        .arg(&parts.prefix)
        .arg(&parts.suffix)
        .arg(store.history_size)
        .arg(store.room_ttl.as_millis() as u64)
        .arg(channel)
        .invoke_async(con)
        .await
}

/// A slice of a room's history.
#[derive(Debug, Clone, Default)]
pub struct HistorySlice {
    /// The room's latest seq when read.
    pub seq: u64,
    /// Messages after `since`, in order: (seq, frame JSON).
    pub messages: Vec<(u64, String)>,
    /// Whether every message after `since` up to `seq` is in `messages`
    /// (false when history no longer holds some, or `limit` cut the slice).
    pub complete: bool,
}

/// Reads messages after `since` (at most `limit`).
pub async fn history(
    con: &mut ConnectionManager,
    room: &str,
    since: u64,
    limit: u64,
) -> RedisResult<HistorySlice> {
    let (seq, oldest, seqs, frames): (u64, u64, Vec<u64>, Vec<String>) = HISTORY
        .key(keys::room_seq(room))
        .key(keys::room_history(room))
        .arg(format!("{}-0", since.saturating_add(1)))
        .arg(limit)
        .invoke_async(con)
        .await?;
    let messages: Vec<(u64, String)> = seqs.into_iter().zip(frames).collect();
    let covered = since >= seq || (oldest != 0 && oldest <= since + 1);
    let last = messages.last().map(|m| m.0).unwrap_or(since);
    let complete = covered && (since >= seq || last >= seq);
    Ok(HistorySlice { seq, messages, complete })
}
