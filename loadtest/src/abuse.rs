//! The attackers of the `abuse` scenario, run beside a victim chat: what a
//! hostile client or an anonymous caller can throw at a cluster. Each kind
//! keeps at it for the whole run, reconnecting when it is closed.
//!
//! - join/leave flooders: join and leave fresh rooms as fast as they can;
//! - publish flooders: publish as fast as they can into a room of their own;
//! - silent sockets: TCP connections to the gateway and every node that
//!   never send a byte (each is closed after `handshake_timeout`, and opened
//!   again);
//! - stream hoarders: SSE streams of the victims' rooms, opened until the
//!   gateway refuses.
//!
//! They all come from one address, [`ATTACKER`] (127.0.0.1), apart from the
//! victims' (127.0.0.2 and up): one hostile host, met by the per-address
//! limits. They run
//! on a thread and runtime of their own at the lowest CPU priority (nice
//! 19): a real attacker's machine is not the cluster's, so its work here
//! takes only cores that the cluster and the victims leave idle, and what
//! is measured is the cluster's answer, not the bench's. Their CPU time is
//! reported apart.

use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Where every attacker connects from.
pub(crate) const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How many of each attacker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attackers {
    pub(crate) join_flooders: usize,
    pub(crate) publish_flooders: usize,
    pub(crate) silent_sockets: usize,
    pub(crate) stream_hoarders: usize,
    /// Frames per second each flooder sends (0: as fast as the socket
    /// takes them).
    pub(crate) flood_rate: u32,
}

/// What the attackers got.
#[derive(Default, Debug)]
pub(crate) struct Tally {
    /// Frames the attackers sent.
    pub(crate) sent: AtomicU64,
    /// `rate_limited` (and other refusals) they were answered.
    pub(crate) refused: AtomicU64,
    /// Times the cluster closed an attacker's WebSocket.
    pub(crate) closed: AtomicU64,
    /// Silent sockets the cluster closed.
    pub(crate) silent_closed: AtomicU64,
    /// Streams opened, and refused.
    pub(crate) streams_open: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
    /// CPU time of the attackers' thread, in milliseconds, when they stopped.
    pub(crate) cpu_ms: AtomicU64,
}

/// The attackers under way.
pub(crate) struct Attack {
    tally: Arc<Tally>,
    thread: std::thread::JoinHandle<()>,
}

impl Attack {
    /// What they got, once they have stopped (after `stop`).
    pub(crate) async fn finish(self) -> Arc<Tally> {
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        self.tally
    }
}

/// Starts every attacker on a thread of their own; they stop with `stop`.
pub(crate) fn start(
    a: Attackers,
    gateway: &str,
    nodes: &[String],
    victim_room: &str,
    stop: CancellationToken,
) -> std::io::Result<Attack> {
    let tally = Arc::new(Tally::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (gateway, nodes, victim_room) =
        (gateway.to_owned(), nodes.to_vec(), victim_room.to_owned());
    let t = tally.clone();
    let thread = std::thread::Builder::new()
        .name("attackers".into())
        .spawn(move || {
            lowest_priority();
            runtime.block_on(async {
                spawn_all(a, &gateway, &nodes, &victim_room, t.clone(), stop.clone());
                stop.cancelled().await;
            });
            let cpu = crate::sample::thread_cpu_seconds().unwrap_or(0.0);
            t.cpu_ms.store((cpu * 1000.0) as u64, Ordering::Relaxed);
        })?;
    Ok(Attack { tally, thread })
}

/// Nice 19 for the calling thread (Linux nices threads one by one).
fn lowest_priority() {
    let Some(tid) = crate::sample::thread_id() else {
        return;
    };
    let ok = std::process::Command::new("renice")
        .args(["-n", "19", "-p", &tid])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "warning: could not renice the attackers' thread; they compete with the victims for CPU"
        );
    }
}

fn spawn_all(
    a: Attackers,
    gateway: &str,
    nodes: &[String],
    victim_room: &str,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    // With a room, so a sticky gateway has something to route by.
    let ws = gateway.replacen("http://", "ws://", 1);
    let rate = a.flood_rate;
    for i in 0..a.join_flooders {
        let (url, t, s) = (
            format!("{ws}/ws?room=churn-{i}&user=jf{i}"),
            tally.clone(),
            stop.clone(),
        );
        tokio::spawn(async move { flood(url, t, s, Kind::JoinLeave(i), rate).await });
    }
    for i in 0..a.publish_flooders {
        let (url, t, s) = (
            format!("{ws}/ws?room=flood-{i}&user=pf{i}"),
            tally.clone(),
            stop.clone(),
        );
        tokio::spawn(async move { flood(url, t, s, Kind::Publish(i), rate).await });
    }
    let mut targets: Vec<String> = vec![authority(gateway)];
    targets.extend(nodes.iter().map(|u| authority(u)));
    for i in 0..a.silent_sockets {
        let (to, t, s) = (
            targets[i % targets.len()].clone(),
            tally.clone(),
            stop.clone(),
        );
        tokio::spawn(async move { silent(to, t, s).await });
    }
    for _ in 0..a.stream_hoarders {
        let url = format!("{gateway}/api/rooms/{victim_room}/events");
        let (t, s) = (tally.clone(), stop.clone());
        tokio::spawn(async move { hoard(url, t, s).await });
    }
}

fn authority(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned()
}

enum Kind {
    JoinLeave(usize),
    Publish(usize),
}

async fn flood(url: String, tally: Arc<Tally>, stop: CancellationToken, kind: Kind, rate: u32) {
    let mut n = 0u64;
    // Paced in ticks of 10 ms.
    let per_tick = rate.div_ceil(100).max(1) as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        let Ok(ws) = crate::member::connect_from(ATTACKER, &url).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (mut tx, mut rx) = ws.split();
        let reader = {
            let tally = tally.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = rx.next().await {
                    if let Message::Text(t) = m
                        && t.contains(r#""type":"error""#)
                    {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        if let Kind::Publish(i) = kind {
            let join = format!(r#"{{"type":"join","room":"flood-{i}"}}"#);
            let _ = tx.send(Message::Text(join.into())).await;
        }
        loop {
            n += 1;
            let frames: Vec<String> = match kind {
                Kind::JoinLeave(i) => vec![
                    format!(r#"{{"type":"join","room":"churn-{i}-{n}"}}"#),
                    format!(r#"{{"type":"leave","room":"churn-{i}-{n}"}}"#),
                ],
                Kind::Publish(i) => vec![format!(
                    r#"{{"type":"publish","room":"flood-{i}","data":{{"n":{n}}}}}"#
                )],
            };
            let mut broken = false;
            for f in frames {
                if tx.send(Message::Text(f.into())).await.is_err() {
                    broken = true;
                    break;
                }
                tally.sent.fetch_add(1, Ordering::Relaxed);
            }
            if broken || stop.is_cancelled() || reader.is_finished() {
                break;
            }
            if rate > 0 {
                if n.is_multiple_of(per_tick) {
                    tick.tick().await;
                }
            } else if n.is_multiple_of(64) {
                // As fast as the socket takes them, yielding now and then.
                tokio::task::yield_now().await;
            }
        }
        reader.abort();
        if !stop.is_cancelled() {
            tally.closed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn silent(to: String, tally: Arc<Tally>, stop: CancellationToken) {
    use tokio::io::AsyncReadExt;
    while !stop.is_cancelled() {
        let (host, port) = to.rsplit_once(':').unwrap_or((&to, "80"));
        let port = port.parse().unwrap_or(80);
        let Ok(mut s) = crate::member::tcp_from(ATTACKER, host, port).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut buf = [0u8; 64];
        tokio::select! {
            _ = async { while let Ok(n) = s.read(&mut buf).await { if n == 0 { break } } } => {
                tally.silent_closed.fetch_add(1, Ordering::Relaxed);
            }
            _ = stop.cancelled() => return,
        }
    }
}

async fn hoard(url: String, tally: Arc<Tally>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match crate::http::open_stream(&url).await {
            Ok(Some(body)) => {
                tally.streams_open.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = body => {}
                    _ = stop.cancelled() => return,
                }
            }
            Ok(None) => {
                tally.streams_refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
