//! A TCP proxy that can cut the network between a process and the server
//! behind it, for partition experiments on one machine: `cut` stops moving
//! bytes either way without closing anything (a partition, as both peers
//! see it; new connections are accepted and never answered), `heal` lets
//! them flow again, `sever` closes every connection through it (what a
//! partition ends in once the peers' TCP gives up), and `lose_replies`
//! passes requests on but closes each connection the moment an answer comes
//! back, dropping it: the server did the work, the client never hears (a
//! reset after the command ran).
//!
//! `turnout-bench proxy` runs one, steered by signals: SIGUSR1 cuts, SIGUSR2
//! heals (and stops losing replies), SIGHUP severs, SIGWINCH loses replies.
//! The cluster tests and the fault campaign use [`Proxy`] in process.

use crate::cli::ProxyOpts;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; it stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    flowing: watch::Sender<bool>,
    severed: watch::Sender<u64>,
    losing: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` and forwards every connection to `target`.
    pub async fn start(listen: &str, target: &str) -> Result<Proxy> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let (flowing, flow_rx) = watch::channel(true);
        let (severed, sever_rx) = watch::channel(0u64);
        let (losing, lose_rx) = watch::channel(false);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (flow, mut sever) = (flow_rx.clone(), sever_rx.clone());
                let lose = lose_rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    sever.mark_unchanged();
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, flow.clone(), None) => {}
                        _ = pump(sr, cw, flow, Some(lose)) => {}
                        _ = sever.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            flowing,
            severed,
            losing,
            task,
        })
    }

    pub fn cut(&self) {
        let _ = self.flowing.send(false);
    }

    pub fn heal(&self) {
        let _ = self.flowing.send(true);
    }

    pub fn sever(&self) {
        self.severed.send_modify(|n| *n += 1);
    }

    /// While `on`: requests reach the server, and each connection is
    /// closed when its next answer comes back, the answer dropped.
    pub fn lose_replies(&self, on: bool) {
        let _ = self.losing.send(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while `flow` says so; while cut, reads nothing.
/// Bytes read before a cut still go out: they were on the wire. While
/// `lose` says so, bytes read end the connection instead of going out.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flow: watch::Receiver<bool>,
    lose: Option<watch::Receiver<bool>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if flow.wait_for(|f| *f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = flow.wait_for(|f| !*f) => continue,
        };
        if lose.as_ref().is_some_and(|l| *l.borrow()) {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `turnout-bench proxy`: runs until killed, steered by signals.
pub(crate) async fn run(o: ProxyOpts) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let proxy = Proxy::start(&o.listen, &o.target).await?;
    let mut cut = signal(SignalKind::user_defined1())?;
    let mut heal = signal(SignalKind::user_defined2())?;
    let mut sever = signal(SignalKind::hangup())?;
    let mut lose = signal(SignalKind::window_change())?;
    eprintln!(
        "proxy {} -> {} (SIGUSR1 cut, SIGUSR2 heal, SIGHUP sever, SIGWINCH lose replies)",
        proxy.addr, o.target
    );
    loop {
        tokio::select! {
            _ = cut.recv() => { proxy.cut(); eprintln!("proxy: cut"); }
            _ = heal.recv() => { proxy.heal(); proxy.lose_replies(false); eprintln!("proxy: healed"); }
            _ = lose.recv() => { proxy.lose_replies(true); eprintln!("proxy: losing replies"); }
            _ = sever.recv() => { proxy.sever(); eprintln!("proxy: severed"); }
        }
    }
}
