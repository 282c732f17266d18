//! One point per run of the sweep: the figures the comparison needs,
//! each with the run's full results.

use super::*;
use crate::stats::RunResult;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One measured run of the sweep.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Point {
    pub strategy: Strategy,
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
    /// A run that offered no traffic (the `idle` scenario): connections
    /// held and rooms joined, nothing published. Its CPU is what holding
    /// them costs, which the traffic runs cannot tell apart from their
    /// per-message costs; it enters the fits, not the measured ranges of
    /// traffic or the charts of cost per delivery.
    pub fn idle(&self) -> bool {
        self.offered_deliveries_per_sec == 0.0 && self.deliveries_per_sec == 0.0
    }

    /// The point of run `r` (from results file `file`); an error for a run
    /// that is not of a turnout strategy (the floor, or another label).
    pub fn from_run(file: &str, r: &RunResult) -> Result<Point> {
        let strategy: Strategy = r.strategy.parse().map_err(|e| {
            anyhow::anyhow!("{file}: {e}: the map compares turnout's strategies only")
        })?;
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
        let local = strategy == Strategy::Local;
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
        Ok(Point {
            strategy,
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
            fanouts_per_sec: if strategy == Strategy::Pubsub {
                publishes * r.nodes_per_room
            } else {
                0.0
            },
            hops_per_sec: r
                .node_hops
                .filter(|_| strategy == Strategy::Relay)
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
        })
    }
}
