//! The scenarios and the run loop: ramp, warm-up, measured window, drain,
//! accounting, results.

use crate::cli::{RunOpts, Scenario};
use crate::load::{Load, Partial, Progress, Workers};
use crate::sample;
use crate::stats::*;
use crate::summary::print_summary;
use crate::workload::plan;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use turnout_proto::Strategy;

fn progress(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("valid template"),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// The clients, in this process or in workers.
enum Driver {
    Local(Load),
    Workers(Workers),
}

impl Driver {
    /// Progress, after waiting about `wait`.
    async fn progress(&mut self, wait: Duration) -> Result<Progress> {
        match self {
            Driver::Local(l) => {
                tokio::time::sleep(wait).await;
                let s = &l.shared;
                Ok(Progress {
                    delivered: s.delivered.load(Ordering::Relaxed),
                    connected: s.connected.load(Ordering::Relaxed),
                    reconnects: s.reconnects.load(Ordering::Relaxed),
                })
            }
            Driver::Workers(w) => w.progress(wait).await,
        }
    }

    async fn measure(&mut self) -> Result<()> {
        match self {
            Driver::Local(l) => l.measure(true),
            Driver::Workers(w) => w.tell("measure").await?,
        }
        Ok(())
    }

    /// Measuring ends and publishers stop.
    async fn stop(&mut self) -> Result<()> {
        match self {
            Driver::Local(l) => {
                l.measure(false);
                l.stop_publishing();
            }
            Driver::Workers(w) => w.tell("stop").await?,
        }
        Ok(())
    }

    async fn finish(self) -> Result<Partial> {
        match self {
            Driver::Local(l) => l.finish().await,
            Driver::Workers(w) => w.finish().await,
        }
    }

    fn cancel(&self) {
        if let Driver::Local(l) = self {
            l.cancel();
        }
    }
}

async fn sleep_with(pb: &ProgressBar, driver: &mut Driver, phase: &str, secs: u64) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut last = driver.progress(Duration::ZERO).await?.delivered;
    while Instant::now() < end {
        let p = driver
            .progress(Duration::from_secs(1).min(end - Instant::now()))
            .await?;
        pb.set_message(format!(
            "{phase}: {}s left, {} connected, {} deliveries/s, {} reconnects",
            end.saturating_duration_since(Instant::now()).as_secs(),
            p.connected,
            p.delivered - last,
            p.reconnects
        ));
        last = p.delivered;
    }
    Ok(())
}

/// The run's own options, for its workers (minus what they are given apart).
fn worker_args() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(2);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workers" | "--out" => {
                args.next();
            }
            "--quiet" => {}
            _ if a.starts_with("--workers=") || a.starts_with("--out=") => {}
            _ => out.push(a),
        }
    }
    out
}

pub(crate) async fn run(o: RunOpts) -> Result<()> {
    let cluster = crate::http::get_json(&format!("{}/api/cluster", o.gateway))
        .await
        .context("reading /api/cluster from the gateway (is the cluster up?)")?;
    let strategy = o
        .strategy
        .clone()
        .unwrap_or_else(|| cluster["strategy"].as_str().unwrap_or("?").to_owned());
    // The strategy the cluster runs (None: the floor, or an unknown one).
    let kind: Option<Strategy> = cluster["strategy"].as_str().and_then(|s| s.parse().ok());
    let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
    let plan = plan(&o, &nodes)?;
    let n = plan.members.len() as u64;
    let total_secs = (o.warmup + o.duration + o.drain + 600) as usize;

    if let Some(index) = o.worker {
        // A worker: every `workers`-th client, driven by the parent.
        let workers = o.workers.max(1);
        let mine: Vec<_> = plan
            .members
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % workers == index)
            .map(|(_, m)| m)
            .collect();
        return crate::load::work(mine, (o.ramp / workers as u64).max(1), total_secs).await;
    }

    // Each connection costs its process one file (and the gateway two when
    // proxied); past what one process may open, clients go to workers.
    let limits = sample::fd_limits();
    // Workers are counted from the hard limit: a low soft limit is a setting
    // to raise (the error below says how), not a reason for more processes.
    let workers = match (o.workers, limits) {
        (0, Some((_, hard))) => (n + 64).div_ceil(hard.saturating_sub(64).max(1)) as usize,
        (0, None) => 1,
        (w, _) => w,
    };
    if let Some((soft, hard)) = limits {
        let per_process = n.div_ceil(workers as u64) + 64;
        if per_process > soft {
            bail!(
                "{n} connections over {workers} process(es) need about {per_process} open files each \
                 but a process may open {soft} (hard limit {hard}); run `ulimit -n {hard}` first, \
                 or use more --workers"
            );
        }
    }
    let pb = progress(o.quiet);

    // Idle: the node's memory before any client arrives.
    let idle_node = plan.members.first().and_then(|m| m.fixed_url.clone());
    let idle_pid = match (&o.run_dir, o.scenario) {
        (Some(dir), Scenario::Idle) => {
            let id = o.node.clone().or_else(|| {
                nodes
                    .first()
                    .and_then(|n| n["id"].as_str().map(str::to_owned))
            });
            id.and_then(|id| sample::pid_of(dir, &id).map(|p| (id, p)))
        }
        _ => None,
    };
    let rss_before = idle_pid.as_ref().and_then(|(_, p)| sample::rss_kib(*p));

    // Ramp.
    let started = Instant::now();
    let mut driver = if workers > 1 {
        pb.set_message(format!("starting {workers} worker processes"));
        let tag = o.tag.clone().unwrap_or_else(|| {
            plan.rooms
                .first()
                .and_then(|r| r.split('-').nth(1))
                .unwrap_or("0")
                .to_owned()
        });
        Driver::Workers(Workers::spawn(workers, &worker_args(), &tag)?)
    } else {
        Driver::Local(
            Load::start(plan.members, o.ramp, total_secs, |c| {
                pb.set_message(format!("ramp: {c} of {n} connected"))
            })
            .await,
        )
    };
    let ramp_deadline = Instant::now() + Duration::from_secs(60 + n / o.ramp.max(1));
    loop {
        let p = driver.progress(Duration::from_millis(100)).await?;
        let joined = match &driver {
            Driver::Local(_) => p.connected >= n,
            Driver::Workers(w) => w.all_joined(),
        };
        if joined {
            break;
        }
        if Instant::now() > ramp_deadline {
            driver.cancel();
            bail!(
                "only {} of {n} clients joined within the ramp deadline",
                p.connected
            );
        }
        pb.set_message(format!("ramp: {} of {n} joined", p.connected));
    }

    sleep_with(&pb, &mut driver, "warm-up", o.warmup).await?;
    let nodes_mid = crate::http::get_json(&format!("{}/api/cluster", o.gateway))
        .await
        .ok()
        .and_then(|v| v["nodes"].as_array().cloned())
        .unwrap_or_default();
    let procs = o
        .run_dir
        .as_deref()
        .map(sample::processes)
        .unwrap_or_default();
    let cpu0: Vec<Option<f64>> = procs.iter().map(|(_, p)| sample::cpu_seconds(*p)).collect();
    let node_urls: Vec<String> = nodes_mid
        .iter()
        .filter_map(|n| n["url"].as_str().map(str::to_owned))
        .collect();
    let hops0 = if kind == Some(Strategy::Relay) {
        sample::relay_hops(&node_urls).await
    } else {
        None
    };
    let redis0 = match &o.redis_url {
        Some(u) => sample::redis_counts(u).await,
        None => None,
    };
    // The bench's own CPU (this process and its workers) competes with the cluster's.
    let bench_pids: Vec<u32> = match &driver {
        Driver::Local(_) => vec![std::process::id()],
        Driver::Workers(w) => w.pids(),
    };
    let bench_cpu = || -> f64 {
        bench_pids
            .iter()
            .filter_map(|p| sample::cpu_seconds(*p))
            .sum()
    };
    let bench_cpu0 = bench_cpu();
    let t0 = Instant::now();
    driver.measure().await?;

    // Failover: kill one node partway through.
    let mut killed = None;
    let killer = if o.scenario == Scenario::Failover {
        let dir = o
            .run_dir
            .clone()
            .context("failover needs --run-dir to find the node's pid")?;
        let victim = match &o.kill {
            Some(v) => v.clone(),
            None => nodes_mid
                .iter()
                .max_by_key(|n| n["connections"].as_u64().unwrap_or(0))
                .and_then(|n| n["id"].as_str().map(str::to_owned))
                .context("no node to kill")?,
        };
        let pid =
            sample::pid_of(&dir, &victim).with_context(|| format!("no pid file for {victim}"))?;
        killed = Some(victim.clone());
        let after = Duration::from_secs(o.kill_after.min(o.duration));
        Some(tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            now_us() / 1000
        }))
    } else {
        None
    };

    // Abuse: the attackers start with the measured window.
    let attack_stop = tokio_util::sync::CancellationToken::new();
    let attack = if o.scenario != Scenario::Abuse {
        None
    } else {
        let nodes: Vec<String> = nodes_mid
            .iter()
            .filter_map(|n| n["url"].as_str().map(str::to_owned))
            .collect();
        let a = crate::abuse::Attackers {
            join_flooders: o.join_flooders,
            publish_flooders: o.publish_flooders,
            silent_sockets: o.silent_sockets,
            stream_hoarders: o.stream_hoarders,
            flood_rate: o.flood_rate,
        };
        Some(crate::abuse::start(
            a,
            o.gateway.trim_end_matches('/'),
            &nodes,
            &plan.rooms[0],
            attack_stop.clone(),
        )?)
    };
    let redis_memory0 = match &o.redis_url {
        Some(u) => sample::redis_memory(u).await,
        None => None,
    };
    let measure_start_ms = now_us() / 1000;
    let mut chaos = Vec::new();
    for spec in &o.chaos {
        let (at, cmd) = spec
            .split_once('=')
            .context("--chaos takes SECONDS=COMMAND")?;
        let at: u64 = at
            .trim()
            .parse()
            .context("--chaos: SECONDS must be a whole number")?;
        let cmd = cmd.to_owned();
        chaos.push((at, cmd.clone()));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(at)).await;
            let ok = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .status()
                .await;
            eprintln!("chaos at {at}s: `{cmd}`: {ok:?}");
        });
    }
    if o.scenario == Scenario::Idle {
        // No traffic: let the node settle, then read its memory.
        sleep_with(&pb, &mut driver, "idle", o.duration).await?;
    } else {
        sleep_with(&pb, &mut driver, "measuring", o.duration).await?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let redis_memory1 = match &o.redis_url {
        Some(u) => sample::redis_memory(u).await,
        None => None,
    };
    attack_stop.cancel();
    let bench_cpu_seconds = bench_cpu() - bench_cpu0;
    driver.stop().await?;
    let cpu1: Vec<Option<f64>> = procs.iter().map(|(_, p)| sample::cpu_seconds(*p)).collect();
    let rss1: Vec<Option<u64>> = procs.iter().map(|(_, p)| sample::rss_kib(*p)).collect();
    let redis1 = match &o.redis_url {
        Some(u) => sample::redis_counts(u).await,
        None => None,
    };
    // After the window's other samples: a slow node must not stretch it.
    let hops1 = match hops0 {
        Some(_) => sample::relay_hops(&node_urls).await,
        None => None,
    };
    let rss_after = idle_pid.as_ref().and_then(|(_, p)| sample::rss_kib(*p));
    let measure_end = started.elapsed().as_secs() as usize;
    // Drain: at least --drain seconds, then until deliveries stop (at most a
    // minute), so a message that is late under load is not counted as lost.
    sleep_with(&pb, &mut driver, "drain", o.drain).await?;
    let mut last = driver.progress(Duration::ZERO).await?.delivered;
    for _ in 0..60 {
        let now = driver.progress(Duration::from_secs(1)).await?.delivered;
        if now == last {
            break;
        }
        pb.set_message(format!(
            "drain: {} deliveries in the last second",
            now - last
        ));
        last = now;
    }
    let killed_at = match killer {
        Some(k) => k.await.ok(),
        None => None,
    };

    // Every room's last seq, from history (local servers number each room
    // on their own: the tally reads that from what members saw).
    let local = kind == Some(Strategy::Local);
    let mut last_seq = vec![0u64; plan.rooms.len()];
    if o.scenario != Scenario::Idle && !local {
        for (i, room) in plan.rooms.iter().enumerate() {
            let v = crate::http::get_json(&format!(
                "{}/api/rooms/{room}/history?since=0&limit=1",
                o.gateway
            ))
            .await?;
            last_seq[i] = v["seq"].as_u64().unwrap_or(0);
        }
    }
    pb.set_message("collecting results");
    let totals = driver.finish().await?;
    pb.finish_and_clear();
    let tally = crate::stats::tally(&totals.members, (!local).then_some(&last_seq[..]));
    let lost = tally.lost;
    if lost > 0 && !local {
        // Where to look: the first message each of a few members missed.
        let missed = totals.members.iter().filter_map(|m| {
            let last = last_seq.get(m.room).copied().unwrap_or(0);
            let n = m.missing(last);
            (n > 0).then_some((m, n, last))
        });
        for (m, n, last) in missed.take(10) {
            eprintln!(
                "lost: a member of {} on {} missed {n} of seqs {}..={last}, first {} (joined at {})",
                plan.rooms[m.room],
                m.node,
                m.base.unwrap_or(0) + 1,
                m.contiguous + 1,
                m.base.unwrap_or(0),
            );
        }
    }
    let cross_node_share =
        tally.cross_node as f64 / (tally.cross_node + tally.same_node).max(1) as f64;

    let hist = totals.histogram()?;
    let delivered = totals.delivered_measured;
    let processes: Vec<ProcessStats> = procs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let cpu = match (cpu0[i], cpu1[i]) {
                (Some(a), Some(b)) => b - a,
                _ => 0.0,
            };
            ProcessStats {
                name: name.clone(),
                cpu_seconds: cpu,
                rss_kib: rss1[i].unwrap_or(0),
                cpu_seconds_per_million_deliveries: if delivered > 0 {
                    cpu * 1e6 / delivered as f64
                } else {
                    0.0
                },
            }
        })
        .collect();
    let node_cpu: f64 = processes
        .iter()
        .filter(|p| p.name.starts_with("node") || p.name == "floor")
        .map(|p| p.cpu_seconds)
        .sum();
    let server_cpu: f64 = processes.iter().map(|p| p.cpu_seconds).sum();
    let redis = match (redis0, redis1) {
        (Some(a), Some(b)) => {
            let commands = b.commands.saturating_sub(a.commands);
            let by_command: BTreeMap<String, u64> = b
                .by_command
                .iter()
                .map(|(k, v)| {
                    let before = a.by_command.get(k).copied().unwrap_or(0);
                    (k.clone(), v.saturating_sub(before))
                })
                .filter(|(_, v)| *v > 0)
                .collect();
            RedisStats {
                commands,
                commands_per_sec: commands as f64 / elapsed,
                commands_per_delivery: if delivered > 0 {
                    commands as f64 / delivered as f64
                } else {
                    0.0
                },
                by_command,
                net_input_bytes: b.net_in.saturating_sub(a.net_in),
                net_output_bytes: b.net_out.saturating_sub(a.net_out),
                memory_before: redis_memory0.unwrap_or(0),
                memory_after: redis_memory1.unwrap_or(0),
            }
        }
        _ => RedisStats::default(),
    };
    let failover = killed.map(|victim| {
        let mut rec: Vec<f64> = Vec::new();
        let mut rooms = std::collections::HashSet::new();
        let mut not_recovered = 0;
        for (room, broken, recovered) in &totals.broken {
            rooms.insert(*room);
            let from = killed_at.unwrap_or(*broken);
            match recovered {
                Some(r) => rec.push(r.saturating_sub(from) as f64),
                None => not_recovered += 1,
            }
        }
        rec.sort_by(|a, b| a.total_cmp(b));
        FailoverStats {
            killed: victim,
            members_affected: totals.broken.len() as u64,
            rooms_affected: rooms.len() as u64,
            recovery_ms_p50: rec.get(rec.len() / 2).copied().unwrap_or(0.0),
            recovery_ms_max: rec.last().copied().unwrap_or(0.0),
            not_recovered,
        }
    });
    let idle = idle_node.map(|_| {
        let (node, _) = idle_pid.clone().unwrap_or_default();
        let (b, a) = (rss_before.unwrap_or(0), rss_after.unwrap_or(0));
        IdleStats {
            node,
            connections: n,
            rss_kib_before: b,
            rss_kib_after: a,
            kib_per_connection: if n > 0 {
                a.saturating_sub(b) as f64 / n as f64
            } else {
                0.0
            },
        }
    });
    let mut gaps: Vec<f64> = totals.members.iter().map(|m| m.max_gap_ms as f64).collect();
    let silence_ms = crate::stats::Silence {
        p50: crate::stats::quantile(&mut gaps, 0.5),
        p99: crate::stats::quantile(&mut gaps, 0.99),
        max: crate::stats::quantile(&mut gaps, 1.0),
    };
    let disruptions = chaos
        .iter()
        .map(|(at, command)| {
            let t = measure_start_ms + at * 1000;
            let mut told: Vec<f64> = totals
                .members
                .iter()
                .filter_map(|m| m.moves.iter().find(|&&mv| mv >= t && mv < t + 60_000))
                .map(|&mv| (mv - t) as f64)
                .collect();
            crate::stats::Disruption {
                at_s: *at,
                command: command.clone(),
                members_moved: told.len() as u64,
                told_ms_p50: crate::stats::quantile(&mut told, 0.5),
                told_ms_max: crate::stats::quantile(&mut told, 1.0),
            }
        })
        .collect();
    let attack = match attack {
        Some(a) => Some(a.finish().await),
        None => None,
    };
    let attackers = attack.map(|t| crate::stats::AttackStats {
        cpu_seconds: t.cpu_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        frames_sent: t.sent.load(Ordering::Relaxed),
        refused: t.refused.load(Ordering::Relaxed),
        closed: t.closed.load(Ordering::Relaxed),
        silent_sockets_closed: t.silent_closed.load(Ordering::Relaxed),
        streams_opened: t.streams_open.load(Ordering::Relaxed),
        streams_refused: t.streams_refused.load(Ordering::Relaxed),
    });
    let result = RunResult {
        attackers,
        silence_ms,
        disruptions,
        strategy,
        scenario: format!("{:?}", o.scenario).to_lowercase(),
        mode: format!("{:?}", o.mode).to_lowercase(),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rooms: plan.rooms.len(),
        members: o.members,
        publishers_per_room: plan.publishers_per_room,
        rate: o.rate,
        payload: o.payload,
        connections: n,
        workers,
        bench_cpu_seconds,
        warmup_s: o.warmup,
        duration_s: o.duration,
        published: totals.published,
        publish_errors: totals.publish_errors,
        delivered,
        replayed: totals.replayed,
        lost,
        undelivered_cross_node: if local { tally.cross_node } else { 0 },
        undelivered_share: if local { cross_node_share } else { 0.0 },
        cross_node_share,
        cross_node_deliveries: if local {
            0
        } else {
            (delivered as f64 * cross_node_share).round() as u64
        },
        nodes_per_room: tally.nodes_per_room,
        node_hops: match (hops0, hops1) {
            (Some(a), Some(b)) => sample::hops_between(&a, &b),
            _ => None,
        },
        churn: o.churn,
        rejoins: totals.members.iter().map(|m| m.rejoins).sum(),
        duplicated: totals.duplicated,
        reordered: totals.reordered,
        reconnects: totals.reconnects,
        connect_errors: totals.connect_errors,
        deliveries_per_sec: delivered as f64 / elapsed,
        latency_ms: latency(&hist),
        latency_cdf: cdf(&hist),
        throughput: totals
            .per_sec
            .iter()
            .copied()
            .take(measure_end + o.drain as usize)
            .collect(),
        ws_node_deliveries_per_cpu_second: if node_cpu > 0.0 {
            delivered as f64 / node_cpu
        } else {
            0.0
        },
        server_deliveries_per_cpu_second: if server_cpu > 0.0 {
            delivered as f64 / server_cpu
        } else {
            0.0
        },
        processes,
        nodes: nodes_mid
            .iter()
            .map(|n| NodeStats {
                id: n["id"].as_str().unwrap_or("?").to_owned(),
                connections: n["connections"].as_u64().unwrap_or(0),
                rooms: n["rooms"].as_u64().unwrap_or(0),
            })
            .collect(),
        redis,
        failover,
        idle,
    };
    std::fs::write(&o.out, serde_json::to_string_pretty(&result)?)?;
    print_summary(&result);
    eprintln!("results: {}", o.out.display());
    Ok(())
}
