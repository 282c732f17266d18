//! Which strategy for which workload, and where the winner changes.

use super::*;
use crate::svg::fmt_num;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Room sizes scanned for crossovers.
pub(super) const SCAN: [usize; 16] = [
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
pub(super) const SHARED: [Strategy; 3] = [Strategy::Sticky, Strategy::Pubsub, Strategy::Relay];

/// Has the model CPU figures for `strategy`?
pub(super) fn cpu_known(model: &Model, strategy: Strategy) -> bool {
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
pub(super) fn pick(
    model: &Model,
    nodes: usize,
    room_size: usize,
    a: &Assumptions,
) -> (Strategy, String, Vec<Prediction>) {
    let preds: Vec<Prediction> = SHARED
        .iter()
        .map(|s| predict(model, *s, nodes, room_size, a))
        .collect();
    let mut left: Vec<usize> = (0..SHARED.len())
        .filter(|i| cpu_known(model, SHARED[*i]))
        .collect();
    let names = |v: &[usize]| {
        v.iter()
            .map(|i| SHARED[*i].as_str())
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
        return (Strategy::Pubsub, "no CPU figures to compare".into(), preds);
    };
    if left.len() > 1 {
        why.push(format!("{} uses the least CPU per delivery", SHARED[w]));
    }
    (SHARED[w], why.join("; "), preds)
}

/// The measured hot room of one strategy: its busiest ws-node.
#[derive(Clone, Copy)]
pub(super) struct Hot {
    busiest: f64,
    p99_ms: f64,
    nodes: usize,
    room_size: usize,
}

pub(super) fn measured(
    points: &[Point],
    strategy: Strategy,
    f: impl Fn(&Point) -> bool,
) -> Vec<&Point> {
    points
        .iter()
        .filter(|p| p.strategy == strategy && !p.idle() && f(p))
        .collect()
}

pub(super) fn mean(v: impl Iterator<Item = f64>) -> f64 {
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
                        " (predictions take Redis cores from its curve over commands instead)",
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
                s.as_str(),
                mean(
                    measured(points, *s, |p| p.nodes == 1 && p.churn == 0.0)
                        .iter()
                        .map(|p| p.cpu_us_per_delivery),
                ),
            )
        })
        .collect();
    let shared_one: Vec<(&str, f64)> = SHARED
        .iter()
        .map(|s| (s.as_str(), one[s.as_str()]))
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
    let spread: Vec<&Point> = measured(points, Strategy::Local, |p| p.nodes > 1);
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
        .filter(|s| cpu_known(model, *s))
        .map(Strategy::as_str)
        .collect();
    let missing: Vec<&str> = SHARED
        .iter()
        .map(|s| s.as_str())
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
                if !known.contains(&s.as_str()) {
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
            winners[0].to_string()
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
    let hot = |strategy: Strategy| -> Option<Hot> {
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
    let hots: Vec<(Strategy, Hot)> = SHARED
        .iter()
        .filter_map(|s| hot(*s).map(|h| (*s, h)))
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
            strategy: w.0.to_string(),
            why: format!(
                "The busiest ws-node used {}. Sticky serves the whole room from its owner; pubsub spreads \
                 the members and relays each message through Redis to every node; relay spreads the members \
                 and its owner sends each message once to every other node. {}",
                each.join(", "),
                if w.0 == Strategy::Sticky {
                    "Here the owner's load stayed below what the spread strategies added to their busiest node."
                } else {
                    "With more nodes, the spread strategies' busiest node gets lighter; sticky's does not."
                }
            ),
            numbers,
        });
    }
    // Churn, measured.
    let churn: Vec<(Strategy, f64)> = SHARED
        .iter()
        .map(|s| {
            let c = model.cost(*s, "ws_node_cpu", "join")
                + model.cost(*s, "control_cpu", "join")
                + model.cost(*s, "redis_cpu", "join");
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
            strategy: w.0.to_string(),
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
            if picks.last().is_none_or(|s| s.strategy != w.as_str()) {
                picks.push(Segment {
                    from_room_size: size,
                    strategy: w.to_string(),
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
