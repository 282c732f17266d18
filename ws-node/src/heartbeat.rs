//! The node's membership in the cluster: its heartbeat record in Redis,
//! the draining mark, and the periodic work that rides on the heartbeat
//! (renewing presence leases and, sticky, checking ownership; forgetting
//! idle rooms held in memory).

use crate::node::NodeState;
use crate::store::Store;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use turnout_common::redis::Con;
use turnout_proto::keys;

/// Announces the node: no longer draining (a node restarting under the
/// same id), heartbeat written and told to routers at once.
pub(crate) async fn register(state: &NodeState) {
    mark_draining(state, false).await;
    write(state, true).await;
}

/// Draining nodes keep their heartbeat but own nothing new (claims skip
/// them); the set makes that visible to nodes claiming a room.
pub(crate) async fn mark_draining(state: &NodeState, draining: bool) {
    let Some(mut con) = state.redis.get().cloned() else {
        return;
    };
    let cmd = if draining { "SADD" } else { "SREM" };
    let r: redis::RedisResult<()> = redis::cmd(cmd)
        .arg(keys::DRAINING)
        .arg(&state.info.id)
        .query_async(&mut con)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "updating the draining set failed");
    }
}

/// Writes the heartbeat record; `announce` also tells routers at once.
pub(crate) async fn write(state: &NodeState, announce: bool) -> bool {
    let Some(mut con) = state.redis.get().cloned() else {
        return false;
    };
    let info = state.node_info();
    let json = serde_json::to_string(&info).expect("NodeInfo serialises");
    let ttl = state.settings.heartbeat_ttl.as_millis() as u64;
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("SET")
        .arg(keys::node(&info.id))
        .arg(json)
        .arg("PX")
        .arg(ttl)
        .ignore()
        .cmd("SADD")
        .arg(keys::NODES)
        .arg(&info.id)
        .ignore();
    if announce {
        pipe.cmd("PUBLISH")
            .arg(keys::MEMBERSHIP_CHANNEL)
            .arg(&info.id)
            .ignore();
    }
    match pipe.query_async::<()>(&mut con).await {
        Ok(()) => true,
        Err(e) => {
            state.hub.metrics.redis_errors.inc();
            tracing::warn!(error = %e, "heartbeat failed");
            false
        }
    }
}

/// Heartbeats every `heartbeat_interval` until `stop`; every
/// `presence_ttl / 3` renews the node's leases on its rooms.
pub(crate) async fn run(state: Arc<NodeState>, stop: CancellationToken) {
    let settings = &state.settings;
    let mut tick = tokio::time::interval(settings.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ok = true;
    let renew_every = (settings.presence_ttl / 3).max(settings.heartbeat_interval);
    let mut last_renew = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if last_renew.elapsed() >= renew_every {
            last_renew = tokio::time::Instant::now();
            match &state.hub.store {
                Store::Redis(_) => state.hub.renew().await,
                Store::Memory(m) => {
                    let n = m.sweep();
                    if n > 0 {
                        tracing::debug!(rooms = n, "idle rooms forgotten");
                    }
                }
            }
        }
        if state.redis.get().is_none() {
            continue;
        }
        // After an outage, announce again so routers see the node at once.
        let was_ok = ok;
        ok = write(&state, !was_ok).await;
        if ok && !was_ok {
            tracing::info!("heartbeat restored");
        }
    }
}

/// Leaves the live set at once (a clean stop).
pub(crate) async fn deregister(state: &NodeState) {
    let Some(mut con) = state.redis.get().cloned() else {
        return;
    };
    let id = &state.info.id;
    let r: redis::RedisResult<()> = redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(keys::node(id))
        .ignore()
        .cmd("SREM")
        .arg(keys::NODES)
        .arg(id)
        .ignore()
        .cmd("SREM")
        .arg(keys::DRAINING)
        .arg(id)
        .ignore()
        .cmd("PUBLISH")
        .arg(keys::MEMBERSHIP_CHANNEL)
        .arg(id)
        .ignore()
        .query_async(&mut con)
        .await;
    match r {
        Ok(()) => tracing::info!(node = %id, "deregistered"),
        Err(e) => {
            tracing::warn!(node = %id, error = %e, "deregister failed; the heartbeat will expire")
        }
    }
}

/// A `local` node without Redis at start: keeps trying, quietly, so that it
/// joins a cluster's live set once Redis is there.
pub(crate) async fn connect_later(
    state: Arc<NodeState>,
    client: redis::Client,
    stop: CancellationToken,
) {
    let mut backoff = turnout_common::backoff::Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    loop {
        tokio::select! {
            _ = backoff.wait() => {}
            _ = stop.cancelled() => return,
        }
        if let Some(con) = try_connect(&client).await {
            let _ = state.redis.set(con);
            tracing::info!("Redis is reachable now: heartbeating");
            register(&state).await;
            return;
        }
    }
}

/// One connection attempt, given up after a few seconds: a probe first (a
/// refused connection answers at once), then the reconnecting connection.
pub(crate) async fn try_connect(client: &redis::Client) -> Option<Con> {
    let wait = std::time::Duration::from_secs(3);
    let probe = tokio::time::timeout(wait, client.get_multiplexed_async_connection()).await;
    if !matches!(probe, Ok(Ok(_))) {
        return None;
    }
    match tokio::time::timeout(wait, turnout_common::redis::commands(client)).await {
        Ok(Ok(con)) => Some(con),
        _ => None,
    }
}
