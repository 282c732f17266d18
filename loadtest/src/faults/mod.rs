//! The fault campaign (`turnout-bench faults`, `deploy/loadtest/faults.sh`):
//! for each strategy, a cluster of real processes under load from clients
//! that follow the protocol, a seeded random schedule of faults against it,
//! and a checker that reads only what the clients recorded.
//!
//! - [`schedule`]: the faults of a run, drawn from its seed.
//! - `cluster`: the processes, their proxies, and each fault as actions.
//! - `client`: the campaign's own protocol client, and the [`client::Book`]
//!   every client records into.
//! - `js`: turnout-client members on Node.js.
//! - `load`: API publishers, bursts, and the samples taken during a run.
//! - [`checker`]: the delivery contract, checked over a run's records.

pub mod checker;
mod client;
mod cluster;
mod js;
mod load;
pub mod schedule;

use crate::cli::FaultsOpts;
use anyhow::{Context, Result, bail};
use checker::{History, MemoryPeak, Violation};
use client::{Book, Controls, Member};
use cluster::{Cluster, NodeTuning};
use load::{api_publisher, check_presence, load_fault, sample_memory};
use schedule::{Fault, Kind, Plan};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use turnout_proto::Strategy;

/// `faults.json`.
#[derive(Serialize)]
struct Report {
    seed: u64,
    runs: Vec<Run>,
}

/// One strategy's run.
#[derive(Serialize)]
struct Run {
    strategy: String,
    seed: u64,
    duration_s: u64,
    faults: Vec<Fault>,
    checked: checker::Checked,
    violations: Vec<Violation>,
    silence_bound_ms: u64,
    /// Faults by kind.
    by_kind: BTreeMap<String, u64>,
    /// How long messages took from their first send to a member: the
    /// longest, the 99th percentile, and the longest of those sent while a
    /// fault of each kind was on (or within 2 s after it ended).
    latency_ms: Latency,
    /// The command that runs it again.
    replay: String,
}

/// Runs the campaign; fails when any run has a violation.
pub(crate) async fn run(o: FaultsOpts) -> Result<()> {
    let seed = o.seed.unwrap_or_else(|| u64::from(rand::random::<u32>()));
    let duration = o.duration.unwrap_or(if o.quick { 60 } else { 1800 });
    let strategies: Vec<Strategy> = o
        .strategies
        .iter()
        .map(|s| s.parse().map_err(|e: String| anyhow::anyhow!(e)))
        .collect::<Result<_>>()?;
    let kinds: Vec<Kind> = if o.kinds.is_empty() {
        Kind::ALL.to_vec()
    } else {
        o.kinds
            .iter()
            .map(|k| {
                Kind::ALL
                    .into_iter()
                    .find(|x| x.as_str() == k)
                    .with_context(|| format!("no fault kind {k}"))
            })
            .collect::<Result<_>>()?
    };
    std::fs::create_dir_all(&o.out)?;
    println!(
        "fault campaign: seed {seed}, {duration} s of faults per strategy, strategies {}",
        o.strategies.join(",")
    );
    let mut report = Report {
        seed,
        runs: Vec::new(),
    };
    for strategy in strategies {
        let dir = o.out.join(strategy.as_str());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let run = run_one(&o, strategy, seed, duration, &kinds, &dir)
            .await
            .with_context(|| format!("{strategy} (logs in {})", dir.join("logs").display()))?;
        println!(
            "{strategy}: {} faults, {} members, {} publishes ({} acked), {} deliveries, {} declared lost, {} repaired jumps, {} violation(s)",
            run.faults.len(),
            run.checked.members,
            run.checked.publishes,
            run.checked.acked,
            run.checked.delivered,
            run.checked.declared_lost,
            run.checked.repairs,
            run.violations.len()
        );
        println!(
            "{strategy}: delivery latency max {} ms, p99 {} ms; worst around each kind of fault: {}",
            run.latency_ms.max,
            run.latency_ms.p99,
            serde_json::to_string(&run.latency_ms.by_kind)?
        );
        for v in run.violations.iter().take(20) {
            println!("  {}", serde_json::to_string(v)?);
        }
        report.runs.push(run);
        std::fs::write(
            o.out.join("faults.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    let failed: Vec<&Run> = report
        .runs
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    println!("wrote {}", o.out.join("faults.json").display());
    if failed.is_empty() {
        println!("no violations (seed {seed})");
        return Ok(());
    }
    for r in &failed {
        println!("replay: {}", r.replay);
    }
    bail!("{} run(s) broke the delivery contract", failed.len())
}

#[derive(Serialize, Default)]
struct Latency {
    max: u64,
    p99: u64,
    by_kind: BTreeMap<String, u64>,
}

/// Delivery latencies of a run, overall and around each kind of fault
/// (`start_ms`: the wall clock when the faults' timeline began).
fn latencies(h: &History, faults: &[Fault], start_ms: u64) -> Latency {
    let sent: std::collections::HashMap<&str, u64> = h
        .publishes
        .iter()
        .map(|p| (p.key.as_str(), p.sent))
        .collect();
    let mut all = Vec::new();
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for m in &h.members {
        for e in &m.events {
            let checker::Event::Message { at, key, .. } = e else {
                continue;
            };
            let Some(&s) = sent.get(key.as_str()) else {
                continue;
            };
            let latency = at.saturating_sub(s);
            all.push(latency);
            let t = s.saturating_sub(start_ms) as f64 / 1000.0;
            for f in faults {
                if t >= f.at_s && t <= f.at_s + f.duration_s + 2.0 {
                    let worst = by_kind.entry(f.kind.as_str().to_owned()).or_insert(0);
                    *worst = (*worst).max(latency);
                }
            }
        }
    }
    all.sort_unstable();
    let p99 = all
        .get((all.len() as f64 * 0.99) as usize)
        .or(all.last())
        .copied()
        .unwrap_or(0);
    Latency {
        max: all.last().copied().unwrap_or(0),
        p99,
        by_kind,
    }
}

/// Rooms and clients of a run.
struct Load {
    /// Rooms of the campaign's own clients (the faults' room targets).
    rooms: Vec<String>,
    specs: Vec<js::Spec>,
}

fn load(o: &FaultsOpts, strategy: Strategy) -> Load {
    let rooms: Vec<String> = (0..o.rooms).map(|i| format!("r-{i}")).collect();
    let specs = if o.no_js {
        Vec::new()
    } else if strategy == Strategy::Sticky {
        // A sticky room lives on one node: a connection is in the rooms
        // of one owner, so a library client here is in one room.
        (0..4)
            .map(|i| js::Spec {
                name: format!("js-{i}"),
                user: format!("js-{i}"),
                rooms: vec![format!("js-{}", i % 2)],
                every: 500,
            })
            .collect()
    } else {
        // Two clients in ten rooms each, and two in a hundred (the most a
        // connection may hold) through every drain and kill.
        let mut specs: Vec<js::Spec> = (0..2)
            .map(|i| js::Spec {
                name: format!("js-{i}"),
                user: format!("js-{i}"),
                rooms: (0..10).map(|r| format!("js-{r}")).collect(),
                every: 250,
            })
            .collect();
        specs.extend((0..2).map(|i| js::Spec {
            name: format!("many-{i}"),
            user: format!("many-{i}"),
            rooms: (0..100).map(|r| format!("many-{r}")).collect(),
            every: 200,
        }));
        specs
    };
    Load { rooms, specs }
}

async fn run_one(
    o: &FaultsOpts,
    strategy: Strategy,
    seed: u64,
    duration: u64,
    kinds: &[Kind],
    dir: &Path,
) -> Result<Run> {
    let tuning = NodeTuning::default();
    let lease_s = tuning.heartbeat_ttl_ms as f64 / 1000.0;
    let presence_ttl = Duration::from_millis(tuning.presence_ttl_ms);
    let max_connections = tuning.max_connections as usize;
    // Local servers share nothing: their clients meet on one.
    let node_count = if strategy == Strategy::Local {
        1
    } else {
        o.nodes
    };
    println!("{strategy}: starting redis, a router, {node_count} ws-node(s), a gateway");
    let mut cluster =
        Cluster::start(strategy, node_count, tuning, o.bin_dir.as_deref(), dir).await?;
    let load = load(o, strategy);
    let book = Arc::new(Book::default());
    let ctl = Controls {
        publishing: Arc::new(AtomicBool::new(true)),
        stop: CancellationToken::new(),
    };
    let every = Duration::from_secs_f64(1.0 / o.rate.max(0.01));
    let mut tasks = Vec::new();
    for room in &load.rooms {
        for j in 0..o.members {
            let name = format!("{room}-m{j}");
            let m = Member {
                user: name.clone(),
                name,
                room: room.clone(),
                entry: cluster.gateway_ws(),
                every,
            };
            tasks.push(tokio::spawn(client::run(m, book.clone(), ctl.clone())));
        }
    }
    wait_joined(&book, Duration::from_secs(30)).await?;
    let js = if load.specs.is_empty() {
        None
    } else {
        let script = script_path()?;
        let log = dir.join("logs").join("turnout-client.log");
        let entry = cluster.gateway_ws();
        let js = js::Js::start(&o.node, &script, &entry, &load.specs, book.clone(), &log);
        Some(js.await?)
    };
    let api = tokio::spawn(api_publisher(
        cluster.gateway_http(),
        load.rooms.clone(),
        book.clone(),
        ctl.clone(),
    ));
    let pids = Arc::new(std::sync::Mutex::new(cluster.pids()));
    let peaks = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let sampler = tokio::spawn(sample_memory(pids.clone(), peaks.clone(), ctl.stop.clone()));

    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
    let faults = schedule::draw(&Plan {
        seed,
        duration_s: duration as f64,
        lease_s,
        nodes,
        rooms: load
            .rooms
            .iter()
            .chain(load.specs.iter().flat_map(|s| s.rooms.iter().take(2)))
            .cloned()
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect(),
        kinds: kinds.to_vec(),
    });
    let longest = faults.iter().map(|f| f.duration_s).fold(0.0, f64::max);
    let silence_bound_ms = (20_000.0 + 2_000.0 * longest) as u64;
    let mut by_kind = BTreeMap::new();
    for f in &faults {
        *by_kind.entry(f.kind.as_str().to_owned()).or_insert(0u64) += 1;
    }
    println!(
        "{strategy}: load on ({} members of {} rooms, {} library clients); {} faults over {duration} s",
        load.rooms.len() * o.members,
        load.rooms.len(),
        load.specs.len(),
        faults.len()
    );
    // The timeline: each fault's start and end, in order.
    let mut timeline: Vec<(f64, bool, usize)> = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        timeline.push((f.at_s, true, i));
        timeline.push((f.at_s + f.duration_s, false, i));
    }
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let started = Instant::now();
    let start_ms = client::now_ms();
    let mut load_faults: BTreeMap<usize, CancellationToken> = BTreeMap::new();
    let mut trouble = Vec::new();
    for (t, begin, i) in timeline {
        tokio::time::sleep_until(started + Duration::from_secs_f64(t)).await;
        let f = &faults[i];
        let r = if begin {
            println!(
                "  {:>6.1} s  {} {} for {:.1} s",
                started.elapsed().as_secs_f64(),
                f.kind.as_str(),
                f.target,
                f.duration_s
            );
            match f.kind {
                Kind::SlowReaders | Kind::Crowd => {
                    let stop = CancellationToken::new();
                    load_faults.insert(i, stop.clone());
                    tokio::spawn(load_fault(
                        f.kind,
                        cluster.gateway_ws(),
                        f.target.clone(),
                        max_connections,
                        book.clone(),
                        stop,
                    ));
                    Ok(())
                }
                _ => cluster.begin(f).await,
            }
        } else {
            if let Some(stop) = load_faults.remove(&i) {
                stop.cancel();
            }
            cluster.end(f).await
        };
        if let Err(e) = r {
            trouble.push(format!("{} {}: {e:#}", f.kind.as_str(), f.target));
        }
        *pids.lock().unwrap_or_else(|e| e.into_inner()) = cluster.pids();
    }
    println!("{strategy}: faults over; healing");
    cluster
        .heal()
        .await
        .context("the cluster did not come back")?;
    *pids.lock().unwrap_or_else(|e| e.into_inner()) = cluster.pids();
    // Stop publishing; let every member catch up.
    ctl.publishing.store(false, Ordering::Relaxed);
    let mut js = js;
    if let Some(js) = js.as_mut() {
        js.stop_publishing().await?;
    }
    let _ = api.await;
    // Settled: every publish has had its answer (an ack still to come
    // would owe a delivery), and nothing owed is missing; or a minute.
    let settle = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (members, publishes) = book.snapshot();
        let h = History {
            members,
            publishes,
            silence_bound_ms: u64::MAX,
            ..History::default()
        };
        let lost = checker::check(&h)
            .1
            .iter()
            .filter(|v| v.kind == "lost")
            .count();
        if (lost == 0 && book.in_flight() == 0) || settle.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    // Presence, once the faults are over: exactly the members.
    let presence = check_presence(&cluster.gateway_http(), &book, presence_ttl).await;
    ctl.stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    if let Some(js) = js {
        js.stop().await?;
    }
    let _ = sampler.await;
    let exits = cluster.stop().await;
    let (members, publishes) = book.snapshot();
    let node_bound = 256u64 << 20;
    let memory = peaks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(p, peak)| MemoryPeak {
            process: p.clone(),
            peak_bytes: *peak,
            bound_bytes: node_bound,
        })
        .collect();
    let history = History {
        members,
        publishes,
        presence,
        memory,
        silence_bound_ms,
    };
    std::fs::write(dir.join("history.json"), serde_json::to_string(&history)?)?;
    let latency_ms = latencies(&history, &faults, start_ms);
    let (checked, mut violations) = checker::check(&history);
    for e in exits {
        violations.push(Violation {
            kind: "exit".into(),
            room: String::new(),
            member: None,
            seq: None,
            key: None,
            detail: format!("did not stop cleanly on SIGTERM: {e}"),
        });
    }
    for t in trouble {
        violations.push(Violation {
            kind: "fault".into(),
            room: String::new(),
            member: None,
            seq: None,
            key: None,
            detail: format!("the fault could not be applied or undone: {t}"),
        });
    }
    let replay = format!(
        "deploy/loadtest/faults.sh --seed {seed} --strategies {strategy} --duration {duration}{} --out {}",
        if o.kinds.is_empty() {
            String::new()
        } else {
            format!(" --kinds {}", o.kinds.join(","))
        },
        o.out.display()
    );
    Ok(Run {
        strategy: strategy.as_str().to_owned(),
        seed,
        duration_s: duration,
        faults,
        checked,
        violations,
        silence_bound_ms,
        by_kind,
        latency_ms,
        replay,
    })
}

/// `deploy/loadtest/faults-client.mjs`, from the repository the bench was
/// built in (or the working directory).
fn script_path() -> Result<PathBuf> {
    let rel = "deploy/loadtest/faults-client.mjs";
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel),
        PathBuf::from(rel),
    ];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("{rel} not found (run from the repository)"))
}

/// Waits until every member recorded so far has joined once.
async fn wait_joined(book: &Book, within: Duration) -> Result<()> {
    let end = Instant::now() + within;
    loop {
        let (members, _) = book.snapshot();
        let waiting = members.iter().filter(|m| m.events.is_empty()).count();
        if waiting == 0 {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{waiting} members did not join within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
