//! Predictions for clusters larger than this machine, from the fitted
//! costs.

use super::*;
use crate::svg::fmt_num;
use serde::{Deserialize, Serialize};

/// The workload predictions are made for, at each cluster size and room size.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Assumptions {
    /// Connections each ws-node holds on average.
    pub connections_per_node: f64,
    /// Messages per second each member receives (a room publishes this many
    /// messages per second whatever its size).
    pub messages_per_member_per_sec: f64,
    /// Each member leaves and comes back once this often (seconds).
    pub rejoin_every_s: f64,
    /// Payload bytes of a message (the sweep's).
    pub payload_bytes: usize,
    /// A ws-node's `max_connections`: a sticky room larger than this does
    /// not fit on its owner.
    pub node_max_connections: f64,
    /// Members spread over nodes at random (pubsub, local).
    pub placement: String,
}

/// One predicted cluster.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Prediction {
    pub strategy: Strategy,
    pub nodes: usize,
    pub room_size: usize,
    pub rooms: f64,
    pub connections: f64,
    pub deliveries_per_sec: f64,
    pub publishes_per_sec: f64,
    /// Mean CPU cores per ws-node, and on the busiest one (sticky puts a
    /// whole room on one node).
    pub cpu_per_node_cores: f64,
    pub cpu_busiest_node_cores: f64,
    /// Connections on the busiest node (sticky: its rooms' members).
    #[serde(default)]
    pub busiest_node_connections: f64,
    pub redis_cpu_cores: f64,
    pub control_cpu_cores: f64,
    /// All cluster CPU per delivery.
    pub cpu_us_per_delivery: f64,
    pub redis_commands_per_sec: f64,
    pub redis_bytes_per_sec: f64,
    /// Messages and bytes that go from one node to another (pubsub: via
    /// Redis to each subscribed node; relay: to and from the owner).
    pub cross_node_messages_per_sec: f64,
    pub cross_node_bytes_per_sec: f64,
    /// Local: the share of deliveries that never happen.
    pub undelivered_share: f64,
    /// Can this strategy serve the workload at all?
    pub fits: bool,
    /// Why the figures should not be taken at face value (empty: within
    /// what was measured).
    pub caveats: Vec<String>,
}

/// The operation rates of `strategy` serving rooms of `room_size` on
/// `nodes` nodes under `a`, and how many nodes a room's members are on.
pub fn workload(
    strategy: Strategy,
    nodes: usize,
    room_size: usize,
    a: &Assumptions,
) -> (Load, f64) {
    let n = nodes as f64;
    // A room larger than the cluster's usual population brings its members.
    let m = room_size as f64;
    let members = (a.connections_per_node * n).max(m);
    let rooms = (members / m).max(1.0);
    let publishes = rooms * a.messages_per_member_per_sec;
    let spread = match strategy {
        // Members spread at random: the expected number of nodes with one.
        Strategy::Pubsub | Strategy::Local | Strategy::Relay => n * (1.0 - (1.0 - 1.0 / n).powf(m)),
        Strategy::Sticky => 1.0,
    };
    let deliveries = publishes * m;
    let load = Load {
        // Local: the sender's own server delivers to the sender and to the
        // other members that landed there.
        deliveries: if strategy == Strategy::Local {
            deliveries * local_delivered_share(m, n)
        } else {
            deliveries
        },
        publishes,
        fanouts: if strategy == Strategy::Pubsub {
            publishes * spread
        } else {
            0.0
        },
        // Relay: the owner is placed independently of the members, so a
        // publish crosses to it unless the publisher is on it (1 − 1/n),
        // and the owner sends it to every node with members but itself
        // (spread × (1 − 1/n)).
        hops: if strategy == Strategy::Relay {
            publishes * (1.0 - 1.0 / n) * (1.0 + spread)
        } else {
            0.0
        },
        joins: members / a.rejoin_every_s,
        connections: members,
        nodes: n,
        rooms,
    };
    (load, spread)
}

/// Local: the share of a room's deliveries that happen, with `m` members
/// landing at random on `n` servers (the sender always gets its own).
pub fn local_delivered_share(m: f64, n: f64) -> f64 {
    if m <= 0.0 || n <= 0.0 {
        return 1.0;
    }
    (1.0 + (m - 1.0) / n) / m
}

/// Redis's CPU cores under load `l`: from its predicted commands, on the
/// fitted curve (`redis_curves`); for a sweep without one, its commands
/// over what one Redis core ran (`redis_commands_per_core_second`) plus
/// pubsub's fan-out, or the CPU fit.
pub fn redis_cores(model: &Model, strategy: Strategy, l: &Load) -> f64 {
    let commands = model.eval(strategy, "redis_commands", l);
    if let Some(curve) = model.redis_curves.get(strategy.as_str()) {
        return curve.cores(commands, l);
    }
    match model.redis_commands_per_core_second.get(strategy.as_str()) {
        Some(per_core) if *per_core > 0.0 => {
            commands / per_core + l.fanouts * model.cost(strategy, "redis_cpu", "fanout") / 1e6
        }
        _ => model.eval(strategy, "redis_cpu", l) / 1e6,
    }
}

pub fn predict(
    model: &Model,
    strategy: Strategy,
    nodes: usize,
    room_size: usize,
    a: &Assumptions,
) -> Prediction {
    let (l, _) = workload(strategy, nodes, room_size, a);
    let n = nodes as f64;
    let node_cpu = model.eval(strategy, "ws_node_cpu", &l) / 1e6;
    let commands = model.eval(strategy, "redis_commands", &l);
    let redis_cpu = redis_cores(model, strategy, &l);
    let control = model.eval(strategy, "control_cpu", &l) / 1e6;
    let m = room_size as f64;
    // Sticky: a room lives on one node, with all its members. The busiest
    // node holds whole rooms: an even share rounded up at least; at most
    // what the placement bound allows (1.25 × the average, rounded down),
    // and with many rooms about three standard deviations of hashing over
    // the average; its own fixed cost and those rooms' share of the rest.
    // Relay: the members spread, but with fewer rooms than nodes the owner
    // of a room also takes its publishes and sends every hop of it (half a
    // hop's fitted cost, which covers both ends).
    let even = l.rooms / n;
    let busiest_rooms = (1.25 * even)
        .floor()
        .min((even + 3.0 * even.sqrt()).ceil())
        .max(even.ceil())
        .max(1.0)
        .min(l.rooms);
    let busiest = match strategy {
        Strategy::Sticky => {
            let fixed = model.cost(strategy, "ws_node_cpu", "node") / 1e6;
            fixed + (node_cpu - fixed * n).max(0.0) * busiest_rooms / l.rooms
        }
        Strategy::Relay if l.rooms < n => {
            let owner = l.publishes * model.cost(strategy, "ws_node_cpu", "publish")
                + 0.5 * l.hops * model.cost(strategy, "ws_node_cpu", "hop");
            node_cpu / n + owner / l.rooms / 1e6
        }
        _ => node_cpu / n,
    };
    let fits = strategy != Strategy::Sticky || m <= a.node_max_connections;
    let bytes_per_message = (a.payload_bytes + 120) as f64;
    let mut caveats = Vec::new();
    let per_node = l.deliveries / n;
    let seen = model
        .measured_range
        .get("deliveries_per_sec_per_node")
        .copied()
        .unwrap_or(0.0);
    if per_node > seen * 1.5 {
        caveats.push(format!(
            "{} deliveries/s per node, beyond the {} measured",
            fmt_num(per_node),
            fmt_num(seen)
        ));
    }
    if model
        .fit(strategy, "ws_node_cpu")
        .is_none_or(|f| !f.costs.contains_key("delivery"))
    {
        caveats.push(
            "no cost per delivery was fitted (the sweep did not vary deliveries): CPU figures are too low"
                .into(),
        );
    }
    let range = |k: &str| model.measured_range.get(k).copied().unwrap_or(0.0);
    if n > range("nodes") {
        caveats.push(format!(
            "{nodes} nodes, beyond the {} measured",
            fmt_num(range("nodes"))
        ));
    }
    if m > range("room_size") {
        caveats.push(format!(
            "rooms of {}, beyond the {} measured",
            fmt_num(m),
            fmt_num(range("room_size"))
        ));
    }
    if l.joins > range("joins_per_sec") * 1.5 {
        caveats.push(format!(
            "{} joins/s, beyond the {} measured",
            fmt_num(l.joins),
            fmt_num(range("joins_per_sec"))
        ));
    }
    if commands > range("redis_commands_per_sec") * 1.5 {
        caveats.push(format!(
            "{} Redis commands/s, beyond the {} measured",
            fmt_num(commands),
            fmt_num(range("redis_commands_per_sec"))
        ));
    }
    if redis_cpu > 0.8 {
        caveats.push(format!(
            "one Redis would need {:.1} cores but runs commands on one: shard it (Redis Cluster)",
            redis_cpu
        ));
    }
    if !fits {
        caveats.push(format!(
            "a room of {} members is more than one node's max_connections ({})",
            fmt_num(m),
            fmt_num(a.node_max_connections)
        ));
    }
    let deliveries = l.deliveries;
    Prediction {
        strategy,
        nodes,
        room_size,
        rooms: l.rooms,
        connections: l.connections,
        deliveries_per_sec: deliveries,
        publishes_per_sec: l.publishes,
        cpu_per_node_cores: node_cpu / n,
        cpu_busiest_node_cores: busiest,
        busiest_node_connections: if strategy == Strategy::Sticky {
            busiest_rooms * m
        } else {
            l.connections / n
        },
        redis_cpu_cores: redis_cpu,
        control_cpu_cores: control,
        cpu_us_per_delivery: if deliveries > 0.0 {
            (node_cpu + redis_cpu + control) * 1e6 / deliveries
        } else {
            0.0
        },
        redis_commands_per_sec: commands,
        redis_bytes_per_sec: model.eval(strategy, "redis_bytes", &l),
        cross_node_messages_per_sec: l.fanouts + l.hops,
        cross_node_bytes_per_sec: (l.fanouts + l.hops) * bytes_per_message,
        undelivered_share: if strategy == Strategy::Local {
            1.0 - local_delivered_share(m, n)
        } else {
            0.0
        },
        fits,
        caveats,
    }
}

pub const PREDICT_NODES: [usize; 3] = [10, 50, 100];
pub const PREDICT_ROOM_SIZES: [usize; 5] = [10, 100, 1_000, 10_000, 100_000];
