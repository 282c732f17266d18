//! A run's fault schedule: drawn from a seed, so a failing run can be run
//! again exactly (same seed, same faults at the same moments). Pure: the
//! campaign turns each [`Fault`] into actions on the cluster.
//!
//! Faults follow one another with short gaps; now and then one starts
//! while another is under way, but never two on one resource (Redis, the
//! gateway, the router, one node, one room).

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Redis runs a node's commands, and the node never hears the answers
    /// (its connection is closed when they come back).
    RedisLostReplies,
    /// Redis stops (SIGSTOP) for less than a node's lease…
    RedisStallShort,
    /// …or for longer.
    RedisStallLong,
    /// Redis is killed and started again (its append-only file keeps state).
    RedisRestart,
    /// A room's history, seq, epoch or publish-id keys vanish, as eviction
    /// makes them.
    EvictHistory,
    EvictSeq,
    EvictEpoch,
    /// Publish ids older than a client's resend window (what an LRU evicts).
    EvictIds,
    /// Redis at `maxmemory` with `noeviction`: writes refused.
    RedisOom,
    /// A node is killed (SIGKILL) and started again after the fault.
    NodeKill,
    /// A node stops (SIGSTOP) and goes on.
    NodeStop,
    /// A node drains (SIGTERM) and is started again after the fault.
    NodeDrain,
    /// The gateway, or the router, is killed and started again.
    GatewayRestart,
    RouterRestart,
    /// The network between a node and Redis, or between the gateway and a
    /// node, stops carrying anything.
    CutRedis,
    CutGateway,
    /// Clients that join a busy room and never read.
    SlowReaders,
    /// More clients for one room than its node's `max_connections`.
    Crowd,
}

impl Kind {
    pub const ALL: [Kind; 18] = [
        Kind::RedisLostReplies,
        Kind::RedisStallShort,
        Kind::RedisStallLong,
        Kind::RedisRestart,
        Kind::EvictHistory,
        Kind::EvictSeq,
        Kind::EvictEpoch,
        Kind::EvictIds,
        Kind::RedisOom,
        Kind::NodeKill,
        Kind::NodeStop,
        Kind::NodeDrain,
        Kind::GatewayRestart,
        Kind::RouterRestart,
        Kind::CutRedis,
        Kind::CutGateway,
        Kind::SlowReaders,
        Kind::Crowd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RedisLostReplies => "redis_lost_replies",
            Kind::RedisStallShort => "redis_stall_short",
            Kind::RedisStallLong => "redis_stall_long",
            Kind::RedisRestart => "redis_restart",
            Kind::EvictHistory => "evict_history",
            Kind::EvictSeq => "evict_seq",
            Kind::EvictEpoch => "evict_epoch",
            Kind::EvictIds => "evict_ids",
            Kind::RedisOom => "redis_oom",
            Kind::NodeKill => "node_kill",
            Kind::NodeStop => "node_stop",
            Kind::NodeDrain => "node_drain",
            Kind::GatewayRestart => "gateway_restart",
            Kind::RouterRestart => "router_restart",
            Kind::CutRedis => "cut_redis",
            Kind::CutGateway => "cut_gateway",
            Kind::SlowReaders => "slow_readers",
            Kind::Crowd => "crowd",
        }
    }

    /// What the fault acts on: a node's, a room's, or one shared process's.
    fn target(self) -> Target {
        match self {
            Kind::RedisLostReplies | Kind::CutRedis | Kind::CutGateway => Target::Node,
            Kind::NodeKill | Kind::NodeStop | Kind::NodeDrain => Target::Node,
            Kind::EvictHistory | Kind::EvictSeq | Kind::EvictEpoch | Kind::EvictIds => Target::Room,
            Kind::SlowReaders | Kind::Crowd => Target::Room,
            Kind::RedisStallShort | Kind::RedisStallLong | Kind::RedisRestart | Kind::RedisOom => {
                Target::Redis
            }
            Kind::GatewayRestart => Target::Gateway,
            Kind::RouterRestart => Target::Router,
        }
    }

    /// Whether the fault takes Redis as a whole (none of those overlap).
    fn whole_redis(self) -> bool {
        self.target() == Target::Redis
    }

    /// Whether the fault is made with Redis commands (it cannot start while
    /// Redis is down or stalled).
    fn uses_redis(self) -> bool {
        matches!(
            self,
            Kind::EvictHistory
                | Kind::EvictSeq
                | Kind::EvictEpoch
                | Kind::EvictIds
                | Kind::RedisOom
        )
    }

    /// How long it lasts, drawn between bounds that depend on the lease.
    fn duration(self, rng: &mut StdRng, lease_s: f64) -> f64 {
        let (lo, hi) = match self {
            Kind::RedisLostReplies => (0.3, 2.0),
            Kind::RedisStallShort => (0.2 * lease_s, 0.8 * lease_s),
            Kind::RedisStallLong => (1.3 * lease_s, (3.0 * lease_s).max(1.5 * lease_s + 1.0)),
            Kind::RedisRestart => (0.0, 0.0),
            Kind::EvictHistory | Kind::EvictSeq | Kind::EvictEpoch | Kind::EvictIds => (0.0, 0.0),
            Kind::RedisOom => (1.0, 4.0),
            Kind::NodeKill | Kind::NodeDrain => (1.0, 4.0),
            Kind::NodeStop => (0.3 * lease_s, 2.5 * lease_s),
            Kind::GatewayRestart | Kind::RouterRestart => (0.3, 2.0),
            Kind::CutRedis => (0.3 * lease_s, 3.0 * lease_s),
            Kind::CutGateway => (1.0, 4.0),
            Kind::SlowReaders => (3.0, 6.0),
            Kind::Crowd => (2.0, 5.0),
        };
        if hi <= lo {
            return lo;
        }
        round(rng.random_range(lo..hi))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Redis,
    Gateway,
    Router,
    Node,
    Room,
}

/// One fault of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: Kind,
    /// A node id, a room, or `redis`, `gateway`, `router`.
    pub target: String,
    /// Seconds after the load started.
    pub at_s: f64,
    pub duration_s: f64,
}

/// What a schedule is drawn for.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    /// Seconds in which faults start.
    pub duration_s: f64,
    /// The nodes' `heartbeat_ttl`, in seconds.
    pub lease_s: f64,
    pub nodes: Vec<String>,
    pub rooms: Vec<String>,
    /// The kinds to draw from.
    pub kinds: Vec<Kind>,
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Draws the faults of a run.
pub fn draw(plan: &Plan) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut faults: Vec<Fault> = Vec::new();
    if plan.kinds.is_empty() {
        return faults;
    }
    // Load first: the faults start once every client is in its rooms.
    let mut t = 2.0;
    while t < plan.duration_s {
        let kind = *plan.kinds.choose(&mut rng).expect("kinds");
        let target = match kind.target() {
            Target::Node => plan.nodes.choose(&mut rng).cloned(),
            Target::Room => plan.rooms.choose(&mut rng).cloned(),
            Target::Redis => Some("redis".to_owned()),
            Target::Gateway => Some("gateway".to_owned()),
            Target::Router => Some("router".to_owned()),
        };
        let Some(target) = target else {
            t += 1.0;
            continue;
        };
        let duration_s = kind.duration(&mut rng, plan.lease_s);
        let at_s = round(t);
        let busy = faults.iter().any(|f| {
            let overlaps = f.at_s + f.duration_s + 1.0 > at_s;
            let redis = |a: Kind, b: Kind| a.whole_redis() && (b.whole_redis() || b.uses_redis());
            overlaps && (f.target == target || redis(f.kind, kind) || redis(kind, f.kind))
        });
        if busy {
            t += 0.5;
            continue;
        }
        faults.push(Fault {
            kind,
            target,
            at_s,
            duration_s,
        });
        // Mostly one after another, with time to recover; sometimes the
        // next starts while this one lasts.
        t = if rng.random_bool(0.25) {
            at_s + rng.random_range(0.0..duration_s.max(0.5))
        } else {
            at_s + duration_s + rng.random_range(1.0..4.0)
        };
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64) -> Plan {
        Plan {
            seed,
            duration_s: 300.0,
            lease_s: 1.5,
            nodes: vec!["n1".into(), "n2".into(), "n3".into()],
            rooms: vec!["a".into(), "b".into()],
            kinds: Kind::ALL.to_vec(),
        }
    }

    #[test]
    fn a_seed_draws_the_same_schedule_every_time() {
        assert_eq!(draw(&plan(7)), draw(&plan(7)));
        assert_ne!(draw(&plan(7)), draw(&plan(8)));
    }

    #[test]
    fn faults_start_within_the_run_in_order_and_cover_the_menu() {
        let faults = draw(&plan(1));
        assert!(faults.len() > 30, "{}", faults.len());
        assert!(faults.windows(2).all(|w| w[0].at_s <= w[1].at_s));
        assert!(faults.iter().all(|f| f.at_s >= 2.0 && f.at_s < 300.0));
        let kinds: std::collections::HashSet<Kind> = faults.iter().map(|f| f.kind).collect();
        assert!(kinds.len() >= 15, "{kinds:?}");
        // Some start while another lasts.
        let overlapping = faults
            .windows(2)
            .filter(|w| w[1].at_s < w[0].at_s + w[0].duration_s)
            .count();
        assert!(overlapping > 0);
    }

    #[test]
    fn no_two_faults_on_one_resource_at_once() {
        for seed in 0..50 {
            let faults = draw(&plan(seed));
            for (i, a) in faults.iter().enumerate() {
                for b in &faults[i + 1..] {
                    let overlap = b.at_s < a.at_s + a.duration_s + 1.0;
                    if overlap {
                        assert_ne!(a.target, b.target, "seed {seed}: {a:?} {b:?}");
                        let needs = |k: Kind| k.whole_redis() || k.uses_redis();
                        assert!(
                            !(a.kind.whole_redis() && needs(b.kind)),
                            "seed {seed}: Redis is down for {a:?}, {b:?} needs it"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stalls_are_shorter_or_longer_than_the_lease() {
        for f in draw(&plan(3)) {
            match f.kind {
                Kind::RedisStallShort => assert!(f.duration_s < 1.5, "{f:?}"),
                Kind::RedisStallLong => assert!(f.duration_s > 1.5, "{f:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn only_the_kinds_asked_for() {
        let mut p = plan(5);
        p.kinds = vec![Kind::NodeKill];
        assert!(
            draw(&p)
                .iter()
                .all(|f| f.kind == Kind::NodeKill && f.target.starts_with('n'))
        );
        p.kinds.clear();
        assert!(draw(&p).is_empty());
    }
}
