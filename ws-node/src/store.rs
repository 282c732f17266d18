//! Where a node keeps room state: seq, history and presence. Redis for the
//! strategies that share rooms between nodes (sticky, pubsub); the node's
//! own memory for `local`, which shares nothing.

mod memory;

pub(crate) use memory::MemoryStore;

use redis::RedisResult;
use std::sync::Arc;
use std::time::Duration;
use turnout_common::namespaces::{Namespaces, RoomOptions};
use turnout_common::redis::scripts::{Entry, RenewArgs};
use turnout_common::redis::{
    Con, HistorySlice, Origin, Presence, Published, Publisher, RoomConfig, rooms,
};
use turnout_proto::bus::FrameParts;

pub(crate) enum Store {
    Redis(RedisStore),
    Memory(MemoryStore),
}

/// Room state in Redis, as one node process writes it.
pub(crate) struct RedisStore {
    pub(crate) con: Con,
    pub(crate) cfg: RoomConfig,
    /// This process in presence entries: `<node>/<incarnation>`.
    pub(crate) holder: String,
    /// How long this node's presence entries outlive its last renewal.
    pub(crate) lease: Duration,
    /// Each room's options, by its namespace.
    pub(crate) namespaces: Arc<Namespaces>,
}

impl RedisStore {
    fn entry<'a>(&'a self, room: &str, conn: &'a str, user: &'a str) -> Entry<'a> {
        Entry {
            holder: &self.holder,
            conn,
            user,
            lease: self.lease,
            room_ttl: self.namespaces.of(room).room_ttl,
        }
    }

    /// Renews this node's leases on `rooms` (and checks ownership, sticky).
    pub(crate) async fn renew(
        &self,
        rooms: &[(String, Option<(&str, u64)>)],
        pin: Duration,
    ) -> RedisResult<Vec<rooms::Renewed>> {
        let args: Vec<RenewArgs<'_>> = rooms
            .iter()
            .map(|(room, owner)| RenewArgs {
                room,
                holder: &self.holder,
                lease: self.lease,
                room_ttl: self.namespaces.of(room).room_ttl,
                owner: *owner,
                pin,
            })
            .collect();
        rooms::renew(&mut self.con.clone(), &args).await
    }

    /// Writes presence entries again: (room, [(conn, user)]) per room.
    pub(crate) async fn reassert(
        &self,
        members: &[(String, Vec<(String, String)>)],
    ) -> RedisResult<()> {
        let entries: Vec<(String, Vec<(String, String)>)> = members
            .iter()
            .map(|(room, members)| {
                let fields = members
                    .iter()
                    .map(|(conn, user)| (self.field(conn), user.clone()))
                    .collect();
                (room.clone(), fields)
            })
            .collect();
        let ttl = |room: &str| self.namespaces.of(room).room_ttl;
        rooms::reassert(&mut self.con.clone(), &entries, &ttl).await
    }

    /// The presence field of one of this node's connections.
    pub(crate) fn field(&self, conn: &str) -> String {
        self.entry("", conn, "").field()
    }
}

impl Store {
    /// The node's room settings, with `room`'s own history size and time
    /// to live (its namespace's).
    pub(crate) fn config(&self, room: &str) -> RoomConfig {
        let (cfg, namespaces) = match self {
            Store::Redis(r) => (r.cfg, &r.namespaces),
            Store::Memory(m) => (m.cfg, &m.namespaces),
        };
        let o = namespaces.of(room);
        RoomConfig {
            history_size: o.history_size,
            room_ttl: o.room_ttl,
            // Personal rooms go over their channel in every strategy that
            // uses Redis (relay's owners stream the other rooms).
            bus: cfg.bus || turnout_proto::names::is_personal(room),
            ..cfg
        }
    }

    /// The options `room` runs with (its namespace's).
    pub(crate) fn options(&self, room: &str) -> &RoomOptions {
        match self {
            Store::Redis(r) => r.namespaces.of(room),
            Store::Memory(m) => m.namespaces.of(room),
        }
    }

    /// The node's room settings, as the global settings give them.
    pub(crate) fn global_config(&self) -> RoomConfig {
        match self {
            Store::Redis(r) => r.cfg,
            Store::Memory(m) => m.cfg,
        }
    }

    pub(crate) fn redis(&self) -> Option<&RedisStore> {
        match self {
            Store::Redis(r) => Some(r),
            Store::Memory(_) => None,
        }
    }

    /// Assigns the message its seq and keeps it, once per publish `id`
    /// within `dedupe_window`; None when fenced (sticky).
    pub(crate) async fn publish(
        &self,
        room: &str,
        parts: &FrameParts,
        publisher: Publisher<'_>,
        origin: Origin<'_>,
        id: Option<&str>,
    ) -> RedisResult<Option<Published>> {
        match self {
            Store::Redis(r) => {
                use tracing::Instrument;
                let mut con = r.con.clone();
                let cfg = self.config(room);
                let span = tracing::info_span!(
                    target: turnout_common::telemetry::TARGET,
                    "redis publish.lua",
                    db.system.name = "redis",
                    db.operation.name = "publish",
                    room,
                );
                rooms::publish(&mut con, cfg, room, parts, publisher, origin, id)
                    .instrument(span)
                    .await
            }
            Store::Memory(m) => Ok(Some(m.publish(
                room,
                parts,
                id.map(|id| (origin.sender(), id)),
            ))),
        }
    }

    /// The seq publish `id` of `sender` got in `room`, when it was taken
    /// within `dedupe_window`.
    pub(crate) async fn seen(
        &self,
        room: &str,
        sender: &str,
        id: &str,
    ) -> RedisResult<Option<u64>> {
        match self {
            Store::Redis(r) => {
                if r.cfg.dedupe_window.is_zero() {
                    return Ok(None);
                }
                rooms::seen(&mut r.con.clone(), room, sender, id).await
            }
            Store::Memory(m) => Ok(m.seen(room, sender, id)),
        }
    }

    pub(crate) async fn history(
        &self,
        room: &str,
        since: u64,
        limit: u64,
    ) -> RedisResult<HistorySlice> {
        match self {
            Store::Redis(r) => rooms::history(&mut r.con.clone(), room, since, limit).await,
            Store::Memory(m) => Ok(m.history(room, since, limit, rooms::HISTORY_READ_BYTES)),
        }
    }

    /// Reads history after `since` (at most `limit` messages and
    /// `max_bytes` bytes), adds the member's presence entry and reads who
    /// is there, in one step.
    pub(crate) async fn join(
        &self,
        room: &str,
        (since, limit, max_bytes): (u64, u64, usize),
        conn: &str,
        user: &str,
        presence_limit: u64,
    ) -> RedisResult<(HistorySlice, Presence)> {
        let read = (since, limit, max_bytes);
        match self {
            Store::Redis(r) => {
                let entry = r.entry(room, conn, user);
                rooms::join(&mut r.con.clone(), room, read, &entry, presence_limit).await
            }
            Store::Memory(m) => Ok(m.join(room, read, conn, user, presence_limit)),
        }
    }

    pub(crate) async fn presence(&self, room: &str, limit: u64) -> RedisResult<Presence> {
        match self {
            Store::Redis(r) => rooms::presence(&mut r.con.clone(), room, limit).await,
            Store::Memory(m) => Ok(m.presence(room, limit)),
        }
    }

    /// Removes members' presence entries (by connection label);
    /// `last_here`: the node has no members left in the room. Returns the
    /// room's remaining entries.
    pub(crate) async fn leave(
        &self,
        room: &str,
        conns: &[&str],
        last_here: bool,
    ) -> RedisResult<u64> {
        match self {
            Store::Redis(r) => {
                let fields: Vec<String> = conns.iter().map(|c| r.field(c)).collect();
                rooms::leave(&mut r.con.clone(), room, &fields, &r.holder, last_here).await
            }
            Store::Memory(m) => Ok(conns.iter().map(|c| m.leave(room, c)).last().unwrap_or(0)),
        }
    }
}
