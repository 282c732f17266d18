//! The capacity planner as users meet it: `turnout-bench plan` on the
//! project's sweep (docs/bench/sweep/sweep.json), and the same workloads
//! entered into the report's planner form in a real headless Chromium,
//! which must give the same answers.

use anyhow::{Context, Result, bail};
use fantoccini::{Client as Browser, Locator};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use turnout_tests::*;

fn sweep() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/sweep/sweep.json")
}

/// One workload: the flags after `plan --sweep FILE`.
#[derive(Clone)]
struct W {
    connections: u64,
    room_size: u64,
    rate: f64,
    nodes: Option<u64>,
    cores: f64,
    max: u64,
}

impl W {
    fn args(&self) -> Vec<String> {
        let mut v = vec![
            "--connections".into(),
            self.connections.to_string(),
            "--room-size".into(),
            self.room_size.to_string(),
            "--messages-per-member".into(),
            self.rate.to_string(),
            "--node-cores".into(),
            self.cores.to_string(),
            "--max-connections".into(),
            self.max.to_string(),
        ];
        if let Some(n) = self.nodes {
            v.extend(["--nodes".into(), n.to_string()]);
        }
        v
    }
}

fn plan(args: &[String]) -> Result<std::process::Output> {
    Ok(Command::new(binary("turnout-bench"))
        .arg("plan")
        .arg("--sweep")
        .arg(sweep())
        .args(args)
        .output()?)
}

fn plan_json(w: &W) -> Result<Value> {
    let mut args = w.args();
    args.push("--json".into());
    let out = plan(&args)?;
    if !out.status.success() {
        bail!("plan failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn answer<'a>(p: &'a Value, s: &str) -> &'a Value {
    p["strategies"]
        .as_array()
        .and_then(|v| v.iter().find(|a| a["strategy"] == s))
        .unwrap_or_else(|| panic!("no {s} in {p}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

const SHARED: [&str; 3] = ["sticky", "pubsub", "relay"];

/// What must hold of any plan, checked from its own figures.
fn check(w: &W, p: &Value) {
    let cores = w.cores;
    for s in ["local", "sticky", "pubsub", "relay"] {
        let a = answer(p, s);
        let nodes = f(&a["nodes"]);
        if let Some(k) = w.nodes {
            assert_eq!(nodes, k as f64, "{s}: the nodes given");
        }
        let load = f(&a["busiest_node_load"]);
        assert!(
            (load - f(&a["busiest_node_cores"]) / cores).abs() < 1e-9,
            "{s}: load is cores over the node's"
        );
        let conns = f(&a["busiest_node_connections"]);
        assert!(
            conns >= f(&a["connections_per_node"]) - 1e-9,
            "{s}: the busiest holds the mean at least"
        );
        if s == "sticky" {
            // Whole rooms: the busiest node holds a multiple of the room.
            let rooms = conns / w.room_size as f64;
            assert!(
                (rooms - rooms.round()).abs() < 1e-9 || rooms < 1.0,
                "{s}: {a}"
            );
        }
        let fits = a["fits"].as_bool().unwrap();
        let room_fits = s != "sticky" || w.room_size <= w.max;
        assert_eq!(
            fits,
            room_fits && load <= 0.7 + 1e-9 && conns <= w.max as f64 + 1e-9,
            "{s}: fits exactly when the busiest node is under 70 % of its cores and its connections under max: {a}"
        );
        if fits && w.nodes.is_none() && nodes > 1.0 {
            // The fewest: one node fewer would not hold it.
            assert_eq!(a["nodes_needed"], a["nodes"]);
            let fewer = plan_json(&W {
                nodes: Some(nodes as u64 - 1),
                ..w.clone()
            })
            .expect("plan");
            assert_eq!(
                answer(&fewer, s)["fits"],
                false,
                "{s} on {} nodes",
                nodes - 1.0
            );
        }
        if s == "local" {
            assert_eq!(f(&a["redis_shards"]), 0.0);
        } else {
            let shards = f(&a["redis_shards"]);
            assert!(
                shards >= 1.0 && shards >= f(&a["redis_cores"]) / 0.7 - 1e-9,
                "{a}"
            );
            for k in [
                "nodes",
                "busiest_node_cores",
                "redis_cores",
                "cpu_us_per_delivery",
            ] {
                let e = f(&a["error_pct_by_figure"][k]);
                assert!(e > 0.0 && e < 100.0, "{s} {k}: error {e} %");
                assert!(f(&a["error_pct"]) >= e, "the expected error is the largest");
            }
        }
        assert!(f(&a["cpu_us_per_delivery"]) > 0.0);
        assert_eq!(
            a["outside_measured"].as_bool().unwrap(),
            a["notes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_str().unwrap().contains("measured")),
            "{s}: flagged exactly when a note says what lies outside: {a}"
        );
    }
    // The pick: a shared strategy that fits, with the fewest cores to
    // provision (ties within 2 % to the least CPU per delivery).
    let pick = p["pick"]["strategy"].as_str().unwrap();
    assert!(SHARED.contains(&pick), "{pick}");
    let provisioned = |a: &Value| f(&a["nodes"]) * cores + f(&a["redis_shards"]);
    let fitting: Vec<&Value> = SHARED
        .iter()
        .map(|s| answer(p, s))
        .filter(|a| a["fits"] == true)
        .collect();
    let why = p["pick"]["why"].as_str().unwrap();
    assert!(
        why.starts_with(pick) || why.contains(&format!("{pick} comes closest")),
        "{why}"
    );
    if let Some(least) = fitting.iter().map(|a| provisioned(a)).reduce(f64::min) {
        let a = answer(p, pick);
        assert_eq!(a["fits"], true, "the pick fits: {p}");
        assert!(provisioned(a) <= 1.02 * least + 1e-9, "{p}");
    }
}

#[test]
fn plans_answer_each_strategy_and_pick_one_that_holds_the_workload() -> Result<()> {
    let chat = W {
        connections: 100_000,
        room_size: 10,
        rate: 1.0,
        nodes: None,
        cores: 8.0,
        max: 20_000,
    };
    let p = plan_json(&chat)?;
    check(&chat, &p);
    assert_eq!(p["workload"]["connections"], 100_000.0);
    // Ten times the connections need more nodes, never fewer.
    let big = W {
        connections: 1_000_000,
        ..chat
    };
    let q = plan_json(&big)?;
    check(&big, &q);
    for s in SHARED {
        assert!(
            f(&answer(&q, s)["nodes"]) >= f(&answer(&p, s)["nodes"]),
            "{s}"
        );
        assert!(
            f(&answer(&q, s)["nodes"]) >= 50.0,
            "max_connections bounds nodes"
        );
    }
    // One room bigger than a node: sticky cannot hold it, and says so.
    let hot = W {
        connections: 100_000,
        room_size: 100_000,
        rate: 1.0,
        nodes: None,
        cores: 8.0,
        max: 20_000,
    };
    let h = plan_json(&hot)?;
    check(&hot, &h);
    let sticky = answer(&h, "sticky");
    assert_eq!(sticky["fits"], false);
    assert_eq!(sticky["nodes_needed"], Value::Null);
    assert!(
        sticky["notes"][0]
            .as_str()
            .unwrap()
            .contains("max_connections")
    );
    assert_ne!(h["pick"]["strategy"], "sticky");
    assert!(
        answer(&h, "pubsub")["outside_measured"] == true,
        "rooms of 100,000 were not measured"
    );
    // On nodes given: the load on them, and too few nodes do not fit.
    let given = W {
        connections: 200_000,
        room_size: 10,
        rate: 5.0,
        nodes: Some(2),
        cores: 2.0,
        max: 200_000,
    };
    let g = plan_json(&given)?;
    check(&given, &g);
    for s in SHARED {
        let a = answer(&g, s);
        assert_eq!(a["fits"], false, "{a}");
        let note = a["notes"][0].as_str().unwrap();
        assert!(note.starts_with("does not fit on 2 nodes"), "{note}");
    }
    assert!(
        g["pick"]["why"]
            .as_str()
            .unwrap()
            .starts_with("no strategy holds")
    );
    // Inside what the sweep measured (it ran 1 to 4 nodes of a few
    // thousand connections, rooms of 2 to 1,000, 2.5 to 40 messages/s per
    // member): nothing flagged.
    let inside = W {
        connections: 4_000,
        room_size: 100,
        rate: 10.0,
        nodes: Some(2),
        cores: 2.0,
        max: 20_000,
    };
    let i = plan_json(&inside)?;
    check(&inside, &i);
    for s in SHARED {
        assert_eq!(
            answer(&i, s)["outside_measured"],
            false,
            "{}",
            answer(&i, s)
        );
    }

    // Sticky's rooms sit whole on a node: three rooms of 10,000 do not fit
    // two nodes of max_connections 15,000 (one would hold two rooms),
    // whatever the mean says.
    let whole = W {
        connections: 30_000,
        room_size: 10_000,
        rate: 0.1,
        nodes: None,
        cores: 64.0,
        max: 15_000,
    };
    let s = plan_json(&whole)?;
    check(&whole, &s);
    assert_eq!(answer(&s, "sticky")["nodes"], 3, "{s}");
    assert_eq!(
        f(&answer(&s, "sticky")["busiest_node_connections"]),
        10_000.0
    );
    // Churn is a cost and, past what was measured, a note.
    let calm = plan_json(&inside)?;
    let mut args = inside.args();
    args.extend(["--rejoin-every".into(), "1".into(), "--json".into()]);
    let out = plan(&args)?;
    assert!(out.status.success());
    let churning: Value = serde_json::from_slice(&out.stdout)?;
    for s in SHARED {
        let (a, b) = (answer(&calm, s), answer(&churning, s));
        assert!(
            f(&b["cpu_us_per_delivery"]) > f(&a["cpu_us_per_delivery"]),
            "{s}"
        );
        assert_eq!(b["outside_measured"], true, "{b}");
        assert!(b["notes"].to_string().contains("joins/s per node"), "{b}");
    }
    // The text form leads with the table and ends with the pick.
    let out = plan(&chat.args())?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.contains("strategy") && text.contains("relay"),
        "{text}"
    );
    let pick = p["pick"]["strategy"].as_str().unwrap();
    assert!(text.contains(&format!("pick: {pick}.")), "{text}");
    Ok(())
}

/// `--against`: the workload a run ran, predicted beside what it measured.
#[test]
fn plans_check_against_runs() -> Result<()> {
    let run =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/compare-quick-sticky.json");
    let r: Value = serde_json::from_slice(&std::fs::read(&run)?)?;
    let out = Command::new(binary("turnout-bench"))
        .arg("plan")
        .arg("--sweep")
        .arg(sweep())
        .arg("--json")
        .arg("--against")
        .arg(&run)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Value = serde_json::from_slice(&out.stdout)?;
    let c = &checks[0];
    assert_eq!(c["strategy"], "sticky");
    assert_eq!(f(&c["workload"]["room_size"]), f(&r["members"]));
    assert_eq!(
        f(&c["workload"]["nodes"]),
        r["nodes"].as_array().unwrap().len() as f64
    );
    for k in ["ws_node_cores", "redis_cores", "cpu_us_per_delivery"] {
        let (m, p) = (f(&c["measured"][k]), f(&c["predicted"][k]));
        assert!(m > 0.0 && p > 0.0, "{k}: {c}");
        let e = f(&c["error_pct"][k]);
        assert!((e - 100.0 * (p - m) / m).abs() < 0.06, "{k}: {c}");
    }
    // A results file that is not a cluster's run is refused by name.
    let out = Command::new(binary("turnout-bench"))
        .arg("plan")
        .arg("--sweep")
        .arg(sweep())
        .arg("--against")
        .arg(sweep())
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sweep.json"));
    Ok(())
}

#[test]
fn bad_workloads_are_refused_with_the_flag_named() -> Result<()> {
    for (args, says) in [
        (
            vec![
                "--connections",
                "10",
                "--room-size",
                "100",
                "--messages-per-member",
                "1",
            ],
            "--room-size",
        ),
        (
            vec![
                "--connections",
                "0",
                "--room-size",
                "1",
                "--messages-per-member",
                "1",
            ],
            "--connections",
        ),
        (
            vec![
                "--connections",
                "10",
                "--room-size",
                "2",
                "--messages-per-member",
                "0",
            ],
            "--messages-per-member",
        ),
        (
            vec![
                "--connections",
                "10",
                "--room-size",
                "2",
                "--messages-per-member",
                "NaN",
            ],
            "--messages-per-member",
        ),
        (
            vec![
                "--connections",
                "10",
                "--room-size",
                "2",
                "--messages-per-member",
                "1",
                "--nodes",
                "0",
            ],
            "--nodes",
        ),
        (
            vec![
                "--connections",
                "10",
                "--room-size",
                "2",
                "--messages-per-member",
                "1",
                "--node-cores=-1",
            ],
            "--node-cores",
        ),
    ] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let out = plan(&args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = Command::new(binary("turnout-bench"))
        .args([
            "plan",
            "--sweep",
            "/nonexistent/sweep.json",
            "--connections",
            "10",
        ])
        .args(["--room-size", "2", "--messages-per-member", "1"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sweep.json"));
    Ok(())
}

/// Sets an input of the planner form.
async fn set(b: &Browser, id: &str, value: &str) -> Result<()> {
    let e = b.find(Locator::Id(id)).await?;
    e.clear().await?;
    if !value.is_empty() {
        e.send_keys(value).await?;
    }
    Ok(())
}

/// The text of a row's cell `k` (its `data-k`).
async fn cell(row: &fantoccini::elements::Element, k: &str) -> Result<String> {
    Ok(row
        .find(Locator::Css(&format!("td[data-k={k}]")))
        .await?
        .text()
        .await?)
}

/// The number a cell shows before its error (`0.27 ±13 %`).
fn shown(text: &str) -> Result<f64> {
    text.split_whitespace()
        .next()
        .context("empty cell")?
        .replace(',', "")
        .parse()
        .with_context(|| format!("cell {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reports_planner_form_gives_the_commands_answers() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("turnout-planner-test-{}", std::process::id()));
    let status = Command::new(binary("turnout-bench"))
        .arg("map")
        .arg("--points-from")
        .arg(sweep())
        .arg("--out")
        .arg(&dir)
        .status()?;
    assert!(status.success());
    let d = driver().await?;
    let b = browser(&d).await?;
    b.goto(&format!("file://{}", dir.join("report.html").display()))
        .await?;
    // The answer comes first: the page's first heading after the title.
    let first = b.find(Locator::Css("h2")).await?.text().await?;
    assert_eq!(first, "The answer");
    // The form answers at once for its defaults.
    b.wait()
        .for_element(Locator::Css("#p-body tr[data-strategy=relay]"))
        .await?;
    let workloads = [
        W {
            connections: 100_000,
            room_size: 10,
            rate: 1.0,
            nodes: None,
            cores: 8.0,
            max: 20_000,
        },
        W {
            connections: 100_000,
            room_size: 100_000,
            rate: 1.0,
            nodes: None,
            cores: 8.0,
            max: 20_000,
        },
        W {
            connections: 200_000,
            room_size: 10,
            rate: 5.0,
            nodes: Some(2),
            cores: 2.0,
            max: 200_000,
        },
        W {
            connections: 50_000,
            room_size: 1_000,
            rate: 2.0,
            nodes: Some(10),
            cores: 4.0,
            max: 20_000,
        },
        W {
            connections: 3_000_000,
            room_size: 3,
            rate: 0.5,
            nodes: None,
            cores: 16.0,
            max: 100_000,
        },
    ];
    for w in &workloads {
        let cli = plan_json(w)?;
        set(&b, "p-connections", &w.connections.to_string()).await?;
        set(&b, "p-room-size", &w.room_size.to_string()).await?;
        set(&b, "p-rate", &w.rate.to_string()).await?;
        set(
            &b,
            "p-nodes",
            &w.nodes.map(|n| n.to_string()).unwrap_or_default(),
        )
        .await?;
        set(&b, "p-cores", &w.cores.to_string()).await?;
        set(&b, "p-max", &w.max.to_string()).await?;
        b.find(Locator::Id("p-go")).await?.click().await?;
        let want = cli["pick"]["strategy"].as_str().unwrap();
        let pick = b.find(Locator::Id("p-pick")).await?;
        assert_eq!(
            pick.attr("data-strategy").await?.as_deref(),
            Some(want),
            "{cli}"
        );
        // The same sentence, word for word.
        let why = cli["pick"]["why"].as_str().unwrap();
        let mut first = why.chars();
        let head = first.next().map(|c| c.to_uppercase().collect::<String>());
        assert_eq!(
            pick.text().await?,
            format!(
                "Pick: {want}. {}{}.",
                head.unwrap_or_default(),
                first.as_str()
            )
        );
        for s in ["local", "sticky", "pubsub", "relay"] {
            let a = answer(&cli, s);
            let row = b
                .find(Locator::Css(&format!("#p-body tr[data-strategy={s}]")))
                .await?;
            assert_eq!(
                cell(&row, "fits").await?,
                if a["fits"] == true { "yes" } else { "no" },
                "{s}: {a}"
            );
            assert_eq!(
                shown(&cell(&row, "nodes").await?)?,
                f(&a["nodes"]),
                "{s}: {a}"
            );
            for (k, key) in [
                ("busiest_node_cores", "busiest_node_cores"),
                ("cpu_us_per_delivery", "cpu_us_per_delivery"),
                ("redis", "redis_cores"),
            ] {
                let text = cell(&row, k).await?;
                if s == "local" && k == "redis" {
                    assert_eq!(text, "—");
                    continue;
                }
                let page = shown(&text)?;
                let want = f(&a[key]);
                // As closely as the page's rounding shows it.
                let places = text
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.split_once('.'))
                    .map_or(0, |(_, d)| d.len());
                assert!(
                    (page - want).abs() <= 0.5 * 10f64.powi(-(places as i32)) + 1e-9,
                    "{s} {k}: page {page}, command {want}"
                );
                if k == "redis" {
                    assert!(
                        text.contains(&format!("({})", a["redis_shards"])),
                        "{s}: {text}"
                    );
                }
            }
            // The notes beside the row, word for word.
            let notes: Vec<&str> = a["notes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            assert_eq!(cell(&row, "notes").await?, notes.join("; "), "{s}");
        }
    }
    // A bad workload: the page says what is wrong, as the command does.
    set(&b, "p-room-size", "5000000").await?;
    b.find(Locator::Id("p-go")).await?.click().await?;
    let err = b.find(Locator::Id("p-error")).await?;
    assert!(err.is_displayed().await?);
    assert!(err.text().await?.contains("room size"));
    b.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
