//! Per-operation costs fitted to the points by non-negative least
//! squares, and their error on points held out of the fit.

use super::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
pub(super) const OPERATIONS: [(&str, &str); 8] = [
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

pub(super) fn column(op: &str, l: &Load) -> f64 {
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
pub(super) const TARGETS: [(&str, &str); 5] = [
    ("ws_node_cpu", "CPU µs per operation, all ws-nodes"),
    ("redis_cpu", "Redis CPU µs per operation"),
    ("control_cpu", "router and gateway CPU µs per operation"),
    ("redis_commands", "Redis commands per operation"),
    ("redis_bytes", "bytes in and out of Redis per operation"),
];

pub(super) fn target(name: &str, p: &Point) -> f64 {
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
pub(super) fn applies(target: &str, op: &str, strategy: Strategy) -> bool {
    let redis = target.starts_with("redis");
    if redis && (strategy == Strategy::Local || op == "delivery" || op == "hop") {
        return false;
    }
    match op {
        "fanout" => strategy == Strategy::Pubsub,
        // Router and gateway never see a hop either.
        "hop" => strategy == Strategy::Relay && target == "ws_node_cpu",
        _ => true,
    }
}

/// Costs of one target for one strategy.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Fit {
    pub strategy: Strategy,
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

/// What holding one connection costs a node, measured by the idle runs
/// among `points`: all their ws-node CPU over the connections they held
/// (their rooms, one per ten connections, and an idle node's own upkeep,
/// under a thousandth of a core, are put on the connections too). None
/// without idle runs.
pub(super) fn held_connection_us(points: &[&Point]) -> Option<f64> {
    let (cpu, conns) = points
        .iter()
        .filter(|p| p.idle() && p.connections > 0)
        .fold((0.0, 0.0), |(c, n), p| {
            (c + target("ws_node_cpu", p), n + p.connections as f64)
        });
    (conns > 0.0).then(|| cpu / conns)
}

pub(super) fn fit_one(
    strategy: Strategy,
    tname: &str,
    unit: &str,
    points: &[&Point],
    held_out: bool,
) -> Option<Fit> {
    // A node's CPU with idle runs: holding a connection costs what they
    // measured, and the traffic runs are fitted for the rest, without the
    // connection and room terms they cannot tell from their messages (left
    // free, the fit put 24–44 µs a second on a connection, or 400–600 on
    // a room, an order of magnitude above the idle runs).
    let held = (tname == "ws_node_cpu")
        .then(|| held_connection_us(points))
        .flatten();
    let traffic: Vec<&Point>;
    let points = if held.is_some() {
        traffic = points.iter().filter(|p| !p.idle()).copied().collect();
        &traffic[..]
    } else {
        points
    };
    let less_held = |p: &Point| target(tname, p) - held.unwrap_or(0.0) * p.connections as f64;
    let ops: Vec<&str> = OPERATIONS
        .iter()
        .map(|o| o.0)
        .filter(|op| applies(tname, op, strategy))
        .filter(|op| held.is_none() || (*op != "connection" && *op != "room"))
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
        let y = ps.iter().map(|p| less_held(p)).collect();
        (x, y)
    };
    let (x, y) = rows(points);
    let coef = nnls_fit(&x, &y)?;
    let mut costs: BTreeMap<String, f64> = ops
        .iter()
        .zip(&coef)
        .map(|(op, c)| ((*op).to_owned(), *c))
        .collect();
    if let Some(c) = held {
        costs.insert("connection".to_owned(), c);
    }
    let mut errors = Vec::new();
    if held_out && points.len() > ops.len() {
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
            let predicted: f64 = ops
                .iter()
                .zip(&c)
                .map(|(op, c)| c * column(op, &l))
                .sum::<f64>()
                + held.unwrap_or(0.0) * l.connections;
            errors.push((predicted - measured).abs() / measured);
        }
    }
    errors.sort_by(f64::total_cmp);
    Some(Fit {
        strategy,
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
    /// Per strategy: Redis's CPU as a curve of its commands (and nodes),
    /// which predictions of Redis cores use when the sweep gave one.
    #[serde(default)]
    pub redis_curves: BTreeMap<String, RedisCurve>,
    pub assumptions: Option<Assumptions>,
    /// Per strategy, the median error of each figure the planner gives
    /// (`plan::figure_errors`).
    #[serde(default)]
    pub figure_errors: BTreeMap<String, BTreeMap<String, f64>>,
    pub predictions: Vec<Prediction>,
    /// Where the model stops being trustworthy.
    pub limits: Vec<String>,
}

impl Model {
    pub(super) fn fit(&self, strategy: Strategy, target: &str) -> Option<&Fit> {
        self.fits
            .iter()
            .find(|f| f.strategy == strategy && f.target == target)
    }

    /// One fitted cost (0 when not fitted).
    pub(super) fn cost(&self, strategy: Strategy, target: &str, op: &str) -> f64 {
        self.fit(strategy, target)
            .and_then(|f| f.costs.get(op).copied())
            .unwrap_or(0.0)
    }

    pub(super) fn eval(&self, strategy: Strategy, target: &str, l: &Load) -> f64 {
        self.fit(strategy, target).map(|f| f.eval(l)).unwrap_or(0.0)
    }
}

/// A relay point on more than one node whose hops were not counted: its
/// CPU would be fitted as if it made none, so it stays out of the fit.
pub(super) fn hops_missing(p: &Point) -> bool {
    p.strategy == Strategy::Relay && p.nodes > 1 && p.hops_per_sec.is_none()
}

/// Whether a point's costs are fitted. Not a saturated point: it ran
/// short of what was offered because the machine (nodes, Redis and the
/// load generator on the same cores) ran out, so its CPU is what the
/// machine had, not what the work cost; fitted, it pulls every cost down
/// towards the busiest runs' batching and misses the rest (relay's node
/// CPU held out, before the idle runs: 23 % with them, 15 % without). Nor
/// one whose hops were
/// not counted. Redis's curve (`redis_curve`) keeps saturated runs: its
/// commands are what Redis ran, and the busiest runs are where it learns
/// how a command's cost falls with load.
pub(super) fn fitted(p: &Point) -> bool {
    !p.saturated && !hops_missing(p)
}

pub fn fit(points: &[Point]) -> Model {
    fit_with(points, true)
}

/// [`fit`], with each fit's held-out error or without it (a fit for a
/// held-out error of its own, as the planner's).
pub fn fit_with(points: &[Point], held_out: bool) -> Model {
    let mut fits = Vec::new();
    for s in STRATEGIES {
        let ps: Vec<&Point> = points
            .iter()
            .filter(|p| p.strategy == s && fitted(p))
            .collect();
        for (t, unit) in TARGETS {
            if s == Strategy::Local && t.starts_with("redis") {
                continue;
            }
            if let Some(f) = fit_one(s, t, unit, &ps, held_out) {
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
                .filter(|p| p.strategy == *s && fitted(p) && !p.idle() && p.cpu_cores.redis > 0.0)
                .max_by(|a, b| a.cpu_cores.redis.total_cmp(&b.cpu_cores.redis))?;
            // Less what the fan-out (pubsub's, not commands) cost.
            let fanout = fits
                .iter()
                .find(|f| f.strategy == *s && f.target == "redis_cpu")
                .and_then(|f| f.costs.get("fanout").copied())
                .unwrap_or(0.0);
            let cores = busiest.cpu_cores.redis - busiest.fanouts_per_sec * fanout / 1e6;
            (cores > 0.0).then(|| (s.to_string(), busiest.redis_commands_per_sec / cores))
        })
        .collect();
    let redis_curves = SHARED
        .iter()
        .filter_map(|s| {
            // Not idle runs: their commands are renewals, cheaper than a
            // publish's script, and commands are the curve's one measure
            // of load.
            let ps: Vec<&Point> = points
                .iter()
                .filter(|p| p.strategy == *s && !p.idle())
                .collect();
            Some((s.to_string(), redis_curve(&ps)?))
        })
        .collect();
    Model {
        method: "per strategy and quantity, non-negative least squares of the measured rate \
                 on the operation rates; Redis's CPU a curve over its commands plus its fan-out and \
                 node costs (redis_curves); held-out error by leaving each point out"
            .into(),
        operations: OPERATIONS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        fits,
        measured_range: range,
        redis_commands_per_core_second: per_core,
        redis_curves,
        ..Model::default()
    }
}

/// Redis's CPU cores as a curve of its command rate, plus what its
/// fan-out to subscribed nodes (pubsub), each join and each node cost:
/// `scale × commands^commands_exp + fanout_cores × fanouts + join_cores ×
/// joins + node_cores × nodes`. Redis's CPU per command falls as its load
/// rises (more commands per read and write, fewer wake-ups), which a cost
/// per command cannot follow; fan-out, joins and nodes cost in proportion.
/// A join's commands are scripts, dearer than the renewals that make up
/// most commands: without its term the curve missed runs with churn by
/// 25–32 %.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct RedisCurve {
    pub scale: f64,
    pub commands_exp: f64,
    /// Cores per message/s sent to a subscribed node.
    pub fanout_cores: f64,
    /// Cores per join/s (beyond its commands' share of the curve).
    #[serde(default)]
    pub join_cores: f64,
    /// Cores per node.
    pub node_cores: f64,
    /// The most commands/s measured. Past it, the commands' cores are
    /// taken to grow in proportion: no further saving is assumed.
    pub max_commands: f64,
}

impl RedisCurve {
    pub fn cores(&self, commands: f64, l: &Load) -> f64 {
        let own = if commands > 0.0 {
            let c = commands.min(self.max_commands);
            self.scale * c.powf(self.commands_exp) * (commands / c)
        } else {
            0.0
        };
        own + self.fanout_cores * l.fanouts + self.join_cores * l.joins + self.node_cores * l.nodes
    }
}

/// The curve through `points`: for each exponent from 0.3 to 1.2 in steps
/// of 0.01, non-negative least squares of the relative error; the best.
/// The fan-out, join and node terms are left out where they did not vary. None
/// with fewer than four points, or when no curve has a command term.
pub fn redis_curve(points: &[&Point]) -> Option<RedisCurve> {
    let ps: Vec<&&Point> = points
        .iter()
        .filter(|p| p.cpu_cores.redis > 0.0 && p.redis_commands_per_sec > 0.0)
        .collect();
    if ps.len() < 4 {
        return None;
    }
    let fanned = ps.iter().any(|p| p.fanouts_per_sec > 0.0);
    let churned = ps.iter().any(|p| p.joins_per_sec > 0.0);
    let varied = ps.iter().any(|p| p.nodes != ps[0].nodes);
    let ones = vec![1.0; ps.len()];
    let mut best: Option<(f64, RedisCurve)> = None;
    for step in 30..=120 {
        let exp = f64::from(step) / 100.0;
        // Each row over the measured value: the fit's error is relative.
        let rows: Vec<Vec<f64>> = ps
            .iter()
            .map(|p| {
                let w = 1.0 / p.cpu_cores.redis;
                let mut r = vec![p.redis_commands_per_sec.powf(exp) * w];
                if fanned {
                    r.push(p.fanouts_per_sec * w);
                }
                if churned {
                    r.push(p.joins_per_sec * w);
                }
                if varied {
                    r.push(p.nodes as f64 * w);
                }
                r
            })
            .collect();
        let Some(c) = nnls_fit(&rows, &ones) else {
            continue;
        };
        if c[0] <= 0.0 {
            continue;
        }
        let residual: f64 = rows
            .iter()
            .map(|r| (r.iter().zip(&c).map(|(x, k)| x * k).sum::<f64>() - 1.0).powi(2))
            .sum();
        if best.as_ref().is_none_or(|(b, _)| residual < *b) {
            let mut k = c.iter().copied().skip(1);
            best = Some((
                residual,
                RedisCurve {
                    scale: c[0],
                    commands_exp: exp,
                    fanout_cores: if fanned { k.next().unwrap_or(0.0) } else { 0.0 },
                    join_cores: if churned {
                        k.next().unwrap_or(0.0)
                    } else {
                        0.0
                    },
                    node_cores: if varied { k.next().unwrap_or(0.0) } else { 0.0 },
                    max_commands: ps
                        .iter()
                        .map(|p| p.redis_commands_per_sec)
                        .fold(0.0, f64::max),
                },
            ));
        }
    }
    best.map(|(_, c)| c)
}
