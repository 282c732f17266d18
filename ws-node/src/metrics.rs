//! The ws-node's metrics (all prefixed `turnout_`, see `docs/OPERATIONS.md`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use turnout_common::metrics::register;

#[derive(Clone)]
pub(crate) struct NodeMetrics {
    pub(crate) registry: Registry,
    pub(crate) connections: IntGauge,
    pub(crate) rooms: IntGauge,
    pub(crate) personal_rooms: IntGauge,
    pub(crate) published: IntCounter,
    pub(crate) publish_duplicates: IntCounter,
    pub(crate) publishes_forbidden: IntCounter,
    pub(crate) deliveries: IntCounter,
    pub(crate) deliveries_in_place: IntCounter,
    pub(crate) bus_messages: IntCounter,
    pub(crate) push_dropped: IntCounter,
    pub(crate) duplicates_dropped: IntCounter,
    pub(crate) gaps_repaired: IntCounter,
    pub(crate) caught_up_quiet: IntCounter,
    pub(crate) messages_unrecoverable: IntCounter,
    pub(crate) slow_consumers: IntCounter,
    pub(crate) frame_errors: IntCounterVec,
    pub(crate) hooks: crate::hooks::HookMetrics,
    pub(crate) webhooks: crate::webhooks::WebhookMetrics,
    pub(crate) redis_disconnects: IntCounter,
    pub(crate) resubscribed: IntCounter,
    pub(crate) channels_moved: IntCounter,
    pub(crate) relay_forwarded: IntCounter,
    pub(crate) relay_items_sent: IntCounter,
    pub(crate) relay_items_received: IntCounter,
    pub(crate) relay_reattached: IntCounter,
    pub(crate) relay_rechecks: IntCounter,
    pub(crate) relay_owned: IntGauge,
    pub(crate) relay_links: IntGauge,
    pub(crate) relay_streams: IntGauge,
    pub(crate) redis_errors: IntCounter,
    pub(crate) replayed: IntCounter,
    pub(crate) fenced: IntCounter,
    pub(crate) room_resets: IntCounter,
    pub(crate) auth_failures: IntCounter,
    pub(crate) rate_limited: IntCounter,
    pub(crate) abusive_closed: IntCounter,
    pub(crate) idle_closed: IntCounter,
    pub(crate) session_panics: IntCounter,
    pub(crate) kicked: IntCounter,
    pub(crate) inbox_appended: IntCounter,
    pub(crate) presence_reasserted: IntCounter,
    pub(crate) lease_lapses: IntCounter,
    pub(crate) lease_lapsed: IntGauge,
    pub(crate) heartbeat_seconds: Histogram,
    pub(crate) delivery_seconds: Histogram,
    pub(crate) replays_cut: IntCounter,
    pub(crate) tokens_expired: IntCounter,
    pub(crate) redis_used_memory: IntGauge,
    pub(crate) redis_maxmemory: IntGauge,
    pub(crate) redis_may_evict: IntGauge,
    pub(crate) redis_evicted_keys: IntGauge,
}

impl NodeMetrics {
    pub(crate) fn new(node_id: &str, strategy: turnout_proto::Strategy) -> Self {
        let registry = turnout_common::metrics::registry(
            "ws-node",
            &[("node", node_id), ("strategy", strategy.as_str())],
        );
        let h = |name: &str, help: &str, buckets: &[f64]| {
            register(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                    .expect("valid metric"),
            )
        };
        let c = |name: &str, help: &str| turnout_common::metrics::counter(&registry, name, help);
        let g = |name: &str, help: &str| turnout_common::metrics::gauge(&registry, name, help);
        NodeMetrics {
            connections: g("connections", "Open client WebSocket connections"),
            rooms: g(
                "rooms",
                "Rooms with at least one member on this node (personal rooms aside)",
            ),
            personal_rooms: g(
                "personal_rooms",
                "Personal rooms (#user) with a connection on this node",
            ),
            published: c(
                "messages_published_total",
                "Messages published through this node",
            ),
            publish_duplicates: c(
                "publish_duplicates_total",
                "Publishes whose id was accepted before (within dedupe_window): acked with the first seq, not published again",
            ),
            publishes_forbidden: c(
                "publishes_forbidden_total",
                "Client publishes refused because the room's namespace has client_publish = false",
            ),
            deliveries: c("deliveries_total", "Message frames sent to clients"),
            deliveries_in_place: c(
                "deliveries_in_place_total",
                "Message frames written to an idle client's socket without queueing",
            ),
            bus_messages: c(
                "bus_messages_total",
                "Messages received from the Redis pub/sub bus",
            ),
            push_dropped: c(
                "push_dropped_total",
                "Bus messages dropped because the push buffer was full (recovered from history)",
            ),
            duplicates_dropped: c(
                "duplicates_dropped_total",
                "Room messages dropped as already delivered",
            ),
            gaps_repaired: c(
                "gaps_repaired_total",
                "Missing room messages recovered from history",
            ),
            caught_up_quiet: c(
                "caught_up_quiet_total",
                "Rooms whose latest stored message this node had not delivered by the next renewal (a push dropped or a reply lost in a room that went quiet): read back from history",
            ),
            messages_unrecoverable: c(
                "messages_unrecoverable_total",
                "Missing room messages that history no longer held",
            ),
            slow_consumers: c(
                "slow_consumers_total",
                "Clients disconnected because their send queue was full",
            ),
            frame_errors: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("frame_errors_total", "Client frames refused, by error code"),
                    &["code"],
                )
                .expect("valid metric"),
            ),
            hooks: crate::hooks::HookMetrics {
                calls: register(
                    &registry,
                    IntCounterVec::new(
                        Opts::new(
                            "hook_calls_total",
                            "Backend hook calls, by hook and outcome (granted, refused, failed: timed out, unreachable, unreadable or over proxy_max_inflight)",
                        ),
                        &["hook", "outcome"],
                    )
                    .expect("valid metric"),
                ),
                seconds: register(
                    &registry,
                    HistogramVec::new(
                        HistogramOpts::new("hook_seconds", "Time a backend hook call took, by hook")
                            .buckets(vec![
                                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                5.0,
                            ]),
                        &["hook"],
                    )
                    .expect("valid metric"),
                ),
            },
            webhooks: crate::webhooks::WebhookMetrics {
                events: {
                    let events = register(
                        &registry,
                        IntCounterVec::new(
                            Opts::new(
                                "webhook_events_total",
                                "Webhook events by outcome: sent (taken by the backend), dropped (the queue was full), failed (every try of their batch failed)",
                            ),
                            &["outcome"],
                        )
                        .expect("valid metric"),
                    );
                    // At 0 from the start: an alert on a loss needs the
                    // series before the first one.
                    for outcome in ["sent", "dropped", "failed"] {
                        events.with_label_values(&[outcome]);
                    }
                    events
                },
            },
            redis_disconnects: c(
                "redis_disconnects_total",
                "Times the pub/sub connection to Redis dropped",
            ),
            resubscribed: c(
                "resubscribed_total",
                "Room channels resubscribed after a reconnect",
            ),
            channels_moved: c(
                "channels_moved_total",
                "Room channels a Redis Cluster unsubscribed (slot moved, failover), subscribed again",
            ),
            relay_forwarded: c(
                "relay_forwarded_total",
                "Publishes this node sent to the room's owner on another node (relay)",
            ),
            relay_items_sent: c(
                "relay_items_sent_total",
                "Messages and presence events this node sent down follow streams as a room's owner (relay)",
            ),
            relay_items_received: c(
                "relay_items_received_total",
                "Items this node received from rooms' owners on follow streams (relay)",
            ),
            relay_reattached: c(
                "relay_reattached_total",
                "Rooms attached again after their owner moved, died or dropped this node's stream (relay)",
            ),
            relay_rechecks: c(
                "relay_rechecks_total",
                "Periodic checks of every followed room against its owner in Redis (relay)",
            ),
            relay_owned: g("relay_owned_rooms", "Rooms this node owns (relay)"),
            relay_links: g(
                "relay_links",
                "Follow streams this node has open to rooms' owners (relay)",
            ),
            relay_streams: g(
                "relay_streams",
                "Follow streams other nodes and gateways have open to this node (relay)",
            ),
            redis_errors: c("redis_errors_total", "Redis commands that failed"),
            replayed: c(
                "replayed_total",
                "Messages replayed to clients from history on join",
            ),
            auth_failures: c(
                "auth_failures_total",
                "WebSocket upgrades refused for a missing or bad token",
            ),
            rate_limited: c(
                "rate_limited_total",
                "Publishes, joins and connections refused by a rate or count limit",
            ),
            abusive_closed: c(
                "abusive_closed_total",
                "Connections closed 1008 for going on over their limits; each cost its address a second of max_connect_rate_per_ip",
            ),
            idle_closed: c(
                "idle_closed_total",
                "Connections closed after idle_timeout without a frame or pong",
            ),
            session_panics: c(
                "session_panics_total",
                "Sessions ended by a bug (panic) in frame handling",
            ),
            room_resets: c(
                "room_resets_total",
                "Rooms whose state was lost in Redis and started over",
            ),
            fenced: c(
                "fenced_total",
                "Publishes refused because this node no longer owns the room (sticky)",
            ),
            kicked: c(
                "kicked_total",
                "Connections closed by the server API's Disconnect",
            ),
            inbox_appended: c(
                "inbox_appended_total",
                "Client publishes appended to the backend inbox stream",
            ),
            presence_reasserted: c(
                "presence_reasserted_total",
                "Rooms whose presence entries this node wrote again after its lease lapsed",
            ),
            lease_lapses: c(
                "lease_lapses_total",
                "Times this node's membership lease may have run out (paused, or Redis unreachable)",
            ),
            lease_lapsed: g(
                "lease_lapsed",
                "1 while this node's membership lease may have run out and what it holds is not checked again: it takes no clients",
            ),
            heartbeat_seconds: h(
                "heartbeat_seconds",
                "Round trip of the node's heartbeat to Redis: Redis's latency as this node sees it",
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            delivery_seconds: h(
                "delivery_seconds",
                "From a message's publish (its ts, the publishing node's clock) to its fan-out on this node, once per message",
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            replays_cut: c(
                "replays_cut_total",
                "Join replays cut at max_replay_bytes (the client asks for the rest)",
            ),
            tokens_expired: c(
                "tokens_expired_total",
                "Connections closed at their token's expiry (3010) without a refresh",
            ),
            redis_used_memory: g(
                "redis_used_memory_bytes",
                "Redis used_memory, read every 10 s (absent when the ACL user may not run INFO)",
            ),
            redis_maxmemory: g("redis_maxmemory_bytes", "Redis maxmemory (0: no limit)"),
            redis_may_evict: g(
                "redis_may_evict",
                "1 when Redis has a maxmemory and a policy other than noeviction: it may evict turnout's state (docs/OPERATIONS.md, Redis memory)",
            ),
            redis_evicted_keys: g(
                "redis_evicted_keys",
                "Keys Redis evicted since it started (INFO stats evicted_keys)",
            ),
            registry,
        }
    }
}

impl NodeMetrics {
    /// The gauge that counts `room`: personal rooms apart.
    pub(crate) fn room_gauge(&self, room: &str) -> &IntGauge {
        if turnout_proto::names::is_personal(room) {
            &self.personal_rooms
        } else {
            &self.rooms
        }
    }
}
