//! The operations pack against the real thing: a real Prometheus (Debian's
//! `prometheus` package) scrapes a real cluster under traffic, and every
//! query of the Grafana dashboard (deploy/grafana/turnout.json) must return
//! series; the alert rules (deploy/prometheus/alerts.yml) load into it and
//! evaluate without error, pass `promtool check rules`, and pass their unit
//! tests (deploy/prometheus/alerts.test.yml), which cover every alert.

use anyhow::{Context, Result, bail};
use axum::Json;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use turnout_proto::Strategy;
use turnout_tests::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn promtool(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .context("promtool (Debian: apt install prometheus)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool {args:?} failed:\n{text}");
    }
    Ok(text)
}

/// The names after `key:` in a YAML file, in order (enough for the two
/// files read here, whose alert names are plain words).
fn names_after(file: &str, key: &str) -> Vec<String> {
    file.lines()
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            l.strip_prefix(key).map(|rest| rest.trim().to_owned())
        })
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_and_every_alert_has_a_unit_test() -> Result<()> {
    let checked = promtool(&["check", "rules", "alerts.yml"])?;
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"])?;
    assert!(tested.contains("SUCCESS"), "{tested}");
    let dir = repo().join("deploy/prometheus");
    let rules = std::fs::read_to_string(dir.join("alerts.yml"))?;
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml"))?;
    let alerts = names_after(&rules, "alert:");
    assert!(alerts.len() >= 8, "alerts: {alerts:?}");
    // Each alert is tested firing: a test of it that expects alerts.
    for alert in &alerts {
        let fires = tests.split("- eval_time:").any(|case| {
            case.contains(&format!("alertname: {alert}\n")) && case.contains("exp_labels")
        });
        assert!(
            fires,
            "no unit test in alerts.test.yml shows {alert} firing"
        );
    }
    Ok(())
}

/// A Prometheus server on a free port, scraping `jobs` every second; killed
/// when dropped.
struct Prometheus {
    _child: Child,
    base: String,
    dir: PathBuf,
}

impl Prometheus {
    async fn start(jobs: &[(&str, Vec<String>)]) -> Result<Prometheus> {
        let dir = std::env::temp_dir().join(format!(
            "turnout-prometheus-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            repo().join("deploy/prometheus/alerts.yml").display()
        );
        for (job, targets) in jobs {
            config += &format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: {}\n",
                serde_json::to_string(targets)?
            );
        }
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let mut last = None;
        // The port is free when picked; another process may take it first.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("prometheus (Debian: apt install prometheus)")?;
            let base = format!("http://127.0.0.1:{port}");
            let ready = wait_for("Prometheus to be ready", DEADLINE, || {
                let url = format!("{base}/-/ready");
                let exited = child.try_wait().ok().flatten();
                async move {
                    if let Some(status) = exited {
                        return Some(Err(status));
                    }
                    let (status, _) = http("GET", &url, None, &[]).await.ok()?;
                    (status == 200).then_some(Ok(()))
                }
            })
            .await;
            match ready {
                Ok(Ok(())) => {
                    return Ok(Prometheus {
                        _child: child,
                        base,
                        dir,
                    });
                }
                Ok(Err(status)) => last = Some(anyhow::anyhow!("prometheus exited: {status}")),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    /// The series an instant query returns.
    async fn query(&self, q: &str) -> Result<Vec<Value>> {
        let url = format!("{}/api/v1/query?query={}", self.base, percent_encode(q));
        let (status, body) = http_get_json(&url).await?;
        if status != 200 || body["status"] != "success" {
            bail!("query {q} answered {status}: {body}");
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query of the dashboard, with its template variables filled in as
/// Grafana would for "All" and a 1 s scrape interval.
fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/turnout.json"))?;
    let dash: Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("expr")?;
            out.push((
                panel["title"].as_str().unwrap_or_default().to_owned(),
                expr.replace("$__rate_interval", "1m")
                    .replace("$strategy", ".*"),
            ));
        }
    }
    Ok(out)
}

/// A backend that lets every connection in (the connect hook: join and
/// publish hooks are asked only in namespaces that name them).
async fn granting_backend() -> Result<(String, CancellationToken)> {
    async fn grant() -> Json<Value> {
        Json(json!({"result": {}}))
    }
    let app = axum::Router::new().route("/connect", axum::routing::post(grant));
    serve_app(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() -> Result<()> {
    let (backend, backend_stop) = granting_backend().await?;
    let c = Cluster::start_with(2, Strategy::Relay, |s| {
        s.proxy_connect_url = Some(format!("{backend}/connect"));
    })
    .await?;
    let host = |p: &Proc| p.http().trim_start_matches("http://").to_owned();
    let prom = Prometheus::start(&[
        ("turnout-ws-node", c.nodes.iter().map(host).collect()),
        ("turnout-router", vec![host(&c.router)]),
        ("turnout-gateway", vec![host(&c.gateway)]),
    ])
    .await?;

    // Traffic through the gateway: two members of a room on the two nodes
    // (relay: one of them reaches the room through its owner), a refused
    // frame, and publishes from a client and from the server API, going on
    // while the queries run.
    let mut a = Client::connect(&c.gateway.ws_url()).await?;
    let mut b = Client::connect(&c.gateway.ws_url()).await?;
    a.join("dash").await?;
    b.join("dash").await?;
    b.send_json(json!({"type": "no-such-frame"})).await?;
    let traffic = CancellationToken::new();
    let stop = traffic.clone();
    let api = format!("{}/api/rooms/dash/publish", c.gateway.http());
    let publisher = tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.is_cancelled() {
            n += 1;
            a.publish("dash", json!({"n": n}), &format!("p{n}")).await?;
            let body = json!({"data": {"api": n}}).to_string();
            let (status, _) = http("POST", &api, Some(body), &[]).await?;
            anyhow::ensure!(status == 200, "API publish answered {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(n)
    });
    let reader = tokio::spawn(async move {
        loop {
            b.recv().await?;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });

    // Every target scraped: all four up.
    wait_for(
        "every target up in Prometheus",
        Duration::from_secs(30),
        || {
            let prom = &prom;
            async move {
                let up = prom.query("up{job=~\"turnout.*\"} == 1").await.ok()?;
                (up.len() == 4).then_some(())
            }
        },
    )
    .await?;
    let queries = dashboard_queries()?;
    assert!(queries.len() >= 30, "{} queries", queries.len());
    for (title, q) in &queries {
        // A rate needs two scrapes of what the traffic moved.
        wait_for(
            &format!("series for {q:?} (panel {title:?})"),
            Duration::from_secs(30),
            || async { (!prom.query(q).await.ok()?.is_empty()).then_some(()) },
        )
        .await?;
    }
    // The alert rules loaded and evaluate cleanly against real series.
    let rules = wait_for("the alert rules evaluated", Duration::from_secs(30), || {
        let url = format!("{}/api/v1/rules", prom.base);
        async move {
            let (_, v) = http_get_json(&url).await.ok()?;
            let rules: Vec<Value> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let evaluated = rules.iter().all(|r| r["health"] != "unknown");
            (!rules.is_empty() && evaluated).then_some(rules)
        }
    })
    .await?;
    for r in &rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed: {}",
            r["name"], r["lastError"]
        );
    }
    // Healthy cluster: no alert is even pending.
    let active: Vec<&Value> = rules.iter().filter(|r| r["state"] != "inactive").collect();
    assert!(
        active.is_empty(),
        "alerts active on a healthy cluster: {active:?}"
    );

    traffic.cancel();
    let published = publisher.await??;
    assert!(published > 0);
    reader.abort();
    backend_stop.cancel();
    Ok(())
}
