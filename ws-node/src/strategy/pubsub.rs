//! `pubsub`: clients land on any node; a message published on one node
//! reaches the others over the room's Redis channel. A node subscribes to a
//! room's channel only while it has members of the room, and delivers its
//! own messages when they come back on the channel, like everyone else's,
//! so one order holds on every node. The reader of the channel is in
//! `crate::bus`.

use crate::hub::{Hub, RoomError};
use std::sync::Arc;
use turnout_common::redis::{Channels, Origin, Published, Publisher};
use turnout_proto::bus::FrameParts;
use turnout_proto::codes::ErrorCode;
use turnout_proto::names::RoomName;
use turnout_proto::{bus, keys};

pub(crate) struct Pubsub {
    /// Room channels subscribed on the node's pub/sub connection.
    pub(crate) channels: Channels,
}

impl Pubsub {
    pub(crate) async fn open(&self, room: &str) -> Result<(), RoomError> {
        self.channels.ensure(room).await.map_err(|e| {
            tracing::warn!(room, error = %e, "subscribe failed");
            RoomError::from(ErrorCode::Unavailable)
        })
    }

    pub(crate) fn close(&self, room: &str) {
        self.channels.release(room);
    }

    pub(crate) async fn announce(&self, hub: &Hub, room: &str, origin: &str, frame: String) {
        let Some(redis) = hub.store.redis() else {
            return;
        };
        let r: redis::RedisResult<()> = redis::cmd(redis.con.room_publish())
            .arg(keys::room_channel(room))
            .arg(bus::encode_presence(origin, &frame))
            .query_async(&mut redis.con.clone())
            .await;
        if let Err(e) = r {
            hub.metrics.redis_errors.inc();
            tracing::debug!(room, error = %e, "presence event not published");
        }
    }
}

pub(crate) async fn publish(
    hub: &Arc<Hub>,
    room: &RoomName,
    parts: &FrameParts,
    origin: Origin<'_>,
    id: Option<&str>,
) -> Result<Published, RoomError> {
    // Delivered here when it comes back on the room's channel (a duplicate
    // was not published again).
    hub.store_publish(room, parts, Publisher::Relay, origin, id)
        .await?
        .ok_or_else(|| RoomError::from(ErrorCode::Internal))
}
