//! The built binaries: settings errors, port ranges, SIGKILL, gRPC health and reflection.

use anyhow::{Context, Result};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use turnout_proto::Strategy;
use turnout_proto::v1::NodesRequest;
use turnout_proto::v1::router_client::RouterClient;
use turnout_tests::*;

/// Runs a binary with extra env and args; returns (exit code, stderr).
fn run_fail(bin: &str, env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary(bin))
        .args(args)
        .envs(env.iter().copied())
        .env("TURNOUT_REDIS_URL", "redis://127.0.0.1:1")
        .stdin(Stdio::null())
        .output()
        .expect("binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_stop_the_process_naming_the_setting() {
    let dir = std::env::temp_dir().join(format!("turnout-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "heartbeat_intervall = \"1s\"\n").unwrap();
    let bad_ttl = dir.join("ttl.toml");
    std::fs::write(
        &bad_ttl,
        "heartbeat_interval = \"2s\"\nheartbeat_ttl = \"3s\"\n",
    )
    .unwrap();
    let typo = typo.to_str().unwrap();
    let bad_ttl = bad_ttl.to_str().unwrap();

    for bin in ["turnout-ws-node", "turnout-router", "turnout-gateway"] {
        let (code, err) = run_fail(bin, &[("TURNOUT_STRATEGY", "roundrobin")], &[]);
        assert_eq!(code, Some(2), "{bin}: {err}");
        assert!(
            err.contains("`strategy`") && err.contains("sticky") && err.contains("pubsub"),
            "{bin}: {err}"
        );

        let (code, err) = run_fail(bin, &[], &["--listen", "nowhere"]);
        assert_eq!(code, Some(2), "{bin}: {err}");
        assert!(err.contains("`listen`"), "{bin}: {err}");

        let (code, err) = run_fail(
            bin,
            &[("TURNOUT_REDIS_URL", "http://x")],
            &["--redis-url", "mysql://db"],
        );
        assert_eq!(code, Some(2), "{bin}: {err}");
        assert!(
            err.contains("`redis_url`") && err.contains("mysql://db"),
            "flag beats env: {bin}: {err}"
        );
    }
    let (code, err) = run_fail("turnout-ws-node", &[], &["--config", typo]);
    assert_eq!(code, Some(2));
    assert!(err.contains("heartbeat_intervall"), "{err}");
    let (code, err) = run_fail("turnout-ws-node", &[], &["--config", bad_ttl]);
    assert_eq!(code, Some(2));
    assert!(err.contains("`heartbeat_ttl`"), "{err}");
    let (code, err) = run_fail(
        "turnout-gateway",
        &[("TURNOUT_ROUTER_URL", "127.0.0.1:7070")],
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("`router_url`"), "{err}");
    let (code, err) = run_fail(
        "turnout-ws-node",
        &[("TURNOUT_HEARTBEAT_INTERVAL", "soon")],
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("`heartbeat_interval`"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

/// One settings file serves the whole cluster: each process passes over the
/// keys of the others, and every process names a key none takes.
#[test]
fn one_settings_file_serves_every_process() {
    let dir = std::env::temp_dir().join(format!("turnout-shared-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A key of each process, and one value every process refuses: a process
    // that did not pass over another's key would name that key instead
    // (keys are read in order, and these come before `strategy`).
    let shared = dir.join("cluster.toml");
    std::fs::write(
        &shared,
        "api_key = \"0123456789abcdef\"\nheartbeat_interval = \"500ms\"\n\
         history_size = 50\nload_factor = 1.5\nrouter_url = \"http://router:7070\"\n\
         strategy = \"roundrobin\"\n",
    )
    .unwrap();
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "api_key = \"0123456789abcdef\"\nhistory_sise = 5\n").unwrap();
    for bin in ["turnout-ws-node", "turnout-router", "turnout-gateway"] {
        let (code, err) = run_fail(bin, &[], &["--config", shared.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{bin}: {err}");
        assert!(
            err.contains("`strategy`") && !err.contains("api_key") && !err.contains("history_size"),
            "{bin} passes over the others' keys: {err}"
        );
        let (code, err) = run_fail(bin, &[], &["--config", typo.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{bin}: {err}");
        assert!(err.contains("history_sise"), "{bin} names the typo: {err}");
    }
    std::fs::remove_dir_all(dir).ok();
}

async fn live_ids(client: &mut RouterClient<Channel>) -> Vec<(String, String)> {
    match client.nodes(NodesRequest {}).await {
        Ok(r) => r
            .into_inner()
            .nodes
            .into_iter()
            .map(|n| (n.id, n.url))
            .collect(),
        Err(_) => Vec::new(),
    }
}

struct Killable(std::process::Child);
impl Drop for Killable {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_node(redis: &Redis, listen: &str, id: &str, ttl: &str) -> Result<Killable> {
    Ok(Killable(
        Command::new(binary("turnout-ws-node"))
            .args(["--listen", listen, "--node-id", id])
            .env("TURNOUT_INSECURE", "true")
            .env("TURNOUT_REDIS_URL", redis.url())
            .env("TURNOUT_HEARTBEAT_INTERVAL", "200ms")
            .env("TURNOUT_HEARTBEAT_TTL", ttl)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ))
}

async fn wait_gone(client: &RouterClient<Channel>, id: &str, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    wait_for(&format!("{id} to leave the live set"), within, || {
        let mut c = client.clone();
        async move { (!live_ids(&mut c).await.iter().any(|(n, _)| n == id)).then_some(()) }
    })
    .await?;
    Ok(start.elapsed())
}

async fn wait_live(client: &RouterClient<Channel>, id: &str) -> Result<String> {
    wait_for(&format!("{id} in Router.Nodes"), DEADLINE, || {
        let mut c = client.clone();
        async move {
            live_ids(&mut c)
                .await
                .into_iter()
                .find(|(n, _)| n == id)
                .map(|(_, u)| u)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_nodes_leave_the_live_set_and_port_ranges_work() -> Result<()> {
    let redis = Redis::start().await?;
    let router = start_router(&redis.url(), Strategy::Pubsub).await;
    let client = RouterClient::connect(router.http()).await?;

    // Occupy the first port of the range: the node must take the next one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let first = taken.local_addr()?.port();
    let range = format!("127.0.0.1:{first}-{}", first.saturating_add(20));
    let mut crashed = spawn_node(&redis, &range, "crashed", "3s")?;
    let url = wait_live(&client, "crashed").await?;
    let port: u16 = url
        .trim_end_matches("/ws")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()?;
    assert!(
        port > first && port <= first + 20,
        "advertised {url}, range starts at busy {first}"
    );
    drop(Client::connect(&url).await?); // it answers on the advertised port

    // SIGKILL: the port refuses connections, the router's probe sees it and
    // the node leaves before its heartbeat could have expired: the last one
    // was at most 1 s (its interval) before the kill, and lives 3 s.
    crashed.0.kill()?;
    let _ = crashed.0.wait();
    let gone = wait_gone(&client, "crashed", Duration::from_secs(5)).await?;
    let (ttl, interval) = (Duration::from_secs(3), Duration::from_secs(1));
    assert!(
        gone < ttl - interval,
        "took {gone:?}: the TTL, not the probe"
    );

    // SIGSTOP: the port still accepts (the kernel answers), but heartbeats
    // stop: the node leaves with its TTL (1 s, plus two 100 ms polls and a
    // second for a busy machine; a node never dropped fails at 5 s)…
    let frozen = spawn_node(&redis, "127.0.0.1:0", "frozen", "1s")?;
    wait_live(&client, "frozen").await?;
    let pid = frozen.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()?
            .success()
    );
    let gone = wait_gone(&client, "frozen", Duration::from_secs(5)).await?;
    let bound = Duration::from_secs(1) + Duration::from_millis(200) + Duration::from_secs(1);
    assert!(gone <= bound, "took {gone:?}");
    // …and comes back when it runs again.
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()?
            .success()
    );
    wait_live(&client, "frozen").await?;
    drop(frozen);
    drop(taken);
    router.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_on_every_port() -> Result<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let c = Cluster::start(1, Strategy::Pubsub).await?;
    for (proc_, service) in [
        (&c.router, "turnout.v1.Router"),
        (&c.gateway, "turnout.v1.Gateway"),
        (&c.nodes[0], "turnout.v1.Node"),
    ] {
        let channel = Channel::from_shared(proc_.http())?.connect().await?;
        let mut health = HealthClient::new(channel.clone());
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");

        let mut refl = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = refl
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await?
            .into_inner();
        let resp = stream.next().await.expect("a reflection answer")?;
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected reflection answer");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.iter().any(|n| n == service), "{names:?}");
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
    }
    // The gateway's gRPC API and HTTP share the port.
    let mut gw =
        turnout_proto::v1::gateway_client::GatewayClient::connect(c.gateway.http()).await?;
    let cluster = gw
        .cluster(turnout_proto::v1::ClusterRequest {})
        .await?
        .into_inner();
    assert_eq!(cluster.strategy, "pubsub");
    assert_eq!(cluster.nodes.len(), 1);
    let keyed = turnout_proto::v1::PublishRequest {
        room: "g".into(),
        data_json: "{\"a\":1}".into(),
        from: String::new(),
        id: "order-17".into(),
    };
    let first = gw.publish(keyed.clone()).await?.into_inner();
    assert_eq!((first.seq, first.duplicate), (1, false));
    // A retry with the same idempotency key is taken once.
    let retry = gw.publish(keyed).await?.into_inner();
    assert_eq!((retry.seq, retry.duplicate), (1, true));
    let history = gw
        .history(turnout_proto::v1::HistoryRequest {
            room: "g".into(),
            since: 0,
            limit: 10,
        })
        .await?
        .into_inner();
    assert_eq!(history.seq, 1, "the retry was not published again");
    let err = gw
        .publish(turnout_proto::v1::PublishRequest {
            room: "g".into(),
            data_json: "{nope".into(),
            from: String::new(),
            id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    Ok(())
}

/// The bench, as users run it: `turnout-bench run` with two worker
/// processes against a cluster, then `report`. The merged results must
/// account for every client and every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_with_worker_processes_and_reports() -> Result<()> {
    let c = Cluster::start(2, Strategy::Pubsub).await?;
    let dir = std::env::temp_dir().join(format!("turnout-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("run.json");
    let bench = binary("turnout-bench");
    let status = tokio::process::Command::new(&bench)
        .args([
            "run",
            "--quiet",
            "--scenario",
            "chat",
            "--rooms",
            "6",
            "--members",
            "5",
        ])
        .args([
            "--rate",
            "4",
            "--warmup",
            "1",
            "--duration",
            "3",
            "--drain",
            "1",
        ])
        .args(["--workers", "2", "--gateway", &c.gateway.http()])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .await?;
    assert!(status.success(), "turnout-bench run failed: {status}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    assert_eq!(r["workers"], 2);
    assert_eq!(r["connections"], 30);
    assert_eq!(r["strategy"], "pubsub");
    for field in ["lost", "duplicated", "reordered", "publish_errors"] {
        assert_eq!(r[field], 0, "{field}: {r}");
    }
    // 30 members publishing 4/s for 3 s, each message to 5 members: the
    // merged histogram holds the deliveries of both workers.
    let delivered = r["delivered"].as_u64().unwrap_or(0);
    assert!(delivered > 1000, "delivered {delivered}");
    assert_eq!(r["latency_ms"]["samples"].as_u64(), Some(delivered));
    assert!(r["latency_ms"]["p99"].as_f64().unwrap_or(0.0) > 0.0);

    let html = dir.join("report.html");
    let status = tokio::process::Command::new(&bench)
        .arg("report")
        .arg(&out)
        .arg("--out")
        .arg(&html)
        .stderr(Stdio::null())
        .status()
        .await?;
    assert!(status.success());
    let page = std::fs::read_to_string(&html)?;
    assert!(page.contains("<svg"), "report without charts");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The floor (`turnout-bench floor`): the bench drives it like a cluster,
/// samples its one process through its pid file, and the report gives a
/// run's server deliveries per CPU-second as a share of the floor's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_measures_the_floor_and_compares_runs_with_it() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let dir = std::env::temp_dir().join(format!("turnout-floor-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bench = binary("turnout-bench");
    let mut floor = tokio::process::Command::new(&bench)
        .args(["floor", "--listen", "127.0.0.1:0", "--pid-file"])
        .arg(dir.join("floor.pid"))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // It says where it listens once it does.
    let mut lines = tokio::io::BufReader::new(floor.stderr.take().expect("piped")).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await??
        .unwrap_or_default();
    let base = line
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .unwrap_or_else(|| panic!("floor said {line:?}"))
        .to_owned();
    let out = dir.join("floor.json");
    let status = tokio::process::Command::new(&bench)
        .args([
            "run",
            "--quiet",
            "--scenario",
            "chat",
            "--rooms",
            "6",
            "--members",
            "5",
        ])
        .args([
            "--rate",
            "4",
            "--warmup",
            "1",
            "--duration",
            "3",
            "--drain",
            "1",
        ])
        .args(["--gateway", &base, "--run-dir"])
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .await?;
    assert!(status.success(), "turnout-bench run failed: {status}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    assert_eq!(r["strategy"], "floor");
    assert_eq!(r["connections"], 30);
    for field in ["lost", "duplicated", "reordered", "publish_errors"] {
        assert_eq!(r[field], 0, "{field}: {r}");
    }
    let delivered = r["delivered"].as_u64().unwrap_or(0);
    assert!(delivered > 1000, "delivered {delivered}");
    let procs = r["processes"].as_array().cloned().unwrap_or_default();
    assert!(
        procs
            .iter()
            .any(|p| p["name"] == "floor" && p["cpu_seconds"].as_f64() > Some(0.0)),
        "the floor's CPU was not sampled: {procs:?}"
    );
    let per_cpu = r["server_deliveries_per_cpu_second"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(per_cpu > 0.0, "{r}");
    // A run at half the floor's efficiency on the same workload reads 50 %.
    let mut half = r.clone();
    half["strategy"] = "pubsub".into();
    half["server_deliveries_per_cpu_second"] = (per_cpu / 2.0).into();
    let other = dir.join("half.json");
    std::fs::write(&other, serde_json::to_vec(&half)?)?;
    let html = dir.join("report.html");
    let status = tokio::process::Command::new(&bench)
        .arg("report")
        .args([&out, &other])
        .arg("--out")
        .arg(&html)
        .stderr(Stdio::null())
        .status()
        .await?;
    assert!(status.success());
    let page = std::fs::read_to_string(&html)?;
    assert!(
        page.contains("<td>50 %</td>"),
        "no share of the floor in the report"
    );
    floor.start_kill()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The strategy map over real runs: `turnout-bench run` with membership
/// churn against a local, a sticky, a pubsub and a relay cluster of two nodes, then
/// `turnout-bench map`. The runs must count the churn and where deliveries
/// cross nodes, and the map must turn them into points, fitted costs,
/// predictions and a verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_runs_count_churn_and_cross_node_traffic_and_map_them() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("turnout-map-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bench = binary("turnout-bench");
    let mut files = Vec::new();
    for strategy in [
        Strategy::Local,
        Strategy::Sticky,
        Strategy::Pubsub,
        Strategy::Relay,
    ] {
        let c = Cluster::start(2, strategy).await?;
        let name = format!("{strategy:?}").to_lowercase();
        for (members, churn) in [(2, "0"), (8, "20")] {
            let out = dir.join(format!("{name}-{members}.json"));
            let status = tokio::process::Command::new(&bench)
                .args(["run", "--quiet", "--scenario", "chat", "--rooms", "8"])
                .args([
                    "--members",
                    &members.to_string(),
                    "--rate",
                    "2",
                    "--churn",
                    churn,
                ])
                .args(["--warmup", "1", "--duration", "3", "--drain", "1"])
                .args([
                    "--gateway",
                    &c.gateway.http(),
                    "--redis-url",
                    &c.redis.url(),
                ])
                .arg("--out")
                .arg(&out)
                .stdout(Stdio::null())
                .status()
                .await?;
            assert!(status.success(), "turnout-bench run failed: {status}");
            let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
            assert_eq!(r["strategy"], name.as_str());
            for field in ["lost", "duplicated", "publish_errors"] {
                assert_eq!(r[field], 0, "{field}: {name} {members}");
            }
            // 8 rooms over 2 nodes: rooms of 8 on both (pubsub and local,
            // where members land anywhere), on their owner (sticky).
            let spread = r["nodes_per_room"].as_f64().unwrap_or(0.0);
            let share = r["cross_node_share"].as_f64().unwrap_or(0.0);
            match (strategy, members) {
                (Strategy::Sticky, _) => assert_eq!((spread, share), (1.0, 0.0), "sticky {r}"),
                (_, 8) => assert!(spread > 1.5 && share > 0.2, "{name}: {spread} {share}"),
                _ => {}
            }
            // Relay: the nodes' own counters say how often a message went
            // from one node to another. Rooms of 8 on both of 2 nodes: half
            // the publishes cross to the owner, and the owner sends each on
            // to the other node, 1.5 hops a publish.
            match (strategy, members) {
                (Strategy::Relay, 8) => {
                    let hops = r["node_hops"].as_u64().context("relay: no hop count")? as f64;
                    let publishes = r["delivered"].as_u64().unwrap_or(0) as f64 / 8.0;
                    // Presence events of the churn ride the streams too.
                    let per = hops / publishes.max(1.0);
                    assert!(
                        (1.1..=2.3).contains(&per),
                        "relay: {per} hops a publish {r}"
                    );
                    // The measured window only: less than all the nodes
                    // sent since they started (ramp and warm-up sent too).
                    let mut all = 0.0;
                    for n in &c.nodes {
                        all += metric(n, "turnout_relay_forwarded_total").await?
                            + metric(n, "turnout_relay_items_sent_total").await?;
                    }
                    assert!(hops < 0.97 * all, "relay: {hops} hops of {all} in all");
                }
                (Strategy::Relay, _) => assert!(r["node_hops"].is_u64(), "relay: {r}"),
                _ => assert!(r["node_hops"].is_null(), "{name}: hops counted"),
            }
            let cross = r["cross_node_deliveries"].as_u64().unwrap_or(0);
            let undelivered = r["undelivered_cross_node"].as_u64().unwrap_or(0);
            match strategy {
                Strategy::Local if members == 8 => assert!(undelivered > 0 && cross == 0),
                Strategy::Pubsub | Strategy::Relay if members == 8 => {
                    assert!(cross > 0 && undelivered == 0)
                }
                Strategy::Sticky => assert_eq!((cross, undelivered), (0, 0)),
                _ => {}
            }
            // Churn: 20 joins/s for 3 s, counted while measuring.
            let rejoins = r["rejoins"].as_u64().unwrap_or(0);
            if churn == "0" {
                assert_eq!(rejoins, 0);
            } else {
                assert!((30..=90).contains(&rejoins), "{name}: {rejoins} rejoins");
                assert_eq!(r["reconnects"], 0, "a churn rejoin is not a reconnect");
            }
            if strategy != Strategy::Local {
                // Every publish carries its payload (64 bytes) into Redis.
                let bytes = r["redis"]["net_input_bytes"].as_u64().unwrap_or(0);
                let publishes = r["delivered"].as_u64().unwrap_or(0) / members as u64;
                assert!(
                    bytes > 64 * publishes,
                    "{name}: Redis read {bytes} bytes for {publishes} publishes"
                );
            }
            files.push(out);
        }
    }
    let status = tokio::process::Command::new(&bench)
        .args(["map", "--grid", "test", "--out"])
        .arg(&dir)
        .args(&files)
        .stderr(Stdio::null())
        .status()
        .await?;
    assert!(status.success(), "turnout-bench map failed: {status}");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("sweep.json"))?)?;
    let points = s["points"].as_array().expect("points");
    assert_eq!(points.len(), 8);
    for p in points {
        assert_eq!(p["nodes"], 2, "{p}");
        assert!(p["deliveries_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
        assert!(p["run"]["latency_ms"]["p99"].as_f64().unwrap_or(0.0) > 0.0);
        let fanouts = p["fanouts_per_sec"].as_f64().unwrap_or(0.0);
        assert_eq!(fanouts > 0.0, p["strategy"] == "pubsub", "{p}");
        let hops = &p["hops_per_sec"];
        if p["strategy"] != "relay" {
            assert!(hops.is_null(), "{p}");
        } else if p["room_size"] == 8 {
            assert!(hops.as_f64().unwrap_or(0.0) > 0.0, "{p}");
        }
    }
    let predictions = s["model"]["predictions"].as_array().expect("predictions");
    // Every strategy is predicted, run or not.
    assert_eq!(predictions.len(), 4 * 3 * 5);
    assert!(
        predictions
            .iter()
            .any(|p| p["nodes"] == 100 && p["room_size"] == 100_000)
    );
    assert!(!s["model"]["limits"].as_array().expect("limits").is_empty());
    let classes = s["verdict"]["classes"].as_array().expect("verdict");
    assert!(
        classes
            .iter()
            .any(|c| c["workload"] == "more than one server, local")
    );
    // Two points per strategy cannot fit eight costs: the verdict says so.
    assert!(
        !s["verdict"]["warnings"]
            .as_array()
            .expect("warnings")
            .is_empty()
    );
    // Two points per strategy fit no costs: the planner says it cannot
    // answer from them, and why.
    let out = std::process::Command::new(&bench)
        .arg("plan")
        .arg("--sweep")
        .arg(dir.join("sweep.json"))
        .args([
            "--connections",
            "100000",
            "--room-size",
            "10",
            "--messages-per-member",
            "1",
        ])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too few runs"), "{err}");
    let page = std::fs::read_to_string(dir.join("report.html"))?;
    assert!(
        page.contains("The answer") && page.contains("id=\"planner\"") && page.contains("<svg")
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
