//! `sticky`: every room has one owner node, and all its members connect
//! there, so a message never leaves the node it was published on.
//!
//! Ownership is a claim in Redis (`claim.lua`) with an epoch that grows
//! with every claim. The owner's publishes are fenced by it: the publish
//! script refuses an owner whose record no longer names it at its epoch.
//! A node that loses a room learns it three ways, and moves the room's
//! members at once (`wrong_node` with `redirect`): from the claim itself (a
//! notice on its control channel), from its periodic check of its rooms'
//! owner records (`renew.lua`), and from a refused publish.

use crate::hub::{Hub, RoomError};
use std::sync::Arc;
use std::time::Duration;
use turnout_common::redis::{Origin, Published, Publisher, rooms};
use turnout_proto::bus::FrameParts;
use turnout_proto::codes::ErrorCode;
use turnout_proto::names::RoomName;

/// How a node learns that it lost a room.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lost {
    /// A claim took it at this epoch.
    ClaimedAt(u64),
    /// The owner record does not name this node at this epoch.
    NotAt(u64),
}

pub(crate) struct Sticky {
    /// How long an unused placement stays pinned to its owner.
    pub(crate) pin: Duration,
    /// Personal rooms (`#user`): no owner; their channels, as in pubsub.
    pub(crate) personal: super::pubsub::Pubsub,
}

fn unavailable(hub: &Hub, room: &str, e: &redis::RedisError, what: &str) -> RoomError {
    hub.metrics.redis_errors.inc();
    tracing::warn!(room, error = %e, "{what} failed: Redis");
    RoomError::from(ErrorCode::Unavailable)
}

impl Sticky {
    /// Makes sure this node owns `room` (claiming it when it has no live
    /// owner) and returns the epoch; otherwise `wrong_node` with the
    /// owner's URL.
    pub(crate) async fn own(&self, hub: &Hub, room: &RoomName) -> Result<u64, RoomError> {
        let Some(redis) = hub.store.redis() else {
            return Err(ErrorCode::Internal.into());
        };
        let mut con = redis.con.clone();
        let me = hub.node_id.as_str();
        let owner = rooms::place(&mut con, room, me, self.pin, &[], &[])
            .await
            .map_err(|e| unavailable(hub, room, &e, "ownership check"))?;
        if owner.node == me {
            return Ok(owner.epoch);
        }
        Err(RoomError {
            code: ErrorCode::WrongNode,
            redirect: node_url(hub, &owner.node).await,
        })
    }

    pub(crate) async fn publish(
        &self,
        hub: &Arc<Hub>,
        room: &RoomName,
        parts: &FrameParts,
        origin: Origin<'_>,
        id: Option<&str>,
    ) -> Result<Published, RoomError> {
        let epoch = match hub.room_epoch(room) {
            Some(e) => e,
            None => self.own(hub, room).await?,
        };
        let owner = Publisher::Owner(&hub.node_id, epoch);
        let published = match hub.store_publish(room, parts, owner, origin, id).await {
            Ok(p) => p,
            Err(e) => {
                // The script may have run with its reply lost: if it did,
                // only this node would deliver the message, from history.
                hub.catch_up(room);
                return Err(e);
            }
        };
        match published {
            Some(p) => {
                // A duplicate (a resend of a publish whose reply was lost)
                // was delivered by the first try's catch-up, which runs
                // until Redis answers.
                if !p.duplicate {
                    let frame = parts.rendered(p.seq, &p.epoch, p.first_of_epoch);
                    hub.deliver(room, p.seq, &p.epoch, frame.into());
                }
                Ok(p)
            }
            None => {
                // Fenced: the room was placed elsewhere. Everyone here must move.
                hub.metrics.fenced.inc();
                let redirect = owner_url(hub, room).await;
                tracing::info!(room = %room, ?redirect, "publish fenced: this node no longer owns the room");
                hub.evict(room, Some(epoch), redirect.clone()).await;
                Err(RoomError {
                    code: ErrorCode::WrongNode,
                    redirect,
                })
            }
        }
    }

    /// This node lost `room`: a claim at epoch `claimed` said so on its
    /// control channel (naming the new owner), or the periodic check found
    /// the owner record no longer names this node at the epoch it holds.
    /// Moves the room's members to the owner, in the background (the caller
    /// is the push reader or the renewal).
    pub(crate) fn lost(hub: &Arc<Hub>, room: &str, how: Lost, new_owner: Option<&str>) {
        let Some(epoch) = hub.room_epoch(room) else {
            return;
        };
        let stale = match how {
            Lost::ClaimedAt(claimed) => epoch < claimed,
            Lost::NotAt(checked) => epoch == checked,
        };
        if !stale {
            return; // claimed back meanwhile
        }
        let hub = hub.clone();
        let (room, new_owner) = (room.to_owned(), new_owner.map(str::to_owned));
        tokio::spawn(async move {
            let redirect = match &new_owner {
                Some(owner) => node_url(&hub, owner).await,
                None => owner_url(&hub, &room).await,
            };
            tracing::info!(
                room,
                ?redirect,
                epoch,
                "room taken over by another node; moving its members"
            );
            hub.metrics.fenced.inc();
            hub.evict(&room, Some(epoch), redirect).await;
        });
    }
}

/// The URL of `room`'s current owner, if it has one.
async fn owner_url(hub: &Hub, room: &str) -> Option<String> {
    let redis = hub.store.redis()?;
    let owner = rooms::claim(&mut redis.con.clone(), room, "", Duration::ZERO, &[])
        .await
        .ok()?;
    if owner.node.is_empty() {
        return None;
    }
    node_url(hub, &owner.node).await
}

/// A node's advertised URL, from its heartbeat record.
pub(crate) async fn node_url(hub: &Hub, node: &str) -> Option<String> {
    let redis = hub.store.redis()?;
    turnout_common::redis::node_info(&mut redis.con.clone(), node)
        .await
        .ok()
        .flatten()
        .map(|n| n.url)
}
