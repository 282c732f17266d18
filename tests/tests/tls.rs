//! Redis over TLS (`rediss://`): a Redis that speaks only TLS, with a
//! certificate from a CA made here (openssl), reached with `redis_ca_file`;
//! without the CA the refusal is named at `/readyz`.

use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use turnout_proto::Strategy;
use turnout_tests::*;

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl")?
        .success();
    if !ok {
        bail!("openssl {args:?} failed");
    }
    Ok(())
}

/// A CA, and a certificate for 127.0.0.1 it signed.
fn certificates() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "turnout-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir)?;
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=turnout test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    )?;
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
        ],
    )?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "redis.crt",
        ],
    )?;
    Ok(dir)
}

struct TlsRedis(Child, u16);
impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tls_redis(dir: &Path) -> Result<TlsRedis> {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args([
            "--tls-cert-file",
            "redis.crt",
            "--tls-key-file",
            "redis.key",
            "--tls-ca-cert-file",
            "ca.crt",
        ])
        .args(["--tls-auth-clients", "no"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server with TLS")?;
    Ok(TlsRedis(child, port))
}

async fn ready(p: &Proc) -> Result<()> {
    let url = format!("{}/readyz", p.http());
    wait_for("/readyz 200", DEADLINE, || {
        let url = url.clone();
        async move { (http("GET", &url, None, &[]).await.ok()?.0 == 200).then_some(()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_reach_a_tls_redis_with_its_ca() -> Result<()> {
    let dir = certificates()?;
    let redis = tls_redis(&dir)?;
    let url = format!("rediss://127.0.0.1:{}", redis.1);
    let ca = dir.join("ca.crt");
    let mut rs = router_settings(&url, Strategy::Pubsub);
    rs.redis_ca_file = Some(ca.clone());
    let router = spawn_router(rs).await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut s = node_settings(&url, Strategy::Pubsub);
        s.redis_ca_file = Some(ca.clone());
        nodes.push(spawn_node(s));
    }
    let mut gs = gateway_settings(&url, Strategy::Pubsub, &[&router]);
    gs.redis_ca_file = Some(ca.clone());
    let gateway = spawn_gateway(gs).await;
    for p in nodes.iter().chain([&router, &gateway]) {
        ready(p).await?;
    }
    live_nodes(&gateway, 2).await?;
    // Members on two nodes: the relay runs over TLS too.
    let mut a = Client::connect(&nodes[0].ws_url()).await?;
    let mut b = Client::connect(&nodes[1].ws_url()).await?;
    a.join("tls").await?;
    b.join("tls").await?;
    let seq = a.publish("tls", json!("over tls"), "t-1").await?;
    assert_eq!(b.messages_until("tls", seq).await?, vec![seq]);

    // Without the CA, the system's roots do not know this one: named.
    let lost = spawn_node(node_settings(&url, Strategy::Pubsub));
    let why = readyz_refusal(&lost, "rediss://").await?;
    assert!(
        why.to_lowercase().contains("certificate") || why.contains("UnknownIssuer"),
        "{why}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
