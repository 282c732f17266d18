//! Everything that differs between the strategies, in one type chosen once
//! at start, one file per strategy:
//!
//! | | admission of a room | publish | reaching other nodes | fan-out |
//! | --- | --- | --- | --- | --- |
//! | [`local`] | always | in memory, delivered here | never | in place |
//! | [`sticky`] | claim ownership (epoch) | fenced by owner and epoch, delivered here | not needed: every member is here | in place |
//! | [`pubsub`] | always | anyone, delivered when it comes back | the room's channel | queued |
//!
//! The hub (rooms, ordering, join hand-over) and the sessions call only
//! the methods here; none of them matches on the strategy.

pub(crate) mod local;
pub(crate) mod pubsub;
pub(crate) mod sticky;

use crate::hub::{Hub, RoomError};
use crate::metrics::NodeMetrics;
use crate::settings::Settings;
use crate::store::{MemoryStore, RedisStore, Store};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use turnout_common::redis::{Con, Origin, Published, RoomConfig};
use turnout_proto::bus::FrameParts;
use turnout_proto::names::RoomName;

/// Rooms up to this many members are fanned out by writing to each idle
/// member's socket in place; larger rooms queue every frame and let the
/// members' sessions write in parallel (docs/DESIGN-NOTES.md).
const DIRECT_FAN_OUT: usize = 64;

pub(crate) enum Strategy {
    Local(local::Local),
    Sticky(sticky::Sticky),
    Pubsub(pubsub::Pubsub),
}

/// Builds the node's hub for `settings.strategy`: the strategy, its store
/// and (sticky, pubsub) the node's pub/sub connection. Also returns the
/// connection for membership commands, when Redis is reachable.
pub(crate) async fn start(
    settings: &Settings,
    node_id: &str,
    metrics: &NodeMetrics,
    client: &turnout_common::redis::Redis,
    cfg: RoomConfig,
    readiness: &turnout_common::readiness::Readiness,
    stop: &CancellationToken,
) -> Result<Option<(Arc<Hub>, Option<Con>)>, redis::RedisError> {
    let hub = |strategy, store| {
        Hub::new(
            node_id.to_owned(),
            metrics.clone(),
            strategy,
            store,
            crate::hub::Bounds {
                send_queue: settings.send_queue,
                send_queue_bytes: settings.send_queue_bytes,
                presence_limit: settings.presence_limit,
                max_replay_bytes: settings.max_replay_bytes,
            },
        )
    };
    let kind = settings.strategy;
    if kind == turnout_proto::Strategy::Local {
        // Room state stays in memory; Redis only lets a router and a gateway
        // find this node, and is not needed to serve.
        let con = crate::heartbeat::try_connect(client).await;
        if con.is_none() {
            tracing::warn!(
                redis = %settings.redis_url,
                "Redis is not reachable: serving alone (strategy local needs no Redis; \
                 the node joins a cluster's live set once Redis answers)"
            );
        }
        let store = Store::Memory(MemoryStore::new(cfg));
        return Ok(Some((
            Arc::new(hub(Strategy::Local(local::Local), store)),
            con,
        )));
    }
    let url = &settings.redis_url;
    let Some(con) = turnout_common::redis::commands_patiently(client, url, readiness, stop).await
    else {
        return Ok(None);
    };
    let control = turnout_proto::keys::node_control(node_id);
    let buffer = (settings.bus_buffer, settings.bus_buffer_bytes);
    let bus = crate::bus::connect(client, buffer, metrics, &control).await?;
    let bus_readiness = readiness.clone();
    let store = Store::Redis(RedisStore {
        con: con.clone(),
        cfg,
        holder: format!("{node_id}/{:08x}", rand::random::<u32>()),
        lease: settings.presence_ttl,
    });
    let hub = Arc::new_cyclic(|weak| {
        let strategy = match kind {
            turnout_proto::Strategy::Sticky => Strategy::Sticky(sticky::Sticky {
                pin: settings.placement_ttl,
            }),
            _ => Strategy::Pubsub(pubsub::Pubsub {
                channels: bus.channels(weak.clone(), metrics, stop.clone()),
            }),
        };
        hub(strategy, store)
    });
    bus.start(hub.clone(), bus_readiness, stop.clone());
    Ok(Some((hub, Some(con))))
}

impl Strategy {
    pub(crate) fn kind(&self) -> turnout_proto::Strategy {
        match self {
            Strategy::Local(_) => turnout_proto::Strategy::Local,
            Strategy::Sticky(_) => turnout_proto::Strategy::Sticky,
            Strategy::Pubsub(_) => turnout_proto::Strategy::Pubsub,
        }
    }

    /// Whether this node may serve `room`; returns the epoch it holds the
    /// room at (sticky ownership; 0 otherwise).
    pub(crate) async fn admit(&self, hub: &Hub, room: &RoomName) -> Result<u64, RoomError> {
        match self {
            Strategy::Sticky(s) => s.own(hub, room).await,
            Strategy::Local(_) | Strategy::Pubsub(_) => Ok(0),
        }
    }

    /// The room got its first member here (already registered, buffering):
    /// start receiving what other nodes publish into it.
    pub(crate) async fn open(&self, room: &str) -> Result<(), RoomError> {
        match self {
            Strategy::Pubsub(p) => p.open(room).await,
            Strategy::Local(_) | Strategy::Sticky(_) => Ok(()),
        }
    }

    /// The room's last member here left.
    pub(crate) fn close(&self, room: &str) {
        if let Strategy::Pubsub(p) = self {
            p.close(room);
        }
    }

    /// Publishes into `room` (once per publish `id`).
    pub(crate) async fn publish(
        &self,
        hub: &Arc<Hub>,
        room: &RoomName,
        parts: &FrameParts,
        origin: Origin<'_>,
        id: Option<&str>,
    ) -> Result<Published, RoomError> {
        match self {
            Strategy::Local(_) => local::publish(hub, room, parts, origin, id).await,
            Strategy::Sticky(s) => s.publish(hub, room, parts, origin, id).await,
            Strategy::Pubsub(_) => pubsub::publish(hub, room, parts, origin, id).await,
        }
    }

    /// Whether a message of a room of `members` is written to idle members'
    /// sockets in place. Pubsub fan-out runs on the one task that reads the
    /// bus, which must keep up with Redis whatever clients do: it queues.
    pub(crate) fn direct_fan_out(&self, members: usize) -> bool {
        match self {
            Strategy::Pubsub(_) => false,
            Strategy::Local(_) | Strategy::Sticky(_) => members <= DIRECT_FAN_OUT,
        }
    }

    /// Tells the room's members on every node about a presence event of
    /// connection `origin` (best effort: presence carries no seq).
    pub(crate) async fn announce(&self, hub: &Hub, room: &str, origin: &str, frame: String) {
        match self {
            Strategy::Pubsub(p) => p.announce(hub, room, origin, frame).await,
            Strategy::Local(_) | Strategy::Sticky(_) => {
                hub.deliver_presence(room, origin, frame.into())
            }
        }
    }

    /// One local node is a complete single-server chat: it serves the demo
    /// page itself.
    pub(crate) fn serves_demo_page(&self) -> bool {
        matches!(self, Strategy::Local(_))
    }

    /// Sticky: the ownership this node must keep checking and pinning.
    pub(crate) fn sticky(&self) -> Option<&sticky::Sticky> {
        match self {
            Strategy::Sticky(s) => Some(s),
            _ => None,
        }
    }
}
