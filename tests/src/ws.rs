//! WebSocket clients speaking the turnout protocol: a frame-level
//! [`Client`] and a protocol-following [`Follower`].

use crate::*;
use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use turnout_proto::frames::ServerFrame;

/// A WebSocket test client speaking the turnout protocol.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: ServerFrame,
    /// Frames read while waiting for another one, returned by later reads.
    backlog: std::collections::VecDeque<ServerFrame>,
}

impl Client {
    /// Connects and reads the `welcome` frame.
    pub async fn connect(url: &str) -> Result<Client> {
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .context("connect timed out")??;
        let mut c = Client {
            ws,
            welcome: ServerFrame::Pong,
            backlog: Default::default(),
        };
        let w = c.recv().await?;
        if !matches!(w, ServerFrame::Welcome { .. }) {
            bail!("expected welcome, got {w:?}");
        }
        c.welcome = w;
        Ok(c)
    }

    /// Connects to a server expected to refuse the connection after the
    /// upgrade: returns its close code and reason, with the frames before it
    /// (an `error`, never a `welcome`).
    pub async fn refused(url: &str) -> Result<(Vec<ServerFrame>, Option<(u16, String)>)> {
        let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .context("connect timed out")??;
        let mut frames = Vec::new();
        loop {
            let m = tokio::time::timeout(DEADLINE, ws.next())
                .await
                .context("no close within the deadline")?;
            match m {
                None | Some(Err(_)) => return Ok((frames, None)),
                Some(Ok(Message::Close(f))) => {
                    return Ok((frames, f.map(|f| (u16::from(f.code), f.reason.to_string()))));
                }
                Some(Ok(Message::Text(t))) => {
                    let f: ServerFrame = serde_json::from_str(t.as_str())?;
                    if matches!(f, ServerFrame::Welcome { .. }) {
                        bail!("welcomed: {f:?}");
                    }
                    frames.push(f);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The node this client landed on.
    pub fn node(&self) -> &str {
        match &self.welcome {
            ServerFrame::Welcome { node, .. } => node,
            _ => "",
        }
    }

    pub async fn send_json(&mut self, v: serde_json::Value) -> Result<()> {
        self.send_text(v.to_string()).await
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, m: Message) -> Result<()> {
        self.ws.send(m).await?;
        Ok(())
    }

    /// Next server frame (skipping WebSocket control frames).
    pub async fn recv(&mut self) -> Result<ServerFrame> {
        if let Some(f) = self.backlog.pop_front() {
            return Ok(f);
        }
        self.recv_socket().await
    }

    async fn recv_socket(&mut self) -> Result<ServerFrame> {
        loop {
            let m = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .context("no frame within the deadline")?
                .context("connection closed")??;
            match m {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str())
                        .with_context(|| format!("unparsable frame {t}"));
                }
                Message::Close(f) => bail!("closed: {f:?}"),
                _ => continue,
            }
        }
    }

    /// Reads until the connection closes; returns the close code.
    pub async fn recv_close(&mut self) -> Result<(Vec<ServerFrame>, Option<u16>)> {
        let mut frames: Vec<ServerFrame> = self.backlog.drain(..).collect();
        loop {
            let m = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .context("no close within the deadline")?;
            match m {
                None => return Ok((frames, None)),
                Some(Err(_)) => return Ok((frames, None)),
                Some(Ok(Message::Close(f))) => return Ok((frames, f.map(|f| u16::from(f.code)))),
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(t.as_str())?),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads until the connection closes; returns the close code and reason.
    pub async fn recv_close_frame(&mut self) -> Result<Option<(u16, String)>> {
        loop {
            let m = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .context("no close within the deadline")?;
            match m {
                None | Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Close(f))) => {
                    return Ok(f.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Returns the first frame matching `pred`; frames read past on the way
    /// stay queued, in order, for later reads.
    pub async fn expect(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> Result<ServerFrame> {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return Ok(self.backlog.remove(i).expect("index in range"));
        }
        let end = Instant::now() + DEADLINE;
        loop {
            if Instant::now() > end {
                bail!("no {what} within the deadline");
            }
            let f = self
                .recv_socket()
                .await
                .with_context(|| format!("waiting for {what}"))?;
            if pred(&f) {
                return Ok(f);
            }
            self.backlog.push_back(f);
        }
    }

    /// Waits for a presence event and checks it says `event` of `user` in
    /// `room`.
    pub async fn expect_presence(&mut self, room: &str, event: &str, user: &str) -> Result<()> {
        let ev = self
            .expect(&format!("presence {event}"), |f| {
                matches!(f, ServerFrame::Presence { .. })
            })
            .await?;
        let want = ServerFrame::Presence {
            room: room.into(),
            event: event.into(),
            user: user.into(),
        };
        anyhow::ensure!(ev == want, "{ev:?} instead of {want:?}");
        Ok(())
    }

    /// Joins and waits for `joined`; returns its seq.
    pub async fn join(&mut self, room: &str) -> Result<u64> {
        self.send_json(serde_json::json!({"type": "join", "room": room}))
            .await?;
        match self
            .expect("joined", |f| {
                matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. })
            })
            .await?
        {
            ServerFrame::Joined { seq, .. } => Ok(seq),
            other => bail!("join refused: {other:?}"),
        }
    }

    /// Publishes and waits for the ack; returns the seq.
    pub async fn publish(&mut self, room: &str, data: serde_json::Value, id: &str) -> Result<u64> {
        self.send_json(
            serde_json::json!({"type": "publish", "room": room, "data": data, "id": id}),
        )
        .await?;
        let want = id.to_owned();
        match self
            .expect("ack", |f| match f {
                ServerFrame::Ack { id, .. } => id.as_deref() == Some(want.as_str()),
                ServerFrame::Error { id, .. } => id.as_deref() == Some(want.as_str()),
                _ => false,
            })
            .await?
        {
            ServerFrame::Ack { seq, .. } => Ok(seq),
            other => bail!("publish refused: {other:?}"),
        }
    }

    /// Collects `message` frames of `room` until one with `seq == last`.
    pub async fn messages_until(&mut self, room: &str, last: u64) -> Result<Vec<u64>> {
        let mut seqs = Vec::new();
        loop {
            match self.recv().await? {
                ServerFrame::Message { room: r, seq, .. } if r == room => {
                    seqs.push(seq);
                    if seq >= last {
                        return Ok(seqs);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The status a WebSocket upgrade at `url` gets: 101 when it is taken.
pub async fn upgrade_status(url: &str) -> Result<u16> {
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .context("upgrade timed out")?
    {
        Ok(_) => Ok(101),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Ok(r.status().as_u16()),
        Err(e) => Err(e.into()),
    }
}

/// A member that follows the protocol like a careful client: on
/// `wrong_node` it moves to `redirect`; on `reconnect`, a close or a broken
/// connection it comes back through `entry` (the gateway); after a seq jump
/// it rejoins; it always rejoins with `since` = the last seq it holds. What
/// it received is recorded, so a test can check that every message arrived
/// exactly once, in order; and so is every repair it made (a rejoin after a
/// seq jump: history papered over a gap the server let through), every
/// move, and what the server told it, so a test can say which of those its
/// fault should cause, and that none happen without one.
pub struct Follower {
    log: std::sync::Arc<std::sync::Mutex<FollowLog>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`Follower`] saw.
#[derive(Debug, Clone, Default)]
pub struct FollowLog {
    /// Seqs received, in order (a seq received twice appears twice).
    pub got: Vec<u64>,
    /// Connections it had to leave (moved, told to reconnect, closed).
    pub moves: u64,
    /// Rejoins after a jump in seq.
    pub repairs: u64,
    /// Rejoins for the rest of a replay cut at `replay_until`.
    pub pages: u64,
    /// Reconnect reasons (`reconnect` frames) and error codes, in order.
    pub told: Vec<String>,
    /// Close codes of the connections that ended (None: no close frame).
    pub closes: Vec<Option<u16>>,
}

impl Follower {
    /// Joins `room` at `first` (a node or gateway `/ws` URL with query) and
    /// follows it; `entry` is where it reconnects when told to.
    pub async fn start(first: &str, entry: &str, room: &str) -> Result<Follower> {
        let log = std::sync::Arc::new(std::sync::Mutex::new(FollowLog::default()));
        let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(follow(
            first.to_owned(),
            entry.to_owned(),
            room.to_owned(),
            log.clone(),
            joined_tx,
        ));
        tokio::time::timeout(DEADLINE, joined_rx)
            .await
            .context("follower did not join")???;
        Ok(Follower { log, task })
    }

    /// Waits until seq `last` arrived; returns everything received.
    pub async fn until(&self, last: u64) -> Result<Vec<u64>> {
        wait_for(&format!("seq {last} at the follower"), DEADLINE, || async {
            let got = self.log().got;
            got.contains(&last).then_some(got)
        })
        .await
    }

    /// What it saw so far.
    pub fn log(&self) -> FollowLog {
        self.log.lock().unwrap().clone()
    }

    /// How often it had to move or reconnect.
    pub fn moves(&self) -> u64 {
        self.log().moves
    }

    /// How often it rejoined to fill a jump in seq.
    pub fn repairs(&self) -> u64 {
        self.log().repairs
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(
    first: String,
    entry: String,
    room: String,
    log: std::sync::Arc<std::sync::Mutex<FollowLog>>,
    joined: tokio::sync::oneshot::Sender<Result<()>>,
) {
    let mut joined = Some(joined);
    let mut url = first;
    let mut last: Option<u64> = None;
    let record = |f: &dyn Fn(&mut FollowLog)| f(&mut log.lock().unwrap());
    loop {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            url = entry.clone();
            tokio::time::sleep(Duration::from_millis(100)).await; // a client's backoff
            continue;
        };
        let join = |last: Option<u64>| match last {
            Some(s) => serde_json::json!({"type": "join", "room": room, "since": s}),
            None => serde_json::json!({"type": "join", "room": room}),
        };
        if ws
            .send(Message::Text(join(last).to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        let mut next = entry.clone();
        // A cut replay ends at this seq: then ask for the rest.
        let mut page_end: Option<u64> = None;
        let mut close = None;
        while let Some(Ok(m)) = ws.next().await {
            let t = match m {
                Message::Text(t) => t,
                Message::Close(f) => {
                    close = f.map(|f| u16::from(f.code));
                    break;
                }
                _ => continue,
            };
            let Ok(f) = serde_json::from_str::<ServerFrame>(t.as_str()) else {
                continue;
            };
            match f {
                ServerFrame::Joined {
                    seq, replay_until, ..
                } => {
                    if last.is_none() {
                        last = Some(seq);
                    }
                    page_end = replay_until;
                    if let Some(j) = joined.take() {
                        let _ = j.send(Ok(()));
                    }
                }
                ServerFrame::Message { seq, .. } => {
                    let l = last.unwrap_or(0);
                    if seq <= l {
                        // Delivered twice: record it, the test will see.
                        record(&|g| g.got.push(seq));
                    } else if seq == l + 1 {
                        record(&|g| g.got.push(seq));
                        last = Some(seq);
                        if page_end == Some(seq) {
                            page_end = None;
                            record(&|g| g.pages += 1);
                            let leave = serde_json::json!({"type": "leave", "room": room});
                            let _ = ws.send(Message::Text(leave.to_string().into())).await;
                            let _ = ws.send(Message::Text(join(last).to_string().into())).await;
                        }
                    } else {
                        // A jump: ask for what is missing.
                        record(&|g| g.repairs += 1);
                        let leave = serde_json::json!({"type": "leave", "room": room});
                        let _ = ws.send(Message::Text(leave.to_string().into())).await;
                        let _ = ws.send(Message::Text(join(last).to_string().into())).await;
                    }
                }
                ServerFrame::Error { code, redirect, .. } => {
                    record(&|g| g.told.push(code.clone()));
                    if code == "wrong_node" {
                        if let Some(r) = redirect {
                            next = format!("{r}?room={room}");
                        }
                        break;
                    }
                }
                ServerFrame::Reconnect { reason } => record(&|g| g.told.push(reason.clone())),
                _ => {}
            }
        }
        record(&|g| {
            g.moves += 1;
            g.closes.push(close);
        });
        url = next;
        tokio::time::sleep(Duration::from_millis(50)).await; // a client's backoff
    }
}
