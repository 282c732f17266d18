//! turnout-bench: drives a turnout cluster like real clients do and measures it.
//!
//! # Layout
//! - [`cli`]: subcommands and options (`run`, `report`).
//! - `scenario`: the run loop of every scenario (chat, broadcast, idle,
//!   failover, abuse); `workload`: its rooms and members; `summary`: what
//!   it prints.
//! - `load`: clients in this process or spread over worker processes.
//! - `member`: one simulated client: connect, join, publish, receive, reconnect.
//! - `stats`: latency histograms, loss/duplicate/reorder accounting, results JSON.
//! - `sample`: CPU/RSS of cluster processes from /proc, Redis INFO deltas.
//! - `report`: the side-by-side HTML report.
//! - `svg`: the charts of the report and the strategy map.
//! - [`map`]: the strategy map of a sweep: fitted costs, predictions, verdict.
//! - [`faults`]: the fault campaign: a seeded schedule of faults, the
//!   cluster it runs against, protocol-following clients that record what
//!   they see, and the checker that reads their records.
//! - `http`: the few HTTP calls the bench makes to the gateway.
//! - `abuse`: the attackers of the `abuse` scenario.
//! - `floor`: `turnout-bench floor`, the bare fan-out every strategy is
//!   measured against.
//! - `proxy`: `turnout-bench proxy`, a TCP proxy that cuts the network on a signal.
//! - `turnout-bench probe URL` (in `http`): an HTTP health probe for images without curl.

mod abuse;
pub mod cli;
pub mod faults;
mod floor;
mod http;
mod load;
pub mod map;
mod member;
pub mod proxy;
mod report;
mod sample;
mod scenario;
pub mod stats;
mod summary;
mod svg;
mod workload;

use clap::Parser;

/// Entry point of the `turnout-bench` binary.
pub async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Run(opts) => scenario::run(opts).await,
        cli::Command::Report(opts) => report::write(&opts),
        cli::Command::Map(opts) => map::write(&opts),
        cli::Command::Plan(opts) => map::plan::run(&opts),
        cli::Command::Faults(opts) => faults::run(opts).await,
        cli::Command::Proxy(opts) => proxy::run(opts).await,
        cli::Command::Probe(opts) => http::probe(&opts).await,
        cli::Command::Floor(opts) => floor::run(opts).await,
    }
}
