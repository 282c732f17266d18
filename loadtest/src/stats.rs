//! What the bench measures, and the results file.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (senders stamp messages with it; the
/// bench and the cluster share one clock on one machine).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

const SHARDS: usize = 16;

/// Counters every member task updates.
pub(crate) struct Shared {
    pub(crate) started: Instant,
    /// Latencies are recorded only while set (after the warm-up).
    pub(crate) measuring: AtomicBool,
    /// Publishers stop when set.
    pub(crate) stop_publishing: AtomicBool,
    hist: Vec<Mutex<Histogram<u64>>>,
    /// Live deliveries per second since `started`.
    per_sec: Vec<AtomicU64>,
    pub(crate) published: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) delivered_measured: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) duplicated: AtomicU64,
    pub(crate) reordered: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) connected: AtomicU64,
}

impl Shared {
    pub(crate) fn new(seconds: usize) -> Self {
        Shared {
            started: Instant::now(),
            measuring: AtomicBool::new(false),
            stop_publishing: AtomicBool::new(false),
            hist: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"))
                })
                .collect(),
            per_sec: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
            published: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_measured: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            connected: AtomicU64::new(0),
        }
    }

    /// Records one live delivery with its end-to-end latency.
    pub(crate) fn delivery(&self, shard: usize, latency_us: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let sec = self.started.elapsed().as_secs() as usize;
        if let Some(b) = self.per_sec.get(sec) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        if self.measuring.load(Ordering::Relaxed) {
            self.delivered_measured.fetch_add(1, Ordering::Relaxed);
            let mut h = self.hist[shard % SHARDS]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let _ = h.record(latency_us.max(1));
        }
    }

    pub(crate) fn histogram(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        for h in &self.hist {
            let _ = all.add(&*h.lock().unwrap_or_else(|e| e.into_inner()));
        }
        all
    }

    pub(crate) fn per_second(&self, from: usize, to: usize) -> Vec<u64> {
        self.per_sec[from.min(self.per_sec.len())..to.min(self.per_sec.len())]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }
}

/// Which seqs of one room one member has seen.
#[derive(Default)]
pub(crate) struct Seen {
    /// Seq of the member's first `joined`: it expects everything after.
    pub(crate) base: Option<u64>,
    bits: Vec<u64>,
    /// Highest seq seen.
    pub(crate) highest: u64,
    /// Every seq in (base, contiguous] has been seen.
    pub(crate) contiguous: u64,
    pub(crate) unique: u64,
}

/// How a received seq relates to what was seen before.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    New,
    /// New, but lower than one already seen.
    Reordered,
    Duplicate,
    /// At or below the base: from before this member joined.
    Old,
}

impl Seen {
    pub(crate) fn set_base(&mut self, seq: u64) {
        if self.base.is_none() {
            self.base = Some(seq);
            self.highest = seq;
            self.contiguous = seq;
        }
    }

    pub(crate) fn see(&mut self, seq: u64) -> Arrival {
        let Some(base) = self.base else {
            return Arrival::Old;
        };
        if seq <= base {
            return Arrival::Old;
        }
        let i = (seq - base - 1) as usize;
        let (w, b) = (i / 64, i % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) != 0 {
            return Arrival::Duplicate;
        }
        self.bits[w] |= 1 << b;
        self.unique += 1;
        while self.contiguous < u64::MAX && self.has(self.contiguous + 1) {
            self.contiguous += 1;
        }
        let reordered = seq < self.highest;
        self.highest = self.highest.max(seq);
        if reordered {
            Arrival::Reordered
        } else {
            Arrival::New
        }
    }

    fn has(&self, seq: u64) -> bool {
        let Some(base) = self.base else { return false };
        if seq <= base {
            return true;
        }
        let i = (seq - base - 1) as usize;
        self.bits
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// What one member saw, all the accounting needs of it: its messages are
/// (base, last] of its room, and it saw `unique` distinct ones of them.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub(crate) struct MemberSummary {
    pub(crate) room: usize,
    /// The node it was on last.
    pub(crate) node: String,
    pub(crate) base: Option<u64>,
    pub(crate) unique: u64,
    pub(crate) highest: u64,
    /// Every seq in (base, contiguous] was seen: the first one missed,
    /// if any, is the next.
    #[serde(default)]
    pub(crate) contiguous: u64,
    pub(crate) acked: u64,
    pub(crate) max_ack: u64,
    /// When it was told to go or lost its connection (Unix ms).
    #[serde(default)]
    pub(crate) moves: Vec<u64>,
    /// Longest time without a message of its room while measuring (ms).
    #[serde(default)]
    pub(crate) max_gap_ms: u64,
    /// Churn: joins after leaving on purpose, while measuring.
    #[serde(default)]
    pub(crate) rejoins: u64,
}

impl MemberSummary {
    /// Messages in (base, last] this member never saw (`last` at least
    /// every seq it saw).
    pub(crate) fn missing(&self, last: u64) -> u64 {
        match self.base {
            Some(base) if last > base => (last - base).saturating_sub(self.unique),
            _ => 0,
        }
    }
}

/// What members missed, and where deliveries cross nodes. `lost` counts
/// messages of their own room's numbering they never got. `cross_node` and
/// `same_node` count the deliveries a shared cluster makes from a publisher
/// on another node and on the member's own node (from what each member
/// published): for strategy local the `cross_node` ones never happen (what
/// sticky and pubsub fix); for pubsub they are the ones that needed the
/// relay (every pubsub delivery comes over Redis, the sender's node too).
/// `nodes_per_room` is the mean number of nodes a room's members are on.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Tally {
    pub(crate) lost: u64,
    pub(crate) cross_node: u64,
    pub(crate) same_node: u64,
    pub(crate) nodes_per_room: f64,
}

/// Tallies `members`. `last_seq[room]` is each room's final seq; `None`
/// (strategy local) means each node numbers a room on its own, so the last
/// seq is per room and node, from what its members saw and were acked.
pub(crate) fn tally(members: &[MemberSummary], last_seq: Option<&[u64]>) -> Tally {
    use std::collections::HashMap;
    let mut last: HashMap<(usize, &str), u64> = HashMap::new();
    let mut here: HashMap<(usize, &str), (u64, u64)> = HashMap::new();
    let mut room_members: HashMap<usize, u64> = HashMap::new();
    for m in members {
        let key = (m.room, m.node.as_str());
        let l = last.entry(key).or_default();
        *l = (*l).max(m.max_ack).max(m.highest);
        let h = here.entry(key).or_default();
        h.0 += 1;
        h.1 += m.acked;
        *room_members.entry(m.room).or_default() += 1;
    }
    let cross_node = here
        .iter()
        .map(|(&(room, _), &(n, published))| published * (room_members[&room] - n))
        .sum();
    let same_node = here.values().map(|&(n, published)| published * n).sum();
    let nodes_per_room = if room_members.is_empty() {
        0.0
    } else {
        here.len() as f64 / room_members.len() as f64
    };
    let lost = match last_seq {
        None => members
            .iter()
            .map(|m| m.missing(last[&(m.room, m.node.as_str())]))
            .sum(),
        Some(last_seq) => members
            .iter()
            .map(|m| m.missing(last_seq.get(m.room).copied().unwrap_or(0)))
            .sum(),
    };
    Tally {
        lost,
        cross_node,
        same_node,
        nodes_per_room,
    }
}

/// Latency figures in milliseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub samples: u64,
}

/// One cluster process over the measured window.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ProcessStats {
    pub name: String,
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub cpu_seconds_per_million_deliveries: f64,
}

/// One node as `/api/cluster` reported it during the run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct NodeStats {
    pub id: String,
    pub connections: u64,
    pub rooms: u64,
}

/// Redis over the measured window.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct RedisStats {
    pub commands: u64,
    pub commands_per_sec: f64,
    pub commands_per_delivery: f64,
    /// Calls per command name.
    pub by_command: std::collections::BTreeMap<String, u64>,
    /// Bytes Redis read from and wrote to its clients (INFO
    /// `total_net_input_bytes`, `total_net_output_bytes`).
    #[serde(default)]
    pub net_input_bytes: u64,
    #[serde(default)]
    pub net_output_bytes: u64,
    /// `used_memory` at the start and the end of the measured window.
    #[serde(default)]
    pub memory_before: u64,
    #[serde(default)]
    pub memory_after: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct FailoverStats {
    pub killed: String,
    /// Members whose connection the kill broke.
    pub members_affected: u64,
    pub rooms_affected: u64,
    /// Kill -> first live message received again, per affected member (ms).
    pub recovery_ms_p50: f64,
    pub recovery_ms_max: f64,
    /// Affected members that had not received a live message again by the end.
    pub not_recovered: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct IdleStats {
    pub node: String,
    pub connections: u64,
    pub rss_kib_before: u64,
    pub rss_kib_after: u64,
    pub kib_per_connection: f64,
}

/// The `abuse` scenario's attackers: what they did and got.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct AttackStats {
    /// CPU time of the attackers' thread (part of the bench's).
    #[serde(default)]
    pub cpu_seconds: f64,
    pub frames_sent: u64,
    pub refused: u64,
    pub closed: u64,
    pub silent_sockets_closed: u64,
    pub streams_opened: u64,
    pub streams_refused: u64,
}

/// One `--chaos` event and what members went through after it.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Disruption {
    /// Seconds into the measured window, and the command that ran.
    pub at_s: u64,
    pub command: String,
    /// Members told to move (`wrong_node`, `reconnect`) or whose connection
    /// broke within a minute after the event.
    pub members_moved: u64,
    /// Event -> first such moment, per moved member (ms).
    pub told_ms_p50: f64,
    pub told_ms_max: f64,
}

/// Across members: each member's longest time without a message of its
/// room while measuring, ms (how long a fault kept rooms silent).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Silence {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Quantiles of a list of values (sorted in place).
pub(crate) fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i]
}

/// The results file of one run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct RunResult {
    pub strategy: String,
    pub scenario: String,
    pub mode: String,
    pub host: String,
    pub cores: usize,
    pub command: String,
    pub rooms: usize,
    pub members: usize,
    pub publishers_per_room: usize,
    pub rate: f64,
    pub payload: usize,
    pub connections: u64,
    /// Bench processes the clients ran in.
    #[serde(default)]
    pub workers: usize,
    /// CPU seconds the bench itself used over the measured window.
    #[serde(default)]
    pub bench_cpu_seconds: f64,
    pub warmup_s: u64,
    pub duration_s: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub delivered: u64,
    pub replayed: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub reconnects: u64,
    pub connect_errors: u64,
    /// Strategy local: deliveries that did not happen because publisher and
    /// member were on different servers (what sticky and pubsub fix).
    #[serde(default)]
    pub undelivered_cross_node: u64,
    /// Strategy local: the share of a shared cluster's deliveries that did
    /// not happen (`undelivered_cross_node` over all it would make).
    #[serde(default)]
    pub undelivered_share: f64,
    /// The share of deliveries whose publisher is on another node than the
    /// member (pubsub: those only the relay makes possible; local: not made).
    #[serde(default)]
    pub cross_node_share: f64,
    /// Sticky and pubsub: measured deliveries from a publisher on another
    /// node (`delivered` times `cross_node_share`).
    #[serde(default)]
    pub cross_node_deliveries: u64,
    /// The mean number of nodes a room's members are on.
    #[serde(default)]
    pub nodes_per_room: f64,
    /// Relay: messages the ws-nodes sent one another over gRPC in the
    /// measured window (publishes forwarded to owners, items owners
    /// streamed to followers), from their `turnout_relay_*` counters.
    /// None: not relay, or not every node answered at both ends of the
    /// window (a node died or restarted, or its page could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_hops: Option<u64>,
    /// Churn asked for (joins per second), and the joins after leaving on
    /// purpose that members made while measuring.
    #[serde(default)]
    pub churn: f64,
    #[serde(default)]
    pub rejoins: u64,
    pub deliveries_per_sec: f64,
    pub latency_ms: Latency,
    /// (latency ms, fraction of deliveries at or below), for CDF charts.
    pub latency_cdf: Vec<(f64, f64)>,
    /// Live deliveries per second over the whole run.
    pub throughput: Vec<u64>,
    pub processes: Vec<ProcessStats>,
    pub ws_node_deliveries_per_cpu_second: f64,
    /// Deliveries per CPU-second of every sampled server process (nodes,
    /// Redis, router, gateway; the floor's one process): what issue-level
    /// efficiency targets compare. 0 without --run-dir.
    #[serde(default)]
    pub server_deliveries_per_cpu_second: f64,
    pub nodes: Vec<NodeStats>,
    pub redis: RedisStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleStats>,
    #[serde(default)]
    pub silence_ms: Silence,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disruptions: Vec<Disruption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attackers: Option<AttackStats>,
}

pub(crate) fn latency(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
        samples: h.len(),
    }
}

pub(crate) fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for q in (0..=1000)
        .map(|i| i as f64 / 1000.0)
        .chain([0.9995, 0.9999, 1.0])
    {
        out.push((h.value_at_quantile(q) as f64 / 1000.0, q));
    }
    out.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_gaps_duplicates_and_reordering() {
        let mut s = Seen::default();
        assert_eq!(s.see(1), Arrival::Old);
        s.set_base(10);
        assert_eq!(s.see(10), Arrival::Old);
        assert_eq!(s.see(11), Arrival::New);
        assert_eq!(s.see(13), Arrival::New);
        assert_eq!(s.contiguous, 11);
        assert_eq!(s.see(12), Arrival::Reordered);
        assert_eq!(s.contiguous, 13);
        assert_eq!(s.see(12), Arrival::Duplicate);
        assert_eq!(s.see(200), Arrival::New);
        let m = MemberSummary {
            base: s.base,
            unique: s.unique,
            ..Default::default()
        };
        assert_eq!(m.missing(200), 200 - 10 - 4);
        assert_eq!(m.missing(5), 0);
    }

    fn member(
        room: usize,
        node: &str,
        base: u64,
        unique: u64,
        acked: u64,
        max_ack: u64,
    ) -> MemberSummary {
        MemberSummary {
            room,
            node: node.into(),
            base: Some(base),
            unique,
            highest: base + unique,
            acked,
            max_ack,
            ..Default::default()
        }
    }

    #[test]
    fn tally_shared_and_local() {
        // Shared numbering: room 0 ends at seq 10.
        let ms = [member(0, "a", 0, 10, 5, 9), member(0, "b", 0, 8, 5, 10)];
        assert_eq!(
            tally(&ms, Some(&[10])),
            Tally {
                lost: 2,
                cross_node: 5 + 5,
                same_node: 5 + 5,
                nodes_per_room: 2.0,
            }
        );
        // Local: each node numbers room 0 itself. On a: 3 members, 6
        // published; on b: 1 member, 2 published, and it missed one.
        let ms = [
            member(0, "a", 0, 6, 4, 6),
            member(0, "a", 0, 6, 2, 5),
            member(0, "a", 0, 6, 0, 0),
            member(0, "b", 0, 1, 2, 2),
        ];
        // a's 6 messages never reach b's member; b's 2 never reach a's 3.
        assert_eq!(
            tally(&ms, None),
            Tally {
                lost: 1,
                cross_node: 6 + 2 * 3,
                same_node: 6 * 3 + 2,
                nodes_per_room: 2.0,
            }
        );
    }
}
