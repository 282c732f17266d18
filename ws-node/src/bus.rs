//! The Redis pub/sub relay (pubsub strategy).
//!
//! One RESP3 connection carries every room subscription. Its pushes go into a
//! bounded buffer (`bus_buffer`) read by one task that decodes each message
//! once and hands it to the hub; nothing on this path waits for a client, so
//! a slow client can never make Redis drop the node's subscription. A full
//! buffer drops the push and counts it; the room's next message exposes the
//! gap and the hub fills it from history.
//!
//! Subscriptions follow membership: one task applies subscribe/unsubscribe
//! requests in order, in batches, and decides from the hub's current state, so
//! a room that empties and fills again concurrently ends up subscribed.
//! After a reconnect the client library resubscribes; each confirmation makes
//! the hub fetch what the room missed from history.

use crate::hub::Hub;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use redis::PushInfo;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use turnout_common::redis::{RoomPush, channel_room};
use turnout_proto::bus;

/// Handle the hub uses to follow membership with subscriptions.
pub(crate) type Bus = turnout_common::redis::Channels;

/// Connects the pub/sub connection and starts the relay's tasks.
pub(crate) async fn start(
    client: &redis::Client,
    hub: Arc<Hub>,
    buffer: usize,
    shutdown: CancellationToken,
) -> redis::RedisResult<Bus> {
    let (con, push_rx) =
        turnout_common::redis::pubsub_bounded(client, buffer, hub.metrics.push_dropped.clone())
            .await?;
    tokio::spawn(read_pushes(push_rx, hub.clone(), shutdown.clone()));
    tokio::spawn(turnout_common::redis::watchdog(
        con.clone(),
        hub.metrics.redis_errors.clone(),
        shutdown.clone(),
    ));
    let wanted = {
        let hub = hub.clone();
        move |room: &str| hub.has_room(room)
    };
    let errors = hub.metrics.redis_errors.clone();
    Ok(turnout_common::redis::Channels::start(
        con, wanted, errors, shutdown,
    ))
}

async fn read_pushes(mut rx: mpsc::Receiver<PushInfo>, hub: Arc<Hub>, shutdown: CancellationToken) {
    loop {
        let push = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return },
            _ = shutdown.cancelled() => return,
        };
        match RoomPush::decode(push) {
            Some(RoomPush::Message(channel, payload)) => {
                hub.metrics.bus_messages.inc();
                let Some(room) = channel_room(&channel) else {
                    continue;
                };
                let (seq, start) = match bus::decode_any(&payload) {
                    Some(bus::Payload::Message { seq, frame }) => {
                        (Some(seq), payload.len() - frame.len())
                    }
                    Some(bus::Payload::Presence { origin, frame }) => {
                        if let Ok(text) = std::str::from_utf8(frame) {
                            hub.deliver_presence(room, origin, text.into());
                        }
                        continue;
                    }
                    None => {
                        tracing::warn!(room, "undecodable bus payload dropped");
                        continue;
                    }
                };
                let Ok(frame) = Utf8Bytes::try_from(Bytes::from(payload).slice(start..)) else {
                    tracing::warn!(room, "non-UTF-8 bus payload dropped");
                    continue;
                };
                if let Some(seq) = seq {
                    hub.deliver(room, seq, frame);
                }
            }
            Some(RoomPush::Disconnected) => {
                hub.metrics.redis_disconnects.inc();
                tracing::warn!("Redis pub/sub connection lost; reconnecting and resubscribing");
            }
            Some(RoomPush::Subscribed(channel)) => {
                let Some(room) = channel_room(&channel) else {
                    continue;
                };
                if hub.last_seq(room).is_some() {
                    // Known room subscribed again: a reconnect. Catch up from history.
                    hub.metrics.resubscribed.inc();
                    let hub = hub.clone();
                    let room = room.to_owned();
                    tokio::spawn(async move { hub.resync(&room).await });
                }
            }
            None => {}
        }
    }
}
