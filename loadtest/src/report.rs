//! The side-by-side report: one self-contained HTML page with inline SVG
//! charts (no scripts, no external assets), readable from disk.

use crate::cli::ReportOpts;
use crate::stats::RunResult;
use anyhow::{Context, Result};
use std::fmt::Write;

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
const W: f64 = 720.0;
const H: f64 = 320.0;
const PAD_L: f64 = 70.0;
const PAD_R: f64 = 20.0;
const PAD_T: f64 = 36.0;
const PAD_B: f64 = 50.0;

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn label(r: &RunResult) -> String {
    format!("{} {} ({})", r.strategy, r.scenario, r.mode)
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{cx}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{t}</text>
<text x="{cx}" y="{xl}" text-anchor="middle">{x}</text>
<text x="16" y="{cy}" text-anchor="middle" transform="rotate(-90 16 {cy})">{y}</text>"#,
        t = esc(title),
        cx = (PAD_L + W - PAD_R) / 2.0,
        cy = (PAD_T + H - PAD_B) / 2.0,
        xl = H - 10.0,
        x = esc(x_label),
        y = esc(y_label),
    );
}

fn legend(out: &mut String, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        let y = PAD_T + 4.0 + 16.0 * i as f64;
        let x = W - PAD_R - 230.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{c}"/><text x="{tx}" y="{ty}">{n}</text>"#,
            c = COLORS[i % COLORS.len()],
            tx = x + 16.0,
            ty = y + 10.0,
            n = esc(n)
        );
    }
}

/// A line chart; `log_x` plots x on a log10 axis.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let series: Vec<Series> = series
        .iter()
        .enumerate()
        .map(|(i, (name, pts))| Series {
            name: name.clone(),
            pts: pts.clone(),
            color: i,
            dots: false,
        })
        .collect();
    plot(title, x_label, y_label, &series, log_x, false)
}

/// One series of [`plot`]: a line, or (`dots`) measured points as circles.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) pts: Vec<(f64, f64)>,
    /// Index into the palette: a line and its measured points share one.
    pub(crate) color: usize,
    pub(crate) dots: bool,
}

/// Lines and points on one chart; `log_x`, `log_y` plot that axis on a
/// log10 scale (values at or below zero are left out there).
pub(crate) fn plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
    log_y: bool,
) -> String {
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label);
    let keep = |p: &(f64, f64)| (!log_x || p.0 > 0.0) && (!log_y || p.1 > 0.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.pts.iter().copied())
        .filter(keep)
        .collect();
    if pts.is_empty() {
        out.push_str("<text x=\"360\" y=\"160\" text-anchor=\"middle\">no data</text></svg>");
        return out;
    }
    let tx = |x: f64| if log_x { x.log10() } else { x };
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let (mut x0, mut x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(tx(p.0)), b.max(tx(p.0)))
    });
    if log_x {
        x0 = x0.floor();
        x1 = x1.ceil().max(x0 + 1.0);
    } else {
        x0 = x0.min(0.0);
        x1 = nice_max(x1);
    }
    let (y0, y1) = if log_y {
        let (a, b) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(ty(p.1)), b.max(ty(p.1)))
        });
        (a.floor(), b.ceil().max(a.floor() + 1.0))
    } else {
        (0.0, nice_max(pts.iter().map(|p| p.1).fold(0.0, f64::max)))
    };
    let px = |x: f64| PAD_L + (tx(x) - x0) / (x1 - x0) * (W - PAD_L - PAD_R);
    let py = |y: f64| H - PAD_B - (ty(y) - y0) / (y1 - y0) * (H - PAD_T - PAD_B);
    if log_y {
        for e in y0 as i32..=y1 as i32 {
            let v = 10f64.powi(e);
            let _ = writeln!(
                out,
                r##"<line x1="{PAD_L}" x2="{x2}" y1="{p}" y2="{p}" stroke="#ddd"/><text x="{tx}" y="{t}" text-anchor="end">{v}</text>"##,
                x2 = W - PAD_R,
                p = py(v),
                tx = PAD_L - 6.0,
                t = py(v) + 4.0,
                v = fmt_num(v)
            );
        }
    } else {
        y_grid(&mut out, y1, &py);
    }
    let ticks: Vec<f64> = if log_x {
        (x0 as i32..=x1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| x0 + (x1 - x0) * i as f64 / 5.0).collect()
    };
    for t in ticks {
        let _ = writeln!(
            out,
            r##"<line x1="{p}" x2="{p}" y1="{PAD_T}" y2="{y2}" stroke="#eee"/><text x="{p}" y="{ty}" text-anchor="middle">{v}</text>"##,
            p = px(t),
            y2 = H - PAD_B,
            ty = H - PAD_B + 16.0,
            v = fmt_num(t)
        );
    }
    for s in series {
        let c = COLORS[s.color % COLORS.len()];
        let shown: Vec<(f64, f64)> = s.pts.iter().copied().filter(keep).collect();
        if s.dots {
            for (x, y) in shown {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="none" stroke="{c}" stroke-width="2"><title>{} at {}: {}</title></circle>"#,
                    px(x),
                    py(y),
                    esc(&s.name),
                    fmt_num(x),
                    fmt_num(y)
                );
            }
        } else {
            let path: Vec<String> = shown
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{p}"/>"#,
                p = path.join(" ")
            );
        }
    }
    for (i, s) in series.iter().enumerate() {
        let y = PAD_T + 4.0 + 16.0 * i as f64;
        let x = W - PAD_R - 230.0;
        let c = COLORS[s.color % COLORS.len()];
        let mark = if s.dots {
            format!(
                r#"<circle cx="{}" cy="{}" r="4" fill="none" stroke="{c}" stroke-width="2"/>"#,
                x + 6.0,
                y + 6.0
            )
        } else {
            format!(
                r#"<rect x="{x}" y="{}" width="12" height="4" fill="{c}"/>"#,
                y + 4.0
            )
        };
        let _ = writeln!(
            out,
            r#"{mark}<text x="{tx}" y="{ty}">{n}</text>"#,
            tx = x + 16.0,
            ty = y + 10.0,
            n = esc(&s.name)
        );
    }
    out.push_str("</svg>");
    out
}

/// Grouped bars: one group per category, one bar per series.
pub(crate) fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let mut out = String::new();
    frame(&mut out, title, "", y_label);
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0, f64::max);
    if categories.is_empty() || max <= 0.0 {
        out.push_str("<text x=\"360\" y=\"160\" text-anchor=\"middle\">no data</text></svg>");
        return out;
    }
    let y1 = nice_max(max);
    let py = |y: f64| H - PAD_B - y / y1 * (H - PAD_T - PAD_B);
    y_grid(&mut out, y1, &py);
    let group_w = (W - PAD_L - PAD_R) / categories.len() as f64;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    for (ci, cat) in categories.iter().enumerate() {
        let gx = PAD_L + group_w * ci as f64 + group_w * 0.1;
        for (si, (_, vals)) in series.iter().enumerate() {
            let v = vals.get(ci).copied().unwrap_or(0.0);
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{c}"><title>{v}</title></rect>"#,
                x = gx + bar_w * si as f64,
                y = py(v),
                w = bar_w * 0.95,
                h = (H - PAD_B) - py(v),
                c = COLORS[si % COLORS.len()],
                v = fmt_num(v)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{y}" text-anchor="middle">{t}</text>"#,
            x = gx + group_w * 0.4,
            y = H - PAD_B + 16.0,
            t = esc(cat)
        );
    }
    legend(
        &mut out,
        &series.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
    );
    out.push_str("</svg>");
    out
}

/// Horizontal grid lines with their labels, 0 to `y1` in five steps.
fn y_grid(out: &mut String, y1: f64, py: &dyn Fn(f64) -> f64) {
    for i in 0..=5 {
        let y = y1 * i as f64 / 5.0;
        let _ = writeln!(
            out,
            r##"<line x1="{PAD_L}" x2="{x2}" y1="{p}" y2="{p}" stroke="#ddd"/><text x="{tx}" y="{ty}" text-anchor="end">{v}</text>"##,
            x2 = W - PAD_R,
            p = py(y),
            tx = PAD_L - 6.0,
            ty = py(y) + 4.0,
            v = fmt_num(y)
        );
    }
}

pub(crate) fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 10.0 {
        format!("{:.1}", v)
    } else if v.abs() >= 0.1 {
        format!("{:.2}", v)
    } else {
        format!("{:.3}", v)
    }
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
         <th>lost</th><th>not delivered: other server (local)</th><th>dup</th><th>reordered</th><th>publish errors</th><th>ws-node deliveries/CPU-s</th><th>Redis cmds/delivery</th><th>failover recovery (p50 / max ms)</th></tr>",
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
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.3}</td><td>{}</td></tr>",
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
