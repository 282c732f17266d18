//! The strategy map (`turnout-bench map`): the runs of a sweep
//! (`deploy/loadtest/sweep.sh`) become `sweep.json` and `report.html`.
//!
//! - `points`: one per run, the figures the comparison needs, each with the
//!   run's full results.
//! - `model`: per-operation costs (a delivery, a publish, Redis's fan-out to
//!   a subscribed node, a hop from one node to another, a join, a held
//!   connection, a node, a room) fitted to
//!   the points by non-negative least squares, the error on points held out
//!   of the fit, and `predictions` for clusters larger than this machine.
//! - `verdict`: which strategy for which workload, and where the winner
//!   changes.

use crate::cli::MapOpts;
use crate::report::{Series, esc, fmt_num, plot};
use crate::stats::RunResult;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

pub const STRATEGIES: [&str; 4] = ["local", "sticky", "pubsub", "relay"];

/// One measured run of the sweep.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Point {
    pub strategy: String,
    pub nodes: usize,
    pub room_size: usize,
    pub rooms: usize,
    /// Messages per second per publishing member.
    pub rate: f64,
    pub publishers_per_room: usize,
    /// Joins per second asked for (membership churn).
    pub churn: f64,
    pub connections: u64,
    pub deliveries_per_sec: f64,
    /// What the workload asks for: publishes × members that should get them.
    pub offered_deliveries_per_sec: f64,
    /// Below 90 % of what was offered: the machine was the limit.
    pub saturated: bool,
    pub publishes_per_sec: f64,
    /// Pubsub: messages Redis sent to subscribed nodes per second.
    #[serde(alias = "relays_per_sec")]
    pub fanouts_per_sec: f64,
    /// Relay: messages one ws-node sent another per second (publishes
    /// forwarded to the owner, messages streamed to followers), counted by
    /// the nodes. None: not counted (not relay, or a node did not answer).
    #[serde(default)]
    pub hops_per_sec: Option<f64>,
    pub joins_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU of every cluster process (ws-nodes, router, gateway, Redis; not
    /// the bench) per delivery.
    pub cpu_us_per_delivery: f64,
    /// CPU cores in use, by role and by process.
    pub cpu_cores: Cores,
    pub cpu_by_process: BTreeMap<String, f64>,
    pub redis_commands_per_sec: f64,
    pub redis_commands_per_delivery: f64,
    pub redis_bytes_per_sec: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Deliveries from a publisher on another node (sticky, pubsub).
    pub cross_node_deliveries: u64,
    pub cross_node_share: f64,
    /// Local: deliveries that did not happen because the member was on
    /// another server, and their share.
    pub undelivered_cross_node: u64,
    pub undelivered_share: f64,
    pub nodes_per_room: f64,
    pub bench_cpu_cores: f64,
    /// The run's results file, and its figures (without the per-second and
    /// CDF series, which stay in the file).
    pub file: String,
    pub run: RunResult,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Cores {
    pub ws_nodes: f64,
    pub redis: f64,
    /// Router and gateway.
    pub control: f64,
    pub total: f64,
}

impl Point {
    pub fn from_run(file: &str, r: &RunResult) -> Point {
        let secs = r.duration_s.max(1) as f64;
        let mut cores = Cores::default();
        let mut by = BTreeMap::new();
        for p in &r.processes {
            let c = p.cpu_seconds / secs;
            by.insert(p.name.clone(), c);
            if p.name.starts_with("node") {
                cores.ws_nodes += c;
            } else if p.name.starts_with("redis") {
                cores.redis += c;
            } else if p.name == "router" || p.name == "gateway" {
                cores.control += c;
            }
        }
        cores.total = cores.ws_nodes + cores.redis + cores.control;
        let local = r.strategy == "local";
        let d = r.deliveries_per_sec;
        // Every member gets each message of its room, its sender too; a
        // local server only its own members.
        let fanout = r.members as f64
            * if local {
                1.0 - r.undelivered_share
            } else {
                1.0
            };
        let publishes = if fanout > 0.0 { d / fanout } else { 0.0 };
        let offered_publish = (r.rooms * r.publishers_per_room) as f64 * r.rate;
        let offered = offered_publish * fanout;
        let mut run = r.clone();
        run.latency_cdf.clear();
        run.throughput.clear();
        Point {
            strategy: r.strategy.clone(),
            nodes: r.nodes.len().max(1),
            room_size: r.members,
            rooms: r.rooms,
            rate: r.rate,
            publishers_per_room: r.publishers_per_room,
            churn: r.churn,
            connections: r.connections,
            deliveries_per_sec: d,
            offered_deliveries_per_sec: offered,
            saturated: d < 0.9 * offered,
            publishes_per_sec: publishes,
            fanouts_per_sec: if r.strategy == "pubsub" {
                publishes * r.nodes_per_room
            } else {
                0.0
            },
            hops_per_sec: r
                .node_hops
                .filter(|_| r.strategy == "relay")
                .map(|h| h as f64 / secs),
            joins_per_sec: r.rejoins as f64 / secs,
            p50_ms: r.latency_ms.p50,
            p99_ms: r.latency_ms.p99,
            cpu_us_per_delivery: if d > 0.0 { cores.total * 1e6 / d } else { 0.0 },
            cpu_cores: cores,
            cpu_by_process: by,
            redis_commands_per_sec: r.redis.commands_per_sec,
            redis_commands_per_delivery: r.redis.commands_per_delivery,
            redis_bytes_per_sec: (r.redis.net_input_bytes + r.redis.net_output_bytes) as f64 / secs,
            lost: r.lost,
            duplicated: r.duplicated,
            reordered: r.reordered,
            cross_node_deliveries: r.cross_node_deliveries,
            cross_node_share: r.cross_node_share,
            undelivered_cross_node: r.undelivered_cross_node,
            undelivered_share: r.undelivered_share,
            nodes_per_room: r.nodes_per_room,
            bench_cpu_cores: r.bench_cpu_seconds / secs,
            file: file.to_owned(),
            run,
        }
    }
}

/// The rates a cost model multiplies its costs by: a measured point, or a
/// workload to predict.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub deliveries: f64,
    pub publishes: f64,
    pub fanouts: f64,
    pub hops: f64,
    pub joins: f64,
    pub connections: f64,
    pub nodes: f64,
    pub rooms: f64,
}

impl From<&Point> for Load {
    fn from(p: &Point) -> Load {
        Load {
            deliveries: p.deliveries_per_sec,
            publishes: p.publishes_per_sec,
            fanouts: p.fanouts_per_sec,
            hops: p.hops_per_sec.unwrap_or(0.0),
            joins: p.joins_per_sec,
            connections: p.connections as f64,
            nodes: p.nodes as f64,
            rooms: p.rooms as f64,
        }
    }
}

/// The operations costs are fitted for; each is a column of the fit.
const OPERATIONS: [(&str, &str); 8] = [
    ("delivery", "a message written to one member's socket"),
    ("publish", "a message accepted from a member"),
    (
        "fanout",
        "a message Redis sends to one subscribed node (pubsub)",
    ),
    (
        "hop",
        "a message one ws-node sends another over gRPC (relay: a publish forwarded to the owner, \
         a message streamed to a follower)",
    ),
    (
        "join",
        "a member leaving and coming back: route, connect, join with since",
    ),
    ("connection", "one open connection, per second"),
    ("node", "one ws-node, per second (heartbeats, timers)"),
    (
        "room",
        "one room in use, per second (presence, ownership renewals)",
    ),
];

fn column(op: &str, l: &Load) -> f64 {
    match op {
        "delivery" => l.deliveries,
        "publish" => l.publishes,
        "fanout" => l.fanouts,
        "hop" => l.hops,
        "join" => l.joins,
        "connection" => l.connections,
        "node" => l.nodes,
        "room" => l.rooms,
        _ => 0.0,
    }
}

/// What is fitted: each a quantity per second.
const TARGETS: [(&str, &str); 5] = [
    ("ws_node_cpu", "CPU µs per operation, all ws-nodes"),
    ("redis_cpu", "Redis CPU µs per operation"),
    ("control_cpu", "router and gateway CPU µs per operation"),
    ("redis_commands", "Redis commands per operation"),
    ("redis_bytes", "bytes in and out of Redis per operation"),
];

fn target(name: &str, p: &Point) -> f64 {
    match name {
        // CPU targets in µs per second, so costs come out in µs.
        "ws_node_cpu" => p.cpu_cores.ws_nodes * 1e6,
        "redis_cpu" => p.cpu_cores.redis * 1e6,
        "control_cpu" => p.cpu_cores.control * 1e6,
        "redis_commands" => p.redis_commands_per_sec,
        "redis_bytes" => p.redis_bytes_per_sec,
        _ => 0.0,
    }
}

/// Operations that can cost a target anything: Redis never sees a
/// delivery or a hop between nodes, local has no Redis, only pubsub has
/// Redis fan out and only relay's nodes hop.
fn applies(target: &str, op: &str, strategy: &str) -> bool {
    let redis = target.starts_with("redis");
    if redis && (strategy == "local" || op == "delivery" || op == "hop") {
        return false;
    }
    match op {
        "fanout" => strategy == "pubsub",
        // Router and gateway never see a hop either.
        "hop" => strategy == "relay" && target == "ws_node_cpu",
        _ => true,
    }
}

/// Costs of one target for one strategy.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Fit {
    pub strategy: String,
    pub target: String,
    pub unit: String,
    /// Per operation; an operation the points never varied is left out
    /// (not measured), not guessed.
    pub costs: BTreeMap<String, f64>,
    pub points: usize,
    /// Leave-one-out: each point predicted by a fit without it.
    pub held_out: HeldOut,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct HeldOut {
    /// Relative error |predicted − measured| / measured (none: too few
    /// points to hold one out).
    pub median_error: Option<f64>,
    pub max_error: Option<f64>,
    /// Points held out (those with a measured value above zero).
    pub points: usize,
}

impl Fit {
    pub fn eval(&self, l: &Load) -> f64 {
        self.costs.iter().map(|(op, c)| c * column(op, l)).sum()
    }
}

/// Non-negative least squares of `y` on the columns of `x` (one row per
/// point). Columns are scaled to unit length first, as the operations'
/// rates differ by orders of magnitude.
pub fn nnls_fit(x: &[Vec<f64>], y: &[f64]) -> Option<Vec<f64>> {
    let (m, n) = (x.len(), x.first()?.len());
    if m == 0 || n == 0 {
        return None;
    }
    let norms: Vec<f64> = (0..n)
        .map(|j| x.iter().map(|r| r[j] * r[j]).sum::<f64>().sqrt().max(1e-12))
        .collect();
    let a = ndarray::Array2::from_shape_fn((m, n), |(i, j)| x[i][j] / norms[j]);
    let b = ndarray::Array1::from(y.to_vec());
    // The solver panics on some degenerate inputs: treat that as no fit.
    let solved = std::panic::catch_unwind(|| nnls::nnls(a.view(), b.view())).ok()?;
    Some(solved.0.iter().zip(&norms).map(|(c, s)| c / s).collect())
}

fn fit_one(strategy: &str, tname: &str, unit: &str, points: &[&Point]) -> Option<Fit> {
    let ops: Vec<&str> = OPERATIONS
        .iter()
        .map(|o| o.0)
        .filter(|op| applies(tname, op, strategy))
        .filter(|op| {
            // An operation whose rate hardly changed over the points cannot
            // be told apart from the others' fixed share: left out.
            let vals = points.iter().map(|p| column(op, &Load::from(*p)));
            let (lo, hi) = vals.fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
            hi > 0.0 && hi > 1.25 * lo
        })
        .collect();
    if ops.is_empty() || points.is_empty() {
        return None;
    }
    let rows = |ps: &[&Point]| -> (Vec<Vec<f64>>, Vec<f64>) {
        let x = ps
            .iter()
            .map(|p| ops.iter().map(|op| column(op, &Load::from(*p))).collect())
            .collect();
        let y = ps.iter().map(|p| target(tname, p)).collect();
        (x, y)
    };
    let (x, y) = rows(points);
    let coef = nnls_fit(&x, &y)?;
    let costs: BTreeMap<String, f64> = ops
        .iter()
        .zip(&coef)
        .map(|(op, c)| ((*op).to_owned(), *c))
        .collect();
    let mut errors = Vec::new();
    if points.len() > ops.len() {
        for i in 0..points.len() {
            let measured = target(tname, points[i]);
            if measured <= 0.0 {
                continue;
            }
            let rest: Vec<&Point> = points
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            let (x, y) = rows(&rest);
            let Some(c) = nnls_fit(&x, &y) else { continue };
            let l = Load::from(points[i]);
            let predicted: f64 = ops.iter().zip(&c).map(|(op, c)| c * column(op, &l)).sum();
            errors.push((predicted - measured).abs() / measured);
        }
    }
    errors.sort_by(f64::total_cmp);
    Some(Fit {
        strategy: strategy.to_owned(),
        target: tname.to_owned(),
        unit: unit.to_owned(),
        costs,
        points: points.len(),
        held_out: HeldOut {
            median_error: errors.get(errors.len() / 2).copied(),
            max_error: errors.last().copied(),
            points: errors.len(),
        },
    })
}

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
    pub strategy: String,
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

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Model {
    pub method: String,
    pub operations: BTreeMap<String, String>,
    pub fits: Vec<Fit>,
    /// The largest rates measured per ws-node, the edge of what was seen.
    pub measured_range: BTreeMap<String, f64>,
    /// Per strategy: Redis commands per second one Redis core ran, at the
    /// busiest run. Predictions of Redis cores divide the predicted
    /// commands by it: Redis's cost per command falls as load rises (more
    /// commands per read and write), which a linear CPU fit cannot follow,
    /// while commands per operation are exact.
    pub redis_commands_per_core_second: BTreeMap<String, f64>,
    pub assumptions: Option<Assumptions>,
    pub predictions: Vec<Prediction>,
    /// Where the model stops being trustworthy.
    pub limits: Vec<String>,
}

impl Model {
    fn fit(&self, strategy: &str, target: &str) -> Option<&Fit> {
        self.fits
            .iter()
            .find(|f| f.strategy == strategy && f.target == target)
    }

    /// One fitted cost (0 when not fitted).
    fn cost(&self, strategy: &str, target: &str, op: &str) -> f64 {
        self.fit(strategy, target)
            .and_then(|f| f.costs.get(op).copied())
            .unwrap_or(0.0)
    }

    fn eval(&self, strategy: &str, target: &str, l: &Load) -> f64 {
        self.fit(strategy, target).map(|f| f.eval(l)).unwrap_or(0.0)
    }
}

/// A relay point on more than one node whose hops were not counted: its
/// CPU would be fitted as if it made none, so it stays out of the fit.
fn hops_missing(p: &Point) -> bool {
    p.strategy == "relay" && p.nodes > 1 && p.hops_per_sec.is_none()
}

pub fn fit(points: &[Point]) -> Model {
    let mut fits = Vec::new();
    for s in STRATEGIES {
        let ps: Vec<&Point> = points
            .iter()
            .filter(|p| p.strategy == s && !hops_missing(p))
            .collect();
        for (t, unit) in TARGETS {
            if s == "local" && t.starts_with("redis") {
                continue;
            }
            if let Some(f) = fit_one(s, t, unit, &ps) {
                fits.push(f);
            }
        }
    }
    let mut range = BTreeMap::new();
    let max = |f: &dyn Fn(&Point) -> f64| points.iter().map(f).fold(0.0, f64::max);
    range.insert(
        "deliveries_per_sec_per_node".into(),
        max(&|p| p.deliveries_per_sec / p.nodes as f64),
    );
    range.insert("nodes".into(), max(&|p| p.nodes as f64));
    range.insert("room_size".into(), max(&|p| p.room_size as f64));
    range.insert(
        "redis_commands_per_sec".into(),
        max(&|p| p.redis_commands_per_sec),
    );
    range.insert("redis_cpu_cores".into(), max(&|p| p.cpu_cores.redis));
    range.insert("joins_per_sec".into(), max(&|p| p.joins_per_sec));
    let per_core = SHARED
        .iter()
        .filter_map(|s| {
            let busiest = points
                .iter()
                .filter(|p| p.strategy == *s && p.cpu_cores.redis > 0.0)
                .max_by(|a, b| a.cpu_cores.redis.total_cmp(&b.cpu_cores.redis))?;
            // Less what the fan-out (pubsub's, not commands) cost.
            let fanout = fits
                .iter()
                .find(|f| f.strategy == *s && f.target == "redis_cpu")
                .and_then(|f| f.costs.get("fanout").copied())
                .unwrap_or(0.0);
            let cores = busiest.cpu_cores.redis - busiest.fanouts_per_sec * fanout / 1e6;
            (cores > 0.0).then(|| ((*s).to_owned(), busiest.redis_commands_per_sec / cores))
        })
        .collect();
    Model {
        method: "per strategy and quantity, non-negative least squares of the measured rate \
                 on the operation rates; held-out error by leaving each point out"
            .into(),
        operations: OPERATIONS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        fits,
        measured_range: range,
        redis_commands_per_core_second: per_core,
        ..Model::default()
    }
}

/// The operation rates of `strategy` serving rooms of `room_size` on
/// `nodes` nodes under `a`, and how many nodes a room's members are on.
pub fn workload(strategy: &str, nodes: usize, room_size: usize, a: &Assumptions) -> (Load, f64) {
    let n = nodes as f64;
    // A room larger than the cluster's usual population brings its members.
    let m = room_size as f64;
    let members = (a.connections_per_node * n).max(m);
    let rooms = (members / m).max(1.0);
    let publishes = rooms * a.messages_per_member_per_sec;
    let spread = match strategy {
        // Members spread at random: the expected number of nodes with one.
        "pubsub" | "local" | "relay" => n * (1.0 - (1.0 - 1.0 / n).powf(m)),
        _ => 1.0,
    };
    let deliveries = publishes * m;
    let load = Load {
        // Local: the sender's own server delivers to the sender and to the
        // other members that landed there.
        deliveries: if strategy == "local" {
            deliveries * local_delivered_share(m, n)
        } else {
            deliveries
        },
        publishes,
        fanouts: if strategy == "pubsub" {
            publishes * spread
        } else {
            0.0
        },
        // Relay: the owner is placed independently of the members, so a
        // publish crosses to it unless the publisher is on it (1 − 1/n),
        // and the owner sends it to every node with members but itself
        // (spread × (1 − 1/n)).
        hops: if strategy == "relay" {
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

pub fn predict(
    model: &Model,
    strategy: &str,
    nodes: usize,
    room_size: usize,
    a: &Assumptions,
) -> Prediction {
    let (l, _) = workload(strategy, nodes, room_size, a);
    let n = nodes as f64;
    let node_cpu = model.eval(strategy, "ws_node_cpu", &l) / 1e6;
    let commands = model.eval(strategy, "redis_commands", &l);
    let redis_cpu = match model.redis_commands_per_core_second.get(strategy) {
        Some(per_core) if *per_core > 0.0 => {
            commands / per_core + l.fanouts * model.cost(strategy, "redis_cpu", "fanout") / 1e6
        }
        _ => model.eval(strategy, "redis_cpu", &l) / 1e6,
    };
    let control = model.eval(strategy, "control_cpu", &l) / 1e6;
    let m = room_size as f64;
    // Sticky: a room lives on one node. With fewer rooms than nodes, the
    // busiest node holds a whole room: its own fixed cost and one room's
    // share of the rest. Otherwise the placement bound keeps each node
    // within 1.25 × the average.
    // Relay: the members spread, but with fewer rooms than nodes the owner
    // of a room also takes its publishes and sends every hop of it (half a
    // hop's fitted cost, which covers both ends).
    let busiest = match strategy {
        "sticky" if l.rooms < n => {
            let fixed = model.cost(strategy, "ws_node_cpu", "node") / 1e6;
            fixed + (node_cpu - fixed * n).max(0.0) / l.rooms
        }
        "sticky" => node_cpu / n * 1.25,
        "relay" if l.rooms < n => {
            let owner = l.publishes * model.cost(strategy, "ws_node_cpu", "publish")
                + 0.5 * l.hops * model.cost(strategy, "ws_node_cpu", "hop");
            node_cpu / n + owner / l.rooms / 1e6
        }
        _ => node_cpu / n,
    };
    let fits = strategy != "sticky" || m <= a.node_max_connections;
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
        strategy: strategy.to_owned(),
        nodes,
        room_size,
        rooms: l.rooms,
        connections: l.connections,
        deliveries_per_sec: deliveries,
        publishes_per_sec: l.publishes,
        cpu_per_node_cores: node_cpu / n,
        cpu_busiest_node_cores: busiest,
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
        undelivered_share: if strategy == "local" {
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
/// Room sizes scanned for crossovers.
const SCAN: [usize; 16] = [
    2, 3, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
];

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Class {
    pub workload: String,
    pub strategy: String,
    pub why: String,
    pub numbers: BTreeMap<String, f64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Crossover {
    pub nodes: usize,
    /// The pick by room size: each strategy from the size it takes over.
    pub picks: Vec<Segment>,
    /// The smallest room size sticky cannot hold on one node.
    pub sticky_stops_fitting_at: Option<usize>,
    pub text: String,
}

/// One strategy's stretch of room sizes in a crossover.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Segment {
    pub from_room_size: usize,
    pub strategy: String,
    /// Why it is the pick there (from `pick`).
    pub why: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Verdict {
    pub classes: Vec<Class>,
    pub crossovers: Vec<Crossover>,
    /// Said when the points are too few for the model to be trusted.
    pub warnings: Vec<String>,
}

/// The strategies that share a cluster, which the verdict weighs.
const SHARED: [&str; 3] = ["sticky", "pubsub", "relay"];

/// Has the model CPU figures for `strategy`?
fn cpu_known(model: &Model, strategy: &str) -> bool {
    model
        .fit(strategy, "ws_node_cpu")
        .is_some_and(|f| f.costs.values().any(|c| *c > 0.0))
}

/// The pick for rooms of `room_size` on `nodes` nodes, why, and each shared
/// strategy's prediction (in `SHARED`'s order). A strategy that cannot hold
/// the room is out; nodes are sized for the busiest, so a strategy that
/// loads one node above its others (a whole room, or a room's owner) to
/// over 1.5 times the lightest busiest node is out; of the rest, the lowest
/// CPU per delivery (nodes, Redis, router and gateway together) wins. A
/// strategy that loads every node alike pays for it in CPU per delivery
/// only.
fn pick(
    model: &Model,
    nodes: usize,
    room_size: usize,
    a: &Assumptions,
) -> (&'static str, String, Vec<Prediction>) {
    let preds: Vec<Prediction> = SHARED
        .iter()
        .map(|s| predict(model, s, nodes, room_size, a))
        .collect();
    let mut left: Vec<usize> = (0..SHARED.len())
        .filter(|i| cpu_known(model, SHARED[*i]))
        .collect();
    let names = |v: &[usize]| {
        v.iter()
            .map(|i| SHARED[*i])
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let mut why = Vec::new();
    let (fit, unfit): (Vec<usize>, Vec<usize>) = left.iter().partition(|i| preds[**i].fits);
    if !unfit.is_empty() {
        why.push(format!(
            "{} cannot hold the room on one node",
            names(&unfit)
        ));
    }
    left = fit;
    let lightest = left
        .iter()
        .map(|i| preds[*i].cpu_busiest_node_cores)
        .fold(f64::INFINITY, f64::min);
    let (cool, hot): (Vec<usize>, Vec<usize>) = left.iter().partition(|i| {
        let p = &preds[**i];
        let uneven = p.cpu_busiest_node_cores > 1.01 * p.cpu_per_node_cores;
        !uneven || p.cpu_busiest_node_cores <= 1.5 * lightest
    });
    if !hot.is_empty() {
        why.push(format!(
            "{}'s busiest node needs over 1.5 times the lightest",
            names(&hot)
        ));
    }
    left = cool;
    let Some(w) = left.iter().copied().min_by(|x, y| {
        preds[*x]
            .cpu_us_per_delivery
            .total_cmp(&preds[*y].cpu_us_per_delivery)
    }) else {
        return ("pubsub", "no CPU figures to compare".into(), preds);
    };
    if left.len() > 1 {
        why.push(format!("{} uses the least CPU per delivery", SHARED[w]));
    }
    (SHARED[w], why.join("; "), preds)
}

/// The measured hot room of one strategy: its busiest ws-node.
#[derive(Clone, Copy)]
struct Hot {
    busiest: f64,
    p99_ms: f64,
    nodes: usize,
    room_size: usize,
}

fn measured<'a>(points: &'a [Point], strategy: &str, f: impl Fn(&Point) -> bool) -> Vec<&'a Point> {
    points
        .iter()
        .filter(|p| p.strategy == strategy && f(p))
        .collect()
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

pub fn verdict(points: &[Point], model: &Model, a: &Assumptions) -> Verdict {
    let mut v = Verdict::default();
    // Over the strategies the sweep ran (STRATEGIES may pick fewer).
    let min_points = STRATEGIES
        .iter()
        .map(|s| points.iter().filter(|p| p.strategy == *s).count())
        .filter(|n| *n > 0)
        .min()
        .unwrap_or(0);
    if min_points < 8 {
        v.warnings.push(format!(
            "{min_points} points per strategy: too few to fit eight costs with confidence; \
             read the measured points, and run the full sweep before acting on the predictions"
        ));
    }
    let uncounted = points.iter().filter(|p| hops_missing(p)).count();
    if uncounted > 0 {
        v.warnings.push(format!(
            "{uncounted} relay point(s) on more than one node have no count of hops between nodes \
             (a node did not answer at both ends of the window, or the run predates the count): \
             left out of relay's fits"
        ));
    }
    for f in &model.fits {
        match f.held_out.median_error {
            Some(e) if e > 0.25 => v.warnings.push(format!(
                "{} {}: held-out median error {:.0} %{}",
                f.strategy,
                f.target,
                100.0 * e,
                match f.target.as_str() {
                    "redis_cpu" =>
                        " (predictions take Redis cores from the command counts instead)",
                    "control_cpu" => " (a small share of the cluster's CPU: router and gateway)",
                    _ => "",
                }
            )),
            None if min_points >= 8 => v.warnings.push(format!(
                "{} {}: not checked on held-out points (too few)",
                f.strategy, f.target
            )),
            _ => {}
        }
    }

    // One server.
    let one: BTreeMap<&str, f64> = STRATEGIES
        .iter()
        .map(|s| {
            (
                *s,
                mean(
                    measured(points, s, |p| p.nodes == 1 && p.churn == 0.0)
                        .iter()
                        .map(|p| p.cpu_us_per_delivery),
                ),
            )
        })
        .collect();
    let shared_one: Vec<(&str, f64)> = SHARED
        .iter()
        .map(|s| (*s, one[s]))
        .filter(|(_, c)| c.is_finite() && *c > 0.0)
        .collect();
    let local = one["local"];
    if local.is_finite() && local > 0.0 && !shared_one.is_empty() {
        let best = shared_one
            .iter()
            .copied()
            .min_by(|x, y| x.1.total_cmp(&y.1))
            .expect("not empty");
        let (pick, why) = if local <= best.1 {
            (
                "local",
                "it skips Redis. Keep it while one server holds your connections and traffic; it has no \
                 failover and its history dies with the process",
            )
        } else {
            (
                best.0,
                "on this machine Redis cost less than local's own bookkeeping",
            )
        };
        let others: Vec<String> = shared_one
            .iter()
            .map(|(s, c)| format!("{} ({s})", fmt_num(*c)))
            .collect();
        let mut numbers: BTreeMap<String, f64> = shared_one
            .iter()
            .map(|(s, c)| (format!("{s}_cpu_us_per_delivery"), *c))
            .collect();
        numbers.insert("local_cpu_us_per_delivery".into(), local);
        numbers.insert("shared_over_local".into(), best.1 / local);
        v.classes.push(Class {
            workload: "everything fits on one server".into(),
            strategy: pick.into(),
            why: format!(
                "On one node local delivers for {} µs of CPU per delivery against {}: {why}.",
                fmt_num(local),
                others.join(", ")
            ),
            numbers,
        });
    }
    // Local on more than one server.
    let spread: Vec<&Point> = measured(points, "local", |p| p.nodes > 1);
    if !spread.is_empty() {
        let share = mean(spread.iter().map(|p| p.undelivered_share));
        let minn = spread.iter().map(|p| p.nodes).min().unwrap_or(2);
        let maxn = spread.iter().map(|p| p.nodes).max().unwrap_or(2);
        let range = if minn == maxn {
            format!("{minn} nodes")
        } else {
            format!("{minn}–{maxn} nodes")
        };
        v.classes.push(Class {
            workload: "more than one server, local".into(),
            strategy: "sticky, pubsub or relay".into(),
            why: format!(
                "Servers that share nothing failed to deliver {:.0} % of messages (measured, {range}): \
                 members on other servers never see them. Predicted for rooms of 10 on 10 nodes: {:.0} %.",
                100.0 * share,
                100.0 * (1.0 - local_delivered_share(10.0, 10.0))
            ),
            numbers: BTreeMap::from([("undelivered_share".into(), share)]),
        });
    }
    // Small, mid and large rooms on big clusters, from the model.
    let known: Vec<&str> = SHARED
        .iter()
        .copied()
        .filter(|s| cpu_known(model, s))
        .collect();
    let missing: Vec<&str> = SHARED
        .iter()
        .copied()
        .filter(|s| !known.contains(s))
        .collect();
    if !missing.is_empty() {
        v.warnings.push(format!(
            "no CPU figures for {} (not in the sweep, or runs without --run-dir?): the model compares {}",
            missing.join(" and "),
            if known.len() > 1 {
                known.join(", ")
            } else {
                "nothing".into()
            }
        ));
    }
    let sizes: &[(&str, usize)] = if known.len() > 1 {
        &[
            ("many small rooms (chat, 2–10 members)", 10),
            ("mid-sized rooms (100 members)", 100),
            ("large rooms (1,000 members)", 1_000),
            ("one hot room bigger than a node (100,000 members)", 100_000),
        ]
    } else {
        &[]
    };
    for &(workload, size) in sizes {
        let mut numbers = BTreeMap::new();
        let mut winners = Vec::new();
        let mut reasons = Vec::new();
        let mut lines = Vec::new();
        for n in PREDICT_NODES {
            let (w, why, preds) = pick(model, n, size, a);
            winners.push(w);
            reasons.push(why);
            let mut cpu = Vec::new();
            let mut redis = Vec::new();
            let mut busiest = Vec::new();
            for (s, p) in SHARED.iter().zip(&preds) {
                if !known.contains(s) {
                    continue;
                }
                numbers.insert(
                    format!("{s}_cpu_us_per_delivery_{n}_nodes"),
                    p.cpu_us_per_delivery,
                );
                numbers.insert(format!("{s}_redis_cpu_cores_{n}_nodes"), p.redis_cpu_cores);
                numbers.insert(
                    format!("{s}_busiest_node_cores_{n}_nodes"),
                    p.cpu_busiest_node_cores,
                );
                if !p.fits {
                    cpu.push(format!("{s} cannot hold the room"));
                    continue;
                }
                cpu.push(format!("{s} {} µs", fmt_num(p.cpu_us_per_delivery)));
                redis.push(format!("{:.2} ({s})", p.redis_cpu_cores));
                busiest.push(format!("{:.2} ({s})", p.cpu_busiest_node_cores));
            }
            let past_one = preds
                .iter()
                .filter(|p| p.fits)
                .any(|p| p.redis_cpu_cores > 0.8);
            lines.push(format!(
                "{n} nodes: {} of CPU per delivery; Redis cores {}{}; busiest node cores {}",
                cpu.join(", "),
                redis.join(", "),
                if past_one {
                    ", near or past one Redis core: shard Redis"
                } else {
                    ""
                },
                busiest.join(", ")
            ));
        }
        let pick = if winners.iter().all(|w| *w == winners[0]) {
            winners[0].to_owned()
        } else {
            let at: Vec<String> = PREDICT_NODES
                .iter()
                .zip(&winners)
                .map(|(n, w)| format!("{w} at {n} nodes"))
                .collect();
            at.join(", ")
        };
        // Each reason once, in the order first given.
        let mut why_all: Vec<&str> = Vec::new();
        for r in reasons.iter().flat_map(|r| r.split("; ")) {
            if !r.is_empty() && !why_all.contains(&r) {
                why_all.push(r);
            }
        }
        let why_all = why_all.join("; ");
        let reason = match pick.as_str() {
            "sticky" => format!(
                "{why_all}: each message is written to Redis once and delivered from the room's one node, \
                 with no hop between nodes"
            ),
            "pubsub" => format!(
                "{why_all}: no node has to hold a whole room, and a relay through Redis is shared by all of \
                 a room's members on that node"
            ),
            "relay" => format!(
                "{why_all}: no node has to hold a whole room, Redis writes each message once and carries \
                 none, and the owner sends it once to each node with members"
            ),
            _ => why_all,
        };
        v.classes.push(Class {
            workload: workload.into(),
            strategy: pick,
            why: format!("{reason}. {}.", lines.join("; ")),
            numbers,
        });
    }
    // The hot room, measured: one room over the largest cluster measured.
    let hot = |strategy: &str| -> Option<Hot> {
        let ps = measured(points, strategy, |p| {
            p.rooms == 1 && p.churn == 0.0 && p.nodes > 1
        });
        let p = ps
            .iter()
            .max_by_key(|p| (p.nodes, p.deliveries_per_sec as u64))?;
        let busiest = p
            .cpu_by_process
            .iter()
            .filter(|(k, _)| k.starts_with("node"))
            .map(|(_, v)| *v)
            .fold(0.0, f64::max);
        (busiest > 0.0).then_some(Hot {
            busiest,
            p99_ms: p.p99_ms,
            nodes: p.nodes,
            room_size: p.room_size,
        })
    };
    let hots: Vec<(&str, Hot)> = SHARED
        .iter()
        .filter_map(|s| hot(s).map(|h| (*s, h)))
        .collect();
    if hots.len() > 1 {
        let w = hots
            .iter()
            .min_by(|x, y| x.1.busiest.total_cmp(&y.1.busiest))
            .expect("not empty");
        let first = hots[0].1;
        let each: Vec<String> = hots
            .iter()
            .map(|(s, h)| format!("{s} {:.2} cores (p99 {} ms)", h.busiest, fmt_num(h.p99_ms)))
            .collect();
        let mut numbers = BTreeMap::new();
        for (s, h) in &hots {
            numbers.insert(format!("{s}_busiest_node_cores"), h.busiest);
            numbers.insert(format!("{s}_p99_ms"), h.p99_ms);
        }
        v.classes.push(Class {
            workload: format!(
                "one hot room (measured: {} members, {} nodes)",
                first.room_size, first.nodes
            ),
            strategy: w.0.into(),
            why: format!(
                "The busiest ws-node used {}. Sticky serves the whole room from its owner; pubsub spreads \
                 the members and relays each message through Redis to every node; relay spreads the members \
                 and its owner sends each message once to every other node. {}",
                each.join(", "),
                if w.0 == "sticky" {
                    "Here the owner's load stayed below what the spread strategies added to their busiest node."
                } else {
                    "With more nodes, the spread strategies' busiest node gets lighter; sticky's does not."
                }
            ),
            numbers,
        });
    }
    // Churn, measured.
    let churn: Vec<(&str, f64)> = SHARED
        .iter()
        .map(|s| {
            let c = model.cost(s, "ws_node_cpu", "join")
                + model.cost(s, "control_cpu", "join")
                + model.cost(s, "redis_cpu", "join");
            (*s, c)
        })
        .filter(|(_, c)| *c > 0.0)
        .collect();
    if churn.len() > 1 {
        let w = churn
            .iter()
            .min_by(|x, y| x.1.total_cmp(&y.1))
            .expect("not empty");
        let each: Vec<String> = churn
            .iter()
            .map(|(s, c)| format!("{} µs ({s})", fmt_num(*c)))
            .collect();
        v.classes.push(Class {
            workload: "heavy membership churn (members come and go)".into(),
            strategy: w.0.into(),
            why: format!(
                "A leave and rejoin (route, connect, join with since) costs {} of CPU (fitted from the churn \
                 points). It matters when joins per second are within two orders of magnitude of deliveries \
                 per second.",
                each.join(", ")
            ),
            numbers: churn
                .iter()
                .map(|(s, c)| (format!("{s}_join_cpu_us"), *c))
                .collect(),
        });
    }
    // Crossovers.
    let max_measured = points.iter().map(|p| p.nodes).max().unwrap_or(1);
    let mut node_counts = vec![max_measured.max(2)];
    node_counts.extend(PREDICT_NODES);
    if known.len() < 2 {
        node_counts.clear();
    }
    for n in node_counts {
        let mut picks: Vec<Segment> = Vec::new();
        let mut stop = None;
        for size in SCAN {
            let (w, why, preds) = pick(model, n, size, a);
            if stop.is_none() && known.contains(&"sticky") && !preds[0].fits {
                stop = Some(size);
            }
            if picks.last().is_none_or(|s| s.strategy != w) {
                picks.push(Segment {
                    from_room_size: size,
                    strategy: w.into(),
                    why,
                });
            }
        }
        let mut parts = Vec::new();
        for (i, s) in picks.iter().enumerate() {
            let upto = picks.get(i + 1).map(|next| next.from_room_size);
            let range = match (i, upto) {
                (0, None) => "at every room size scanned".to_owned(),
                (0, Some(u)) => format!("for rooms under {u}"),
                (_, _) => format!("from {}", s.from_room_size),
            };
            let why = if i == 0 || s.why.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.why)
            };
            parts.push(format!("{} {range}{why}", s.strategy));
        }
        let mut text = format!("{n} nodes: {}", parts.join("; "));
        if let Some(s) = stop {
            let _ = write!(text, "; sticky cannot hold rooms from {s} members");
        }
        v.crossovers.push(Crossover {
            nodes: n,
            picks,
            sticky_stops_fitting_at: stop,
            text,
        });
    }
    v
}

/// The whole of `sweep.json`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Sweep {
    pub grid: String,
    pub host: String,
    pub cores: usize,
    pub command: String,
    pub points: Vec<Point>,
    pub model: Model,
    pub verdict: Verdict,
}

pub fn build(points: Vec<Point>, a: Assumptions, grid: &str) -> Sweep {
    let mut model = fit(&points);
    for s in STRATEGIES {
        for n in PREDICT_NODES {
            for m in PREDICT_ROOM_SIZES {
                model.predictions.push(predict(&model, s, n, m, &a));
            }
        }
    }
    model.limits = vec![
        "Costs are linear in each operation's rate, fitted on one machine where the bench shares the \
         CPU with the cluster; queueing near saturation is not linear, so a node predicted above \
         about 70 % of its cores will do worse than predicted."
            .into(),
        format!(
            "Measured up to {} nodes, rooms of {} members, {} deliveries/s per node and {} Redis \
             commands/s; predictions past these are extrapolations and say so in their caveats.",
            fmt_num(model.measured_range["nodes"]),
            fmt_num(model.measured_range["room_size"]),
            fmt_num(model.measured_range["deliveries_per_sec_per_node"]),
            fmt_num(model.measured_range["redis_commands_per_sec"])
        ),
        "Redis runs commands on one core: past about 0.8 of a core predicted, latency grows without \
         bound, which the linear model cannot show; shard it (redis_cluster) there."
            .into(),
        "Predicted Redis cores are the predicted commands over what one Redis core ran at the \
         busiest run (redis_commands_per_core_second): Redis's CPU per command falls as its load \
         rises, so its linear CPU fit (in fits, with its held-out error) overstates fixed costs."
            .into(),
        "The per-node cost (heartbeats, timers, polling) is fitted over 1 to a few nodes on a \
         machine whose cores they share, where every extra process also adds contention; at 50 \
         and 100 nodes it is the least certain term."
            .into(),
        "All traffic here is on loopback: the network between machines (bandwidth, round trips) \
         adds latency and per-byte cost the model does not have; cross-node bytes are given so \
         they can be checked against a link."
            .into(),
        "Members are assumed to land on nodes at random (pubsub, relay, local), and a relay room's owner \
         independently of them; an application that groups a room's members on fewer nodes makes pubsub and \
         relay cheaper than predicted."
            .into(),
        "Sticky assumes one room per connection; a client in rooms owned by several nodes needs a \
         connection to each, which the model does not count."
            .into(),
    ];
    let verdict = verdict(&points, &model, &a);
    model.assumptions = Some(a);
    let first = points.first().map(|p| &p.run);
    Sweep {
        grid: grid.to_owned(),
        host: first.map(|r| r.host.clone()).unwrap_or_default(),
        cores: first.map(|r| r.cores).unwrap_or(0),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        points,
        model,
        verdict,
    }
}

pub(crate) fn write(o: &MapOpts) -> Result<()> {
    let points: Vec<Point> = crate::report::read_results(&o.results)?
        .iter()
        .zip(&o.results)
        .map(|(r, p)| Point::from_run(&p.file_name().unwrap_or_default().to_string_lossy(), r))
        .collect();
    if points.is_empty() {
        bail!("no results to map");
    }
    let a = Assumptions {
        connections_per_node: o.connections_per_node,
        messages_per_member_per_sec: o.messages_per_member,
        rejoin_every_s: o.rejoin_every,
        payload_bytes: points[0].run.payload,
        node_max_connections: o.node_max_connections,
        placement: "members land on nodes at random".into(),
    };
    let sweep = build(points, a, &o.grid);
    std::fs::create_dir_all(&o.out)?;
    let json = o.out.join("sweep.json");
    std::fs::write(&json, serde_json::to_string_pretty(&sweep)?)?;
    let html = o.out.join("report.html");
    std::fs::write(&html, report(&sweep))?;
    eprintln!("sweep: {}\nreport: {}", json.display(), html.display());
    for c in &sweep.verdict.classes {
        eprintln!("- {}: {}", c.workload, c.strategy);
    }
    for c in &sweep.verdict.crossovers {
        eprintln!("- {}", c.text);
    }
    Ok(())
}

const COLOR: [usize; 4] = [2, 0, 1, 3]; // local green, sticky blue, pubsub red, relay the fourth

fn color(strategy: &str) -> usize {
    STRATEGIES
        .iter()
        .position(|s| *s == strategy)
        .map(|i| COLOR[i])
        .unwrap_or(4)
}

/// Measured points of each strategy as (x, y), plain runs (no churn) only.
fn measured_series(
    sweep: &Sweep,
    keep: impl Fn(&Point) -> bool,
    x: impl Fn(&Point) -> f64,
    y: impl Fn(&Point) -> f64,
) -> Vec<Series> {
    STRATEGIES
        .iter()
        .filter_map(|s| {
            let mut pts: Vec<(f64, f64)> = sweep
                .points
                .iter()
                .filter(|p| p.strategy == *s && p.churn == 0.0 && keep(p))
                .map(|p| (x(p), y(p)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (!pts.is_empty()).then(|| Series {
                name: format!("{s} (measured)"),
                pts,
                color: color(s),
                dots: true,
            })
        })
        .collect()
}

/// The fitted model's sum of `targets` per delivery for the measured runs
/// `keep` picks, one line per strategy (the mean per room size).
fn fitted_series(sweep: &Sweep, targets: &[&str], keep: impl Fn(&Point) -> bool) -> Vec<Series> {
    STRATEGIES
        .iter()
        .filter(|s| {
            sweep
                .model
                .fits
                .iter()
                .any(|f| f.strategy == **s && targets.contains(&f.target.as_str()))
        })
        .filter_map(|s| {
            let mut by: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
            for p in sweep
                .points
                .iter()
                .filter(|p| p.strategy == *s && p.churn == 0.0 && keep(p))
            {
                let l = Load::from(p);
                let cpu: f64 = targets.iter().map(|t| sweep.model.eval(s, t, &l)).sum();
                if p.deliveries_per_sec > 0.0 {
                    by.entry(p.room_size)
                        .or_default()
                        .push(cpu / p.deliveries_per_sec);
                }
            }
            (!by.is_empty()).then(|| Series {
                name: format!("{s} (model)"),
                pts: by
                    .iter()
                    .map(|(m, v)| (*m as f64, v.iter().sum::<f64>() / v.len() as f64))
                    .collect(),
                color: color(s),
                dots: false,
            })
        })
        .collect()
}

fn predicted_series(
    sweep: &Sweep,
    strategies: &[&str],
    nodes: usize,
    y: impl Fn(&Prediction) -> f64,
) -> Vec<Series> {
    let Some(a) = &sweep.model.assumptions else {
        return Vec::new();
    };
    strategies
        .iter()
        .map(|s| Series {
            name: format!("{s}, {nodes} nodes (model)"),
            pts: SCAN
                .iter()
                .map(|m| predict(&sweep.model, s, nodes, *m, a))
                .filter(|p| p.fits)
                .map(|p| (p.room_size as f64, y(&p)))
                .collect(),
            color: color(s),
            dots: false,
        })
        .collect()
}

fn charts(sweep: &Sweep) -> Vec<String> {
    let max_nodes = sweep.points.iter().map(|p| p.nodes).max().unwrap_or(1);
    let at_max = |p: &Point| p.nodes == max_nodes;
    let mut out = Vec::new();
    // Measured, and the model's figure for each of those runs.
    let plain = |p: &Point| at_max(p) && p.connections <= 1_100;
    let mut s = fitted_series(sweep, &["ws_node_cpu", "redis_cpu", "control_cpu"], plain);
    s.extend(measured_series(
        sweep,
        plain,
        |p| p.room_size as f64,
        |p| p.cpu_us_per_delivery,
    ));
    out.push(plot(
        &format!("CPU per delivery by room size, {max_nodes} nodes"),
        "members per room (log)",
        "cluster CPU µs per delivery (log)",
        &s,
        true,
        true,
    ));
    let mut s = fitted_series(sweep, &["redis_commands"], plain);
    s.extend(measured_series(
        sweep,
        |p| plain(p) && p.strategy != "local",
        |p| p.room_size as f64,
        |p| p.redis_commands_per_delivery,
    ));
    out.push(plot(
        &format!("Redis commands per delivery by room size, {max_nodes} nodes"),
        "members per room (log)",
        "commands per delivery (log)",
        &s,
        true,
        true,
    ));
    let s = measured_series(
        sweep,
        |_| true,
        |p| p.nodes as f64,
        |p| {
            100.0
                * if p.strategy == "local" {
                    p.undelivered_share
                } else {
                    p.cross_node_share
                }
        },
    );
    out.push(plot(
        "Deliveries from a publisher on another node: made (pubsub, relay), lost (local)",
        "nodes",
        "% of deliveries",
        &s,
        false,
        false,
    ));
    let s = measured_series(sweep, at_max, |p| p.room_size as f64, |p| p.p99_ms);
    out.push(plot(
        &format!("p99 latency by room size, {max_nodes} nodes (measured)"),
        "members per room (log)",
        "p99 ms (log)",
        &s,
        true,
        true,
    ));
    // Predictions beyond this machine.
    for n in PREDICT_NODES {
        let s = predicted_series(sweep, &SHARED, n, |p| p.cpu_us_per_delivery);
        out.push(plot(
            &format!("Predicted CPU per delivery, {n} nodes"),
            "members per room (log)",
            "cluster CPU µs per delivery (log)",
            &s,
            true,
            true,
        ));
    }
    let mut s = predicted_series(sweep, &SHARED, 100, |p| p.cpu_busiest_node_cores);
    for x in &mut s {
        x.name = x.name.replace(", 100 nodes", ", busiest node");
    }
    out.push(plot(
        "Predicted CPU of the busiest ws-node, 100 nodes",
        "members per room (log)",
        "cores (log)",
        &s,
        true,
        true,
    ));
    let s = predicted_series(sweep, &SHARED, 100, |p| p.redis_commands_per_sec);
    out.push(plot(
        "Predicted Redis commands per second, 100 nodes",
        "members per room (log)",
        "commands/s (log)",
        &s,
        true,
        true,
    ));
    let s: Vec<Series> = SHARED
        .iter()
        .map(|s| Series {
            name: format!("{s}: the smallest room it is picked for"),
            pts: sweep
                .verdict
                .crossovers
                .iter()
                .filter_map(|c| {
                    let seg = c.picks.iter().find(|x| x.strategy == *s)?;
                    Some((c.nodes as f64, seg.from_room_size as f64))
                })
                .collect(),
            color: color(s),
            dots: true,
        })
        .filter(|s| !s.pts.is_empty())
        .collect();
    out.push(plot(
        "Crossover: the smallest room size each strategy is picked for",
        "nodes (log)",
        "members per room (log)",
        &s,
        true,
        true,
    ));
    out
}

fn pct(v: Option<f64>) -> String {
    v.map(|e| format!("{:.0} %", 100.0 * e))
        .unwrap_or_else(|| "—".into())
}

pub fn report(sweep: &Sweep) -> String {
    let mut h = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>turnout: which strategy for which workload</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>\
         body{font-family:sans-serif;max-width:900px;margin:2em auto;padding:0 1em;color:#222}\
         table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}\
         td:first-child,th:first-child,td.t{text-align:left}svg{max-width:100%;height:auto;margin:1em 0}code{background:#f4f4f4}\
         .warn{background:#fff4e0;border-left:4px solid #f0a030;padding:.5em 1em}\
         </style></head><body><h1>turnout: which strategy for which workload</h1>",
    );
    let _ = write!(
        h,
        "<p>{} grid: {} measured runs on {} ({} cores). Lines are the fitted model, circles the measured runs.</p>",
        esc(&sweep.grid),
        sweep.points.len(),
        esc(&sweep.host),
        sweep.cores
    );
    for w in &sweep.verdict.warnings {
        let _ = write!(h, "<p class=\"warn\">{}</p>", esc(w));
    }
    h.push_str(
        "<h2>Verdict</h2><table><tr><th>workload</th><th>pick</th><th class=\"t\">why</th></tr>",
    );
    for c in &sweep.verdict.classes {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><b>{}</b></td><td class=\"t\">{}</td></tr>",
            esc(&c.workload),
            esc(&c.strategy),
            esc(&c.why)
        );
    }
    h.push_str("</table><h3>Crossovers</h3><ul>");
    for c in &sweep.verdict.crossovers {
        let _ = write!(h, "<li>{}</li>", esc(&c.text));
    }
    h.push_str("</ul><h2>Charts</h2>");
    for svg in charts(sweep) {
        h.push_str(&svg);
    }
    h.push_str("<h2>Fitted costs per operation</h2><table><tr><th>strategy</th><th>quantity</th>");
    for (op, _) in OPERATIONS {
        let _ = write!(h, "<th>{op}</th>");
    }
    h.push_str("<th>held-out error (median / max)</th></tr>");
    for f in &sweep.model.fits {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"t\">{}</td>",
            esc(&f.strategy),
            esc(&f.unit)
        );
        for (op, _) in OPERATIONS {
            match f.costs.get(op) {
                Some(c) => {
                    let _ = write!(h, "<td>{}</td>", fmt_num(*c));
                }
                None => h.push_str("<td>—</td>"),
            }
        }
        let _ = write!(
            h,
            "<td>{} / {}</td></tr>",
            pct(f.held_out.median_error),
            pct(f.held_out.max_error)
        );
    }
    h.push_str("</table><p>");
    for (op, what) in OPERATIONS {
        let _ = write!(h, "<b>{op}</b>: {}. ", esc(what));
    }
    h.push_str("— : not varied by the sweep, so not fitted.</p><h3>Where the model stops being trustworthy</h3><ul>");
    for l in &sweep.model.limits {
        let _ = write!(h, "<li>{}</li>", esc(l));
    }
    h.push_str("</ul><h2>Predictions</h2>");
    if let Some(a) = &sweep.model.assumptions {
        let _ = write!(
            h,
            "<p>Each node holds {} connections; each member receives {} messages/s; each member rejoins every {} s; \
             payload {} B; members land on nodes at random.</p>",
            fmt_num(a.connections_per_node),
            fmt_num(a.messages_per_member_per_sec),
            fmt_num(a.rejoin_every_s),
            a.payload_bytes
        );
    }
    h.push_str(
        "<table><tr><th>strategy</th><th>nodes</th><th>room size</th><th>deliveries/s</th><th>CPU µs/delivery</th>\
         <th>cores per node (busiest)</th><th>Redis cores</th><th>Redis cmds/s</th><th>Redis MB/s</th><th>cross-node msgs/s</th>\
         <th>undelivered</th><th class=\"t\">caveats</th></tr>",
    );
    for p in &sweep.model.predictions {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"t\">{}</td></tr>",
            esc(&p.strategy),
            p.nodes,
            p.room_size,
            fmt_num(p.deliveries_per_sec),
            fmt_num(p.cpu_us_per_delivery),
            fmt_num(p.cpu_per_node_cores),
            fmt_num(p.cpu_busiest_node_cores),
            fmt_num(p.redis_cpu_cores),
            fmt_num(p.redis_commands_per_sec),
            fmt_num(p.redis_bytes_per_sec / 1e6),
            fmt_num(p.cross_node_messages_per_sec),
            if p.strategy == "local" {
                format!("{:.0} %", 100.0 * p.undelivered_share)
            } else {
                "—".into()
            },
            esc(&p.caveats.join("; "))
        );
    }
    h.push_str("</table><h2>Measured points</h2><table><tr><th>strategy</th><th>nodes</th><th>room size</th><th>rooms</th>\
        <th>msg/s per publisher</th><th>joins/s</th><th>deliveries/s</th><th>p99 ms</th><th>CPU µs/delivery</th><th>Redis cmds/delivery</th>\
        <th>Redis KB/s</th><th>cross-node</th><th>lost</th><th>dup</th><th>undelivered (local)</th></tr>");
    for p in &sweep.points {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.strategy),
            p.nodes,
            p.room_size,
            p.rooms,
            fmt_num(p.rate),
            fmt_num(p.joins_per_sec),
            fmt_num(p.deliveries_per_sec),
            if p.saturated { " (saturated)" } else { "" },
            fmt_num(p.p99_ms),
            fmt_num(p.cpu_us_per_delivery),
            fmt_num(p.redis_commands_per_delivery),
            fmt_num(p.redis_bytes_per_sec / 1e3),
            p.cross_node_deliveries,
            p.lost,
            p.duplicated,
            if p.strategy == "local" {
                format!(
                    "{} ({:.0} %)",
                    p.undelivered_cross_node,
                    100.0 * p.undelivered_share
                )
            } else {
                "—".into()
            }
        );
    }
    h.push_str("</table><h2>Commands</h2><ul>");
    let _ = write!(h, "<li><code>{}</code></li>", esc(&sweep.command));
    for p in &sweep.points {
        let _ = write!(h, "<li><code>{}</code></li>", esc(&p.run.command));
    }
    h.push_str("</ul></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point whose CPU is made from known per-operation costs.
    fn synthetic(
        strategy: &str,
        nodes: usize,
        m: usize,
        rooms: usize,
        rate: f64,
        churn: f64,
    ) -> Point {
        let publishes = (rooms * m) as f64 * rate;
        let spread = if strategy == "sticky" {
            1.0
        } else {
            nodes.min(m) as f64
        };
        let deliveries = publishes * m as f64;
        let fanouts = if strategy == "pubsub" {
            publishes * spread
        } else {
            0.0
        };
        let hops = if strategy == "relay" {
            publishes * (1.0 - 1.0 / nodes as f64) * (1.0 + spread)
        } else {
            0.0
        };
        let conns = (rooms * m) as f64;
        let node_us = 5.0 * deliveries
            + 20.0 * publishes
            + 15.0 * fanouts
            + 8.0 * hops
            + 300.0 * churn
            + 0.5 * conns
            + 2000.0 * nodes as f64;
        let redis_us = if strategy == "local" {
            0.0
        } else {
            30.0 * publishes + 4.0 * fanouts + 50.0 * churn + 1.0 * rooms as f64
        };
        let cmds = if strategy == "local" {
            0.0
        } else {
            3.0 * publishes + 6.0 * churn + 0.2 * rooms as f64
        };
        Point {
            strategy: strategy.into(),
            nodes,
            room_size: m,
            rooms,
            rate,
            publishers_per_room: m,
            churn,
            connections: conns as u64,
            deliveries_per_sec: deliveries,
            publishes_per_sec: publishes,
            fanouts_per_sec: fanouts,
            hops_per_sec: (strategy == "relay").then_some(hops),
            joins_per_sec: churn,
            nodes_per_room: spread,
            cpu_cores: Cores {
                ws_nodes: node_us / 1e6,
                redis: redis_us / 1e6,
                control: 0.0,
                total: (node_us + redis_us) / 1e6,
            },
            cpu_us_per_delivery: (node_us + redis_us) / deliveries,
            redis_commands_per_sec: cmds,
            undelivered_share: if strategy == "local" {
                1.0 - 1.0 / nodes as f64
            } else {
                0.0
            },
            ..Point::default()
        }
    }

    fn grid() -> Vec<Point> {
        let mut v = Vec::new();
        for s in STRATEGIES {
            for n in [1, 2, 4] {
                for (m, rooms, rate) in
                    [(2, 300, 4.0), (10, 60, 1.0), (100, 4, 0.2), (500, 1, 0.05)]
                {
                    v.push(synthetic(s, n, m, rooms, rate, 0.0));
                }
                v.push(synthetic(s, n, 10, 60, 0.5, 40.0));
            }
        }
        v
    }

    fn assumptions() -> Assumptions {
        Assumptions {
            connections_per_node: 10_000.0,
            messages_per_member_per_sec: 10.0,
            rejoin_every_s: 300.0,
            payload_bytes: 64,
            node_max_connections: 20_000.0,
            placement: "random".into(),
        }
    }

    #[test]
    fn the_fit_recovers_known_costs_and_predicts_held_out_points() {
        let model = fit(&grid());
        let f = model.fit("pubsub", "ws_node_cpu").expect("fitted");
        let close = |op: &str, want: f64| {
            let got = f.costs.get(op).copied().unwrap_or(f64::NAN);
            assert!(
                (got - want).abs() <= want * 0.01,
                "{op}: {got} against {want}"
            );
        };
        close("delivery", 5.0);
        close("publish", 20.0);
        close("fanout", 15.0);
        close("join", 300.0);
        close("node", 2000.0);
        assert!(f.held_out.max_error.unwrap() < 0.01, "{:?}", f.held_out);
        // Sticky has no fan-out or hop term; local no Redis at all.
        let sticky = &model.fit("sticky", "ws_node_cpu").unwrap().costs;
        assert!(!sticky.contains_key("fanout") && !sticky.contains_key("hop"));
        // Relay's hop is told apart from its publish and delivery.
        let r = &model.fit("relay", "ws_node_cpu").unwrap().costs;
        assert!((r["hop"] - 8.0).abs() < 0.08, "{r:?}");
        assert!((r["delivery"] - 5.0).abs() < 0.05, "{r:?}");
        assert!(!r.contains_key("fanout"));
        assert!(
            !model
                .fit("relay", "redis_cpu")
                .unwrap()
                .costs
                .contains_key("hop")
        );
        assert!(model.fit("local", "redis_cpu").is_none());
        let r = model.fit("sticky", "redis_commands").unwrap();
        assert!((r.costs["publish"] - 3.0).abs() < 0.03, "{:?}", r.costs);
    }

    #[test]
    fn a_room_that_loads_its_node_past_half_again_the_others_is_passed_over() {
        // Rooms of 20,000 fit a node, but with 5 rooms on 10 nodes sticky's
        // busiest node holds a whole one: the pick moves off sticky there,
        // before sticky stops fitting at 50,000.
        let sweep = build(grid(), assumptions(), "test");
        let c = sweep
            .verdict
            .crossovers
            .iter()
            .find(|c| c.nodes == 10)
            .unwrap();
        let seg = c
            .picks
            .iter()
            .find(|s| s.strategy != "sticky")
            .expect("a pick other than sticky");
        assert_eq!(seg.from_room_size, 20_000, "{}", c.text);
        assert!(seg.why.contains("sticky's busiest node"), "{}", seg.why);
        // Relay loads every node alike for many rooms: dear in CPU, never
        // passed over for its busiest node.
        let a = assumptions();
        let (_, why, preds) = pick(&sweep.model, 100, 10, &a);
        assert_eq!(preds[2].cpu_busiest_node_cores, preds[2].cpu_per_node_cores);
        assert!(!why.contains("relay's busiest"), "{why}");
    }

    #[test]
    fn a_sweep_of_some_strategies_speaks_of_those_only() {
        let some: Vec<Point> = grid()
            .into_iter()
            .filter(|p| p.strategy == "sticky" || p.strategy == "pubsub")
            .collect();
        let v = build(some, assumptions(), "test").verdict;
        assert!(
            v.warnings
                .iter()
                .any(|w| w.contains("no CPU figures for relay"))
        );
        assert!(
            !v.warnings.iter().any(|w| w.contains("points per strategy")),
            "{:?}",
            v.warnings
        );
        for c in &v.crossovers {
            assert!(c.picks.iter().all(|s| s.strategy != "relay"), "{}", c.text);
        }
        let only: Vec<Point> = grid()
            .into_iter()
            .filter(|p| p.strategy == "relay")
            .collect();
        let v = build(only, assumptions(), "test").verdict;
        assert!(v.crossovers.is_empty());
        assert!(v.classes.iter().all(|c| !c.why.contains("sticky cannot")));
    }

    #[test]
    fn relay_points_without_a_hop_count_stay_out_of_the_fit() {
        let mut pts = grid();
        for p in pts
            .iter_mut()
            .filter(|p| p.strategy == "relay" && p.nodes == 4)
        {
            p.hops_per_sec = None;
        }
        let sweep = build(pts, assumptions(), "test");
        let f = sweep.model.fit("relay", "ws_node_cpu").unwrap();
        assert_eq!(f.points, 10, "the 5 points at 4 nodes are out");
        assert!((f.costs["hop"] - 8.0).abs() < 0.08, "{:?}", f.costs);
        assert!(
            sweep
                .verdict
                .warnings
                .iter()
                .any(|w| w.starts_with("5 relay point(s)")),
            "{:?}",
            sweep.verdict.warnings
        );
    }

    #[test]
    fn a_dear_hop_hands_the_hot_room_to_pubsub() {
        // The same grid with relay's hop five times dearer (40 µs).
        let mut pts = grid();
        for p in pts.iter_mut().filter(|p| p.strategy == "relay") {
            p.cpu_cores.ws_nodes += 32.0 * p.hops_per_sec.unwrap_or(0.0) / 1e6;
        }
        let sweep = build(pts, assumptions(), "test");
        let r = &sweep.model.fit("relay", "ws_node_cpu").unwrap().costs;
        assert!((r["hop"] - 40.0).abs() < 0.4, "{r:?}");
        let class = |w: &str| {
            sweep
                .verdict
                .classes
                .iter()
                .find(|c| c.workload.starts_with(w))
                .unwrap()
                .strategy
                .clone()
        };
        assert_eq!(class("one hot room"), "pubsub");
        assert_eq!(class("many small rooms"), "sticky");
    }

    #[test]
    fn a_bad_fit_shows_in_the_held_out_error() {
        // Noise the operations do not explain: every other point doubled.
        let mut pts = grid();
        for (i, p) in pts.iter_mut().enumerate() {
            if i % 2 == 0 {
                p.cpu_cores.ws_nodes *= 2.0;
            }
        }
        let model = fit(&pts);
        let f = model.fit("pubsub", "ws_node_cpu").unwrap();
        assert!(f.held_out.median_error.unwrap() > 0.1, "{:?}", f.held_out);
    }

    #[test]
    fn predictions_follow_the_workload() {
        let sweep = build(grid(), assumptions(), "test");
        let a = assumptions();
        let p = |s: &str, n, m| predict(&sweep.model, s, n, m, &a);
        // Pubsub relays each message to about min(nodes, members) nodes.
        let small = p("pubsub", 100, 10);
        assert!((small.cross_node_messages_per_sec / small.publishes_per_sec - 9.56).abs() < 0.05);
        assert_eq!(p("sticky", 100, 10).cross_node_messages_per_sec, 0.0);
        // Relay: to the owner unless the publisher is on it, then from it
        // to every other node with members: 0.99 × (1 + 9.56).
        let r = p("relay", 100, 10);
        assert!((r.cross_node_messages_per_sec / r.publishes_per_sec - 10.45).abs() < 0.05);
        assert_eq!(
            r.redis_commands_per_sec,
            p("sticky", 100, 10).redis_commands_per_sec
        );
        // A relay room larger than a node fits; its owner carries the room's
        // publishes and the sending half of its hops on top of its share.
        let big = p("relay", 10, 100_000);
        let (l, _) = workload("relay", 10, 100_000, &a);
        let owner = (l.publishes * sweep.model.cost("relay", "ws_node_cpu", "publish")
            + 0.5 * l.hops * sweep.model.cost("relay", "ws_node_cpu", "hop"))
            / l.rooms
            / 1e6;
        assert!(big.fits && owner > 0.0);
        assert!((big.cpu_busiest_node_cores - big.cpu_per_node_cores - owner).abs() < 1e-9);
        assert_eq!(
            p("relay", 10, 10).cpu_busiest_node_cores,
            p("relay", 10, 10).cpu_per_node_cores
        );
        // A sticky room larger than a node does not fit, and its node is hot.
        let hot = p("sticky", 10, 100_000);
        assert!(!hot.fits && hot.cpu_busiest_node_cores > 5.0 * hot.cpu_per_node_cores);
        assert!(p("pubsub", 10, 100_000).fits);
        // Local loses what crosses nodes.
        // (the sender's own copy always arrives: 9/10 of 49/50 do not).
        assert!((p("local", 50, 10).undelivered_share - 0.9 * 0.98).abs() < 1e-9);
        // With these costs sticky wins small rooms, relay (a hop costs less
        // than pubsub's fan-out at both ends) the hot room.
        let v = &sweep.verdict;
        let class = |w: &str| {
            v.classes
                .iter()
                .find(|c| c.workload.starts_with(w))
                .unwrap()
        };
        assert_eq!(class("many small rooms").strategy, "sticky");
        assert_eq!(class("one hot room").strategy, "relay");
        assert_eq!(class("everything fits").strategy, "local");
        assert!(
            v.crossovers
                .iter()
                .all(|c| c.sticky_stops_fitting_at == Some(50_000))
        );
        for c in &v.crossovers {
            assert_eq!(c.picks[0].strategy, "sticky", "{}", c.text);
            assert_eq!(c.picks.last().unwrap().strategy, "relay", "{}", c.text);
            assert!(
                c.picks
                    .windows(2)
                    .all(|w| w[0].from_room_size < w[1].from_room_size)
            );
        }
        assert_eq!(sweep.model.predictions.len(), 4 * 3 * 5);
        let html = report(&sweep);
        assert!(html.contains("<circle") && html.contains("<polyline") && html.contains("Verdict"));
    }
}
