//! One simulated client: connect (directly to the routed node or through the
//! gateway), join, publish at a steady rate, record what arrives, and when the
//! connection breaks reconnect and rejoin with `since`, like a real client.

use crate::cli::Mode;
use crate::stats::{Arrival, Seen, Shared, now_us};
use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

pub(crate) struct MemberCfg {
    pub(crate) room: String,
    pub(crate) room_idx: usize,
    pub(crate) sender: u32,
    /// None: this member only listens.
    pub(crate) publish_every: Option<Duration>,
    pub(crate) padding: Arc<str>,
    pub(crate) mode: Mode,
    pub(crate) gateway: String,
    pub(crate) source_ip: IpAddr,
    /// Idle scenario: connect to this URL, not to the routed node.
    pub(crate) fixed_url: Option<String>,
    /// Membership churn: leave (close) and come back (route, connect, join
    /// with `since`) this often, like a user who reloads the page.
    pub(crate) churn_every: Option<Duration>,
}

pub(crate) struct Outcome {
    pub(crate) room_idx: usize,
    pub(crate) seen: Seen,
    /// The node the member was on last (from `welcome`).
    pub(crate) node: String,
    /// Its publishes acked, and the highest seq an ack gave.
    pub(crate) acked: u64,
    pub(crate) max_ack: u64,
    /// When it was told to go (`wrong_node`, `reconnect`) or lost its
    /// connection, as Unix ms.
    pub(crate) moves: Vec<u64>,
    /// Longest time without a message of its room while measuring, ms.
    pub(crate) max_gap_ms: u64,
    /// First time the connection broke while the run was on.
    pub(crate) broken_at: Option<Instant>,
    /// First live message received after reconnecting.
    pub(crate) recovered_at: Option<Instant>,
    /// Churn: joins after leaving on purpose, made while measuring.
    pub(crate) rejoins: u64,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    seq: Option<u64>,
    data: Option<Data>,
    #[serde(borrow)]
    code: Option<&'a str>,
    redirect: Option<String>,
    #[serde(borrow)]
    node: Option<&'a str>,
    #[serde(borrow)]
    strategy: Option<&'a str>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(default)]
    t: u64,
}

type Ws = WebSocketStream<TcpStream>;

async fn target(cfg: &MemberCfg, redirect: Option<String>) -> Result<String> {
    if let Some(u) = redirect.or_else(|| cfg.fixed_url.clone()) {
        return Ok(u);
    }
    let user = format!("b{}", cfg.sender);
    match cfg.mode {
        Mode::Direct => {
            let v = crate::http::get_json(&format!("{}/api/route?room={}", cfg.gateway, cfg.room))
                .await?;
            let url = v["url"].as_str().context("route without url")?;
            Ok(format!("{url}?room={}&user={user}", cfg.room))
        }
        Mode::Proxy => {
            let base = cfg.gateway.replacen("http://", "ws://", 1);
            Ok(format!("{base}/ws?room={}&user={user}", cfg.room))
        }
    }
}

async fn connect(cfg: &MemberCfg, url: &str) -> Result<Ws> {
    connect_from(cfg.source_ip, url).await
}

/// A TCP connection to `host:port` from `source` (bound only when both are
/// IPv4 loopback, as a loopback source cannot reach anything else, and
/// `source` is not 127.0.0.1, the kernel's own choice: binding before
/// connecting reserves a port for every destination at once, and a client
/// that opens connections fast from one bound address spends its time in
/// the kernel's port search).
pub(crate) async fn tcp_from(source: IpAddr, host: &str, port: u16) -> Result<TcpStream> {
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .context("no address")?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if addr.ip().is_loopback()
        && addr.is_ipv4()
        && source.is_ipv4()
        && source != IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr)).await??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A WebSocket client from `source`, with small buffers (many run at once).
pub(crate) async fn connect_from(source: IpAddr, url: &str) -> Result<Ws> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().context("no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tcp_from(source, host, port).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)),
    )
    .await??;
    Ok(ws)
}

/// Runs one member until `stop`.
pub(crate) async fn run(cfg: MemberCfg, shared: Arc<Shared>, stop: CancellationToken) -> Outcome {
    let mut out = Outcome {
        room_idx: cfg.room_idx,
        seen: Seen::default(),
        node: String::new(),
        acked: 0,
        max_ack: 0,
        moves: Vec::new(),
        max_gap_ms: 0,
        broken_at: None,
        recovered_at: None,
        rejoins: 0,
    };
    let mut last_arrival: Option<Instant> = None;
    // Short backoff: the bench measures how fast the cluster recovers, not
    // how patient a client is.
    let mut backoff = Duration::from_millis(50);
    let mut redirect = None;
    let mut counted = false;
    let mut n: u64 = 0;
    let mut first = true;
    // Pinned once: a fresh `cancelled()` per wake-up would register with the
    // token again on every message.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    // One churn clock for the member's life, at a random phase, so members
    // leave at a steady rate in all and a reconnect does not reset it.
    let churn_period = cfg.churn_every.unwrap_or(Duration::from_secs(3600));
    let mut churn = tokio::time::interval_at(
        tokio::time::Instant::now()
            + Duration::from_micros(
                rand::rng().random_range(0..churn_period.as_micros().max(1) as u64),
            ),
        churn_period,
    );
    churn.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `churned`: this connection ended because the member left on purpose
    // (its reconnect is no failure); `rejoining`: the connection after it,
    // whose `joined` counts as a rejoin.
    let mut churned = false;
    let mut rejoining;
    while !stop.is_cancelled() {
        let ws = match target(&cfg, redirect.take()).await {
            Ok(url) => connect(&cfg, &url).await,
            Err(e) => Err(e),
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(_) => {
                shared.connect_errors.fetch_add(1, Ordering::Relaxed);
                let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
                tokio::select! {
                    _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
                    _ = &mut stopped => break,
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        if !first && !churned {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        rejoining = std::mem::take(&mut churned);
        first = false;
        backoff = Duration::from_millis(50);
        let join = match out.seen.base {
            Some(_) => format!(
                r#"{{"type":"join","room":"{}","since":{}}}"#,
                cfg.room, out.seen.contiguous
            ),
            None => format!(r#"{{"type":"join","room":"{}"}}"#, cfg.room),
        };
        if ws.send(Message::Text(join.into())).await.is_err() {
            continue;
        }
        let mut joined: Option<u64> = None;
        let period = cfg.publish_every.unwrap_or(Duration::from_secs(3600));
        let offset =
            Duration::from_micros(rand::rng().random_range(0..period.as_micros().max(1) as u64));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => {
                    let _ = ws.close(None).await;
                    return out;
                }
                _ = churn.tick(), if cfg.churn_every.is_some() && joined.is_some() => {
                    if shared.stop_publishing.load(Ordering::Relaxed) {
                        continue;
                    }
                    churned = true;
                    let _ = ws.close(None).await;
                    break;
                }
                _ = tick.tick(), if cfg.publish_every.is_some() && joined.is_some() => {
                    if shared.stop_publishing.load(Ordering::Relaxed) {
                        continue;
                    }
                    n += 1;
                    let frame = format!(
                        r#"{{"type":"publish","room":"{}","data":{{"s":{},"n":{},"t":{},"p":"{}"}}}}"#,
                        cfg.room, cfg.sender, n, now_us(), cfg.padding
                    );
                    if ws.send(Message::Text(frame.into())).await.is_err() {
                        break;
                    }
                }
                m = ws.next() => {
                    let text = match m {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(f) = serde_json::from_str::<Frame>(text.as_str()) else { continue };
                    match f.kind {
                        "message" => {
                            let Some(seq) = f.seq else { continue };
                            if shared.measuring.load(Ordering::Relaxed) {
                                let now = Instant::now();
                                if let Some(prev) = last_arrival {
                                    let gap = now.duration_since(prev).as_millis() as u64;
                                    out.max_gap_ms = out.max_gap_ms.max(gap);
                                }
                                last_arrival = Some(now);
                            }
                            let replay = joined.is_none_or(|j| seq <= j);
                            match out.seen.see(seq) {
                                Arrival::Duplicate => { shared.duplicated.fetch_add(1, Ordering::Relaxed); }
                                Arrival::Old => {}
                                a => {
                                    if a == Arrival::Reordered {
                                        shared.reordered.fetch_add(1, Ordering::Relaxed);
                                    }
                                    if replay {
                                        shared.replayed.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        let t = f.data.map(|d| d.t).unwrap_or(0);
                                        shared.delivery(cfg.sender as usize, now_us().saturating_sub(t));
                                        if out.broken_at.is_some() && out.recovered_at.is_none() {
                                            out.recovered_at = Some(Instant::now());
                                        }
                                    }
                                }
                            }
                        }
                        "joined" => {
                            if std::mem::take(&mut rejoining) && shared.measuring.load(Ordering::Relaxed) {
                                out.rejoins += 1;
                            }
                            let seq = f.seq.unwrap_or(0);
                            out.seen.set_base(seq);
                            joined = Some(seq);
                            if !counted {
                                counted = true;
                                shared.connected.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        "ack" => {
                            shared.published.fetch_add(1, Ordering::Relaxed);
                            out.acked += 1;
                            out.max_ack = out.max_ack.max(f.seq.unwrap_or(0));
                        }
                        "welcome" => {
                            let node = f.node.unwrap_or("");
                            // Local servers number rooms on their own: on
                            // another node the member starts counting again.
                            if f.strategy == Some("local") && !out.node.is_empty() && out.node != node {
                                out.seen = Seen::default();
                                out.acked = 0;
                                out.max_ack = 0;
                            }
                            out.node = node.to_owned();
                        }
                        "reconnect" => out.moves.push(now_us() / 1000),
                        "error" => {
                            if f.code == Some("wrong_node") {
                                out.moves.push(now_us() / 1000);
                            }
                            if f.code == Some("wrong_node") && f.redirect.is_some() {
                                redirect = f.redirect.map(|u| format!("{u}?room={}&user=b{}", cfg.room, cfg.sender));
                                break;
                            }
                            if joined.is_some() {
                                shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                            } else {
                                break; // join refused: reconnect
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if !churned && !stop.is_cancelled() && !shared.stop_publishing.load(Ordering::Relaxed) {
            out.moves.push(now_us() / 1000);
            if out.broken_at.is_none() {
                out.broken_at = Some(Instant::now());
            }
        }
    }
    out
}
