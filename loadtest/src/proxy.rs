//! A TCP proxy that can cut the network between a process and the server
//! behind it, for partition experiments on one machine: `cut` stops moving
//! bytes either way without closing anything (a partition, as both peers
//! see it; new connections are accepted and never answered), `heal` lets
//! them flow again, `sever` closes every connection through it (what a
//! partition ends in once the peers' TCP gives up).
//!
//! `turnout-bench proxy` runs one, steered by signals: SIGUSR1 cuts, SIGUSR2
//! heals, SIGHUP severs. The cluster tests use [`Proxy`] in process.

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
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (flow, mut sever) = (flow_rx.clone(), sever_rx.clone());
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    sever.mark_unchanged();
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, flow.clone()) => {}
                        _ = pump(sr, cw, flow) => {}
                        _ = sever.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            flowing,
            severed,
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
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while `flow` says so; while cut, reads nothing.
/// Bytes read before a cut still go out: they were on the wire.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flow: watch::Receiver<bool>,
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
    eprintln!(
        "proxy {} -> {} (SIGUSR1 cut, SIGUSR2 heal, SIGHUP sever)",
        proxy.addr, o.target
    );
    loop {
        tokio::select! {
            _ = cut.recv() => { proxy.cut(); eprintln!("proxy: cut"); }
            _ = heal.recv() => { proxy.heal(); eprintln!("proxy: healed"); }
            _ = sever.recv() => { proxy.sever(); eprintln!("proxy: severed"); }
        }
    }
}
