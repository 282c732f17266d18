//! turnout-client members of the campaign: `deploy/loadtest/faults-client.mjs`
//! on Node.js, whose JSON lines go into the run's [`Book`].

use super::client::Book;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// One library client: its rooms, and how often it publishes (round-robin
/// over them).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Spec {
    pub(crate) name: String,
    pub(crate) user: String,
    pub(crate) rooms: Vec<String>,
    pub(crate) every: u64,
}

/// A line the script prints.
#[derive(Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    Joined {
        member: String,
        user: String,
        room: String,
        at: u64,
        seq: u64,
        epoch: String,
        recovered: Option<bool>,
    },
    Message {
        member: String,
        room: String,
        at: u64,
        seq: u64,
        key: String,
    },
    Sent {
        key: String,
        room: String,
        publisher: String,
        at: u64,
    },
    Ack {
        key: String,
        seq: u64,
    },
    Refused {
        key: String,
    },
    Ready,
    Done,
}

/// The running script.
pub(crate) struct Js {
    child: Child,
    stdin: ChildStdin,
    done: tokio::sync::watch::Receiver<bool>,
}

impl Js {
    /// Starts the script with `specs` and waits until every room is joined.
    pub(crate) async fn start(
        node: &str,
        script: &Path,
        gateway_ws: &str,
        specs: &[Spec],
        book: Arc<Book>,
        log: &Path,
    ) -> Result<Js> {
        let users: std::collections::HashMap<String, String> = specs
            .iter()
            .map(|s| (s.name.clone(), s.user.clone()))
            .collect();
        for s in specs {
            for r in &s.rooms {
                book.expect(&s.name, &s.user, r);
            }
        }
        let mut child = Command::new(node)
            .arg("--experimental-websocket")
            .arg("--no-warnings")
            .arg(script)
            .env("GATEWAY", gateway_ws)
            .env("CLIENTS", serde_json::to_string(specs)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {node} (Node.js >= 20) for {}", script.display()))?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
        let (done_tx, done) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let Ok(line) = serde_json::from_str::<Line>(&l) else {
                    eprintln!("faults-client.mjs: {l}");
                    continue;
                };
                match line {
                    Line::Joined {
                        member,
                        user,
                        room,
                        at,
                        seq,
                        epoch,
                        recovered,
                    } => book.joined_at(&member, &user, &room, at, seq, &epoch, recovered),
                    Line::Message {
                        member,
                        room,
                        at,
                        seq,
                        key,
                    } => {
                        let user = users.get(&member).cloned().unwrap_or_default();
                        book.message_at(&member, &user, &room, at, seq, &key);
                    }
                    Line::Sent {
                        key,
                        room,
                        publisher,
                        at,
                    } => book.sent(&key, &room, &publisher, at),
                    Line::Ack { key, seq } => book.acked(&key, seq),
                    Line::Refused { key } => book.refused(&key),
                    Line::Ready => {
                        let _ = ready_tx.send(true);
                    }
                    Line::Done => {
                        let _ = done_tx.send(true);
                    }
                }
            }
            let _ = done_tx.send(true);
        });
        let joined = tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| *r)).await;
        if !matches!(joined, Ok(Ok(_))) {
            bail!("the library clients did not join their rooms within 60 s");
        }
        Ok(Js { child, stdin, done })
    }

    async fn say(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    pub(crate) async fn stop_publishing(&mut self) -> Result<()> {
        self.say("stop-publishing").await
    }

    pub(crate) async fn stop(mut self) -> Result<()> {
        let _ = self.say("stop").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.done.wait_for(|d| *d)).await;
        let _ = self.child.kill().await;
        Ok(())
    }
}
