//! Room state in Redis: publish, history, presence, placement. Every
//! operation here touches the keys of one room only; those on many rooms
//! (`renew`, `reassert`) pipeline them on one server, and on a Redis
//! Cluster send them room by room, concurrently, each to its shard.

use super::Con;
use super::scripts::{self, Entry, PublishArgs, RenewArgs};
use ::redis::{RedisResult, Value};
use std::time::Duration;
use turnout_proto::{bus, keys};

/// How rooms are kept.
#[derive(Debug, Clone, Copy)]
pub struct RoomConfig {
    /// Messages kept per room (0 = no history).
    pub history_size: u64,
    /// Idle rooms' seq, history and presence expire after this long.
    pub room_ttl: Duration,
    /// Entries kept in the backend inbox stream (0 = inbox off).
    pub inbox_size: u64,
    /// Whether each message is also published on the room's Redis channel
    /// (false in strategy relay, where the owner streams it to the nodes).
    pub bus: bool,
    /// How long a publish id is remembered, so that a resend is accepted
    /// once (zero: not at all).
    pub dedupe_window: Duration,
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

impl Origin<'_> {
    /// Whose publish ids these are: the user's, or (empty) the server
    /// API's, whose idempotency keys belong to the room.
    pub fn sender(&self) -> &str {
        match self {
            Origin::Client(user) => user,
            Origin::Api => "",
        }
    }
}

/// A publish the store took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// The room's history epoch.
    pub epoch: String,
    /// The publish id was accepted before (within `dedupe_window`): `seq`
    /// is the first one's, and nothing was published now.
    pub duplicate: bool,
    /// This message began the epoch: its frame names the epoch
    /// ([`bus::FrameParts::render_in`]).
    pub first_of_epoch: bool,
}

/// Runs the publish script; returns what it assigned, or `None` when the
/// room's owner record no longer names this owner and epoch. With `id`, a
/// publish id this sender already used in the room within `dedupe_window`
/// gets the first one's seq back and publishes nothing.
pub async fn publish(
    con: &mut Con,
    cfg: RoomConfig,
    room: &str,
    parts: &bus::FrameParts,
    publisher: Publisher<'_>,
    origin: Origin<'_>,
    id: Option<&str>,
) -> RedisResult<Option<Published>> {
    let args = PublishArgs {
        room,
        prefix: &parts.prefix,
        suffix: &parts.suffix,
        history_size: cfg.history_size,
        room_ttl: cfg.room_ttl,
        owner: match publisher {
            Publisher::Relay => None,
            Publisher::Owner(node, epoch) => Some((node, epoch)),
        },
        inbox: match origin {
            Origin::Client(user) if cfg.inbox_size > 0 => Some((cfg.inbox_size, user)),
            _ => None,
        },
        dedupe: id.map(|id| (origin.sender(), id, cfg.dedupe_window)),
        cluster: con.is_cluster(),
        bus: cfg.bus,
    };
    let (seq, epoch, duplicate, first): (i64, String, u8, u8) =
        scripts::publish(&args).invoke_async(con).await?;
    let Ok(seq) = u64::try_from(seq) else {
        return Ok(None);
    };
    // On a cluster the inbox is a second step: an error here fails the
    // publish, whose resend (same id) comes back a duplicate and appends
    // again, so the inbox gets every message at least once.
    if args.cluster
        && let Some(cmd) = scripts::inbox_entry(&args, seq)
    {
        cmd.query_async::<()>(con).await?;
    }
    Ok(Some(Published {
        seq,
        epoch,
        duplicate: duplicate == 1,
        first_of_epoch: first == 1,
    }))
}

/// A slice of a room's history.
#[derive(Debug, Clone, Default)]
pub struct HistorySlice {
    /// The room's latest seq when read.
    pub seq: u64,
    /// Messages after `since`, in order: (seq, frame JSON).
    pub messages: Vec<(u64, String)>,
    /// Whether every message after `since` up to `seq` is in `messages`
    /// (false when history no longer holds some, or the read's bound cut
    /// the slice).
    pub complete: bool,
    /// Whether history still holds every message after `since` (whether or
    /// not this read brought them all).
    pub covered: bool,
    /// The room's history epoch ("" before its first message).
    pub epoch: String,
}

/// What the history script returns: seq, oldest kept, seqs, frames, epoch.
type HistoryRaw = (u64, u64, Vec<u64>, Vec<String>, String);

impl HistorySlice {
    /// Builds a slice after `since` from the room's seq, the seq of its
    /// oldest kept message (0: none) and the messages read.
    pub fn new(
        since: u64,
        seq: u64,
        oldest: u64,
        messages: Vec<(u64, String)>,
        epoch: String,
    ) -> Self {
        // `since` beyond the room's seq means the room's state was lost (e.g.
        // an empty Redis): the caller cannot know what it missed.
        let covered = since == seq || (since < seq && oldest != 0 && oldest <= since + 1);
        let last = messages.last().map(|m| m.0).unwrap_or(since);
        let complete = covered && (since == seq || last >= seq);
        HistorySlice {
            seq,
            messages,
            complete,
            covered,
            epoch,
        }
    }

    /// Decodes the history script's reply for a read after `since` (what
    /// Redis sends back: outside input as far as this process goes).
    pub fn decode(since: u64, reply: Value) -> RedisResult<Self> {
        let raw: HistoryRaw = ::redis::from_redis_value(reply)?;
        Ok(HistorySlice::from_raw(since, raw))
    }

    fn from_raw(since: u64, raw: HistoryRaw) -> Self {
        let (seq, oldest, seqs, frames, epoch) = raw;
        HistorySlice::new(
            since,
            seq,
            oldest,
            seqs.into_iter().zip(frames).collect(),
            epoch,
        )
    }
}

/// Bytes of messages one history read returns at most (at least one
/// message, whatever its size): a reader of a long history pages through
/// it, and no read holds more than this in memory.
pub const HISTORY_READ_BYTES: usize = 1 << 20;

/// Reads messages after `since` (at most `limit`, and at most
/// [`HISTORY_READ_BYTES`] of them).
pub async fn history(
    con: &mut Con,
    room: &str,
    since: u64,
    limit: u64,
) -> RedisResult<HistorySlice> {
    let raw: HistoryRaw = scripts::history(room, since, limit, HISTORY_READ_BYTES)
        .invoke_async(con)
        .await?;
    Ok(HistorySlice::from_raw(since, raw))
}

/// The seq publish `id` of `sender` got in `room`, while its id is
/// remembered (`dedupe_window`; the publish script keeps it).
pub async fn seen(con: &mut Con, room: &str, sender: &str, id: &str) -> RedisResult<Option<u64>> {
    ::redis::cmd("GET")
        .arg(keys::room_publish_id(room, sender, id))
        .query_async(con)
        .await
}

/// Who is in a room.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// Users (sorted, each once); a sample of at most `limit` entries when
    /// the room has more.
    pub users: Vec<String>,
    /// Connections in the room across the cluster (before dead ones are dropped).
    pub connections: u64,
    /// A join created its node's lease on the room: the node's other
    /// members there, if any, must be written again (their lease had lapsed).
    pub new_lease: bool,
}

impl Presence {
    /// Decodes the presence script's reply.
    pub fn decode(reply: Value) -> RedisResult<Presence> {
        Presence::from_raw(::redis::from_redis_value(reply)?)
    }

    fn from_raw(mut raw: Vec<Value>) -> RedisResult<Presence> {
        let number = |v: Option<&Value>| match v {
            Some(v) => ::redis::from_redis_value_ref::<u64>(v),
            None => Ok(0),
        };
        let new_lease = number(raw.first())? == 1;
        let connections = number(raw.get(1))?;
        let mut users = Vec::with_capacity(raw.len().saturating_sub(2));
        for v in raw.drain(2.min(raw.len())..) {
            users.push(::redis::from_redis_value::<String>(v)?);
        }
        users.sort_unstable();
        users.dedup();
        Ok(Presence {
            users,
            connections,
            new_lease,
        })
    }
}

/// Users present in `room` (live holders only), reading at most `limit` entries.
pub async fn presence(con: &mut Con, room: &str, limit: u64) -> RedisResult<Presence> {
    let raw: Vec<Value> = scripts::presence(room, limit, None)
        .invoke_async(con)
        .await?;
    Presence::from_raw(raw)
}

/// A member joining a room: reads the room's history after `since` (at most
/// `limit` messages and `max_bytes` bytes), adds the member's presence
/// entry and reads who is there (at most `presence_limit`), in one round
/// trip.
pub async fn join(
    con: &mut Con,
    room: &str,
    (since, limit, max_bytes): (u64, u64, usize),
    entry: &Entry<'_>,
    presence_limit: u64,
) -> RedisResult<(HistorySlice, Presence)> {
    let history = scripts::history(room, since, limit, max_bytes);
    let presence = scripts::presence(room, presence_limit, Some(entry));
    let mut pipe = ::redis::pipe();
    pipe.invoke_script(&history).invoke_script(&presence);
    let (raw, users): (HistoryRaw, Vec<Value>) = query_scripts(con, &pipe).await?;
    Ok((
        HistorySlice::from_raw(since, raw),
        Presence::from_raw(users)?,
    ))
}

/// Runs a pipeline of scripts; when Redis lost its script cache (a restart,
/// `SCRIPT FLUSH`), loads every script and runs it once more.
async fn query_scripts<T: ::redis::FromRedisValue>(
    con: &mut Con,
    pipe: &::redis::Pipeline,
) -> RedisResult<T> {
    match pipe.query_async(con).await {
        Err(e) if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) => {
            for s in scripts::all() {
                s.load_async(con).await?;
            }
            pipe.query_async(con).await
        }
        other => other,
    }
}

/// Removes members' presence entries (`fields`); `last_here` also drops
/// this node's lease on the room (it has no members left in it). Returns
/// how many entries the room still has.
pub async fn leave(
    con: &mut Con,
    room: &str,
    fields: &[String],
    holder: &str,
    last_here: bool,
) -> RedisResult<u64> {
    let key = keys::room_presence(room);
    let mut pipe = ::redis::pipe();
    if !fields.is_empty() {
        pipe.hdel(&key, fields).ignore();
    }
    if last_here {
        pipe.hdel(keys::room_holders(room), holder).ignore();
    }
    pipe.hlen(&key);
    let (left,): (u64,) = pipe.query_async(con).await?;
    Ok(left)
}

/// Writes presence entries again, room by room (after their node's lease
/// lapsed): `rooms` holds (room, [(field, user)]).
pub async fn reassert(
    con: &mut Con,
    rooms: &[(String, Vec<(String, String)>)],
    room_ttl: &(dyn Fn(&str) -> Duration + Sync),
) -> RedisResult<()> {
    let write = |pipe: &mut ::redis::Pipeline, room: &str, entries: &[(String, String)]| {
        let key = keys::room_presence(room);
        pipe.hset_multiple(&key, entries)
            .ignore()
            .pexpire(&key, room_ttl(room).as_millis() as i64)
            .ignore();
    };
    let rooms = rooms.iter().filter(|(_, e)| !e.is_empty());
    if con.is_cluster() {
        let calls = rooms.map(|(room, entries)| {
            let mut pipe = ::redis::pipe();
            write(&mut pipe, room, entries);
            let mut con = con.clone();
            async move { pipe.query_async::<()>(&mut con).await }
        });
        return futures_util::future::try_join_all(calls).await.map(drop);
    }
    let mut pipe = ::redis::pipe();
    for (room, entries) in rooms {
        write(&mut pipe, room, entries);
    }
    // Nothing to write (no members here): an empty pipeline is an error.
    if pipe.is_empty() {
        return Ok(());
    }
    pipe.query_async(con).await
}

/// What `renew` found for one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The lease had lapsed and the node's entries may be gone: write them again.
    pub lost: bool,
    /// False when the owner record no longer names this node at its epoch.
    pub owned: bool,
    /// The room's latest seq.
    pub seq: u64,
}

/// Renews this node's presence leases (and, sticky, checks ownership) for
/// many rooms, pipelined in chunks; one result per room, in order.
pub async fn renew(con: &mut Con, rooms: &[RenewArgs<'_>]) -> RedisResult<Vec<Renewed>> {
    let mut out = Vec::with_capacity(rooms.len());
    for chunk in rooms.chunks(256) {
        let invs: Vec<_> = chunk.iter().map(scripts::renew).collect();
        let replies: Vec<(u8, u8, u64)> = if con.is_cluster() {
            let calls = invs.iter().map(|inv| {
                let mut con = con.clone();
                async move { inv.invoke_async::<(u8, u8, u64)>(&mut con).await }
            });
            futures_util::future::try_join_all(calls).await?
        } else {
            let mut pipe = ::redis::pipe();
            for inv in &invs {
                pipe.invoke_script(inv);
            }
            query_scripts(con, &pipe).await?
        };
        out.extend(replies.into_iter().map(|(lost, owned, seq)| Renewed {
            lost: lost == 1,
            owned: owned == 1,
            seq,
        }));
    }
    Ok(out)
}

/// The owner of a room after a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub node: String,
    pub epoch: u64,
    /// True when this call made the claim.
    pub claimed: bool,
}

/// Claims `room` for `candidate` unless it has an owner not in `gone`; an
/// empty candidate only reads the owner. `pin` is how long an unused
/// placement is kept.
pub async fn claim(
    con: &mut Con,
    room: &str,
    candidate: &str,
    pin: Duration,
    gone: &[String],
) -> RedisResult<Ownership> {
    let (node, epoch, claimed): (String, u64, u8) = scripts::claim(room, candidate, pin, gone)
        .invoke_async(con)
        .await?;
    Ok(Ownership {
        node,
        epoch,
        claimed: claimed == 1,
    })
}

/// A node's liveness as seen in Redis right now: its heartbeat record
/// exists and it is not draining.
pub async fn alive(con: &mut Con, node: &str) -> RedisResult<bool> {
    let (exists, draining): (bool, bool) = ::redis::pipe()
        .exists(keys::node(node))
        .sismember(keys::DRAINING, node)
        .query_async(con)
        .await?;
    Ok(exists && !draining)
}

/// Places `room` on `candidate` unless it has a live owner, and returns the
/// owner. An owner the caller does not know to be alive (`seen_alive`: a
/// router's live set; none for a node) is checked in Redis before the room
/// is taken from it, so a caller's stale view never moves a room from a
/// live node; one that is dead or draining is replaced, and so is one in
/// `avoid` (nodes a gateway could not reach in time).
pub async fn place(
    con: &mut Con,
    room: &str,
    candidate: &str,
    pin: Duration,
    seen_alive: &[String],
    avoid: &[String],
) -> RedisResult<Ownership> {
    let owner = claim(con, room, candidate, pin, avoid).await?;
    if owner.node == candidate || owner.claimed {
        return Ok(owner);
    }
    if seen_alive.contains(&owner.node) || alive(con, &owner.node).await? {
        return Ok(owner);
    }
    let gone = [owner.node];
    claim(con, room, candidate, pin, &gone).await
}

#[cfg(test)]
mod tests {
    use super::HistorySlice;

    fn m(seqs: &[u64]) -> Vec<(u64, String)> {
        seqs.iter().map(|s| (*s, String::new())).collect()
    }

    #[test]
    fn completeness() {
        // Everything after 3 up to 5 is there.
        assert!(HistorySlice::new(3, 5, 1, m(&[4, 5]), "e".into()).complete);
        // Nothing missed.
        assert!(HistorySlice::new(5, 5, 1, m(&[]), "e".into()).complete);
        // Trimmed: the oldest kept is 5, so 4 is gone.
        let trimmed = HistorySlice::new(3, 6, 5, m(&[5, 6]), "e".into());
        assert!(!trimmed.complete && !trimmed.covered);
        // The limit cut the slice: history still holds the rest.
        let cut = HistorySlice::new(0, 9, 1, m(&[1, 2]), "e".into());
        assert!(!cut.complete && cut.covered);
        // The room's state was lost: the client is ahead of the room.
        assert!(!HistorySlice::new(7, 2, 1, m(&[]), "e".into()).complete);
    }
}
