//! Everything that differs between the strategies, in one type chosen once
//! at start, one file per strategy:
//!
//! | | admission of a room | publish | reaching other nodes | fan-out |
//! | --- | --- | --- | --- | --- |
//! | [`local`] | always | in memory, delivered here | never | in place |
//! | [`sticky`] | claim ownership (epoch) | fenced by owner and epoch, delivered here | not needed: every member is here | in place |
//! | [`pubsub`] | always | anyone, delivered when it comes back | the room's channel | queued |
//! | [`relay`] | always | sent to the owner, delivered when it comes back | the owner's follow stream | queued |
//!
//! The hub (rooms, ordering, join hand-over) and the sessions call only
//! the methods here; none of them matches on the strategy.
//!
//! Personal rooms (`#user`) hold one user's connections wherever they are,
//! so in sticky, where a room's members meet on its owner, they are rooms
//! of the pubsub kind: no owner, reached over their Redis channel. So they
//! are in relay too: a room of one connection gains nothing from an owner
//! that relays it, and would cost every idle connection an owner's claim,
//! a follow and their periodic checks (docs/BENCHMARKS.md, idle).

pub(crate) mod local;
pub(crate) mod pubsub;
pub(crate) mod relay;
pub(crate) mod sticky;

use crate::hub::{Hub, RoomError};
use crate::metrics::NodeMetrics;
use crate::settings::Settings;
use crate::store::{MemoryStore, RedisStore, Store};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use turnout_common::redis::{Con, Origin, Published, RoomConfig};
use turnout_proto::bus::FrameParts;
use turnout_proto::names::{RoomName, is_personal};

/// Rooms up to this many members are fanned out by writing to each idle
/// member's socket in place; larger rooms queue every frame and let the
/// members' sessions write in parallel (docs/DESIGN-NOTES.md).
const DIRECT_FAN_OUT: usize = 64;

pub(crate) enum Strategy {
    Local(local::Local),
    Sticky(sticky::Sticky),
    Pubsub(pubsub::Pubsub),
    Relay(relay::Relay),
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
    let namespaces = Arc::new(settings.namespaces());
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
        let store = Store::Memory(MemoryStore::new(cfg, namespaces));
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
    // Relay: the owner streams each message to the nodes, not Redis.
    let cfg = RoomConfig {
        bus: kind != turnout_proto::Strategy::Relay,
        ..cfg
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
        namespaces,
    });
    let links = turnout_common::relay::Links::new(
        turnout_common::relay::Settings {
            me: node_id.to_owned(),
            token: turnout_common::auth::InternalToken::new(settings.internal_token.as_deref())
                .unwrap_or_default(),
            pin: settings.placement_ttl,
            load_factor: turnout_common::placement::LOAD_FACTOR,
        },
        con.clone(),
        turnout_common::relay::LinkMetrics {
            items_received: Some(metrics.relay_items_received.clone()),
            reattached: Some(metrics.relay_reattached.clone()),
            rechecks: Some(metrics.relay_rechecks.clone()),
            links: Some(metrics.relay_links.clone()),
        },
        stop.clone(),
    );
    let hub = Arc::new_cyclic(|weak: &std::sync::Weak<Hub>| {
        let strategy = match kind {
            turnout_proto::Strategy::Sticky => Strategy::Sticky(sticky::Sticky {
                pin: settings.placement_ttl,
                personal: pubsub::Pubsub {
                    channels: bus.channels(weak.clone(), metrics, stop.clone()),
                },
            }),
            turnout_proto::Strategy::Pubsub => Strategy::Pubsub(pubsub::Pubsub {
                channels: bus.channels(weak.clone(), metrics, stop.clone()),
            }),
            turnout_proto::Strategy::Relay => Strategy::Relay(relay::Relay::new(
                node_id,
                settings.placement_ttl,
                buffer,
                weak.clone(),
                metrics,
                links.clone(),
                pubsub::Pubsub {
                    channels: bus.channels(weak.clone(), metrics, stop.clone()),
                },
            )),
            turnout_proto::Strategy::Local => unreachable!("strategy local returned above"),
        };
        hub(strategy, store)
    });
    if let Strategy::Relay(r) = &hub.strategy {
        let follower: Arc<dyn turnout_common::relay::Follower> =
            Arc::new(relay::ToHub(Arc::downgrade(&hub)));
        r.set_follower(follower);
        r.keep_owned(stop.clone());
    }
    bus.start(hub.clone(), bus_readiness, stop.clone());
    Ok(Some((hub, Some(con))))
}

impl Strategy {
    pub(crate) fn kind(&self) -> turnout_proto::Strategy {
        match self {
            Strategy::Local(_) => turnout_proto::Strategy::Local,
            Strategy::Sticky(_) => turnout_proto::Strategy::Sticky,
            Strategy::Pubsub(_) => turnout_proto::Strategy::Pubsub,
            Strategy::Relay(_) => turnout_proto::Strategy::Relay,
        }
    }

    /// Whether this node may serve `room`; returns the epoch it holds the
    /// room at (sticky ownership; 0 otherwise).
    pub(crate) async fn admit(&self, hub: &Hub, room: &RoomName) -> Result<u64, RoomError> {
        match self {
            Strategy::Sticky(_) if room.personal_user().is_some() => Ok(0),
            Strategy::Sticky(s) => s.own(hub, room).await,
            Strategy::Local(_) | Strategy::Pubsub(_) | Strategy::Relay(_) => Ok(0),
        }
    }

    /// The room got its first member here (already registered, buffering):
    /// start receiving what other nodes publish into it.
    pub(crate) async fn open(&self, room: &str) -> Result<(), RoomError> {
        match self {
            Strategy::Pubsub(p) => p.open(room).await,
            Strategy::Relay(r) if is_personal(room) => r.personal().open(room).await,
            Strategy::Relay(r) => r.open(room).await,
            Strategy::Sticky(s) if is_personal(room) => s.personal.open(room).await,
            Strategy::Local(_) | Strategy::Sticky(_) => Ok(()),
        }
    }

    /// The room's last member here left.
    pub(crate) fn close(&self, room: &str) {
        match self {
            Strategy::Pubsub(p) => p.close(room),
            Strategy::Relay(r) if is_personal(room) => r.personal().close(room),
            Strategy::Relay(r) => r.close(room),
            Strategy::Sticky(s) if is_personal(room) => s.personal.close(room),
            Strategy::Local(_) | Strategy::Sticky(_) => {}
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
            Strategy::Sticky(_) | Strategy::Relay(_) if room.personal_user().is_some() => {
                pubsub::publish(hub, room, parts, origin, id).await
            }
            Strategy::Sticky(s) => s.publish(hub, room, parts, origin, id).await,
            Strategy::Pubsub(_) => pubsub::publish(hub, room, parts, origin, id).await,
            Strategy::Relay(r) => r.publish(hub, room, parts, origin, id).await,
        }
    }

    /// Whether a message of a room of `members` is written to idle members'
    /// sockets in place. Pubsub fan-out runs on the one task that reads the
    /// bus, which must keep up with Redis whatever clients do, and relay's
    /// on the task that reads a follow stream: they queue.
    pub(crate) fn direct_fan_out(&self, members: usize) -> bool {
        match self {
            Strategy::Pubsub(_) | Strategy::Relay(_) => false,
            Strategy::Local(_) | Strategy::Sticky(_) => members <= DIRECT_FAN_OUT,
        }
    }

    /// Tells the room's members on every node about a presence event of
    /// connection `origin` (best effort: presence carries no seq).
    pub(crate) async fn announce(&self, hub: &Hub, room: &str, origin: &str, frame: String) {
        match self {
            Strategy::Pubsub(p) => p.announce(hub, room, origin, frame).await,
            Strategy::Relay(r) if is_personal(room) => {
                r.personal().announce(hub, room, origin, frame).await
            }
            Strategy::Relay(r) => r.announce(hub, room, origin, frame),
            Strategy::Sticky(s) if is_personal(room) => {
                s.personal.announce(hub, room, origin, frame).await
            }
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

    /// Sticky: how long the placements of the rooms this node has members
    /// in stay pinned; the periodic renewal checks that it still owns each
    /// at the epoch it holds (None: rooms are not owned by their members'
    /// node).
    pub(crate) fn owner_pin(&self) -> Option<std::time::Duration> {
        match self {
            Strategy::Sticky(s) => Some(s.pin),
            Strategy::Local(_) | Strategy::Pubsub(_) | Strategy::Relay(_) => None,
        }
    }

    /// Whether a node that cannot renew its lease sends its clients away at
    /// once. Sticky: its rooms will be placed elsewhere, and its members
    /// must meet there. The others keep their clients: what they miss is
    /// read back from history once Redis answers, and a full Redis outage
    /// would otherwise send every client of every node away at once.
    pub(crate) fn sends_clients_away_without_lease(&self) -> bool {
        matches!(self, Strategy::Sticky(_))
    }

    /// This node lost `room` (sticky, relay): `how` says how it learned,
    /// `new_owner` names the node that claimed it, when known.
    pub(crate) fn lost(
        &self,
        hub: &Arc<Hub>,
        room: &str,
        how: sticky::Lost,
        new_owner: Option<&str>,
    ) {
        match self {
            // A personal room has no owner to lose (a stray claim of one
            // moves nobody).
            Strategy::Sticky(_) | Strategy::Relay(_) if is_personal(room) => {}
            Strategy::Sticky(_) => sticky::Sticky::lost(hub, room, how, new_owner),
            Strategy::Relay(r) => r.lost(
                room,
                match how {
                    sticky::Lost::ClaimedAt(epoch) => Some(epoch),
                    sticky::Lost::NotAt(_) => None,
                },
            ),
            Strategy::Local(_) | Strategy::Pubsub(_) => {}
        }
    }

    /// Redis moved a room's channel to another shard (pubsub on a cluster;
    /// personal rooms in sticky and relay).
    pub(crate) fn channel_lost(&self, hub: &Hub, room: &str) {
        let channels = match self {
            Strategy::Pubsub(p) => &p.channels,
            Strategy::Sticky(s) => &s.personal.channels,
            Strategy::Relay(r) => &r.personal().channels,
            Strategy::Local(_) => return,
        };
        hub.metrics.channels_moved.inc();
        channels.lost(room);
    }

    /// The node's membership lease lapsed: relay hands the rooms it owns on
    /// (sticky finds out room by room in the renewal that follows).
    pub(crate) fn lease_lapsed(&self) {
        if let Strategy::Relay(r) = self {
            r.lease_lapsed();
        }
    }

    /// The node drains: relay hands the rooms it owns to other nodes.
    pub(crate) fn drain(&self) {
        if let Strategy::Relay(r) = self {
            r.drain();
        }
    }

    /// Relay: the owner side of the node's `Relay` service.
    pub(crate) fn relay(&self) -> Option<&relay::Relay> {
        match self {
            Strategy::Relay(r) => Some(r),
            Strategy::Local(_) | Strategy::Sticky(_) | Strategy::Pubsub(_) => None,
        }
    }
}
