//! The strategy map (`turnout-bench map`): the runs of a sweep
//! (`deploy/loadtest/sweep.sh`) become `sweep.json` and `report.html`.
//!
//! - `points`: one per run, the figures the comparison needs, each with the
//!   run's full results.
//! - `fit`: per-operation costs (a delivery, a publish, Redis's fan-out to
//!   a subscribed node, a hop from one node to another, a join, a held
//!   connection, a node, a room) fitted to
//!   the points by non-negative least squares, the error on points held out
//!   of the fit; `predict`: predictions for clusters larger than this
//!   machine.
//! - `verdict`: which strategy for which workload, and where the winner
//!   changes.
//! - `html`: the page.

mod fit;
mod html;
pub mod plan;
mod points;
mod predict;
mod verdict;

pub use fit::*;
pub use html::*;
pub use points::*;
pub use predict::*;
pub use verdict::*;

use crate::cli::MapOpts;
use crate::svg::fmt_num;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
pub use turnout_proto::Strategy;

pub const STRATEGIES: [Strategy; 4] = [
    Strategy::Local,
    Strategy::Sticky,
    Strategy::Pubsub,
    Strategy::Relay,
];

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
    model.figure_errors = plan::figure_errors(&points);
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
        "Predicted Redis cores come from a curve over the predicted commands (redis_curves: \
         Redis's CPU per command falls as its load rises, which its linear CPU fit in fits cannot \
         follow), plus its fan-out, join and node costs; past the most commands measured they grow in \
         proportion to commands."
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

/// `earlier` with `runs` added, each replacing a point of the same file
/// name.
pub(crate) fn merge(earlier: Vec<Point>, runs: Vec<Point>) -> Vec<Point> {
    let mut points: Vec<Point> = earlier
        .into_iter()
        .filter(|p| runs.iter().all(|r| r.file != p.file))
        .collect();
    points.extend(runs);
    points
}

pub(crate) fn write(o: &MapOpts) -> Result<()> {
    let runs: Vec<Point> = crate::report::read_results(&o.results)?
        .iter()
        .zip(&o.results)
        .map(|(r, p)| Point::from_run(&p.file_name().unwrap_or_default().to_string_lossy(), r))
        .collect::<Result<_>>()?;
    let (points, grid, command) = match &o.points_from {
        Some(f) => {
            let raw =
                std::fs::read(f).map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
            let earlier: Sweep = serde_json::from_slice(&raw)
                .map_err(|e| anyhow::anyhow!("{} is not a sweep.json: {e}", f.display()))?;
            let mut command = earlier.command;
            if !runs.is_empty() {
                command = format!(
                    "{command}; then {}",
                    std::env::args().collect::<Vec<_>>().join(" ")
                );
            }
            (merge(earlier.points, runs), earlier.grid, Some(command))
        }
        None => (runs, "custom".to_owned(), None),
    };
    let grid = o.grid.clone().unwrap_or(grid);
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
    let mut sweep = build(points, a, &grid);
    // Mapped again: the points' sweep is still the one that measured them.
    if let Some(c) = command {
        sweep.command = c;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A point whose CPU is made from known per-operation costs.
    fn synthetic(
        strategy: Strategy,
        nodes: usize,
        m: usize,
        rooms: usize,
        rate: f64,
        churn: f64,
    ) -> Point {
        let publishes = (rooms * m) as f64 * rate;
        let spread = if strategy == Strategy::Sticky {
            1.0
        } else {
            nodes.min(m) as f64
        };
        let deliveries = publishes * m as f64;
        let fanouts = if strategy == Strategy::Pubsub {
            publishes * spread
        } else {
            0.0
        };
        let hops = if strategy == Strategy::Relay {
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
        let redis_us = if strategy == Strategy::Local {
            0.0
        } else {
            30.0 * publishes + 4.0 * fanouts + 50.0 * churn + 1.0 * rooms as f64
        };
        let cmds = if strategy == Strategy::Local {
            0.0
        } else {
            3.0 * publishes + 6.0 * churn + 0.2 * rooms as f64
        };
        Point {
            strategy,
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
            hops_per_sec: (strategy == Strategy::Relay).then_some(hops),
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
            undelivered_share: if strategy == Strategy::Local {
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
        let f = model.fit(Strategy::Pubsub, "ws_node_cpu").expect("fitted");
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
        let sticky = &model.fit(Strategy::Sticky, "ws_node_cpu").unwrap().costs;
        assert!(!sticky.contains_key("fanout") && !sticky.contains_key("hop"));
        // Relay's hop is told apart from its publish and delivery.
        let r = &model.fit(Strategy::Relay, "ws_node_cpu").unwrap().costs;
        assert!((r["hop"] - 8.0).abs() < 0.08, "{r:?}");
        assert!((r["delivery"] - 5.0).abs() < 0.05, "{r:?}");
        assert!(!r.contains_key("fanout"));
        assert!(
            !model
                .fit(Strategy::Relay, "redis_cpu")
                .unwrap()
                .costs
                .contains_key("hop")
        );
        assert!(model.fit(Strategy::Local, "redis_cpu").is_none());
        let r = model.fit(Strategy::Sticky, "redis_commands").unwrap();
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
            .filter(|p| p.strategy == Strategy::Sticky || p.strategy == Strategy::Pubsub)
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
            .filter(|p| p.strategy == Strategy::Relay)
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
            .filter(|p| p.strategy == Strategy::Relay && p.nodes == 4)
        {
            p.hops_per_sec = None;
        }
        let sweep = build(pts, assumptions(), "test");
        let f = sweep.model.fit(Strategy::Relay, "ws_node_cpu").unwrap();
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
        for p in pts.iter_mut().filter(|p| p.strategy == Strategy::Relay) {
            p.cpu_cores.ws_nodes += 32.0 * p.hops_per_sec.unwrap_or(0.0) / 1e6;
        }
        let sweep = build(pts, assumptions(), "test");
        let r = &sweep
            .model
            .fit(Strategy::Relay, "ws_node_cpu")
            .unwrap()
            .costs;
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
        let f = model.fit(Strategy::Pubsub, "ws_node_cpu").unwrap();
        assert!(f.held_out.median_error.unwrap() > 0.1, "{:?}", f.held_out);
    }

    #[test]
    fn saturated_runs_stay_out_of_the_fit() {
        // A run the machine could not carry: it delivered less than was
        // offered and its CPU is what the machine had. Fitted, it would
        // pull every cost down.
        let mut pts = grid();
        let mut short = synthetic(Strategy::Relay, 4, 2, 300, 40.0, 0.0);
        short.saturated = true;
        short.cpu_cores.ws_nodes *= 0.5;
        short.cpu_cores.redis *= 0.5;
        pts.push(short);
        let clean = fit(&grid());
        let model = fit(&pts);
        for t in ["ws_node_cpu", "redis_cpu"] {
            let (a, b) = (clean.fit(Strategy::Relay, t), model.fit(Strategy::Relay, t));
            assert_eq!(a.map(|f| &f.costs), b.map(|f| &f.costs), "{t}");
            assert_eq!(b.map(|f| f.points), a.map(|f| f.points), "{t}");
        }
        // Redis's curve keeps it: its commands are what Redis ran, and the
        // busiest runs are where the curve learns how a command's cost
        // falls with load.
        assert!(
            model.redis_curves["relay"].max_commands > clean.redis_curves["relay"].max_commands
        );
        // And out of the planner's own error.
        assert_eq!(
            plan::figure_errors(&grid())["relay"],
            plan::figure_errors(&pts)["relay"]
        );
    }

    #[test]
    fn idle_runs_enter_the_fits_but_not_the_measured_traffic() {
        // A run holding connections with nothing sent: CPU for holding them
        // only, which the traffic runs cannot tell from their messages.
        let mut idle = synthetic(Strategy::Pubsub, 3, 10, 1500, 0.0, 0.0);
        assert_eq!(idle.connections, 15_000);
        idle.offered_deliveries_per_sec = 0.0;
        idle.file = "pubsub-idle.json".into();
        assert!(idle.idle() && !idle.saturated);
        assert!(grid().iter().all(|p| !p.idle()));
        let pts = merge(grid(), vec![idle.clone()]);
        assert_eq!(pts.len(), grid().len() + 1);
        let with = fit(&pts);
        let without = fit(&grid());
        // A node's CPU: holding a connection costs what the idle run
        // measured (its node's upkeep put on the connections too), and the
        // traffic runs are fitted for the rest, without a cost per room.
        let f = with.fit(Strategy::Pubsub, "ws_node_cpu").expect("fitted");
        let held = (0.5 * 15_000.0 + 2000.0 * 3.0) / 15_000.0;
        assert!((f.costs["connection"] - held).abs() < 1e-9, "{:?}", f.costs);
        assert!(!f.costs.contains_key("room"), "{:?}", f.costs);
        assert!((f.costs["delivery"] - 5.0).abs() < 0.05, "{:?}", f.costs);
        assert_eq!(
            Some(f.points),
            without
                .fit(Strategy::Pubsub, "ws_node_cpu")
                .map(|f| f.points)
        );
        assert!(
            without
                .fit(Strategy::Pubsub, "ws_node_cpu")
                .unwrap()
                .costs
                .contains_key("room")
        );
        // The other fits take it as one more point.
        let n = |m: &Model| m.fit(Strategy::Pubsub, "redis_commands").map(|f| f.points);
        assert_eq!(n(&with), n(&without).map(|n| n + 1));
        // Neither the planner's edges of what was measured nor the charts
        // of cost per delivery take it.
        let a = build(grid(), assumptions(), "test");
        let b = build(pts.clone(), assumptions(), "test");
        assert_eq!(
            plan::page_model(&a)["measured"],
            plan::page_model(&b)["measured"]
        );
        let charted = |s: &Sweep| {
            html::measured_series(
                s,
                |_| true,
                |p| p.connections as f64,
                |p| p.cpu_us_per_delivery,
            )
            .iter()
            .map(|x| x.pts.len())
            .sum::<usize>()
        };
        assert_eq!(charted(&a), charted(&b));
        assert!(html::report(&b).contains("(idle: 15000 connections held)"));
        // A run mapped again replaces its point of the same file name.
        let mut again = idle.clone();
        again.cpu_cores.ws_nodes *= 2.0;
        let twice = merge(pts, vec![again]);
        assert_eq!(twice.len(), grid().len() + 1);
        assert_eq!(
            twice.last().map(|p| p.cpu_cores.ws_nodes),
            Some(2.0 * idle.cpu_cores.ws_nodes)
        );
    }

    #[test]
    fn predictions_follow_the_workload() {
        let sweep = build(grid(), assumptions(), "test");
        let a = assumptions();
        let p = |s: Strategy, n, m| predict(&sweep.model, s, n, m, &a);
        // Pubsub relays each message to about min(nodes, members) nodes.
        let small = p(Strategy::Pubsub, 100, 10);
        assert!((small.cross_node_messages_per_sec / small.publishes_per_sec - 9.56).abs() < 0.05);
        assert_eq!(
            p(Strategy::Sticky, 100, 10).cross_node_messages_per_sec,
            0.0
        );
        // Relay: to the owner unless the publisher is on it, then from it
        // to every other node with members: 0.99 × (1 + 9.56).
        let r = p(Strategy::Relay, 100, 10);
        assert!((r.cross_node_messages_per_sec / r.publishes_per_sec - 10.45).abs() < 0.05);
        assert_eq!(
            r.redis_commands_per_sec,
            p(Strategy::Sticky, 100, 10).redis_commands_per_sec
        );
        // A relay room larger than a node fits; its owner carries the room's
        // publishes and the sending half of its hops on top of its share.
        let big = p(Strategy::Relay, 10, 100_000);
        let (l, _) = workload(Strategy::Relay, 10, 100_000, &a);
        let owner = (l.publishes * sweep.model.cost(Strategy::Relay, "ws_node_cpu", "publish")
            + 0.5 * l.hops * sweep.model.cost(Strategy::Relay, "ws_node_cpu", "hop"))
            / l.rooms
            / 1e6;
        assert!(big.fits && owner > 0.0);
        assert!((big.cpu_busiest_node_cores - big.cpu_per_node_cores - owner).abs() < 1e-9);
        assert_eq!(
            p(Strategy::Relay, 10, 10).cpu_busiest_node_cores,
            p(Strategy::Relay, 10, 10).cpu_per_node_cores
        );
        // A sticky room larger than a node does not fit, and its node is hot.
        let hot = p(Strategy::Sticky, 10, 100_000);
        assert!(!hot.fits && hot.cpu_busiest_node_cores > 5.0 * hot.cpu_per_node_cores);
        assert!(p(Strategy::Pubsub, 10, 100_000).fits);
        // Local loses what crosses nodes.
        // (the sender's own copy always arrives: 9/10 of 49/50 do not).
        assert!((p(Strategy::Local, 50, 10).undelivered_share - 0.9 * 0.98).abs() < 1e-9);
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
        assert!(
            html.contains("<circle")
                && html.contains("<polyline")
                && html.contains("The answer")
                && html.contains("id=\"planner\"")
        );
        // The page's model is JSON a script tag cannot end early.
        let tag = "id=\"plan-model\">";
        let start = html.find(tag).expect("model") + tag.len();
        let end = start + html[start..].find("</script>").expect("end");
        let m: serde_json::Value = serde_json::from_str(&html[start..end]).expect("JSON");
        assert_eq!(m["strategies"].as_array().map(|v| v.len()), Some(4));
    }

    #[test]
    fn the_redis_curve_recovers_a_power_of_commands_and_its_fanout_join_and_node_costs() {
        let mut pts = grid();
        for p in &mut pts {
            p.cpu_cores.redis = 2e-4 * p.redis_commands_per_sec.powf(0.6)
                + 5e-6 * p.fanouts_per_sec
                + 3e-4 * p.joins_per_sec
                + 1e-3 * p.nodes as f64;
        }
        let of = |s: Strategy| -> Vec<&Point> { pts.iter().filter(|p| p.strategy == s).collect() };
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-3 * want;
        let c = redis_curve(&of(Strategy::Pubsub)).expect("a curve");
        assert!((c.commands_exp - 0.6).abs() < 1e-9, "{c:?}");
        assert!(
            close(c.scale, 2e-4)
                && close(c.fanout_cores, 5e-6)
                && close(c.join_cores, 3e-4)
                && close(c.node_cores, 1e-3),
            "{c:?}"
        );
        // Sticky fans nothing out: no fan-out term.
        let s = redis_curve(&of(Strategy::Sticky)).expect("a curve");
        assert_eq!(s.fanout_cores, 0.0);
        assert!(
            (s.commands_exp - 0.6).abs() < 1e-9
                && close(s.join_cores, 3e-4)
                && close(s.node_cores, 1e-3),
            "{s:?}"
        );
        // Past the most commands measured, the commands' cores grow in
        // proportion.
        let own = |k: f64| c.cores(k * c.max_commands, &Load::default());
        assert!(close(own(10.0), 10.0 * own(1.0)));
        // Too few points make no curve.
        assert!(redis_curve(&of(Strategy::Sticky)[..3]).is_none());
    }

    #[test]
    fn a_plan_takes_the_fewest_nodes_that_hold_the_workload() {
        let sweep = build(grid(), assumptions(), "test");
        let w = plan::Workload {
            connections: 200_000.0,
            room_size: 10,
            messages_per_member: 2.0,
            nodes: None,
            node_cores: 4.0,
            max_connections: 50_000.0,
            rejoin_every_s: 300.0,
        };
        let p = plan::plan(&sweep, &w);
        assert_eq!(p.strategies.len(), 4);
        for a in &p.strategies {
            assert!(a.fits, "{a:?}");
            assert_eq!(a.nodes_needed, Some(a.nodes));
            assert!(a.busiest_node_cores <= 0.7 * 4.0);
            assert!(a.connections_per_node <= 50_000.0);
            if a.nodes > 4 {
                // One node fewer would not hold it: its busiest node is over.
                let fewer = plan::plan(
                    &sweep,
                    &plan::Workload {
                        nodes: Some(a.nodes - 1),
                        ..w.clone()
                    },
                );
                let b = fewer
                    .strategies
                    .iter()
                    .find(|b| b.strategy == a.strategy)
                    .unwrap();
                assert!(!b.fits, "{b:?}");
            }
        }
        assert!(SHARED.contains(&p.pick.strategy));
        // The same workload on the nodes one strategy needs: it fits there.
        let sticky = p
            .strategies
            .iter()
            .find(|a| a.strategy == Strategy::Sticky)
            .unwrap();
        let on = plan::plan(
            &sweep,
            &plan::Workload {
                nodes: Some(sticky.nodes),
                ..w.clone()
            },
        );
        assert!(
            on.strategies
                .iter()
                .any(|a| a.strategy == Strategy::Sticky && a.fits)
        );
    }

    #[test]
    fn strings_from_a_sweep_cannot_end_the_pages_model_early() {
        let mut sweep = build(grid(), assumptions(), "test");
        sweep.host = "<!--<script></script>&".into();
        let html = report(&sweep);
        let tag = "id=\"plan-model\">";
        let start = html.find(tag).expect("model") + tag.len();
        let end = start + html[start..].find("</script>").expect("end");
        let json = &html[start..end];
        assert!(!json.contains('<') && !json.contains('>'), "{json}");
        let m: serde_json::Value = serde_json::from_str(json).expect("JSON");
        assert_eq!(m["measured_on"], "<!--<script></script>& (0 cores)");
    }

    #[test]
    fn counts_and_figures_read_as_people_write_them() {
        assert_eq!(plan::count(1_234_567.4), "1,234,567");
        assert_eq!(plan::count(999.0), "999");
        assert_eq!(plan::count(1000.0), "1,000");
        assert_eq!(plan::short(1.5), "1.5");
        assert_eq!(plan::short(10.0), "10");
        assert_eq!(plan::short(0.0723), "0.072");
        assert_eq!(
            plan::short(0.0625),
            "0.063",
            "half away from zero, as the page"
        );
        assert_eq!(plan::short(0.00015), "1.5e-4");
        assert_eq!(plan::count(62.5), "63");
        assert_eq!(
            first_sentence("It wins. 10 nodes: 1.5 µs."),
            ("It wins.", "10 nodes: 1.5 µs.")
        );
        assert_eq!(first_sentence("12.5 µs"), ("12.5 µs", ""));
    }
}
