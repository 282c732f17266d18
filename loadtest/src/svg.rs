//! SVG charts for the bench's pages (the side-by-side report and the
//! strategy map): line and point plots, grouped bars, and the frame,
//! legend and grid they share. Inline, with no scripts.

use std::fmt::Write;

pub(crate) const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
pub(crate) const W: f64 = 720.0;
pub(crate) const H: f64 = 320.0;
pub(crate) const PAD_L: f64 = 70.0;
pub(crate) const PAD_R: f64 = 20.0;
pub(crate) const PAD_T: f64 = 36.0;
pub(crate) const PAD_B: f64 = 50.0;

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn nice_max(v: f64) -> f64 {
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

pub(crate) fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str) {
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

pub(crate) fn legend(out: &mut String, names: &[String]) {
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
pub(crate) fn line_chart(
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
pub(crate) fn y_grid(out: &mut String, y1: f64, py: &dyn Fn(f64) -> f64) {
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
