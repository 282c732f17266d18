//! The one reader of room-channel pushes, for every pub/sub connection that
//! follows rooms (the ws-node relay, the gateway's room streams).
//!
//! Pushes come out of the connection into a bounded buffer
//! ([`super::pubsub_bounded`]); one task per connection decodes each once
//! and hands it to a [`RoomPushes`] handler. Nothing on this path may wait
//! for a client, so a slow client can never make Redis drop the
//! subscription.

use bytes::Bytes;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use turnout_proto::{bus, keys};

/// What a reader does with the pushes of its connection. Every method runs
/// on the reader task and must not block.
pub trait RoomPushes: Send + Sync + 'static {
    /// A room message: its seq, the history epoch it counts in, and its
    /// frame (a slice of the payload).
    fn message(&self, room: &str, seq: u64, epoch: &str, frame: Bytes);
    /// A presence event about connection `origin`.
    fn presence(&self, _room: &str, _origin: &str, _frame: Bytes) {}
    /// A message on a channel that is not a room's (a node's control channel).
    fn other(&self, _channel: &str, _payload: Bytes) {}
    /// A room's channel was subscribed (again, after a reconnect).
    fn subscribed(&self, room: &str);
    /// A room's channel was unsubscribed: at the owner's request, or (on a
    /// Redis Cluster) by the server when the room's slot moved to another
    /// shard or the shard failed over, where a subscriber must subscribe
    /// again.
    fn unsubscribed(&self, _room: &str) {}
    /// The connection dropped; the client reconnects and resubscribes.
    fn disconnected(&self);
    /// A payload on a room channel that does not decode.
    fn undecodable(&self, room: &str) {
        tracing::warn!(room, "undecodable bus payload dropped");
    }
}

/// The pushes of one connection on their way to its reader, bounded in
/// count and in bytes ([`super::pubsub_bounded`]).
pub struct Pushes {
    pub(crate) rx: mpsc::Receiver<PushInfo>,
    /// Bytes buffered; the connection's sender adds, the reader takes off.
    pub(crate) bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Pushes {
    pub async fn recv(&mut self) -> Option<PushInfo> {
        let p = self.rx.recv().await?;
        self.bytes
            .fetch_sub(size(&p), std::sync::atomic::Ordering::AcqRel);
        Some(p)
    }
}

/// What a push holds, for the buffer's byte bound: its payloads.
pub(crate) fn size(p: &PushInfo) -> usize {
    p.data
        .iter()
        .map(|v| match v {
            Value::BulkString(b) => b.len(),
            _ => 8,
        })
        .sum()
}

/// Reads `rx` until `stop`, handing every push to `handler`.
pub async fn read_room_pushes<H: RoomPushes>(
    mut rx: Pushes,
    handler: std::sync::Arc<H>,
    stop: CancellationToken,
) {
    loop {
        let push = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return },
            _ = stop.cancelled() => return,
        };
        dispatch(push, &*handler);
    }
}

fn dispatch(push: PushInfo, handler: &impl RoomPushes) {
    let mut data = push.data.into_iter();
    match push.kind {
        PushKind::Message | PushKind::SMessage => {
            let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                (data.next(), data.next())
            else {
                return;
            };
            let Ok(channel) = std::str::from_utf8(&channel) else {
                return;
            };
            let payload = Bytes::from(payload);
            let Some(room) = keys::room_from_channel(channel) else {
                handler.other(channel, payload);
                return;
            };
            match bus::decode_any(&payload) {
                Some(bus::Payload::Message { seq, epoch, frame }) => {
                    let start = payload.len() - frame.len();
                    handler.message(room, seq, epoch, payload.slice(start..));
                }
                Some(bus::Payload::Presence { origin, frame }) => {
                    let start = payload.len() - frame.len();
                    handler.presence(room, origin, payload.slice(start..));
                }
                None => handler.undecodable(room),
            }
        }
        PushKind::Subscribe | PushKind::SSubscribe => {
            if let Some(Value::BulkString(channel)) = data.next()
                && let Some(room) = std::str::from_utf8(&channel)
                    .ok()
                    .and_then(keys::room_from_channel)
            {
                handler.subscribed(room);
            }
        }
        // Only a cluster's server unsubscribes on its own (slot moved,
        // failover); a classic unsubscribe is always this process's own.
        PushKind::SUnsubscribe => {
            if let Some(Value::BulkString(channel)) = data.next()
                && let Some(room) = std::str::from_utf8(&channel)
                    .ok()
                    .and_then(keys::room_from_channel)
            {
                handler.unsubscribed(room);
            }
        }
        PushKind::Disconnection => handler.disconnected(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl RoomPushes for Log {
        fn message(&self, room: &str, seq: u64, epoch: &str, frame: Bytes) {
            let f = String::from_utf8_lossy(&frame).into_owned();
            self.0
                .lock()
                .unwrap()
                .push(format!("m {room} {seq} {epoch} {f}"));
        }
        fn presence(&self, room: &str, origin: &str, frame: Bytes) {
            let f = String::from_utf8_lossy(&frame).into_owned();
            self.0
                .lock()
                .unwrap()
                .push(format!("p {room} {origin} {f}"));
        }
        fn other(&self, channel: &str, payload: Bytes) {
            let p = String::from_utf8_lossy(&payload).into_owned();
            self.0.lock().unwrap().push(format!("o {channel} {p}"));
        }
        fn subscribed(&self, room: &str) {
            self.0.lock().unwrap().push(format!("s {room}"));
        }
        fn unsubscribed(&self, room: &str) {
            self.0.lock().unwrap().push(format!("x {room}"));
        }
        fn disconnected(&self) {
            self.0.lock().unwrap().push("d".into());
        }
        fn undecodable(&self, room: &str) {
            self.0.lock().unwrap().push(format!("u {room}"));
        }
    }

    fn push(kind: PushKind, parts: &[&str]) -> PushInfo {
        PushInfo {
            kind,
            data: parts
                .iter()
                .map(|p| Value::BulkString(p.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn pushes_are_decoded_once() {
        let log = Log::default();
        let bus = keys::room_channel("r1");
        dispatch(push(PushKind::Message, &[&bus, "7 99 {\"a\":1}"]), &log);
        dispatch(push(PushKind::Message, &[&bus, "p c-1 {\"b\":2}"]), &log);
        dispatch(push(PushKind::Message, &[&bus, "junk"]), &log);
        dispatch(
            push(PushKind::Message, &["turnout:control:n1", "moved r1 2 n2"]),
            &log,
        );
        dispatch(push(PushKind::Subscribe, &[&bus]), &log);
        dispatch(push(PushKind::SMessage, &[&bus, "8 99 {\"a\":2}"]), &log);
        dispatch(push(PushKind::SSubscribe, &[&bus]), &log);
        dispatch(push(PushKind::SUnsubscribe, &[&bus]), &log);
        dispatch(push(PushKind::Disconnection, &[]), &log);
        assert_eq!(
            *log.0.lock().unwrap(),
            vec![
                "m r1 7 99 {\"a\":1}",
                "p r1 c-1 {\"b\":2}",
                "u r1",
                "o turnout:control:n1 moved r1 2 n2",
                "s r1",
                "m r1 8 99 {\"a\":2}",
                "s r1",
                "x r1",
                "d",
            ]
        );
    }
}
