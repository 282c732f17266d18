//! The node's pub/sub connection to Redis: room channels (pubsub strategy)
//! and the node's control channel (sticky: notices of rooms taken over).
//!
//! One RESP3 connection carries every subscription. Its pushes go into a
//! bounded buffer (`bus_buffer`) read by one task (`read_room_pushes`) that
//! decodes each message once and hands it to the hub; nothing on this path
//! waits for a client, so a slow client can never make Redis drop the
//! node's subscription. A full buffer drops the push and counts it; the
//! room's next message exposes the gap and the hub fills it from history.
//! After a reconnect the client library resubscribes; each confirmation
//! makes the hub fetch what the room missed from history.

use crate::hub::Hub;
use crate::metrics::NodeMetrics;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use std::sync::{Arc, Weak};
use tokio_util::sync::CancellationToken;
use turnout_common::redis::Con;
use turnout_common::redis::{Channels, RoomPushes};

/// The connection, before the hub that reads it exists.
pub(crate) struct Bus {
    con: Con,
    rx: turnout_common::redis::Pushes,
}

/// Connects the pub/sub connection and subscribes to `control`, this
/// node's control channel.
pub(crate) async fn connect(
    client: &turnout_common::redis::Redis,
    (buffer, bytes): (usize, usize),
    metrics: &NodeMetrics,
    control: &str,
) -> redis::RedisResult<Bus> {
    let (mut con, rx) =
        turnout_common::redis::pubsub_bounded(client, buffer, bytes, metrics.push_dropped.clone())
            .await?;
    con.subscribe(control).await?;
    Ok(Bus { con, rx })
}

impl Bus {
    /// Room-channel subscriptions that follow the hub's rooms.
    pub(crate) fn channels(
        &self,
        hub: Weak<Hub>,
        metrics: &NodeMetrics,
        stop: CancellationToken,
    ) -> Channels {
        let wanted = move |room: &str| hub.upgrade().is_some_and(|h| h.has_room(room));
        Channels::start(self.con.clone(), wanted, metrics.redis_errors.clone(), stop)
    }

    /// Starts reading pushes into `hub`, and the connection's watchdog.
    pub(crate) fn start(
        self,
        hub: Arc<Hub>,
        readiness: turnout_common::readiness::Readiness,
        stop: CancellationToken,
    ) {
        tokio::spawn(turnout_common::redis::watchdog(
            self.con,
            hub.metrics.redis_errors.clone(),
            readiness,
            stop.clone(),
        ));
        tokio::spawn(turnout_common::redis::read_room_pushes(
            self.rx,
            Arc::new(Relay(hub)),
            stop,
        ));
    }
}

struct Relay(Arc<Hub>);

impl RoomPushes for Relay {
    fn message(&self, room: &str, seq: u64, epoch: &str, frame: Bytes) {
        self.0.metrics.bus_messages.inc();
        match Utf8Bytes::try_from(frame) {
            Ok(frame) => self.0.deliver(room, seq, epoch, frame),
            Err(_) => tracing::warn!(room, "non-UTF-8 bus payload dropped"),
        }
    }

    fn presence(&self, room: &str, origin: &str, frame: Bytes) {
        self.0.metrics.bus_messages.inc();
        if let Ok(frame) = Utf8Bytes::try_from(frame) {
            self.0.deliver_presence(room, origin, frame);
        }
    }

    fn other(&self, channel: &str, payload: Bytes) {
        // `moved <room> <epoch> <new owner>` on this node's control channel.
        let text = String::from_utf8_lossy(&payload);
        let mut parts = text.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("moved"), Some(room), Some(epoch), Some(owner)) => {
                if let Ok(epoch) = epoch.parse() {
                    let how = crate::strategy::sticky::Lost::ClaimedAt(epoch);
                    self.0.strategy.lost(&self.0, room, how, Some(owner));
                }
            }
            _ => tracing::debug!(channel, "unknown control message ignored"),
        }
    }

    fn subscribed(&self, room: &str) {
        if self.0.last_seq(room).is_some() {
            // Known room subscribed again: a reconnect. Catch up from history.
            self.0.metrics.resubscribed.inc();
            let hub = self.0.clone();
            let room = room.to_owned();
            tokio::spawn(async move { hub.resync(&room).await });
        }
    }

    fn unsubscribed(&self, room: &str) {
        self.0.strategy.channel_lost(&self.0, room);
    }

    fn disconnected(&self) {
        self.0.metrics.redis_disconnects.inc();
        tracing::warn!("Redis pub/sub connection lost; reconnecting and resubscribing");
    }
}
