//! The capacity planner (`turnout-bench plan`): a workload in a user's
//! terms (connections, room size, messages each member receives per
//! second; optionally the nodes and their cores) answered for each strategy
//! from a sweep's fitted model, each figure with the error it showed on the
//! sweep's own points, and one pick.
//!
//! The report's planner form (`html`) runs the same steps in the page; a
//! test holds the two to the same answers.

use super::*;
use crate::cli::PlanOpts;
use anyhow::Context;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Nodes are sized so the busiest stays below this share of its cores:
/// past it, queueing grows faster than the linear model says.
pub const NODE_UTILISATION: f64 = 0.7;
/// A Redis runs commands on one core; a shard is sized to this share of it.
pub const REDIS_UTILISATION: f64 = 0.7;
/// The largest cluster the planner sizes.
pub const MAX_NODES: usize = 1_000;
/// Bounds on what the planner is asked (a clear error beyond them).
pub const MAX_CONNECTIONS: f64 = 1e9;
pub const MAX_MESSAGES_PER_MEMBER: f64 = 1e4;
/// One message a member in about three hours.
pub const MIN_MESSAGES_PER_MEMBER: f64 = 1e-4;

/// The workload, in a user's terms.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Workload {
    pub connections: f64,
    pub room_size: usize,
    /// Messages each member receives per second.
    pub messages_per_member: f64,
    /// Nodes given: the answer is the load on them. None: the fewest that
    /// hold the workload.
    pub nodes: Option<usize>,
    pub node_cores: f64,
    /// A node's `max_connections` (the largest sticky room).
    pub max_connections: f64,
    /// Each member leaves and rejoins once this often (seconds).
    pub rejoin_every_s: f64,
}

/// What the planner assumes beyond the workload.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PlanAssumptions {
    pub node_utilisation: f64,
    pub redis_utilisation: f64,
    pub rejoin_every_s: f64,
    pub payload_bytes: usize,
    pub node_max_connections: f64,
    /// The machine the sweep measured, whose cores the figures are in.
    pub measured_on: String,
}

/// One strategy's answer.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Answer {
    pub strategy: Strategy,
    /// Holds the workload: on the nodes given, or on some count up to
    /// [`MAX_NODES`].
    pub fits: bool,
    /// The nodes the figures are for: those given, else the fewest that
    /// hold the workload (else [`MAX_NODES`]).
    pub nodes: usize,
    /// The fewest nodes that hold the workload; None: no count up to
    /// [`MAX_NODES`] does.
    pub nodes_needed: Option<usize>,
    pub connections_per_node: f64,
    /// Connections on the busiest node (sticky: its rooms' members).
    pub busiest_node_connections: f64,
    pub deliveries_per_sec: f64,
    pub busiest_node_cores: f64,
    /// `busiest_node_cores` over a node's cores.
    pub busiest_node_load: f64,
    pub mean_node_cores: f64,
    pub redis_cores: f64,
    pub redis_shards: usize,
    pub redis_commands_per_sec: f64,
    /// Bytes per second between the nodes and Redis, both ways.
    pub redis_bytes_per_sec: f64,
    /// Bytes per second of room messages from node to node (pubsub: via
    /// Redis; relay: to and from each room's owner).
    pub cross_node_bytes_per_sec: f64,
    /// Router and gateway.
    pub control_cores: f64,
    /// All cluster CPU (nodes, Redis, router, gateway) per delivery.
    pub cpu_us_per_delivery: f64,
    /// Local: the share of deliveries that never happen.
    pub undelivered_share: f64,
    /// The expected error, in per cent: the largest of
    /// `error_pct_by_figure`.
    pub error_pct: f64,
    /// Median error, in per cent, each figure showed on the sweep's points,
    /// each predicted by a model fitted without it.
    pub error_pct_by_figure: BTreeMap<String, f64>,
    /// The workload lies outside what the sweep measured (`notes` say how).
    pub outside_measured: bool,
    pub notes: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Pick {
    pub strategy: Strategy,
    pub why: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Plan {
    pub workload: Workload,
    pub assumptions: PlanAssumptions,
    pub strategies: Vec<Answer>,
    pub pick: Pick,
}

/// Per strategy, the median relative error of each figure the planner
/// gives, over the sweep's points, each point predicted by a model fitted
/// without it. (The node figures share one: the nodes' CPU.)
pub fn figure_errors(points: &[Point]) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut errs: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for (i, p) in points.iter().enumerate() {
        if !fitted(p) || p.deliveries_per_sec <= 0.0 {
            continue;
        }
        let s = p.strategy;
        let rest: Vec<Point> = points
            .iter()
            .enumerate()
            .filter(|(j, q)| *j != i && q.strategy == s && fitted(q))
            .map(|(_, q)| q.clone())
            .collect();
        let m = fit_with(&rest, false);
        let l = Load::from(p);
        let nodes = m.eval(s, "ws_node_cpu", &l) / 1e6;
        let control = m.eval(s, "control_cpu", &l) / 1e6;
        let redis = if s == Strategy::Local {
            0.0
        } else {
            redis_cores(&m, s, &l)
        };
        let e = errs.entry(s.to_string()).or_default();
        let mut add = |k: &str, predicted: f64, measured: f64| {
            if measured > 0.0 {
                e.entry(k.to_owned())
                    .or_default()
                    .push((predicted - measured).abs() / measured);
            }
        };
        add("node_cores", nodes, p.cpu_cores.ws_nodes);
        add("control_cores", control, p.cpu_cores.control);
        if s != Strategy::Local {
            add("redis_cores", redis, p.cpu_cores.redis);
            add(
                "redis_bytes_per_sec",
                m.eval(s, "redis_bytes", &l),
                p.redis_bytes_per_sec,
            );
        }
        add(
            "cpu_us_per_delivery",
            (nodes + redis + control) * 1e6 / p.deliveries_per_sec,
            p.cpu_us_per_delivery,
        );
    }
    errs.into_iter()
        .map(|(s, by)| {
            let med = by
                .into_iter()
                .map(|(k, mut v)| {
                    v.sort_by(f64::total_cmp);
                    (k, v[v.len() / 2])
                })
                .collect();
            (s, med)
        })
        .collect()
}

/// What the sweep measured of one strategy: the edges of its points.
struct Measured {
    room_size: (f64, f64),
    messages_per_member: (f64, f64),
    nodes: f64,
    connections_per_node: f64,
    deliveries_per_node: f64,
    joins_per_node: f64,
    redis_commands: f64,
    rooms_per_node: f64,
}

fn measured(points: &[Point], s: Strategy) -> Option<Measured> {
    let ps: Vec<&Point> = points
        .iter()
        .filter(|p| p.strategy == s && !p.idle())
        .collect();
    if ps.is_empty() {
        return None;
    }
    let span = |f: &dyn Fn(&Point) -> f64| {
        ps.iter()
            .map(|p| f(p))
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    Some(Measured {
        room_size: span(&|p| p.room_size as f64),
        messages_per_member: span(&|p| p.publishes_per_sec / (p.rooms.max(1) as f64)),
        nodes: span(&|p| p.nodes as f64).1,
        connections_per_node: span(&|p| p.connections as f64 / p.nodes as f64).1,
        deliveries_per_node: span(&|p| p.deliveries_per_sec / p.nodes as f64).1,
        joins_per_node: span(&|p| p.joins_per_sec / p.nodes as f64).1,
        redis_commands: span(&|p| p.redis_commands_per_sec).1,
        rooms_per_node: span(&|p| p.rooms as f64 / p.nodes as f64).1,
    })
}

/// How the workload on `nodes` nodes (Redis in `shards` shards) lies
/// outside what was measured.
fn outside(m: &Measured, w: &Workload, p: &Prediction, shards: usize) -> Vec<String> {
    let mut v = Vec::new();
    let n = p.nodes as f64;
    let size = w.room_size as f64;
    if size < m.room_size.0 || size > m.room_size.1 {
        v.push(format!(
            "rooms of {}, outside the {} to {} members measured",
            count(size),
            count(m.room_size.0),
            count(m.room_size.1)
        ));
    }
    let rate = w.messages_per_member;
    if rate < 0.5 * m.messages_per_member.0 || rate > 1.5 * m.messages_per_member.1 {
        v.push(format!(
            "{} msg/s per member, outside the {} to {} measured",
            short(rate),
            short(m.messages_per_member.0),
            short(m.messages_per_member.1)
        ));
    }
    // Past the most measured by `margin` (rates: half again; nodes: any).
    let mut beyond = |value: f64, seen: f64, margin: f64, what: &str| {
        if value > margin * seen {
            v.push(format!(
                "{} {what}, beyond the {} measured",
                count(value),
                count(seen)
            ));
        }
    };
    beyond(n, m.nodes, 1.0, "nodes");
    beyond(
        w.connections / n,
        m.connections_per_node,
        1.5,
        "connections per node",
    );
    beyond(
        p.deliveries_per_sec / n,
        m.deliveries_per_node,
        1.5,
        "deliveries/s per node",
    );
    beyond(p.rooms / n, m.rooms_per_node, 1.5, "rooms per node");
    let joins = w.connections / w.rejoin_every_s / n;
    if joins > 1.5 * m.joins_per_node {
        v.push(format!(
            "{} joins/s per node, beyond the {} measured",
            short(joins),
            short(m.joins_per_node)
        ));
    }
    let commands = p.redis_commands_per_sec / shards.max(1) as f64;
    if shards > 0 && commands > 1.5 * m.redis_commands {
        v.push(format!(
            "{} Redis commands/s per shard, beyond the {} measured",
            count(commands),
            count(m.redis_commands)
        ));
    }
    v
}

/// The prediction for `w` on `nodes` nodes.
fn at(model: &Model, s: Strategy, w: &Workload, nodes: usize, base: &Assumptions) -> Prediction {
    let a = Assumptions {
        connections_per_node: w.connections / nodes as f64,
        messages_per_member_per_sec: w.messages_per_member,
        ..base.clone()
    };
    predict(model, s, nodes, w.room_size, &a)
}

/// Why `p` does not hold the workload on its nodes, if it does not.
fn short_of(p: &Prediction, w: &Workload, a: &Assumptions) -> Option<String> {
    let per_node = p.busiest_node_connections;
    if !p.fits {
        Some(format!(
            "a room of {} members is more than one node's max_connections ({})",
            count(w.room_size as f64),
            count(a.node_max_connections)
        ))
    } else if per_node > a.node_max_connections {
        Some(format!(
            "{} connections on the busiest node, more than max_connections ({})",
            count(per_node),
            count(a.node_max_connections)
        ))
    } else if p.cpu_busiest_node_cores > NODE_UTILISATION * w.node_cores {
        Some(format!(
            "its busiest node needs {} cores of {} (sized to {:.0} %)",
            short(p.cpu_busiest_node_cores),
            short(w.node_cores),
            100.0 * NODE_UTILISATION
        ))
    } else {
        None
    }
}

fn answer(sweep: &Sweep, errors: &BTreeMap<String, f64>, s: Strategy, w: &Workload) -> Answer {
    let model = &sweep.model;
    let base = assumptions(sweep, w);
    let needed =
        (1..=MAX_NODES).find(|n| short_of(&at(model, s, w, *n, &base), w, &base).is_none());
    // Held by none: the figures are for as many nodes as the connections take.
    let by_connections = (w.connections / w.max_connections)
        .ceil()
        .clamp(1.0, MAX_NODES as f64);
    let nodes = w.nodes.or(needed).unwrap_or(by_connections as usize);
    let p = at(model, s, w, nodes, &base);
    let shortfall = short_of(&p, w, &base);
    let mut notes = Vec::new();
    if let Some(why) = &shortfall {
        notes.push(match (w.nodes, needed) {
            (Some(k), Some(n)) => format!("does not fit on {k} nodes: {why}; {n} would hold it"),
            (Some(k), None) => format!(
                "does not fit on {k} nodes, nor on up to {}: {why}",
                count(MAX_NODES as f64)
            ),
            (None, _) => format!(
                "no count of nodes up to {} holds it: {why}",
                count(MAX_NODES as f64)
            ),
        });
    }
    if s == Strategy::Local && p.undelivered_share > 0.0 {
        notes.push(format!(
            "servers share nothing: members miss the {:.0} % of messages sent on other servers",
            (100.0 * p.undelivered_share).round()
        ));
    }
    let shards = if s == Strategy::Local {
        0
    } else {
        ((p.redis_cpu_cores / REDIS_UTILISATION).ceil() as usize).max(1)
    };
    if shards > 1 {
        notes.push(format!(
            "one Redis would need {} cores but runs commands on one: {shards} shards (redis_cluster)",
            short(p.redis_cpu_cores)
        ));
    }
    let mut out = Vec::new();
    if let Some(m) = measured(&sweep.points, s) {
        out = outside(&m, w, &p, shards);
    } else {
        out.push(format!("the sweep measured no {s} runs"));
    }
    let outside_measured = !out.is_empty();
    notes.extend(out);
    let pct = |k: &str| errors.get(k).map(|e| (1000.0 * e).round() / 10.0);
    let mut by_figure = BTreeMap::new();
    for (figure, from) in [
        ("nodes", "node_cores"),
        ("busiest_node_cores", "node_cores"),
        ("redis_cores", "redis_cores"),
        ("redis_shards", "redis_cores"),
        ("redis_bytes_per_sec", "redis_bytes_per_sec"),
        ("cpu_us_per_delivery", "cpu_us_per_delivery"),
    ] {
        if let Some(e) = pct(from) {
            by_figure.insert(figure.to_owned(), e);
        }
    }
    Answer {
        strategy: s,
        fits: shortfall.is_none(),
        nodes,
        nodes_needed: needed,
        connections_per_node: w.connections / nodes as f64,
        busiest_node_connections: p.busiest_node_connections,
        deliveries_per_sec: p.deliveries_per_sec,
        busiest_node_cores: p.cpu_busiest_node_cores,
        busiest_node_load: p.cpu_busiest_node_cores / w.node_cores,
        mean_node_cores: p.cpu_per_node_cores,
        redis_cores: p.redis_cpu_cores,
        redis_shards: shards,
        redis_commands_per_sec: p.redis_commands_per_sec,
        redis_bytes_per_sec: p.redis_bytes_per_sec,
        cross_node_bytes_per_sec: p.cross_node_bytes_per_sec,
        control_cores: p.control_cpu_cores,
        cpu_us_per_delivery: p.cpu_us_per_delivery,
        undelivered_share: p.undelivered_share,
        error_pct: by_figure.values().copied().fold(0.0, f64::max),
        error_pct_by_figure: by_figure,
        outside_measured,
        notes,
    }
}

/// The sweep's assumptions, with the workload's max_connections and churn.
fn assumptions(sweep: &Sweep, w: &Workload) -> Assumptions {
    Assumptions {
        node_max_connections: w.max_connections,
        rejoin_every_s: w.rejoin_every_s,
        ..sweep
            .model
            .assumptions
            .clone()
            .unwrap_or_else(default_assumptions)
    }
}

/// What a sweep made before assumptions were recorded assumed.
fn default_assumptions() -> Assumptions {
    Assumptions {
        connections_per_node: 10_000.0,
        messages_per_member_per_sec: 1.0,
        rejoin_every_s: 300.0,
        payload_bytes: 64,
        node_max_connections: 20_000.0,
        placement: "members land on nodes at random".into(),
    }
}

/// Cores to provision: the nodes', and one per Redis shard.
fn provisioned(a: &Answer, w: &Workload) -> f64 {
    a.nodes as f64 * w.node_cores + a.redis_shards as f64
}

/// The pick among the shared strategies (local shares nothing, so it is
/// never one): of those that hold the workload, the fewest cores to
/// provision, and within 2 % of that the least CPU per delivery; when none
/// holds it, the one whose busiest node comes closest.
fn pick(answers: &[Answer], w: &Workload) -> Pick {
    let shared: Vec<&Answer> = answers
        .iter()
        .filter(|a| SHARED.contains(&a.strategy))
        .collect();
    let fit: Vec<&Answer> = shared.iter().copied().filter(|a| a.fits).collect();
    let unfit: Vec<String> = shared
        .iter()
        .filter(|a| !a.fits)
        .map(|a| format!("{} does not fit ({})", a.strategy, a.notes[0]))
        .collect();
    if fit.is_empty() {
        // The fewest nodes that would hold it; else the lightest busiest node.
        let Some(c) = shared.iter().min_by(|x, y| {
            let need = |a: &Answer| a.nodes_needed.unwrap_or(usize::MAX);
            need(x)
                .cmp(&need(y))
                .then(x.busiest_node_load.total_cmp(&y.busiest_node_load))
        }) else {
            return Pick {
                strategy: Strategy::Pubsub,
                why: "the sweep has no model of the shared strategies".into(),
            };
        };
        return Pick {
            strategy: c.strategy,
            why: format!(
                "no strategy holds this workload; {} comes closest: {}",
                c.strategy, c.notes[0]
            ),
        };
    }
    let least = fit
        .iter()
        .map(|a| provisioned(a, w))
        .fold(f64::INFINITY, f64::min);
    let best = fit
        .iter()
        .copied()
        .filter(|a| provisioned(a, w) <= 1.02 * least)
        .min_by(|x, y| x.cpu_us_per_delivery.total_cmp(&y.cpu_us_per_delivery))
        .expect("one is within 2 % of the least");
    let cores = |a: &Answer| {
        format!(
            "{} node{} and {} Redis shard{}",
            a.nodes,
            if a.nodes == 1 { "" } else { "s" },
            a.redis_shards,
            if a.redis_shards == 1 { "" } else { "s" }
        )
    };
    let others: Vec<String> = fit
        .iter()
        .filter(|a| a.strategy != best.strategy)
        .map(|a| {
            format!(
                "{} {} at {} µs",
                a.strategy,
                cores(a),
                short(a.cpu_us_per_delivery)
            )
        })
        .collect();
    let mut why = format!(
        "{} holds it on {} at {} µs of CPU per delivery",
        best.strategy,
        cores(best),
        short(best.cpu_us_per_delivery)
    );
    if !others.is_empty() {
        let _ = write!(why, ", against {}", others.join(" and "));
    }
    if !unfit.is_empty() {
        let _ = write!(why, "; {}", unfit.join("; "));
    }
    Pick {
        strategy: best.strategy,
        why,
    }
}

/// The plan for `w` from `sweep` (its points' errors computed here when
/// the sweep predates them).
pub fn plan(sweep: &Sweep, w: &Workload) -> Plan {
    let errors = if sweep.model.figure_errors.is_empty() {
        figure_errors(&sweep.points)
    } else {
        sweep.model.figure_errors.clone()
    };
    let none = BTreeMap::new();
    let strategies: Vec<Answer> = STRATEGIES
        .iter()
        .filter(|s| cpu_known(&sweep.model, **s))
        .map(|s| answer(sweep, errors.get(s.as_str()).unwrap_or(&none), *s, w))
        .collect();
    let base = assumptions(sweep, w);
    Plan {
        workload: w.clone(),
        assumptions: PlanAssumptions {
            node_utilisation: NODE_UTILISATION,
            redis_utilisation: REDIS_UTILISATION,
            rejoin_every_s: base.rejoin_every_s,
            payload_bytes: base.payload_bytes,
            node_max_connections: base.node_max_connections,
            measured_on: format!("{} ({} cores)", sweep.host, sweep.cores),
        },
        pick: pick(&strategies, w),
        strategies,
    }
}

/// The workload of `o`, checked.
pub fn workload_of(o: &PlanOpts, sweep: &Sweep) -> Result<Workload> {
    let base = sweep
        .model
        .assumptions
        .clone()
        .unwrap_or_else(default_assumptions);
    let w = Workload {
        connections: o.connections.unwrap_or(0) as f64,
        room_size: o.room_size.unwrap_or(0),
        messages_per_member: o.messages_per_member.unwrap_or(0.0),
        rejoin_every_s: o.rejoin_every.unwrap_or(base.rejoin_every_s),
        nodes: o.nodes,
        node_cores: o.node_cores.unwrap_or(sweep.cores.max(1) as f64),
        max_connections: o
            .max_connections
            .map_or(base.node_max_connections, |m| m as f64),
    };
    if !(1.0..=MAX_CONNECTIONS).contains(&w.connections) {
        bail!("--connections must be 1 to {}", count(MAX_CONNECTIONS));
    }
    if w.room_size == 0 || w.room_size as f64 > w.connections {
        bail!(
            "--room-size must be 1 to --connections ({}): a room's members are connections",
            count(w.connections)
        );
    }
    if !(MIN_MESSAGES_PER_MEMBER..=MAX_MESSAGES_PER_MEMBER).contains(&w.messages_per_member) {
        bail!(
            "--messages-per-member must be {} to {}",
            short(MIN_MESSAGES_PER_MEMBER),
            count(MAX_MESSAGES_PER_MEMBER)
        );
    }
    if w.nodes.is_some_and(|n| n == 0 || n > MAX_NODES) {
        bail!("--nodes must be 1 to {MAX_NODES}");
    }
    if !(1.0..=f64::MAX).contains(&w.rejoin_every_s) {
        bail!("--rejoin-every must be 1 second or more");
    }
    if !(1.0..=1e8).contains(&w.max_connections) {
        bail!("--max-connections must be 1 to 100,000,000");
    }
    if !(w.node_cores > 0.0 && w.node_cores <= 1024.0) {
        bail!("--node-cores must be above 0 and at most 1024");
    }
    Ok(w)
}

pub(crate) fn run(o: &PlanOpts) -> Result<()> {
    let raw = std::fs::read(&o.sweep).with_context(|| format!("reading {}", o.sweep.display()))?;
    let sweep: Sweep = serde_json::from_slice(&raw).with_context(|| {
        format!(
            "{} is not a sweep.json (turnout-bench map writes one)",
            o.sweep.display()
        )
    })?;
    if sweep.points.is_empty() || sweep.model.fits.is_empty() {
        bail!("{} has no measured points to plan from", o.sweep.display());
    }
    if !o.against.is_empty() {
        return check(o, &sweep);
    }
    let w = workload_of(o, &sweep)?;
    let p = plan(&sweep, &w);
    if !p.strategies.iter().any(|a| SHARED.contains(&a.strategy)) {
        bail!(
            "{} has too few runs of sticky, pubsub or relay to fit their costs: run a fuller sweep \
             (deploy/loadtest/sweep.sh)",
            o.sweep.display()
        );
    }
    if o.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print!("{}", text(&p));
    }
    Ok(())
}

/// The plan as a table and a sentence.
pub fn text(p: &Plan) -> String {
    let w = &p.workload;
    let mut t = format!(
        "workload: {} connections in rooms of {}, {} msg/s to each member; nodes of {} cores, \
         sized to {:.0} % of them{}\n\n",
        count(w.connections),
        count(w.room_size as f64),
        short(w.messages_per_member),
        short(w.node_cores),
        100.0 * p.assumptions.node_utilisation,
        match w.nodes {
            Some(n) => format!("; on {n} nodes"),
            None => String::new(),
        }
    );
    let _ = writeln!(
        t,
        "{:<8} {:>5} {:>6} {:>11} {:>15} {:>13} {:>11} {:>15} {:>10}",
        "strategy",
        "fits",
        "nodes",
        "conns/node",
        "busiest cores",
        "Redis cores",
        "Redis MB/s",
        "node-node MB/s",
        "µs/deliv."
    );
    for a in &p.strategies {
        let err = |k: &str| {
            a.error_pct_by_figure
                .get(k)
                .map(|e| format!(" ±{:.0}%", e.round()))
                .unwrap_or_default()
        };
        let _ = writeln!(
            t,
            "{:<8} {:>5} {:>6} {:>11} {:>15} {:>13} {:>11} {:>15} {:>10}",
            a.strategy.as_str(),
            if a.fits { "yes" } else { "no" },
            if a.fits || w.nodes.is_some() {
                a.nodes.to_string()
            } else {
                format!("({})", a.nodes)
            },
            count(a.connections_per_node),
            format!(
                "{}{}",
                short(a.busiest_node_cores),
                err("busiest_node_cores")
            ),
            if a.strategy == Strategy::Local {
                "—".to_owned()
            } else {
                format!(
                    "{} ({}){}",
                    short(a.redis_cores),
                    a.redis_shards,
                    err("redis_cores")
                )
            },
            short(a.redis_bytes_per_sec / 1e6),
            short(a.cross_node_bytes_per_sec / 1e6),
            format!(
                "{}{}",
                short(a.cpu_us_per_delivery),
                err("cpu_us_per_delivery")
            ),
        );
    }
    t.push('\n');
    for a in &p.strategies {
        for n in &a.notes {
            let _ = writeln!(t, "{}: {}", a.strategy, n);
        }
    }
    let _ = writeln!(
        t,
        "\npick: {}. {}{}.\n(Errors are the median each figure showed on the sweep's runs, each predicted \
         without it; figures are in the cores of {}.)",
        p.pick.strategy,
        p.pick
            .why
            .chars()
            .take(1)
            .collect::<String>()
            .to_uppercase(),
        p.pick.why.chars().skip(1).collect::<String>(),
        p.assumptions.measured_on
    );
    t
}

/// A count, rounded (half away from zero), with thousands separated:
/// 1,000,000.
pub fn count(v: f64) -> String {
    let digits = format!("{:.0}", v.abs().round());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// A figure to three places at most, without trailing zeros: 1, 2.5,
/// 0.072; below 0.001, as 1.5e-4. Rounded half away from zero, as the
/// page's planner rounds.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a > 0.0 && a < 0.001 {
        return format!("{v:.1e}");
    }
    let places = if a >= 1000.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 0.1 {
        2
    } else {
        3
    };
    let f = 10f64.powi(places);
    let s = format!("{:.*}", places as usize, (v * f).round() / f);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// What the report's planner form computes from: the model's fits and
/// curves, the assumptions, each figure's error and what was measured of
/// each strategy (planner.js runs [`plan`]'s steps on it).
pub fn page_model(sweep: &Sweep) -> serde_json::Value {
    let errors = if sweep.model.figure_errors.is_empty() {
        figure_errors(&sweep.points)
    } else {
        sweep.model.figure_errors.clone()
    };
    let measured: BTreeMap<String, serde_json::Value> = STRATEGIES
        .iter()
        .filter_map(|s| {
            let m = measured(&sweep.points, *s)?;
            Some((
                s.to_string(),
                serde_json::json!({
                    "room_size": [m.room_size.0, m.room_size.1],
                    "messages_per_member": [m.messages_per_member.0, m.messages_per_member.1],
                    "nodes": m.nodes,
                    "connections_per_node": m.connections_per_node,
                    "deliveries_per_node": m.deliveries_per_node,
                    "joins_per_node": m.joins_per_node,
                    "redis_commands": m.redis_commands,
                    "rooms_per_node": m.rooms_per_node,
                }),
            ))
        })
        .collect();
    let strategies: Vec<&str> = STRATEGIES
        .iter()
        .filter(|s| cpu_known(&sweep.model, **s))
        .map(|s| s.as_str())
        .collect();
    serde_json::json!({
        "strategies": strategies,
        "shared": SHARED.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "fits": sweep.model.fits.iter().map(|f| serde_json::json!({
            "strategy": f.strategy, "target": f.target, "costs": f.costs,
        })).collect::<Vec<_>>(),
        "redis_curves": sweep.model.redis_curves,
        "redis_commands_per_core_second": sweep.model.redis_commands_per_core_second,
        "assumptions": sweep.model.assumptions.clone().unwrap_or_else(default_assumptions),
        "errors": errors,
        "measured": measured,
        "cores": sweep.cores,
        "measured_on": format!("{} ({} cores)", sweep.host, sweep.cores),
        "node_utilisation": NODE_UTILISATION,
        "redis_utilisation": REDIS_UTILISATION,
        "max_nodes": MAX_NODES,
        "max_connections": MAX_CONNECTIONS,
        "max_messages_per_member": MAX_MESSAGES_PER_MEMBER,
        "min_messages_per_member": MIN_MESSAGES_PER_MEMBER,
    })
}

/// One run checked against the planner: the workload it ran, predicted.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Check {
    pub file: String,
    pub strategy: Strategy,
    pub workload: Workload,
    /// The run did not carry what it was offered (the machine was the limit).
    pub saturated: bool,
    pub outside_measured: bool,
    /// ws_node_cores, redis_cores, cpu_us_per_delivery: measured,
    /// predicted, and the error in per cent.
    pub measured: BTreeMap<String, f64>,
    pub predicted: BTreeMap<String, f64>,
    pub error_pct: BTreeMap<String, f64>,
}

/// Checks the planner against runs (`--against`): each run's workload is
/// planned on its own node count and the prediction set beside what the
/// run measured.
fn check(o: &PlanOpts, sweep: &Sweep) -> Result<()> {
    let runs = crate::report::read_results(&o.against)?;
    let mut checks = Vec::new();
    for (r, f) in runs.iter().zip(&o.against) {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let p = Point::from_run(&name, r)?;
        let members = (p.rooms * p.room_size) as f64;
        let w = Workload {
            connections: members,
            room_size: p.room_size,
            // What each member was offered: its room's publishers' rate.
            messages_per_member: p.publishers_per_room as f64 * p.rate,
            nodes: Some(p.nodes),
            node_cores: sweep.cores.max(1) as f64,
            max_connections: 1e8,
            rejoin_every_s: if p.joins_per_sec > 0.0 {
                members / p.joins_per_sec
            } else {
                1e12
            },
        };
        let plan = plan(sweep, &w);
        let Some(a) = plan.strategies.iter().find(|a| a.strategy == p.strategy) else {
            bail!("{name}: the sweep has no model of {}", p.strategy);
        };
        let measured = BTreeMap::from([
            ("ws_node_cores".to_owned(), p.cpu_cores.ws_nodes),
            ("redis_cores".to_owned(), p.cpu_cores.redis),
            ("cpu_us_per_delivery".to_owned(), p.cpu_us_per_delivery),
        ]);
        let predicted = BTreeMap::from([
            (
                "ws_node_cores".to_owned(),
                a.mean_node_cores * p.nodes as f64,
            ),
            ("redis_cores".to_owned(), a.redis_cores),
            ("cpu_us_per_delivery".to_owned(), a.cpu_us_per_delivery),
        ]);
        let error_pct = measured
            .iter()
            .filter(|(_, m)| **m > 0.0)
            .map(|(k, m)| (k.clone(), (1000.0 * (predicted[k] - m) / m).round() / 10.0))
            .collect();
        checks.push(Check {
            file: name,
            strategy: p.strategy,
            workload: w,
            saturated: p.saturated,
            outside_measured: a.outside_measured,
            measured,
            predicted,
            error_pct,
        });
    }
    if o.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
        return Ok(());
    }
    let mut t = format!(
        "{:<8} {:>5} {:>5} {:>9} {:>22} {:>22} {:>22}\n",
        "strategy",
        "nodes",
        "room",
        "msg/s/mbr",
        "ws-node cores m/p/err",
        "Redis cores m/p/err",
        "µs/deliv. m/p/err"
    );
    let fig = |c: &Check, k: &str| {
        format!(
            "{}/{}/{}",
            short(c.measured[k]),
            short(c.predicted[k]),
            c.error_pct
                .get(k)
                .map_or("—".into(), |e| format!("{e:+.0}%"))
        )
    };
    for c in &checks {
        let _ = writeln!(
            t,
            "{:<8} {:>5} {:>5} {:>9} {:>22} {:>22} {:>22}{}",
            c.strategy.as_str(),
            c.workload.nodes.unwrap_or(0),
            c.workload.room_size,
            short(c.workload.messages_per_member),
            fig(c, "ws_node_cores"),
            fig(c, "redis_cores"),
            fig(c, "cpu_us_per_delivery"),
            if c.saturated { "  (saturated)" } else { "" }
        );
    }
    t.push_str("(m: measured, p: predicted from the sweep, err: (p − m) / m)\n");
    print!("{t}");
    Ok(())
}
