//! The side-by-side report: one self-contained HTML page with inline SVG
//! charts (no scripts, no external assets), readable from disk.

use crate::cli::ReportOpts;
use crate::stats::RunResult;
use crate::svg::*;
use anyhow::{Context, Result};
use std::fmt::Write;

/// `r`'s server deliveries per CPU-second as a share of the floor's
/// (`turnout-bench floor`) on the same workload, when the runs hold one.
fn floor_share(runs: &[RunResult], r: &RunResult) -> Option<f64> {
    if r.strategy == "floor" || r.server_deliveries_per_cpu_second <= 0.0 {
        return None;
    }
    let floor = runs.iter().find(|f| {
        f.strategy == "floor"
            && f.scenario == r.scenario
            && f.connections == r.connections
            && f.rate == r.rate
            && f.server_deliveries_per_cpu_second > 0.0
    })?;
    Some(r.server_deliveries_per_cpu_second / floor.server_deliveries_per_cpu_second)
}

fn label(r: &RunResult) -> String {
    format!("{} {} ({})", r.strategy, r.scenario, r.mode)
}

/// The charts of a set of runs, as (file stem, SVG).
fn charts(runs: &[RunResult]) -> Vec<(&'static str, String)> {
    let names: Vec<String> = runs.iter().map(label).collect();
    let cdf: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .zip(&names)
        .map(|(r, n)| {
            (
                n.clone(),
                r.latency_cdf
                    .iter()
                    .map(|&(ms, q)| (ms, q * 100.0))
                    .collect(),
            )
        })
        .collect();
    let tput: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .zip(&names)
        .map(|(r, n)| {
            (
                n.clone(),
                r.throughput
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64, *v as f64))
                    .collect(),
            )
        })
        .collect();
    let mut node_ids: Vec<String> = runs
        .iter()
        .flat_map(|r| r.nodes.iter().map(|n| n.id.clone()))
        .collect();
    node_ids.sort();
    node_ids.dedup();
    let balance: Vec<(String, Vec<f64>)> = runs
        .iter()
        .zip(&names)
        .map(|(r, n)| {
            let v = node_ids
                .iter()
                .map(|id| {
                    r.nodes
                        .iter()
                        .find(|x| &x.id == id)
                        .map(|x| x.connections as f64)
                        .unwrap_or(0.0)
                })
                .collect();
            (n.clone(), v)
        })
        .collect();
    let mut procs: Vec<String> = runs
        .iter()
        .flat_map(|r| r.processes.iter().map(|p| p.name.clone()))
        .collect();
    procs.sort();
    procs.dedup();
    let cpu: Vec<(String, Vec<f64>)> = runs
        .iter()
        .zip(&names)
        .map(|(r, n)| {
            let v = procs
                .iter()
                .map(|p| {
                    r.processes
                        .iter()
                        .find(|x| &x.name == p)
                        .map(|x| x.cpu_seconds_per_million_deliveries)
                        .unwrap_or(0.0)
                })
                .collect();
            (n.clone(), v)
        })
        .collect();
    let redis_cats = vec!["commands per delivery".to_owned()];
    let redis: Vec<(String, Vec<f64>)> = runs
        .iter()
        .zip(&names)
        .map(|(r, n)| (n.clone(), vec![r.redis.commands_per_delivery]))
        .collect();
    vec![
        (
            "latency-cdf",
            line_chart(
                "End-to-end latency (CDF)",
                "latency, ms (log scale)",
                "% of deliveries at or below",
                &cdf,
                true,
            ),
        ),
        (
            "throughput",
            line_chart(
                "Deliveries per second over the run",
                "seconds since start",
                "deliveries/s",
                &tput,
                false,
            ),
        ),
        (
            "balance",
            bar_chart("Connections per node", "connections", &node_ids, &balance),
        ),
        (
            "cpu",
            bar_chart(
                "CPU seconds per million deliveries",
                "CPU s / 1M deliveries",
                &procs,
                &cpu,
            ),
        ),
        (
            "redis",
            bar_chart("Redis cost", "commands per delivery", &redis_cats, &redis),
        ),
    ]
}

fn table(runs: &[RunResult]) -> String {
    let mut t = String::from(
        "<table><tr><th>run</th><th>connections</th><th>deliveries/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th>\
         <th>lost</th><th>not delivered: other server (local)</th><th>dup</th><th>reordered</th><th>publish errors</th><th>ws-node deliveries/CPU-s</th><th>server deliveries/CPU-s</th><th>of the floor</th><th>Redis cmds/delivery</th><th>failover recovery (p50 / max ms)</th></tr>",
    );
    for r in runs {
        let l = &r.latency_ms;
        let fo = r
            .failover
            .as_ref()
            .map(|f| format!("{:.0} / {:.0}", f.recovery_ms_p50, f.recovery_ms_max))
            .unwrap_or_else(|| "—".into());
        let undelivered = if r.strategy == "local" {
            format!(
                "{} ({:.1} %)",
                r.undelivered_cross_node,
                100.0 * r.undelivered_share
            )
        } else {
            "—".into()
        };
        let of_floor = floor_share(runs, r)
            .map(|s| format!("{:.0} %", 100.0 * s))
            .unwrap_or_else(|| "—".into());
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            esc(&label(r)),
            r.connections,
            r.deliveries_per_sec,
            l.p50,
            l.p99,
            l.p999,
            l.max,
            r.lost,
            undelivered,
            r.duplicated,
            r.reordered,
            r.publish_errors,
            r.ws_node_deliveries_per_cpu_second,
            r.server_deliveries_per_cpu_second,
            of_floor,
            r.redis.commands_per_delivery,
            fo
        );
    }
    t.push_str("</table>");
    t
}

/// The `abuse` runs' attackers and what the cluster kept in Redis, when
/// there are any.
fn attack_table(runs: &[RunResult]) -> String {
    let hit: Vec<_> = runs
        .iter()
        .filter_map(|r| r.attackers.as_ref().map(|a| (r, a)))
        .collect();
    if hit.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "<h2>Attackers</h2><table><tr><th>run</th><th>frames sent</th><th>refused</th><th>closed by the cluster</th>\
         <th>silent sockets closed</th><th>streams opened / refused</th><th>attackers' CPU s</th>\
         <th>Redis used_memory before → after</th></tr>",
    );
    for (r, a) in hit {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{:.2}</td><td>{:.2} → {:.2} MB</td></tr>",
            esc(&label(r)),
            a.frames_sent,
            a.refused,
            a.closed,
            a.silent_sockets_closed,
            a.streams_opened,
            a.streams_refused,
            a.cpu_seconds,
            r.redis.memory_before as f64 / 1e6,
            r.redis.memory_after as f64 / 1e6,
        );
    }
    t.push_str("</table>");
    t
}

/// Reads results files of `turnout-bench run`, naming the file that is not one.
pub(crate) fn read_results(paths: &[std::path::PathBuf]) -> Result<Vec<RunResult>> {
    paths
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a turnout-bench result", p.display()))
        })
        .collect()
}

pub(crate) fn write(o: &ReportOpts) -> Result<()> {
    let runs = read_results(&o.results)?;
    let charts = charts(&runs);
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>turnout: strategies side by side</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>\
         body{font-family:sans-serif;max-width:760px;margin:2em auto;padding:0 1em;color:#222}\
         table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}\
         td:first-child,th:first-child{text-align:left}svg{max-width:100%;height:auto;margin:1em 0}code{background:#f4f4f4}\
         </style></head><body><h1>turnout: strategies side by side</h1>",
    );
    if let Some(r) = runs.first() {
        let _ = write!(
            html,
            "<p>Workload: {} — {} rooms × {} members, {} publishing per room at {} msg/s, {} B payload, {} s measured after {} s warm-up; \
             host {} ({} cores).</p>",
            esc(&r.scenario),
            r.rooms,
            r.members,
            r.publishers_per_room,
            r.rate,
            r.payload,
            r.duration_s,
            r.warmup_s,
            esc(&r.host),
            r.cores
        );
    }
    html.push_str(&table(&runs));
    html.push_str(&attack_table(&runs));
    for (_, svg) in &charts {
        html.push_str(svg);
    }
    html.push_str("<h2>Commands</h2><ul>");
    for r in &runs {
        let _ = write!(html, "<li><code>{}</code></li>", esc(&r.command));
    }
    html.push_str("</ul></body></html>\n");
    std::fs::write(&o.out, html)?;
    if o.svg {
        let stem = o.out.with_extension("");
        for (name, svg) in &charts {
            let path = format!("{}-{name}.svg", stem.display());
            std::fs::write(&path, svg)?;
        }
    }
    eprintln!("report: {}", o.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_render_every_run() {
        let mut a = RunResult {
            strategy: "sticky".into(),
            scenario: "chat".into(),
            ..Default::default()
        };
        a.latency_cdf = vec![(0.5, 0.5), (2.0, 0.99), (9.0, 1.0)];
        a.throughput = vec![10, 20, 30];
        let b = RunResult {
            strategy: "pubsub".into(),
            ..a.clone()
        };
        let charts = charts(&[a, b]);
        assert_eq!(charts.len(), 5);
        let cdf = &charts[0].1;
        assert_eq!(cdf.matches("<polyline").count(), 2);
        assert!(cdf.contains("sticky chat") && cdf.contains("pubsub chat"));
        assert!(charts[2].1.contains("no data"));
    }
}
