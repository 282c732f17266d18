//! Samples of the cluster's processes (/proc) and of Redis (INFO), taken at
//! the start and end of the measured window.

use std::collections::BTreeMap;
use std::path::Path;

/// Cluster processes from the local runner's pid files (`<run-dir>/<name>.pid`).
pub(crate) fn processes(run_dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(run_dir) {
        for e in dir.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "pid") {
                let name = path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if let Some(pid) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    && Path::new(&format!("/proc/{pid}")).exists()
                {
                    out.push((name, pid));
                }
            }
        }
    }
    out.sort();
    out
}

/// The pid of a named process of the local runner.
pub(crate) fn pid_of(run_dir: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(run_dir.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU time of the calling thread.
pub(crate) fn thread_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds("/proc/thread-self/stat")
}

/// The calling thread's id.
pub(crate) fn thread_id() -> Option<String> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Calls per command and the total, from `INFO commandstats` and `INFO
/// stats`; for a comma-separated list (a Redis Cluster), summed over the
/// nodes that are masters.
pub(crate) async fn redis_counts(url: &str) -> Option<RedisCounts> {
    if !url.contains(',') {
        return redis_counts_one(url).await;
    }
    let mut sum = RedisCounts::default();
    for one in url.split(',').map(str::trim) {
        if !is_master(one).await? {
            continue;
        }
        let c = redis_counts_one(one).await?;
        sum.commands += c.commands;
        sum.net_in += c.net_in;
        sum.net_out += c.net_out;
        for (k, v) in c.by_command {
            *sum.by_command.entry(k).or_default() += v;
        }
    }
    Some(sum)
}

/// Redis counters since its start.
#[derive(Default, Debug)]
pub(crate) struct RedisCounts {
    pub(crate) commands: u64,
    pub(crate) by_command: BTreeMap<String, u64>,
    pub(crate) net_in: u64,
    pub(crate) net_out: u64,
}

async fn is_master(url: &str) -> Option<bool> {
    let client = redis::Client::open(url).ok()?;
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut con)
        .await
        .ok()?;
    Some(info.contains("role:master"))
}

async fn redis_counts_one(url: &str) -> Option<RedisCounts> {
    // A saturated Redis may answer INFO slowly: wait for it rather than
    // leave the run without Redis figures.
    let client = redis::Client::open(url).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(10)))
        .set_response_timeout(Some(std::time::Duration::from_secs(10)));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()?;
    let stats: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut con)
        .await
        .ok()?;
    let cmds: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .ok()?;
    let stat = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut by_command = BTreeMap::new();
    for l in cmds.lines() {
        if let Some(rest) = l.strip_prefix("cmdstat_") {
            let (name, vals) = rest.split_once(':')?;
            let calls = vals
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())?;
            by_command.insert(name.to_owned(), calls);
        }
    }
    Some(RedisCounts {
        commands: stat("total_commands_processed"),
        by_command,
        net_in: stat("total_net_input_bytes"),
        net_out: stat("total_net_output_bytes"),
    })
}

/// File descriptors this process may open (soft, hard).
pub(crate) fn fd_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    Some((*nums.first()?, *nums.get(1)?))
}

/// Redis `used_memory`, in bytes (summed over a comma-separated list).
pub(crate) async fn redis_memory(url: &str) -> Option<u64> {
    let mut sum = 0;
    for one in url.split(',').map(str::trim) {
        sum += redis_memory_one(one).await?;
    }
    Some(sum)
}

async fn redis_memory_one(url: &str) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut con)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Relay: messages each ws-node has sent others over gRPC so far
/// (publishes forwarded to a room's owner, items an owner streamed to its
/// followers), from its `/metrics` beside its WebSocket URL, all nodes at
/// once. None when a node did not answer within 3 s.
pub(crate) async fn relay_hops(ws_urls: &[String]) -> Option<Vec<u64>> {
    if ws_urls.is_empty() {
        return None;
    }
    let pages = futures_util::future::join_all(ws_urls.iter().map(|url| {
        let base = url
            .replacen("ws://", "http://", 1)
            .replacen("wss://", "https://", 1);
        let base = base.strip_suffix("/ws").unwrap_or(&base).to_owned();
        async move { crate::http::get_text(&format!("{base}/metrics")).await }
    }))
    .await;
    pages
        .into_iter()
        .map(|p| {
            let page = p.ok()?;
            Some(
                counter(&page, "turnout_relay_forwarded_total")
                    + counter(&page, "turnout_relay_items_sent_total"),
            )
        })
        .collect()
}

/// The hops of a window from each node's counts at its start and end;
/// None when a node's count went down (it restarted: what it sent before
/// is gone) or the nodes differ.
pub(crate) fn hops_between(start: &[u64], end: &[u64]) -> Option<u64> {
    if start.len() != end.len() {
        return None;
    }
    start.iter().zip(end).map(|(a, b)| b.checked_sub(*a)).sum()
}

/// A counter's value on a Prometheus text page, summed over its label
/// sets (0 when absent).
fn counter(page: &str, name: &str) -> u64 {
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod metrics_tests {
    #[test]
    fn counters_are_read_by_exact_name() {
        let page = "# HELP turnout_relay_forwarded_total x\n\
                    turnout_relay_forwarded_total{process=\"ws-node\",node=\"node-1\"} 12\n\
                    turnout_relay_forwarded_total_other{node=\"x\"} 99\n\
                    turnout_relay_forwarded_totals 98\n\
                    turnout_relay_items_sent_total 3e2\n";
        assert_eq!(super::counter(page, "turnout_relay_forwarded_total"), 12);
        assert_eq!(super::counter(page, "turnout_relay_items_sent_total"), 300);
        assert_eq!(super::counter(page, "turnout_missing_total"), 0);
    }

    #[test]
    fn hops_are_summed_per_node_and_a_restart_voids_them() {
        use super::hops_between;
        assert_eq!(hops_between(&[10, 20], &[15, 40]), Some(25));
        assert_eq!(hops_between(&[10, 20], &[15, 5]), None);
        assert_eq!(hops_between(&[10], &[15, 40]), None);
    }
}
