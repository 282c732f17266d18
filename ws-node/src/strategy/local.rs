//! `local`: servers that share nothing, the baseline the other two fix.
//! Rooms live in the node's memory; a message reaches the members on this
//! node and no one else. A local node needs no Redis (it heartbeats when
//! Redis is there, so a router and gateway can spread clients over several).

use crate::hub::{Hub, RoomError};
use std::sync::Arc;
use turnout_common::redis::{Origin, Published, Publisher};
use turnout_proto::bus::FrameParts;
use turnout_proto::codes::ErrorCode;
use turnout_proto::names::RoomName;

pub(crate) struct Local;

pub(crate) async fn publish(
    hub: &Arc<Hub>,
    room: &RoomName,
    parts: &FrameParts,
    origin: Origin<'_>,
    id: Option<&str>,
) -> Result<Published, RoomError> {
    let p = hub
        .store_publish(room, parts, Publisher::Relay, origin, id)
        .await?
        .ok_or_else(|| RoomError::from(ErrorCode::Internal))?;
    if !p.duplicate {
        let frame = parts.rendered(p.seq, &p.epoch, p.first_of_epoch);
        hub.deliver(room, p.seq, &p.epoch, frame.into());
    }
    Ok(p)
}
