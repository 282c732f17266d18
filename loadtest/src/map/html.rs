//! The strategy map's page: charts and tables of `sweep.json`.

use super::*;
use crate::svg::{Series, esc, fmt_num, plot};
use std::collections::BTreeMap;
use std::fmt::Write;

pub(super) const COLOR: [usize; 4] = [2, 0, 1, 3]; // local green, sticky blue, pubsub red, relay the fourth

pub(super) fn color(strategy: Strategy) -> usize {
    STRATEGIES
        .iter()
        .position(|s| *s == strategy)
        .map(|i| COLOR[i])
        .unwrap_or(4)
}

/// Measured points of each strategy as (x, y), plain runs (no churn) only.
pub(super) fn measured_series(
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
                .filter(|p| p.strategy == *s && p.churn == 0.0 && !p.idle() && keep(p))
                .map(|p| (x(p), y(p)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (!pts.is_empty()).then(|| Series {
                name: format!("{s} (measured)"),
                pts,
                color: color(*s),
                dots: true,
            })
        })
        .collect()
}

/// The fitted model's sum of `targets` per delivery for the measured runs
/// `keep` picks, one line per strategy (the mean per room size).
pub(super) fn fitted_series(
    sweep: &Sweep,
    targets: &[&str],
    keep: impl Fn(&Point) -> bool,
) -> Vec<Series> {
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
                let cpu: f64 = targets.iter().map(|t| sweep.model.eval(*s, t, &l)).sum();
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
                color: color(*s),
                dots: false,
            })
        })
        .collect()
}

pub(super) fn predicted_series(
    sweep: &Sweep,
    strategies: &[Strategy],
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
                .map(|m| predict(&sweep.model, *s, nodes, *m, a))
                .filter(|p| p.fits)
                .map(|p| (p.room_size as f64, y(&p)))
                .collect(),
            color: color(*s),
            dots: false,
        })
        .collect()
}

pub(super) fn charts(sweep: &Sweep) -> Vec<String> {
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
        |p| plain(p) && p.strategy != Strategy::Local,
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
                * if p.strategy == Strategy::Local {
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
                    let seg = c.picks.iter().find(|x| x.strategy == s.as_str())?;
                    Some((c.nodes as f64, seg.from_room_size as f64))
                })
                .collect(),
            color: color(*s),
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

pub(super) fn pct(v: Option<f64>) -> String {
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
         td.warn{padding:3px 6px;text-align:left}\
         #planner label{display:inline-block;margin:.3em 1em .3em 0;font-size:13px}#planner input{width:8em}\
         </style></head><body><h1>turnout: which strategy for which workload</h1>",
    );
    // Warnings about one fit go beside it, in the fitted costs' table.
    let fit_warning = |w: &str| {
        sweep
            .model
            .fits
            .iter()
            .any(|f| w.starts_with(&format!("{} {}:", f.strategy, f.target)))
    };
    h.push_str(
        "<h2 id=\"answer\">The answer</h2><table><tr><th>workload</th><th>pick</th><th class=\"t\">why</th></tr>",
    );
    for c in &sweep.verdict.classes {
        // One line of why; the figures behind it fold out.
        let (line, rest) = first_sentence(&c.why);
        let _ = write!(
            h,
            "<tr><td>{}</td><td><b>{}</b></td><td class=\"t\">{}",
            esc(&c.workload),
            esc(&c.strategy),
            esc(line)
        );
        if !rest.is_empty() {
            let _ = write!(
                h,
                "<details><summary>the figures</summary>{}</details>",
                esc(rest)
            );
        }
        h.push_str("</td></tr>");
    }
    h.push_str("</table>");
    for w in sweep.verdict.warnings.iter().filter(|w| !fit_warning(w)) {
        let _ = write!(h, "<p class=\"warn\">{}</p>", esc(w));
    }
    let _ = write!(
        h,
        "<p>From the {} grid: {} measured runs on {} ({} cores).</p><h3>Where the pick changes</h3><ul>",
        esc(&sweep.grid),
        sweep.points.len(),
        esc(&sweep.host),
        sweep.cores
    );
    for c in &sweep.verdict.crossovers {
        let _ = write!(h, "<li>{}</li>", esc(&c.text));
    }
    h.push_str("</ul>");
    planner(&mut h, sweep);
    h.push_str("<h2>Charts</h2><p>Lines are the fitted model, circles the measured runs.</p>");
    for svg in charts(sweep) {
        h.push_str(&svg);
    }
    h.push_str("<h2>Fitted costs per operation</h2><table><tr><th>strategy</th><th>quantity</th>");
    for (op, _) in OPERATIONS {
        let _ = write!(h, "<th>{op}</th>");
    }
    h.push_str("<th>held-out error (median / max)</th><th class=\"t\">note</th></tr>");
    for f in &sweep.model.fits {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"t\">{}</td>",
            f.strategy,
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
            "<td>{} / {}</td>",
            pct(f.held_out.median_error),
            pct(f.held_out.max_error)
        );
        let prefix = format!("{} {}:", f.strategy, f.target);
        let notes: Vec<String> = sweep
            .verdict
            .warnings
            .iter()
            .filter_map(|w| w.strip_prefix(&prefix))
            .map(|w| esc(w.trim()))
            .collect();
        if notes.is_empty() {
            h.push_str("<td></td></tr>");
        } else {
            let _ = write!(h, "<td class=\"warn\">{}</td></tr>", notes.join("; "));
        }
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
            p.strategy,
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
            if p.strategy == Strategy::Local {
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
            p.strategy,
            p.nodes,
            p.room_size,
            p.rooms,
            fmt_num(p.rate),
            fmt_num(p.joins_per_sec),
            fmt_num(p.deliveries_per_sec),
            if p.saturated {
                " (saturated)".to_owned()
            } else if p.idle() {
                format!(" (idle: {} connections held)", p.connections)
            } else {
                String::new()
            },
            fmt_num(p.p99_ms),
            fmt_num(p.cpu_us_per_delivery),
            fmt_num(p.redis_commands_per_delivery),
            fmt_num(p.redis_bytes_per_sec / 1e3),
            p.cross_node_deliveries,
            p.lost,
            p.duplicated,
            if p.strategy == Strategy::Local {
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

/// The planner's form: `turnout-bench plan` in the page, on the model
/// embedded as JSON (planner.js).
fn planner(h: &mut String, sweep: &Sweep) {
    let model = super::plan::page_model(sweep)
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let a = sweep.model.assumptions.clone();
    let max = a.map_or(20_000.0, |a| a.node_max_connections);
    let _ = write!(
        h,
        "<h2 id=\"plan\">Plan your cluster</h2>\
         <p>Enter your workload: each strategy's answer from the fitted model, with the error each figure \
         showed on the measured runs (each predicted by a model fitted without it). Nodes are sized so \
         the busiest stays under {:.0} % of its cores, a Redis shard under {:.0} % of its one core. \
         Figures are in the cores of the machine measured; <code>turnout-bench plan</code> gives the same answers.</p>\
         <form id=\"planner\">\
         <label>connections <input id=\"p-connections\" type=\"number\" min=\"1\" step=\"1\" value=\"100000\"></label>\
         <label>room size <input id=\"p-room-size\" type=\"number\" min=\"1\" step=\"1\" value=\"10\"></label>\
         <label>messages each member receives per second <input id=\"p-rate\" type=\"number\" min=\"0\" step=\"any\" value=\"1\"></label>\
         <label>nodes (blank: the fewest that hold it) <input id=\"p-nodes\" type=\"number\" min=\"1\" step=\"1\"></label>\
         <label>cores per node <input id=\"p-cores\" type=\"number\" min=\"0\" step=\"any\" value=\"{}\"></label>\
         <label>max_connections per node <input id=\"p-max\" type=\"number\" min=\"1\" step=\"1\" value=\"{}\"></label>\
         <button id=\"p-go\" type=\"submit\">Plan</button></form>\
         <p id=\"p-error\" class=\"warn\" hidden></p>\
         <p id=\"p-pick\"></p>\
         <table><thead><tr><th>strategy</th><th>fits</th><th>nodes</th><th>connections per node</th><th>busiest node cores</th>\
         <th>Redis cores (shards)</th><th>Redis MB/s</th><th>node to node MB/s</th><th>CPU µs per delivery</th>\
         <th class=\"t\">notes (outside what was measured in orange)</th></tr></thead>\
         <tbody id=\"p-body\"></tbody></table><p><code id=\"p-command\"></code></p>\
         <script type=\"application/json\" id=\"plan-model\">{model}</script><script>{}</script>",
        100.0 * super::plan::NODE_UTILISATION,
        100.0 * super::plan::REDIS_UTILISATION,
        sweep.cores.max(1),
        max,
        include_str!("planner.js")
    );
}

/// `text` split after its first sentence (a full stop and a space; a
/// figure's decimal point has no space after it).
pub(super) fn first_sentence(text: &str) -> (&str, &str) {
    match text.find(". ") {
        Some(i) => (&text[..=i], text[i + 2..].trim()),
        None => (text, ""),
    }
}
