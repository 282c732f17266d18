//! The lines a run prints when it ends.

use crate::stats::*;

pub(crate) fn print_summary(r: &RunResult) {
    let l = &r.latency_ms;
    println!(
        "{} {} ({}): {} connections, {:.0} deliveries/s, latency ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; \
         published {} (errors {}), lost {}, duplicated {}, reordered {}, replayed {}, reconnects {}",
        r.strategy,
        r.scenario,
        r.mode,
        r.connections,
        r.deliveries_per_sec,
        l.p50,
        l.p99,
        l.p999,
        l.max,
        r.published,
        r.publish_errors,
        r.lost,
        r.duplicated,
        r.reordered,
        r.replayed,
        r.reconnects
    );
    if r.undelivered_cross_node > 0 {
        println!(
            "  local: {} deliveries never happened: publisher and member on different servers \
             ({:.1} % of what a shared cluster delivers)",
            r.undelivered_cross_node,
            100.0 * r.undelivered_share
        );
    }
    println!(
        "  bench      cpu {:>7.2}s  ({} process(es))",
        r.bench_cpu_seconds, r.workers
    );
    for p in &r.processes {
        println!(
            "  {:<10} cpu {:>7.2}s  {:>8.1} cpu-s/M deliveries  rss {:>7} KiB",
            p.name, p.cpu_seconds, p.cpu_seconds_per_million_deliveries, p.rss_kib
        );
    }
    if r.ws_node_deliveries_per_cpu_second > 0.0 {
        println!(
            "  ws-node deliveries per CPU-second: {:.0}; every server process: {:.0}",
            r.ws_node_deliveries_per_cpu_second, r.server_deliveries_per_cpu_second
        );
    }
    if r.redis.commands > 0 {
        println!(
            "  redis: {:.0} commands/s, {:.3} per delivery; used_memory {} -> {} bytes",
            r.redis.commands_per_sec,
            r.redis.commands_per_delivery,
            r.redis.memory_before,
            r.redis.memory_after
        );
    }
    if let Some(f) = &r.failover {
        println!(
            "  failover: killed {}, {} members in {} rooms affected, recovery ms p50 {:.0} max {:.0}, not recovered {}",
            f.killed,
            f.members_affected,
            f.rooms_affected,
            f.recovery_ms_p50,
            f.recovery_ms_max,
            f.not_recovered
        );
    }
    if r.silence_ms.max > 0.0 {
        println!(
            "  silence: each member's longest time without a message: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            r.silence_ms.p50, r.silence_ms.p99, r.silence_ms.max
        );
    }
    for d in &r.disruptions {
        println!(
            "  chaos at {}s `{}`: {} members told to move (or cut off), after p50 {:.0} ms, max {:.0} ms",
            d.at_s, d.command, d.members_moved, d.told_ms_p50, d.told_ms_max
        );
    }
    if let Some(a) = &r.attackers {
        println!(
            "  attackers: {} frames sent, {} refused, {} connections closed by the cluster, \
             {} silent sockets closed, streams {} opened / {} refused; their CPU {:.2}s (nice 19, within the bench's)",
            a.frames_sent,
            a.refused,
            a.closed,
            a.silent_sockets_closed,
            a.streams_opened,
            a.streams_refused,
            a.cpu_seconds
        );
    }
    if let Some(i) = &r.idle {
        println!(
            "  idle: {} connections on {}: RSS {} -> {} KiB, {:.2} KiB per connection",
            i.connections, i.node, i.rss_kib_before, i.rss_kib_after, i.kib_per_connection
        );
    }
}
