//! Test harness: a real `redis-server` on a free port, whole turnout
//! processes (in-process `run()` on port 0, or the built binaries), and a
//! small WebSocket client. Every wait is a condition polled against a
//! deadline, never a fixed sleep.
//!
//! By job: [`redis_procs`] (servers and clusters), [`procs`] (turnout
//! processes), [`web`] (HTTP, SSE, metrics), [`ws`] (WebSocket clients),
//! [`jwt`] (tokens); here, the waits and process helpers they share.

pub mod chromium;
pub mod jwt;
pub mod procs;
pub mod redis_procs;
pub mod web;
pub mod ws;

pub use chromium::*;
pub use jwt::*;
pub use procs::*;
pub use redis_procs::*;
pub use web::*;
pub use ws::*;

use anyhow::{Result, bail};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `f` until it returns `Some`, failing after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released: whatever binds it
/// next may lose it to another process, and must check it got it, as
/// [`Redis`] does).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Path of a built binary of this workspace, building it if needed.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(name);
    let package = match name {
        "turnout-bench" => "turnout-loadtest",
        other => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Always ask cargo: it is a no-op when the binary is fresh.
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", name])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {name} failed");
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// A few random bits, for names that must not meet another test's.
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Sends `sig` (e.g. `-STOP`) to process `pid` with kill(1).
fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}
