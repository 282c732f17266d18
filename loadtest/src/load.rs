//! Running the simulated clients: in this process, or spread over worker
//! processes when one process cannot hold them all (it may open only so many
//! files). The run loop drives either the same way; workers are this binary
//! run with `--worker I --workers N`, take every N-th client, and talk to the
//! parent over stdin/stdout, one line per message:
//!
//! - worker → parent: `joined`, then `p <delivered> <connected> <reconnects>`
//!   every second, and at the end `result <Partial as JSON>`;
//! - parent → worker: `measure`, `stop` (measuring ends, publishers stop),
//!   `finish`.

use crate::member::{self, MemberCfg, Outcome};
use crate::stats::MemberSummary;
use crate::stats::{Shared, now_us};
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_util::sync::CancellationToken;

/// What one process measured; partials of all workers add up.
#[derive(Serialize, Deserialize, Default, Debug)]
pub(crate) struct Partial {
    pub(crate) published: u64,
    pub(crate) publish_errors: u64,
    pub(crate) delivered_measured: u64,
    pub(crate) replayed: u64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
    pub(crate) reconnects: u64,
    pub(crate) connect_errors: u64,
    /// Live deliveries per second since the process started its clients.
    pub(crate) per_sec: Vec<u64>,
    /// Latency histogram (µs), HdrHistogram V2 encoding.
    pub(crate) histogram: Vec<u8>,
    /// Members whose connection broke: (room index, broken at, first live
    /// message after, as Unix ms).
    pub(crate) broken: Vec<(usize, u64, Option<u64>)>,
    /// What each member saw, for counting what it missed.
    pub(crate) members: Vec<MemberSummary>,
}

impl Partial {
    pub(crate) fn add(&mut self, other: Partial) -> Result<()> {
        self.published += other.published;
        self.publish_errors += other.publish_errors;
        self.delivered_measured += other.delivered_measured;
        self.replayed += other.replayed;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.reconnects += other.reconnects;
        self.connect_errors += other.connect_errors;
        if self.per_sec.len() < other.per_sec.len() {
            self.per_sec.resize(other.per_sec.len(), 0);
        }
        for (a, b) in self.per_sec.iter_mut().zip(&other.per_sec) {
            *a += b;
        }
        let mut h = self.histogram()?;
        h.add(other.histogram()?).context("merging histograms")?;
        self.histogram = encode(&h)?;
        self.broken.extend(other.broken);
        self.members.extend(other.members);
        Ok(())
    }

    pub(crate) fn histogram(&self) -> Result<Histogram<u64>> {
        if self.histogram.is_empty() {
            return Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?);
        }
        Ok(Deserializer::new().deserialize(&mut self.histogram.as_slice())?)
    }
}

fn encode(h: &Histogram<u64>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("encoding the histogram: {e:?}"))?;
    Ok(buf)
}

fn unix_ms(at: Instant) -> u64 {
    (now_us() / 1000).saturating_sub(at.elapsed().as_millis() as u64)
}

/// Clients running in this process.
pub(crate) struct Load {
    pub(crate) shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
}

impl Load {
    /// Starts `members` at `ramp` connections per second; `progress` is told
    /// how far the ramp got.
    pub(crate) async fn start(
        members: Vec<MemberCfg>,
        ramp: u64,
        seconds: usize,
        progress: impl Fn(u64),
    ) -> Load {
        let shared = Arc::new(Shared::new(seconds));
        let stop = CancellationToken::new();
        let mut tasks = Vec::with_capacity(members.len());
        let batch = (ramp / 100).max(1) as usize;
        for (i, m) in members.into_iter().enumerate() {
            tasks.push(tokio::spawn(member::run(m, shared.clone(), stop.clone())));
            if (i + 1) % batch == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                progress(shared.connected.load(Ordering::Relaxed));
            }
        }
        Load {
            shared,
            stop,
            tasks,
        }
    }

    pub(crate) fn connected(&self) -> u64 {
        self.shared.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn measure(&self, on: bool) {
        self.shared.measuring.store(on, Ordering::Relaxed);
    }

    pub(crate) fn stop_publishing(&self) {
        self.shared.stop_publishing.store(true, Ordering::Relaxed);
    }

    pub(crate) fn cancel(&self) {
        self.stop.cancel();
    }

    /// Stops every client and accounts.
    pub(crate) async fn finish(self) -> Result<Partial> {
        self.stop.cancel();
        let mut outcomes = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            if let Ok(o) = t.await {
                outcomes.push(o);
            }
        }
        let s = &self.shared;
        let members = outcomes
            .iter()
            .map(|m| MemberSummary {
                room: m.room_idx,
                node: m.node.clone(),
                base: m.seen.base,
                unique: m.seen.unique,
                highest: m.seen.highest,
                contiguous: m.seen.contiguous,
                acked: m.acked,
                max_ack: m.max_ack,
                moves: m.moves.clone(),
                max_gap_ms: m.max_gap_ms,
                rejoins: m.rejoins,
            })
            .collect();
        let broken = outcomes
            .iter()
            .filter_map(|m| {
                let b = m.broken_at?;
                Some((m.room_idx, unix_ms(b), m.recovered_at.map(unix_ms)))
            })
            .collect();
        Ok(Partial {
            published: s.published.load(Ordering::Relaxed),
            publish_errors: s.publish_errors.load(Ordering::Relaxed),
            delivered_measured: s.delivered_measured.load(Ordering::Relaxed),
            replayed: s.replayed.load(Ordering::Relaxed),
            duplicated: s.duplicated.load(Ordering::Relaxed),
            reordered: s.reordered.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            connect_errors: s.connect_errors.load(Ordering::Relaxed),
            per_sec: s.per_second(0, usize::MAX),
            histogram: encode(&s.histogram())?,
            broken,
            members,
        })
    }
}

/// How far the clients are, summed over processes.
#[derive(Default, Clone, Copy)]
pub(crate) struct Progress {
    pub(crate) delivered: u64,
    pub(crate) connected: u64,
    pub(crate) reconnects: u64,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    progress: Progress,
    joined: bool,
}

/// Clients spread over worker processes.
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    /// Starts `n` workers: this binary with `args` (the parent's own `run`
    /// options) plus `--worker i --workers n --tag tag`.
    pub(crate) fn spawn(n: usize, args: &[String], tag: &str) -> Result<Workers> {
        let exe = std::env::current_exe().context("finding the bench binary")?;
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let mut child = tokio::process::Command::new(&exe)
                .arg("run")
                .args(args)
                .args(["--worker", &i.to_string(), "--workers", &n.to_string()])
                .args(["--tag", tag, "--quiet"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker process")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            workers.push(Worker {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
                progress: Progress::default(),
                joined: false,
            });
        }
        Ok(Workers { workers })
    }

    /// Progress after reading what workers said for about `wait`.
    pub(crate) async fn progress(&mut self, wait: Duration) -> Result<Progress> {
        let per = wait / self.workers.len().max(1) as u32;
        for i in 0..self.workers.len() {
            let until = tokio::time::Instant::now() + per;
            let w = &mut self.workers[i];
            while let Ok(line) = tokio::time::timeout_at(until, w.lines.next_line()).await {
                let Some(line) = line? else {
                    let status = w.child.wait().await?;
                    bail!("worker {i} exited ({status}); its errors are above");
                };
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("joined") => w.joined = true,
                    Some("p") => {
                        let mut next = || words.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                        w.progress = Progress {
                            delivered: next(),
                            connected: next(),
                            reconnects: next(),
                        };
                    }
                    _ => {}
                }
            }
        }
        let mut sum = Progress::default();
        for w in &self.workers {
            sum.delivered += w.progress.delivered;
            sum.connected += w.progress.connected;
            sum.reconnects += w.progress.reconnects;
        }
        Ok(sum)
    }

    /// Process ids of the workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(|w| w.child.id()).collect()
    }

    pub(crate) fn all_joined(&self) -> bool {
        self.workers.iter().all(|w| w.joined)
    }

    pub(crate) async fn tell(&mut self, line: &str) -> Result<()> {
        for w in &mut self.workers {
            w.stdin.write_all(line.as_bytes()).await?;
            w.stdin.write_all(b"\n").await?;
            w.stdin.flush().await?;
        }
        Ok(())
    }

    /// Tells workers to finish and adds up their results.
    pub(crate) async fn finish(mut self) -> Result<Partial> {
        self.tell("finish").await?;
        let mut total = Partial::default();
        for (i, mut w) in self.workers.into_iter().enumerate() {
            let mut result = None;
            while let Some(line) = w.lines.next_line().await? {
                if let Some(json) = line.strip_prefix("result ") {
                    result = Some(serde_json::from_str::<Partial>(json)?);
                }
            }
            let status = w.child.wait().await?;
            let part = result.with_context(|| format!("worker {i} gave no result ({status})"))?;
            total.add(part)?;
        }
        Ok(total)
    }
}

/// Runs as worker `index`: start the clients, then follow the parent's
/// commands on stdin; results go to stdout.
pub(crate) async fn work(members: Vec<MemberCfg>, ramp: u64, seconds: usize) -> Result<()> {
    let mut out = tokio::io::stdout();
    let load = Load::start(members, ramp, seconds, |_| {}).await;
    let n = load.tasks.len() as u64;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut said_joined = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !said_joined && load.connected() >= n {
                    said_joined = true;
                    out.write_all(b"joined\n").await?;
                }
                let s = &load.shared;
                let line = format!(
                    "p {} {} {}\n",
                    s.delivered.load(Ordering::Relaxed),
                    s.connected.load(Ordering::Relaxed),
                    s.reconnects.load(Ordering::Relaxed)
                );
                out.write_all(line.as_bytes()).await?;
                out.flush().await?;
            }
            line = stdin.next_line() => {
                let Some(line) = line? else {
                    // The parent is gone.
                    load.cancel();
                    return Ok(());
                };
                match line.split_once(' ').map_or((line.as_str(), ""), |(a, b)| (a, b)) {
                    ("measure", _) => load.measure(true),
                    ("stop", _) => {
                        load.measure(false);
                        load.stop_publishing();
                    }
                    ("finish", _) => {
                        let partial = load.finish().await?;
                        let line = format!("result {}\n", serde_json::to_string(&partial)?);
                        out.write_all(line.as_bytes()).await?;
                        out.flush().await?;
                        return Ok(());
                    }
                    _ => {}
                }
            }
        }
    }
}
