//! What turnout needs of Redis memory: `maxmemory-policy noeviction`.
//! turnout keeps state in Redis, not a cache: an evicted publish id lets a
//! resend through twice, an evicted heartbeat moves a live node's rooms, an
//! evicted history loses what a reconnecting member needed. With
//! `noeviction` a full Redis refuses writes instead: publishes and joins
//! are answered `unavailable` (retryable; nothing stored, nothing lost),
//! while heartbeats and lease renewals, which only rewrite what is there,
//! go on (`heartbeat.lua`, `renew.lua`: `allow-oom`).
//!
//! [`watch`]'s reading of `INFO` shows it: used and maximum memory, the
//! policy, keys evicted. See docs/OPERATIONS.md, "Redis memory".

use ::redis::{RedisResult, Value};

/// What `INFO memory` and `INFO stats` say about memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryState {
    pub used: u64,
    /// `maxmemory` (0: no limit).
    pub max: u64,
    pub policy: String,
    /// Keys evicted since Redis started.
    pub evicted_keys: u64,
}

impl MemoryState {
    /// Parses `INFO` text (any sections; the fields it needs may be in
    /// several).
    pub fn parse(info: &str) -> MemoryState {
        let mut m = MemoryState::default();
        for line in info.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            match k {
                "used_memory" => m.used = v.parse().unwrap_or(0),
                "maxmemory" => m.max = v.parse().unwrap_or(0),
                "maxmemory_policy" => m.policy = v.to_owned(),
                "evicted_keys" => m.evicted_keys = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        m
    }

    /// Whether Redis may evict turnout's keys: a limit, and a policy other
    /// than `noeviction` (every other policy evicts keys with a TTL, and
    /// all of turnout's keys have one).
    pub fn may_evict(&self) -> bool {
        self.max > 0 && self.policy != "noeviction"
    }

    /// Used memory as a share of `maxmemory` (0 without a limit).
    pub fn fill(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            self.used as f64 / self.max as f64
        }
    }
}

/// Reads Redis's memory state (one `INFO memory stats`; on a Redis Cluster
/// the node the connection picks).
pub async fn read(con: &mut super::Con) -> RedisResult<MemoryState> {
    let v: Value = ::redis::cmd("INFO")
        .arg("memory")
        .arg("stats")
        .query_async(con)
        .await?;
    let text = match v {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::VerbatimString { text, .. } => text,
        Value::SimpleString(s) => s,
        // A cluster answers per node: take the first.
        Value::Map(m) => m
            .into_iter()
            .find_map(|(_, v)| ::redis::from_redis_value::<String>(v).ok())
            .unwrap_or_default(),
        other => ::redis::from_redis_value::<String>(other)?,
    };
    Ok(MemoryState::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:4194304\r\nmaxmemory_policy:allkeys-lru\r\n# Stats\r\nevicted_keys:17\r\n";

    #[test]
    fn reads_the_fields_it_needs() {
        let m = MemoryState::parse(INFO);
        assert_eq!(
            m,
            MemoryState {
                used: 1 << 20,
                max: 4 << 20,
                policy: "allkeys-lru".into(),
                evicted_keys: 17
            }
        );
        assert!(m.may_evict());
        assert_eq!(m.fill(), 0.25);
    }

    #[test]
    fn noeviction_or_no_limit_keeps_every_key() {
        let mut m = MemoryState::parse(INFO);
        m.policy = "noeviction".into();
        assert!(!m.may_evict());
        m.policy = "volatile-lru".into();
        m.max = 0;
        assert!(!m.may_evict(), "no limit: nothing is evicted");
        assert_eq!(m.fill(), 0.0);
    }
}
