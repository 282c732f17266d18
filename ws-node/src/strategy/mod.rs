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
use std::sync::Arc;
use turnout_common::redis::Origin;
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

    /// Publishes into `room`; returns the message's seq.
    pub(crate) async fn publish(
        &self,
        hub: &Arc<Hub>,
        room: &RoomName,
        parts: &FrameParts,
        origin: Origin<'_>,
    ) -> Result<u64, RoomError> {
        match self {
            Strategy::Local(_) => local::publish(hub, room, parts, origin).await,
            Strategy::Sticky(s) => s.publish(hub, room, parts, origin).await,
            Strategy::Pubsub(_) => pubsub::publish(hub, room, parts, origin).await,
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

    /// Sticky: the ownership this node must keep checking and pinning.
    pub(crate) fn sticky(&self) -> Option<&sticky::Sticky> {
        match self {
            Strategy::Sticky(s) => Some(s),
            _ => None,
        }
    }
}
