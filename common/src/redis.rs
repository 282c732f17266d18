//! Redis connections and the scripts every process must run the same way.
//!
//! Connections speak RESP3 (pub/sub pushes share the connection machinery),
//! use TCP keepalive so a dead peer is noticed without traffic, and reconnect
//! with exponential backoff; see `docs/OPERATIONS.md` for what is logged.

use ::redis::aio::AsyncPushSender;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::io::tcp::{TcpSettings, socket2};
use ::redis::{Client, IntoConnectionInfo, ProtocolVersion, RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;
use turnout_proto::{bus, keys};

/// A client for `url` with RESP3 and TCP keepalive.
pub fn client(url: &str) -> RedisResult<Client> {
    let info = url.into_connection_info()?;
    let redis = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2));
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
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

/// A push of a pub/sub connection on room channels, decoded the same way
/// for every reader (the ws-node relay, the gateway's room streams).
pub enum RoomPush {
    /// A message on a channel: (channel name, payload).
    Message(Vec<u8>, Vec<u8>),
    /// A channel was subscribed (again, after a reconnect).
    Subscribed(Vec<u8>),
    /// The connection dropped; the client reconnects and resubscribes.
    Disconnected,
}

impl RoomPush {
    /// None for pushes readers ignore (unsubscribe confirmations, malformed).
    pub fn decode(push: ::redis::PushInfo) -> Option<RoomPush> {
        use ::redis::{PushKind, Value};
        let mut data = push.data.into_iter();
        match push.kind {
            PushKind::Message => match (data.next(), data.next()) {
                (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => {
                    Some(RoomPush::Message(channel, payload))
                }
                _ => None,
            },
            PushKind::Subscribe => match data.next() {
                Some(Value::BulkString(channel)) => Some(RoomPush::Subscribed(channel)),
                _ => None,
            },
            PushKind::Disconnection => Some(RoomPush::Disconnected),
            _ => None,
        }
    }
}

/// The room of a room channel's name.
pub fn channel_room(channel: &[u8]) -> Option<&str> {
    std::str::from_utf8(channel)
        .ok()
        .and_then(keys::room_from_channel)
}

/// Pings a pub/sub connection every 5 s so a silent failure is noticed (and
/// the connection replaced) even when no room is busy; failures count in
/// `errors` and are logged once per outage.
pub async fn watchdog(
    mut con: ConnectionManager,
    errors: prometheus::IntCounter,
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
            }
            other => {
                if healthy {
                    errors.inc();
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer within 3s".into(),
                    };
                    tracing::warn!(error = %why, "Redis pub/sub PING failed");
                }
                healthy = false;
            }
        }
    }
}

/// Assigns the next seq of a room, appends the rendered frame to the room's
/// history, publishes it on the room's channel (ws-nodes relay it in pubsub
/// mode; gateways follow it for `Subscribe` and SSE in both modes) and, for a
/// client's publish with the inbox on, appends it to the backend inbox
/// stream; all in one atomic step, so a message on the bus always has its seq
/// and is already in history and in the inbox.
///
/// Sticky strategy: with `owner` set, the script first checks that the room's
/// owner record still names this node and epoch, and returns -1 without
/// assigning a seq when it does not (a stale owner cannot deliver).
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[6] ~= '' then
  local o = redis.call('HMGET', KEYS[3], 'node', 'epoch')
  if o[1] ~= ARGV[6] or o[2] ~= ARGV[7] then return -1 end
end
local seq = redis.call('INCR', KEYS[1])
local ttl = ARGV[4]
if seq == 1 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[4], t[1] .. string.format('%06d', tonumber(t[2])), 'PX', ttl)
else
  redis.call('PEXPIRE', KEYS[4], ttl)
end
local frame = ARGV[1] .. seq .. ARGV[2]
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', keep, seq .. '-0', 'f', frame)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PUBLISH', ARGV[5], seq .. ' ' .. frame)
if ARGV[8] ~= '0' then
  redis.call('XADD', KEYS[5], 'MAXLEN', ARGV[8], '*',
    'room', ARGV[10], 'seq', seq, 'user', ARGV[9], 'message', frame)
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
local epoch = redis.call('GET', KEYS[3]) or ''
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
return {seq, oldest, seqs, frames, epoch}
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
    /// Entries kept in the backend inbox stream (0 = inbox off).
    pub inbox_size: u64,
}

/// Who may publish: anyone (pubsub), or only the owner at an epoch (sticky).
#[derive(Debug, Clone, Copy)]
pub enum Publisher<'a> {
    /// Anyone; ws-nodes relay the room's channel.
    Relay,
    /// Sticky owner: (node id, epoch).
    Owner(&'a str, u64),
}

/// Where a message comes from: clients' messages go to the backend inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// A WebSocket client, by user id.
    Client(&'a str),
    /// The server API.
    Api,
}

/// Runs the publish script; returns the message's seq, or `None` when the
/// room's owner record no longer names this owner and epoch.
pub async fn publish(
    con: &mut ConnectionManager,
    store: RoomStore,
    room: &str,
    parts: &bus::FrameParts,
    publisher: Publisher<'_>,
    origin: Origin<'_>,
) -> RedisResult<Option<u64>> {
    let (owner, epoch) = match publisher {
        Publisher::Relay => ("", String::new()),
        Publisher::Owner(node, epoch) => (node, epoch.to_string()),
    };
    let (inbox_size, user) = match origin {
        Origin::Client(user) => (store.inbox_size, user),
        Origin::Api => (0, ""),
    };
    let seq: i64 = PUBLISH
        .key(keys::room_seq(room))
        .key(keys::room_history(room))
        .key(keys::room_owner(room))
        .key(keys::room_epoch(room))
        .key(keys::INBOX)
        .arg(&parts.prefix)
        .arg(&parts.suffix)
        .arg(store.history_size)
        .arg(store.room_ttl.as_millis() as u64)
        .arg(keys::room_channel(room))
        .arg(owner)
        .arg(epoch)
        .arg(inbox_size)
        .arg(user)
        .arg(room)
        .invoke_async(con)
        .await?;
    Ok(u64::try_from(seq).ok())
}

/// Claims a room for `candidate` unless its current owner is alive (its
/// heartbeat key exists) and not draining; either way returns the owner.
/// Atomic, so routers and nodes racing on one room always agree; every new
/// claim increments the room's epoch.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local owner = redis.call('HGET', KEYS[1], 'node')
if owner then
  local alive = redis.call('EXISTS', ARGV[4] .. owner) == 1
    and redis.call('SISMEMBER', ARGV[5], owner) == 0
  if alive then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {owner, tonumber(redis.call('HGET', KEYS[1], 'epoch')), 0}
  end
end
if ARGV[1] == '' then return {'', 0, 0} end
local epoch = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'epoch', epoch)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {ARGV[1], epoch, 1}
"#,
    )
});

/// A room's epoch counter outlives any placement, so epochs only grow.
pub const EPOCH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The owner of a room after a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub node: String,
    pub epoch: u64,
    /// True when this call made the claim.
    pub claimed: bool,
}

/// Claims `room` for `candidate` (see [`CLAIM`]); an empty candidate only
/// reads a live owner. `pin` is how long an unused placement is kept.
pub async fn claim(
    con: &mut ConnectionManager,
    room: &str,
    candidate: &str,
    pin: Duration,
) -> RedisResult<Ownership> {
    let (node, epoch, claimed): (String, u64, u8) = CLAIM
        .key(keys::room_owner(room))
        .key(keys::room_claims(room))
        .arg(candidate)
        .arg(pin.as_millis() as u64)
        .arg(EPOCH_TTL.as_millis() as u64)
        .arg(keys::NODE_PREFIX)
        .arg(keys::DRAINING)
        .invoke_async(con)
        .await?;
    Ok(Ownership {
        node,
        epoch,
        claimed: claimed == 1,
    })
}

/// Users present in a room: entries (`<node>/<conn>` → user) of nodes whose
/// heartbeat has expired are removed on the way, so a crashed node's users
/// vanish within the heartbeat TTL. A room with more than ARGV[2] entries is
/// sampled (HRANDFIELD) instead of read whole, so joining a huge room stays
/// cheap. Returns the entry count first, then the users.
static PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local total = redis.call('HLEN', KEYS[1])
local limit = tonumber(ARGV[2])
local all
if total <= limit then
  all = redis.call('HGETALL', KEYS[1])
else
  all = redis.call('HRANDFIELD', KEYS[1], limit, 'WITHVALUES')
end
local users, alive = {total}, {}
for i = 1, #all, 2 do
  local field, user = all[i], all[i + 1]
  local node = string.match(field, '^(.*)/[^/]*$') or ''
  local ok = alive[node]
  if ok == nil then
    ok = redis.call('EXISTS', ARGV[1] .. node) == 1
    alive[node] = ok
  end
  if ok then users[#users + 1] = user else redis.call('HDEL', KEYS[1], field) end
end
return users
"#,
    )
});

/// Who is in a room.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// Users (sorted, each once); a sample of at most `limit` entries when
    /// the room has more.
    pub users: Vec<String>,
    /// Connections in the room across the cluster (before dead ones are dropped).
    pub connections: u64,
}

/// Users present in `room`, live nodes only, reading at most `limit` entries.
pub async fn presence(
    con: &mut ConnectionManager,
    room: &str,
    limit: u64,
) -> RedisResult<Presence> {
    let raw: Vec<::redis::Value> = PRESENCE
        .key(keys::room_presence(room))
        .arg(keys::NODE_PREFIX)
        .arg(limit.max(1))
        .invoke_async(con)
        .await?;
    presence_from(raw)
}

fn presence_from(mut raw: Vec<::redis::Value>) -> RedisResult<Presence> {
    let connections = match raw.first() {
        Some(v) => ::redis::from_redis_value_ref::<u64>(v)?,
        None => 0,
    };
    let mut users = Vec::with_capacity(raw.len().saturating_sub(1));
    for v in raw.drain(1..) {
        users.push(::redis::from_redis_value::<String>(v)?);
    }
    users.sort_unstable();
    users.dedup();
    Ok(Presence { users, connections })
}

/// Reads a node's heartbeat record.
pub async fn node_info(
    con: &mut ConnectionManager,
    id: &str,
) -> RedisResult<Option<turnout_proto::v1::NodeInfo>> {
    let raw: Option<String> = ::redis::cmd("GET")
        .arg(keys::node(id))
        .query_async(con)
        .await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
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
    /// The room's history epoch ("" before its first message).
    pub epoch: String,
}

/// Reads messages after `since` (at most `limit`).
pub async fn history(
    con: &mut ConnectionManager,
    room: &str,
    since: u64,
    limit: u64,
) -> RedisResult<HistorySlice> {
    let raw: HistoryRaw = HISTORY
        .key(keys::room_seq(room))
        .key(keys::room_history(room))
        .key(keys::room_epoch(room))
        .arg(format!("{}-0", since.saturating_add(1)))
        .arg(limit)
        .invoke_async(con)
        .await?;
    Ok(slice_from(since, raw))
}

/// What the HISTORY script returns: seq, oldest kept, seqs, frames, epoch.
type HistoryRaw = (u64, u64, Vec<u64>, Vec<String>, String);

fn slice_from(since: u64, raw: HistoryRaw) -> HistorySlice {
    let (seq, oldest, seqs, frames, epoch) = raw;
    let messages: Vec<(u64, String)> = seqs.into_iter().zip(frames).collect();
    // `since` beyond the room's seq means the room's state was lost (e.g. an
    // empty Redis): the caller cannot know what it missed.
    let covered = since == seq || (since < seq && oldest != 0 && oldest <= since + 1);
    let last = messages.last().map(|m| m.0).unwrap_or(since);
    let complete = covered && (since == seq || last >= seq);
    HistorySlice {
        seq,
        messages,
        complete,
        epoch,
    }
}

/// A member joining a room: reads the room's history after `since` (at most
/// `limit`), records the member's presence entry (`field` → `user`, kept for
/// `ttl`) and reads who is there (at most `presence_limit`), in one round
/// trip. Scripts Redis lost (a restart) are loaded again once.
#[allow(clippy::too_many_arguments)]
pub async fn join_reads(
    con: &mut ConnectionManager,
    room: &str,
    since: u64,
    limit: u64,
    field: &str,
    user: &str,
    ttl: Duration,
    presence_limit: u64,
) -> RedisResult<(HistorySlice, Presence)> {
    let presence_key = keys::room_presence(room);
    let mut history = HISTORY.prepare_invoke();
    history
        .key(keys::room_seq(room))
        .key(keys::room_history(room))
        .key(keys::room_epoch(room))
        .arg(format!("{}-0", since.saturating_add(1)))
        .arg(limit);
    let mut presence = PRESENCE.prepare_invoke();
    presence
        .key(&presence_key)
        .arg(keys::NODE_PREFIX)
        .arg(presence_limit.max(1));
    let mut retried = false;
    loop {
        let result: RedisResult<(HistoryRaw, Vec<::redis::Value>)> = ::redis::pipe()
            .invoke_script(&history)
            .hset(&presence_key, field, user)
            .ignore()
            .pexpire(&presence_key, ttl.as_millis() as i64)
            .ignore()
            .invoke_script(&presence)
            .query_async(con)
            .await;
        match result {
            Ok((raw, users)) => return Ok((slice_from(since, raw), presence_from(users)?)),
            Err(e)
                if !retried
                    && e.kind()
                        == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) =>
            {
                retried = true;
                HISTORY.load_async(con).await?;
                PRESENCE.load_async(con).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

enum ChannelCmd {
    Ensure(String, tokio::sync::oneshot::Sender<Result<(), String>>),
    Release(String),
}

/// Keeps the room-channel subscriptions of one pub/sub connection in line
/// with what its owner wants (`wanted(room)`): one task applies requests in
/// order and in batches, and decides from `wanted` at the time it handles
/// them, so a room that empties and fills again concurrently always ends up
/// subscribed.
pub struct Channels {
    cmds: tokio::sync::mpsc::UnboundedSender<ChannelCmd>,
}

impl Channels {
    /// Starts the task; it stops with `stop`. Failed commands count in `errors`.
    pub fn start(
        con: ConnectionManager,
        wanted: impl Fn(&str) -> bool + Send + Sync + 'static,
        errors: prometheus::IntCounter,
        stop: tokio_util::sync::CancellationToken,
    ) -> Channels {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(manage_channels(rx, con, wanted, errors, stop));
        Channels { cmds: tx }
    }

    /// Returns once `room`'s channel is subscribed (or no longer wanted).
    pub async fn ensure(&self, room: &str) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmds
            .send(ChannelCmd::Ensure(room.to_owned(), tx))
            .map_err(|_| "pub/sub stopped".to_owned())?;
        rx.await.map_err(|_| "pub/sub stopped".to_owned())?
    }

    /// Unsubscribes `room`'s channel if it is still unwanted when handled.
    pub fn release(&self, room: &str) {
        let _ = self.cmds.send(ChannelCmd::Release(room.to_owned()));
    }
}

async fn manage_channels(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ChannelCmd>,
    mut con: ConnectionManager,
    wanted: impl Fn(&str) -> bool,
    errors: prometheus::IntCounter,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut subscribed: std::collections::HashSet<String> = Default::default();
    loop {
        let first = tokio::select! {
            c = rx.recv() => match c { Some(c) => c, None => return },
            _ = stop.cancelled() => return,
        };
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut mentioned = Vec::new();
        let mut waiters = Vec::new();
        for cmd in batch {
            match cmd {
                ChannelCmd::Ensure(room, tx) => {
                    mentioned.push(room.clone());
                    waiters.push((room, tx));
                }
                ChannelCmd::Release(room) => mentioned.push(room),
            }
        }
        mentioned.sort_unstable();
        mentioned.dedup();
        // Decide from the owner's state now, which includes every request queued so far.
        let (mut sub, mut unsub) = (Vec::new(), Vec::new());
        for room in mentioned {
            match (wanted(&room), subscribed.contains(&room)) {
                (true, false) => sub.push(room),
                (false, true) => unsub.push(room),
                _ => {}
            }
        }
        if !unsub.is_empty() {
            let channels: Vec<String> = unsub.iter().map(|r| keys::room_channel(r)).collect();
            match con.unsubscribe(&channels).await {
                Ok(()) => unsub.iter().for_each(|r| {
                    subscribed.remove(r);
                }),
                Err(e) => {
                    errors.inc();
                    tracing::warn!(error = %e, rooms = unsub.len(), "unsubscribe failed");
                }
            }
        }
        let mut failed: Option<String> = None;
        if !sub.is_empty() {
            let channels: Vec<String> = sub.iter().map(|r| keys::room_channel(r)).collect();
            match con.subscribe(&channels).await {
                Ok(()) => subscribed.extend(sub),
                Err(e) => {
                    errors.inc();
                    failed = Some(e.to_string());
                }
            }
        }
        for (room, tx) in waiters {
            let result = if subscribed.contains(&room) || !wanted(&room) {
                Ok(())
            } else {
                Err(failed.clone().unwrap_or_else(|| "not subscribed".into()))
            };
            let _ = tx.send(result);
        }
    }
}
