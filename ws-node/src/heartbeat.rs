//! The node's membership in the cluster: its heartbeat record in Redis,
//! the draining mark, and the periodic work that rides on the heartbeat
//! (renewing presence leases and, sticky, checking ownership; forgetting
//! idle rooms held in memory).

use crate::node::NodeState;
use crate::store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use turnout_common::redis::{Con, memory, scripts};
use turnout_proto::keys;

/// Announces the node: no longer draining (a node restarting under the
/// same id), heartbeat written and told to routers at once.
pub(crate) async fn register(state: &Arc<NodeState>) {
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

/// The node's lease on its membership, on its own monotonic clock: it
/// runs from the moment the last heartbeat Redis acknowledged was sent, for
/// `heartbeat_ttl`. Past that, routers may have counted the node dead and
/// given its rooms to others (sticky), and its presence lease may have run
/// out: whatever the node holds must be checked before it is trusted.
pub(crate) struct Lease {
    origin: Instant,
    /// Send time of the last acknowledged heartbeat, ms after `origin`.
    acked: AtomicU64,
    lapsed: AtomicBool,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            origin: Instant::now(),
            acked: AtomicU64::new(0),
            lapsed: AtomicBool::new(false),
        }
    }
}

impl Lease {
    fn age(&self) -> Duration {
        let acked = Duration::from_millis(self.acked.load(Ordering::Acquire));
        self.origin.elapsed().saturating_sub(acked)
    }

    /// A heartbeat sent at `sent` was acknowledged; true when the lease had
    /// run out before it (a pause the watchdog did not see).
    fn renewed(&self, sent: Instant, ttl: Duration) -> bool {
        let ran_out = self.age() >= ttl;
        let at = sent.saturating_duration_since(self.origin).as_millis() as u64;
        self.acked.fetch_max(at, Ordering::AcqRel);
        ran_out
    }

    /// Whether the lease may have run out and is not verified again.
    pub(crate) fn lapsed(&self) -> bool {
        self.lapsed.load(Ordering::Acquire)
    }
}

/// Writes the heartbeat record; `announce` also tells routers at once.
pub(crate) async fn write(state: &Arc<NodeState>, announce: bool) -> bool {
    let Some(mut con) = state.redis.get().cloned() else {
        return false;
    };
    let sent = Instant::now();
    let info = state.node_info();
    let json = serde_json::to_string(&info).expect("NodeInfo serialises");
    let beat = scripts::heartbeat(&info.id, &json, state.settings.heartbeat_ttl, announce);
    match beat.invoke_async::<()>(&mut con).await {
        Ok(()) => {
            state
                .hub
                .metrics
                .heartbeat_seconds
                .observe(sent.elapsed().as_secs_f64());
            state.readiness.ok("redis");
            let ran_out = state.lease.renewed(sent, state.settings.heartbeat_ttl);
            // A local node holds nothing in Redis a lapse could take away.
            if ran_out && state.hub.store.redis().is_some() {
                lapsed(
                    state,
                    "the heartbeat before this one was acknowledged too long ago",
                );
            }
            true
        }
        Err(e) => {
            state.hub.metrics.redis_errors.inc();
            tracing::warn!(error = %e, "heartbeat failed");
            state
                .readiness
                .waiting_for("redis", format!("heartbeat not acknowledged: {e}"));
            false
        }
    }
}

/// Watches the lease every quarter heartbeat interval: the moment it may
/// have run out (Redis unreachable, or the process was paused), the node
/// checks what it holds.
pub(crate) async fn watch_lease(state: Arc<NodeState>, stop: CancellationToken) {
    let every = (state.settings.heartbeat_interval / 4).min(Duration::from_millis(250));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if state.hub.store.redis().is_none() {
            return; // local: nothing in Redis to lose
        }
        if state.draining() {
            continue;
        }
        let age = state.lease.age();
        if age >= state.settings.heartbeat_ttl && !state.lease.lapsed() {
            lapsed(&state, &format!("no heartbeat acknowledged for {age:?}"));
        }
    }
}

/// The lease may have run out: count it, stop taking clients, and check
/// what the node holds (once per lapse).
fn lapsed(state: &Arc<NodeState>, why: &str) {
    if state.lease.lapsed.swap(true, Ordering::AcqRel) {
        return;
    }
    state.hub.metrics.lease_lapses.inc();
    state.hub.metrics.lease_lapsed.set(1);
    tracing::warn!("membership lease may have lapsed ({why}); checking what this node still holds");
    state
        .readiness
        .waiting_for("lease", format!("membership lease may have lapsed: {why}"));
    tokio::spawn(verify(state.clone()));
}

/// After a lapse: asks Redis what this node still holds (sticky: which of
/// its rooms it still owns; all: presence written again where its lease ran
/// out). Rooms taken over meanwhile have their members moved to the new
/// owner. When Redis does not answer within a heartbeat interval, a sticky
/// node cannot know which rooms are still its own while others may be
/// serving them: it sends every client away at once, to reconnect through
/// the gateway, where a live owner takes them. (A pubsub node keeps its
/// clients: whatever they miss is read back from history once Redis
/// answers, and a full Redis outage would otherwise send every client of
/// every node away at once.)
async fn verify(state: Arc<NodeState>) {
    let ttl = state.settings.heartbeat_ttl;
    let patience = state.settings.heartbeat_interval;
    let mut backoff =
        turnout_common::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut sent_away = false;
    // Relay: rooms this node owns may be placed anew meanwhile.
    state.hub.strategy.lease_lapsed();
    loop {
        let renewed = tokio::time::timeout(patience, state.hub.renew()).await;
        if matches!(renewed, Ok(true)) && state.lease.age() < ttl {
            break;
        }
        // Redis answered but the heartbeat is not through yet: wait for it.
        if !matches!(renewed, Ok(true))
            && !sent_away
            && state.hub.strategy.sends_clients_away_without_lease()
        {
            sent_away = true;
            tracing::warn!(
                connections = state.conns.len(),
                "Redis does not answer: sending every client away (reconnect through the gateway)"
            );
            state.hub.send_away(&state.conns, "lease_lost");
        }
        if state.draining() {
            state.hub.metrics.lease_lapsed.set(0);
            return;
        }
        backoff.wait().await;
    }
    state.lease.lapsed.store(false, Ordering::Release);
    state.hub.metrics.lease_lapsed.set(0);
    state.readiness.ok("lease");
    tracing::info!("membership lease holds again; what this node holds was checked");
}

/// How often the node reads Redis's memory state.
const MEMORY_EVERY: Duration = Duration::from_secs(10);

/// What the node last said about Redis's memory, so each news is logged once.
#[derive(Default)]
struct MemoryNews {
    /// The policy last warned about.
    policy: Option<String>,
    evicted_keys: u64,
    nearly_full: bool,
    /// INFO is refused (an ACL without it): not asked again.
    refused: bool,
}

/// Reads Redis's memory state into the metrics; logs, once each, an
/// eviction policy (turnout needs `noeviction`), keys evicted, and memory
/// past 90 % of `maxmemory`.
async fn watch_memory(state: &NodeState, con: &mut Con, news: &std::sync::Mutex<MemoryNews>) {
    if news.lock().unwrap_or_else(|e| e.into_inner()).refused {
        return;
    }
    let read = tokio::time::timeout(Duration::from_secs(2), memory::read(con)).await;
    let m = match read {
        Ok(Ok(m)) => m,
        Ok(Err(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
            tracing::info!(
                "Redis refuses INFO to this user: its memory is not watched (turnout_redis_* memory metrics absent)"
            );
            news.lock().unwrap_or_else(|e| e.into_inner()).refused = true;
            return;
        }
        _ => return,
    };
    let metrics = &state.hub.metrics;
    metrics.redis_used_memory.set(m.used as i64);
    metrics.redis_maxmemory.set(m.max as i64);
    metrics.redis_may_evict.set(m.may_evict() as i64);
    metrics.redis_evicted_keys.set(m.evicted_keys as i64);
    let mut news = news.lock().unwrap_or_else(|e| e.into_inner());
    if m.may_evict() && news.policy.as_deref() != Some(m.policy.as_str()) {
        tracing::error!(
            policy = %m.policy,
            maxmemory = m.max,
            "Redis may evict turnout's state (publish ids, heartbeats, history): set maxmemory-policy noeviction (docs/OPERATIONS.md, Redis memory)"
        );
        news.policy = Some(m.policy.clone());
    } else if !m.may_evict() {
        news.policy = None;
    }
    if m.evicted_keys > news.evicted_keys && m.may_evict() {
        tracing::warn!(
            evicted_keys = m.evicted_keys,
            "Redis evicted keys: rooms may start over, and resends within dedupe_window may be taken twice"
        );
    }
    news.evicted_keys = m.evicted_keys;
    let nearly_full = m.fill() > 0.9;
    if nearly_full && !news.nearly_full {
        tracing::warn!(
            used = m.used,
            maxmemory = m.max,
            "Redis is past 90 % of maxmemory: at 100 % publishes and joins are refused (unavailable)"
        );
    }
    news.nearly_full = nearly_full;
}

/// Heartbeats every `heartbeat_interval` until `stop`; every
/// `presence_ttl / 3` renews the node's leases on its rooms, and every
/// [`MEMORY_EVERY`] reads Redis's memory state.
pub(crate) async fn run(state: Arc<NodeState>, stop: CancellationToken) {
    let settings = &state.settings;
    let mut tick = tokio::time::interval(settings.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let memory_news = Arc::new(std::sync::Mutex::new(MemoryNews::default()));
    let mut last_memory: Option<tokio::time::Instant> = None;
    let mut ok = true;
    let renew_every = (settings.presence_ttl / 3).max(settings.heartbeat_interval);
    let mut last_renew = tokio::time::Instant::now();
    // Renewal runs beside the heartbeat, never delaying it: a slow renewal
    // (many rooms, a room to move) must not let the node's own lease lapse.
    let renewing = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if last_renew.elapsed() >= renew_every {
            last_renew = tokio::time::Instant::now();
            match &state.hub.store {
                Store::Redis(_) => {
                    if !renewing.swap(true, Ordering::AcqRel) {
                        let (hub, renewing) = (state.hub.clone(), renewing.clone());
                        tokio::spawn(async move {
                            hub.renew().await;
                            renewing.store(false, Ordering::Release);
                        });
                    }
                }
                Store::Memory(m) => {
                    let n = m.sweep();
                    if n > 0 {
                        tracing::debug!(rooms = n, "idle rooms forgotten");
                    }
                }
            }
        }
        let Some(con) = state.redis.get() else {
            continue;
        };
        if state.hub.store.redis().is_some()
            && last_memory.is_none_or(|t| t.elapsed() >= MEMORY_EVERY)
        {
            last_memory = Some(tokio::time::Instant::now());
            let (state, news, mut con) = (state.clone(), memory_news.clone(), con.clone());
            tokio::spawn(async move { watch_memory(&state, &mut con, &news).await });
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
pub(crate) async fn deregister(state: &Arc<NodeState>) {
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
    client: turnout_common::redis::Redis,
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
pub(crate) async fn try_connect(client: &turnout_common::redis::Redis) -> Option<Con> {
    let wait = std::time::Duration::from_secs(3);
    turnout_common::redis::try_commands(client, wait).await.ok()
}
