//! Command-line interface of `turnout-bench`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "turnout-bench",
    version,
    about = "Load generator and side-by-side report for turnout"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run one scenario against a running cluster and write its results as JSON.
    /// An option given twice takes its last value (scripts pass their
    /// defaults first, then the caller's).
    #[command(args_override_self = true)]
    Run(RunOpts),
    /// Render results (JSON files from `run`) as one HTML page with SVG charts.
    Report(ReportOpts),
    /// The strategy map: fit per-operation costs to a sweep's results, predict
    /// larger clusters, and write DIR/sweep.json and DIR/report.html.
    Map(MapOpts),
    /// The capacity planner: a workload in your terms (connections, room
    /// size, messages each member receives per second), answered for each
    /// strategy from a sweep's model: nodes, the busiest node's cores, Redis
    /// cores and shards, traffic, CPU per delivery, each with its expected
    /// error, and a pick.
    Plan(PlanOpts),
    /// The fault campaign: a seeded random schedule of faults against a
    /// cluster under load from protocol-following clients, checked from
    /// what every client recorded (deploy/loadtest/faults.sh).
    Faults(FaultsOpts),
    /// A TCP proxy that cuts the network on a signal (partition experiments).
    Proxy(ProxyOpts),
    /// GET a URL; exit 0 on a 2xx answer within the timeout, 1 otherwise
    /// (container health checks, in images without curl).
    Probe(ProbeOpts),
    /// The floor: a bare one-process WebSocket fan-out (no Redis, no
    /// history) that speaks the bench's frames, so `run` measures it like a
    /// cluster and the report compares against it.
    Floor(FloorOpts),
}

#[derive(Args, Debug, Clone)]
pub struct ProbeOpts {
    /// e.g. http://127.0.0.1:8080/healthz
    pub url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

#[derive(Args, Debug, Clone)]
pub struct FaultsOpts {
    /// Directory for faults.json, each run's history and the processes' logs.
    #[arg(long)]
    pub out: PathBuf,
    /// A short campaign (the CI's): a minute of faults per strategy.
    #[arg(long)]
    pub quick: bool,
    /// The schedule's seed (default: a fresh one, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Strategies to run, comma-separated.
    #[arg(long, default_value = "sticky,pubsub,relay", value_delimiter = ',')]
    pub strategies: Vec<String>,
    /// Seconds in which faults start, per strategy (default: 60 with
    /// --quick, else 1800).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Only these fault kinds, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// ws-nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Rooms of the campaign's own clients, and members in each.
    #[arg(long, default_value_t = 6)]
    pub rooms: usize,
    #[arg(long, default_value_t = 4)]
    pub members: usize,
    /// Publishes per second of each of those members.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Where turnout-gateway, turnout-router and turnout-ws-node are
    /// (default: next to turnout-bench).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Node.js for the turnout-client members (deploy/loadtest/faults-client.mjs).
    #[arg(long, default_value = "node")]
    pub node: String,
    /// Without turnout-client members.
    #[arg(long)]
    pub no_js: bool,
}

#[derive(Args, Debug, Clone)]
pub struct FloorOpts {
    /// Address to listen on (`run --gateway http://ADDR`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Write the process id here: a run's `--run-dir` with this file in it
    /// samples the floor's CPU and memory.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ProxyOpts {
    /// Address to listen on, e.g. 127.0.0.1:6490.
    #[arg(long)]
    pub listen: String,
    /// Server to forward to, e.g. 127.0.0.1:6390.
    #[arg(long)]
    pub target: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// R rooms x M members, every member publishing at --rate.
    Chat,
    /// One room, many members, --publishers of them publishing.
    Broadcast,
    /// N connections that join a room and stay silent: memory per connection.
    Idle,
    /// Chat load, SIGKILL one ws-node mid-run: time to recovery and loss.
    Failover,
    /// Chat load (the victims) while attackers flood joins and publishes,
    /// hold silent sockets and hoard room streams.
    Abuse,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Connect to the node `/api/route` names.
    Direct,
    /// Connect through the gateway's `/ws` proxy.
    Proxy,
}

#[derive(Args, Debug, Clone)]
pub struct RunOpts {
    #[arg(long, value_enum, default_value = "chat")]
    pub scenario: Scenario,
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    #[arg(long, value_enum, default_value = "direct")]
    pub mode: Mode,
    /// Rooms (chat, failover, idle).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Members per room (chat, failover), or members of the one room (broadcast).
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Publishing members per room (default: all for chat, 5 for broadcast).
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Messages per second per publishing member.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Membership churn: members leave and come back (route, connect, join
    /// with `since`) at this many joins per second in all (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Payload padding in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2000)]
    pub ramp: u64,
    /// Spread client sockets over this many source addresses 127.0.0.2 and up.
    /// (0: one per 100 clients, under the per-address connection limits of
    /// nodes and gateways, and so large runs do not run out of ports).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
    /// Idle: number of connections.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// The local cluster's run directory (pid files), to sample CPU/RSS and to kill nodes.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Redis URL to sample INFO from (a comma-separated list for a Redis
    /// Cluster: commands are summed over its masters).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Failover: the node to SIGKILL (pid file `<run-dir>/<NODE>.pid`); default: the busiest.
    #[arg(long)]
    pub kill: Option<String>,
    /// Failover: seconds into the measured window at which the node is killed.
    #[arg(long, default_value_t = 10)]
    pub kill_after: u64,
    /// Idle: the node all connections go to (its id); default: the first.
    #[arg(long)]
    pub node: Option<String>,
    /// Run a shell command partway through the measured window, as
    /// `SECONDS=COMMAND` (repeatable), e.g. `12=deploy/cluster.sh restart-redis`.
    #[arg(long)]
    pub chaos: Vec<String>,
    /// Seconds to wait after publishing stops for in-flight messages (then
    /// also until deliveries stop, at most 60 s more).
    #[arg(long, default_value_t = 3)]
    pub drain: u64,
    /// Label for the strategy in the results (default: what /api/cluster reports).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Abuse: connections flooding joins and leaves of fresh rooms.
    #[arg(long, default_value_t = 20)]
    pub join_flooders: usize,
    /// Abuse: connections publishing as fast as they can.
    #[arg(long, default_value_t = 20)]
    pub publish_flooders: usize,
    /// Abuse: frames per second each flooder sends (0: as fast as its
    /// socket takes them, which on a small machine measures the bench).
    #[arg(long, default_value_t = 1000)]
    pub flood_rate: u32,
    /// Abuse: TCP connections that never send a byte (gateway and nodes).
    #[arg(long, default_value_t = 2000)]
    pub silent_sockets: usize,
    /// Abuse: SSE streams opened (anonymously) on a victim room.
    #[arg(long, default_value_t = 200)]
    pub stream_hoarders: usize,
    /// Results file (JSON).
    #[arg(long, default_value = "bench.json")]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Worker processes to spread the clients over (0: as many as the
    /// open-files limit needs, usually 1).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Internal: run as worker I of --workers (started by the bench itself).
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
    /// Internal: room-name tag shared by a parent and its workers.
    #[arg(long, hide = true)]
    pub tag: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ReportOpts {
    /// Results files from `turnout-bench run`.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long, default_value = "report.html")]
    pub out: PathBuf,
    /// Also write each chart as its own SVG file next to the report.
    #[arg(long)]
    pub svg: bool,
}

#[derive(Args, Debug, Clone)]
pub struct MapOpts {
    /// Results files from `turnout-bench run` (a sweep's runs; with
    /// --points-from, runs added to the earlier sweep's points, each
    /// replacing a point of the same file name).
    #[arg(required_unless_present = "points_from")]
    pub results: Vec<PathBuf>,
    /// Map the points of an earlier sweep.json again (with this version's
    /// model), with any results files given added to them.
    #[arg(long)]
    pub points_from: Option<PathBuf>,
    /// Directory for sweep.json and report.html.
    #[arg(long)]
    pub out: PathBuf,
    /// The grid's name in the report (e.g. quick, full; default: the
    /// earlier sweep's with --points-from, else custom).
    #[arg(long)]
    pub grid: Option<String>,
    /// Predictions: connections each ws-node holds.
    #[arg(long, default_value_t = 10_000.0)]
    pub connections_per_node: f64,
    /// Predictions: messages per second each member receives.
    #[arg(long, default_value_t = 1.0)]
    pub messages_per_member: f64,
    /// Predictions: each member leaves and rejoins once this often (seconds).
    #[arg(long, default_value_t = 300.0)]
    pub rejoin_every: f64,
    /// Predictions: a ws-node's max_connections (the largest sticky room).
    #[arg(long, default_value_t = 20_000.0)]
    pub node_max_connections: f64,
}

#[derive(Args, Debug, Clone)]
pub struct PlanOpts {
    /// A sweep's sweep.json (`turnout-bench map` writes it;
    /// docs/bench/sweep/sweep.json is the project's).
    #[arg(long)]
    pub sweep: PathBuf,
    /// Connections the cluster holds in all.
    #[arg(long, required_unless_present = "against")]
    pub connections: Option<u64>,
    /// Members of a room (connections that joined it).
    #[arg(long, required_unless_present = "against")]
    pub room_size: Option<usize>,
    /// Messages per second each member receives (a room's publishes).
    #[arg(long, required_unless_present = "against")]
    pub messages_per_member: Option<f64>,
    /// Each member leaves and rejoins once this often, in seconds
    /// (default: the sweep's assumption, 300).
    #[arg(long)]
    pub rejoin_every: Option<f64>,
    /// Nodes the cluster has: the answer is the load on them (default:
    /// the fewest that hold the workload).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Cores of a node (default: those of the machine the sweep measured,
    /// whose cores the figures are in).
    #[arg(long)]
    pub node_cores: Option<f64>,
    /// A node's max_connections (default: the sweep's, 20,000 as the
    /// setting's default): it bounds the connections per node and the
    /// largest sticky room.
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// Print {"workload", "strategies", "pick"} as JSON.
    #[arg(long)]
    pub json: bool,
    /// Check the planner instead: for each results file of `turnout-bench
    /// run`, the workload it ran predicted beside what it measured.
    #[arg(long, num_args = 1.., conflicts_with_all = ["connections", "room_size", "messages_per_member", "nodes"])]
    pub against: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// compare.sh passes its default workload, then the caller's options
    /// (`compare.sh -- --scenario broadcast`): the caller's win.
    #[test]
    fn an_option_given_twice_to_run_takes_its_last_value() {
        let cli = Cli::try_parse_from([
            "turnout-bench",
            "run",
            "--scenario",
            "chat",
            "--members",
            "10",
            "--scenario",
            "broadcast",
            "--members",
            "5000",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!((run.scenario, run.members), (Scenario::Broadcast, 5000));
    }
}
