//! The Lua scripts (`lua/*.lua`) and one builder per script.
//!
//! Each script opens with named locals for its KEYS and ARGV; the builder
//! here is the only place that knows their order. Every key a script
//! touches is passed in KEYS. The room scripts' keys share one hash tag
//! (`{room}`) and the membership scripts' keys the tag `{nodes}`, so each
//! script runs on one shard of a Redis Cluster. The backend inbox is the
//! one key of its own: the publish script appends to it on one server, and
//! on a cluster the caller appends after the script ([`inbox_entry`]).

use ::redis::{Script, ScriptInvocation};
use std::sync::LazyLock;
use std::time::Duration;
use turnout_proto::keys;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("lua/", $file))));
    };
}

script!(PUBLISH, "publish.lua");
script!(HISTORY, "history.lua");
script!(PRESENCE, "presence.lua");
script!(RENEW, "renew.lua");
script!(CLAIM, "claim.lua");
script!(FORGET, "forget.lua");
script!(DROP_NODE, "drop_node.lua");
script!(HEARTBEAT, "heartbeat.lua");

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Arguments of `publish.lua`.
pub struct PublishArgs<'a> {
    pub room: &'a str,
    /// The frame before and after its seq.
    pub prefix: &'a str,
    pub suffix: &'a str,
    pub history_size: u64,
    pub room_ttl: Duration,
    /// Sticky: only this (node, epoch) may publish.
    pub owner: Option<(&'a str, u64)>,
    /// Into the backend inbox: (entries kept, publishing user).
    pub inbox: Option<(u64, &'a str)>,
    /// Idempotent publish: (sender, publish id, how long the id is kept).
    pub dedupe: Option<(&'a str, &'a str, Duration)>,
    /// On a Redis Cluster: publish with `SPUBLISH`, and leave the inbox
    /// to the caller.
    pub cluster: bool,
    /// Publish the message on the room's channel.
    pub bus: bool,
}

pub fn publish(a: &PublishArgs<'_>) -> ScriptInvocation<'static> {
    let (owner, epoch) = match a.owner {
        Some((node, epoch)) => (node, epoch.to_string()),
        None => ("", String::new()),
    };
    let (inbox_size, user) = match a.inbox {
        Some(inbox) if !a.cluster => inbox,
        _ => (0, ""),
    };
    let (dedupe_key, dedupe_ms) = match a.dedupe {
        Some((sender, id, window)) if !window.is_zero() => {
            (keys::room_publish_id(a.room, sender, id), ms(window).max(1))
        }
        // The slot must be a key of the room's own (Redis Cluster).
        _ => (keys::room_seq(a.room), 0),
    };
    let mut inv = PUBLISH.prepare_invoke();
    inv.key(keys::room_seq(a.room))
        .key(keys::room_history(a.room))
        .key(keys::room_owner(a.room))
        .key(keys::room_epoch(a.room))
        .key(if a.cluster {
            keys::room_seq(a.room)
        } else {
            keys::INBOX.to_owned()
        })
        .key(dedupe_key)
        .arg(a.prefix)
        .arg(a.suffix)
        .arg(a.history_size)
        .arg(ms(a.room_ttl))
        .arg(keys::room_channel(a.room))
        .arg(owner)
        .arg(epoch)
        .arg(inbox_size)
        .arg(user)
        .arg(a.room)
        .arg(dedupe_ms)
        .arg(match (a.bus, a.cluster) {
            (false, _) => "",
            (true, true) => "SPUBLISH",
            (true, false) => "PUBLISH",
        });
    inv
}

/// The inbox append a Redis Cluster publish makes after its script:
/// the entry the script makes on one server, for message `seq`.
pub fn inbox_entry(a: &PublishArgs<'_>, seq: u64) -> Option<::redis::Cmd> {
    let (size, user) = a.inbox?;
    let mut cmd = ::redis::cmd("XADD");
    cmd.arg(keys::INBOX)
        .arg("MAXLEN")
        .arg(size)
        .arg("*")
        .arg("room")
        .arg(a.room)
        .arg("seq")
        .arg(seq)
        .arg("user")
        .arg(user)
        .arg("message")
        .arg(format!("{}{seq}{}", a.prefix, a.suffix));
    Some(cmd)
}

/// `history.lua`: up to `limit` messages after `since`.
pub fn history(room: &str, since: u64, limit: u64, max_bytes: usize) -> ScriptInvocation<'static> {
    let mut inv = HISTORY.prepare_invoke();
    inv.key(keys::room_seq(room))
        .key(keys::room_history(room))
        .key(keys::room_epoch(room))
        .arg(format!("{}-0", since.saturating_add(1)))
        .arg(limit)
        .arg(max_bytes);
    inv
}

/// A presence entry a node adds: `<holder>/<conn>` → user.
pub struct Entry<'a> {
    /// The node process (`<node>/<incarnation>`).
    pub holder: &'a str,
    pub conn: &'a str,
    pub user: &'a str,
    /// How long the holder's lease lasts without renewal.
    pub lease: Duration,
    pub room_ttl: Duration,
}

impl Entry<'_> {
    pub fn field(&self) -> String {
        format!("{}/{}", self.holder, self.conn)
    }
}

/// `presence.lua`: the room's users (at most `limit` entries read), after
/// adding `add` when given.
pub fn presence(room: &str, limit: u64, add: Option<&Entry<'_>>) -> ScriptInvocation<'static> {
    let mut inv = PRESENCE.prepare_invoke();
    inv.key(keys::room_presence(room))
        .key(keys::room_holders(room))
        .arg(limit.max(1));
    match add {
        Some(e) => inv
            .arg(e.field())
            .arg(e.user)
            .arg(e.holder)
            .arg(ms(e.lease))
            .arg(ms(e.room_ttl)),
        None => inv.arg("").arg("").arg("").arg(0).arg(0),
    };
    inv
}

/// Arguments of `renew.lua`.
pub struct RenewArgs<'a> {
    pub room: &'a str,
    pub holder: &'a str,
    pub lease: Duration,
    pub room_ttl: Duration,
    /// Sticky: the (node, epoch) this node owns the room at.
    pub owner: Option<(&'a str, u64)>,
    pub pin: Duration,
}

pub fn renew(a: &RenewArgs<'_>) -> ScriptInvocation<'static> {
    let (owner, epoch) = match a.owner {
        Some((node, epoch)) => (node, epoch.to_string()),
        None => ("", String::new()),
    };
    let mut inv = RENEW.prepare_invoke();
    inv.key(keys::room_presence(a.room))
        .key(keys::room_holders(a.room))
        .key(keys::room_owner(a.room))
        .key(keys::room_claims(a.room))
        .key(keys::room_seq(a.room))
        .arg(a.holder)
        .arg(ms(a.lease))
        .arg(ms(a.room_ttl))
        .arg(owner)
        .arg(epoch)
        .arg(ms(a.pin))
        .arg(ms(a.pin * 2));
    inv
}

/// `claim.lua`: `candidate` takes `room` unless it has an owner not in
/// `gone` (nodes the caller found dead or draining); an empty candidate
/// only reads the owner.
pub fn claim(
    room: &str,
    candidate: &str,
    pin: Duration,
    gone: &[String],
) -> ScriptInvocation<'static> {
    let mut inv = CLAIM.prepare_invoke();
    inv.key(keys::room_owner(room))
        .key(keys::room_claims(room))
        .arg(candidate)
        .arg(ms(pin))
        .arg(room)
        .arg(keys::CONTROL_PREFIX);
    for id in gone {
        inv.arg(id.as_str());
    }
    inv
}

/// `forget.lua`: drops `id` from the node set if its heartbeat is gone.
pub fn forget(id: &str) -> ScriptInvocation<'static> {
    let mut inv = FORGET.prepare_invoke();
    inv.key(keys::NODES).key(keys::node(id)).arg(id);
    inv
}

/// `drop_node.lua`: removes node `id` if its heartbeat record is still `record`.
pub fn drop_node(id: &str, record: &str) -> ScriptInvocation<'static> {
    let mut inv = DROP_NODE.prepare_invoke();
    inv.key(keys::node(id))
        .key(keys::NODES)
        .arg(record)
        .arg(id)
        .arg(keys::MEMBERSHIP_CHANNEL);
    inv
}

/// `heartbeat.lua`: node `id`'s record `record` for `ttl`, and its place in
/// the live set; `announce` tells routers at once.
pub fn heartbeat(
    id: &str,
    record: &str,
    ttl: Duration,
    announce: bool,
) -> ScriptInvocation<'static> {
    let mut inv = HEARTBEAT.prepare_invoke();
    inv.key(keys::node(id))
        .key(keys::NODES)
        .arg(record)
        .arg(ms(ttl))
        .arg(id)
        .arg(if announce {
            keys::MEMBERSHIP_CHANNEL
        } else {
            ""
        });
    inv
}

/// Every script, for loading them again after Redis lost its script cache
/// (scripts sent in a pipeline are not reloaded by the client library).
pub(crate) fn all() -> [&'static Script; 8] {
    [
        &PUBLISH, &HISTORY, &PRESENCE, &RENEW, &CLAIM, &FORGET, &DROP_NODE, &HEARTBEAT,
    ]
}
