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
use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use turnout_proto::{bus, keys};

enum Cmd {
    Ensure(String, oneshot::Sender<Result<(), String>>),
    Release(String),
}

/// Handle the hub uses to follow membership with subscriptions.
pub(crate) struct Bus {
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl Bus {
    /// Returns once `room`'s channel is subscribed.
    pub(crate) async fn ensure(&self, room: &str) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Ensure(room.to_owned(), tx))
            .map_err(|_| "bus stopped".to_owned())?;
        rx.await.map_err(|_| "bus stopped".to_owned())?
    }

    /// Unsubscribes `room`'s channel if the room is still empty when handled.
    pub(crate) fn release(&self, room: &str) {
        let _ = self.cmds.send(Cmd::Release(room.to_owned()));
    }
}

/// Connects the pub/sub connection and starts the relay's tasks.
pub(crate) async fn start(
    client: &redis::Client,
    hub: Arc<Hub>,
    buffer: usize,
    shutdown: CancellationToken,
) -> redis::RedisResult<Bus> {
    let (push_tx, push_rx) = mpsc::channel::<PushInfo>(buffer);
    let dropped = hub.metrics.push_dropped.clone();
    let sender = move |info: PushInfo| match push_tx.try_send(info) {
        Ok(()) => Ok(()),
        Err(e) => {
            dropped.inc();
            Err(e)
        }
    };
    let con = turnout_common::redis::pubsub(client, sender).await?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    tokio::spawn(read_pushes(push_rx, hub.clone(), shutdown.clone()));
    tokio::spawn(manage_subscriptions(
        cmd_rx,
        con.clone(),
        hub.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(turnout_common::redis::watchdog(
        con,
        hub.metrics.redis_errors.clone(),
        shutdown,
    ));
    Ok(Bus { cmds: cmd_tx })
}

async fn read_pushes(mut rx: mpsc::Receiver<PushInfo>, hub: Arc<Hub>, shutdown: CancellationToken) {
    loop {
        let push = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return },
            _ = shutdown.cancelled() => return,
        };
        match push.kind {
            PushKind::Message => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    continue;
                };
                hub.metrics.bus_messages.inc();
                let Some(room) = std::str::from_utf8(&channel)
                    .ok()
                    .and_then(keys::room_from_channel)
                else {
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
            PushKind::Disconnection => {
                hub.metrics.redis_disconnects.inc();
                tracing::warn!("Redis pub/sub connection lost; reconnecting and resubscribing");
            }
            PushKind::Subscribe => {
                let Some(Value::BulkString(channel)) = push.data.first() else {
                    continue;
                };
                let Some(room) = std::str::from_utf8(channel)
                    .ok()
                    .and_then(keys::room_from_channel)
                else {
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
            _ => {}
        }
    }
}

async fn manage_subscriptions(
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut con: ConnectionManager,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) {
    let mut subscribed: HashSet<String> = HashSet::new();
    loop {
        let first = tokio::select! {
            c = rx.recv() => match c { Some(c) => c, None => return },
            _ = shutdown.cancelled() => return,
        };
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut mentioned: Vec<String> = Vec::new();
        let mut waiters: Vec<(String, oneshot::Sender<Result<(), String>>)> = Vec::new();
        for cmd in batch {
            match cmd {
                Cmd::Ensure(room, tx) => {
                    mentioned.push(room.clone());
                    waiters.push((room, tx));
                }
                Cmd::Release(room) => mentioned.push(room),
            }
        }
        mentioned.sort_unstable();
        mentioned.dedup();
        // Decide from the hub's state now, which includes every request queued so far.
        let (mut sub, mut unsub) = (Vec::new(), Vec::new());
        for room in mentioned {
            let want = hub.has_room(&room);
            let have = subscribed.contains(&room);
            if want && !have {
                sub.push(room);
            } else if !want && have {
                unsub.push(room);
            }
        }
        if !unsub.is_empty() {
            let channels: Vec<String> = unsub.iter().map(|r| keys::room_channel(r)).collect();
            match con.unsubscribe(&channels).await {
                Ok(()) => unsub.iter().for_each(|r| {
                    subscribed.remove(r);
                }),
                Err(e) => tracing::warn!(error = %e, rooms = unsub.len(), "unsubscribe failed"),
            }
        }
        let mut failed: Option<String> = None;
        if !sub.is_empty() {
            let channels: Vec<String> = sub.iter().map(|r| keys::room_channel(r)).collect();
            match con.subscribe(&channels).await {
                Ok(()) => subscribed.extend(sub),
                Err(e) => {
                    hub.metrics.redis_errors.inc();
                    failed = Some(e.to_string());
                }
            }
        }
        for (room, tx) in waiters {
            let result = if subscribed.contains(&room) || !hub.has_room(&room) {
                Ok(())
            } else {
                Err(failed.clone().unwrap_or_else(|| "not subscribed".into()))
            };
            let _ = tx.send(result);
        }
    }
}
