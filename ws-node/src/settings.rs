//! ws-node settings (see the README's settings table and `docs/CONFIG.md`).

use clap::Parser;
use serde::Serialize;
use std::time::Duration;
use turnout_common::namespaces::{Namespaces, RoomOptions};
use turnout_common::settings::{CommonCli, SettingsError, require_nonzero, require_positive};

/// Flags and environment variables; every one is optional and overrides the file.
#[derive(Parser, Serialize, Debug, Default)]
#[command(
    name = "turnout-ws-node",
    version,
    about = "turnout ws-node: holds client WebSocket sessions and rooms"
)]
pub struct Cli {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonCli,
    /// WebSocket URL clients use to reach this node (default: from the bound address).
    #[arg(long, env = "TURNOUT_ADVERTISE_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// Heartbeat interval, e.g. 1s.
    #[arg(long, env = "TURNOUT_HEARTBEAT_INTERVAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<String>,
    /// Heartbeat TTL: a node silent this long is dead, e.g. 3s.
    #[arg(long, env = "TURNOUT_HEARTBEAT_TTL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_ttl: Option<String>,
    /// Messages kept per room for recovery (0 = off).
    #[arg(long, env = "TURNOUT_HISTORY_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_size: Option<u64>,
    /// Idle rooms' seq and history expire after this long, e.g. 24h.
    #[arg(long, env = "TURNOUT_ROOM_TTL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_ttl: Option<String>,
    /// How long a publish id is remembered per sender and room, so that a
    /// resent publish is accepted once, e.g. 2m (0 = off).
    #[arg(long, env = "TURNOUT_DEDUPE_WINDOW")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedupe_window: Option<String>,
    /// Frames queued per connection before it counts as a slow consumer.
    #[arg(long, env = "TURNOUT_SEND_QUEUE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_queue: Option<usize>,
    /// Bytes queued per connection before it counts as a slow consumer.
    #[arg(long, env = "TURNOUT_SEND_QUEUE_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_queue_bytes: Option<usize>,
    /// Largest accepted client frame, in bytes.
    #[arg(long, env = "TURNOUT_MAX_FRAME_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<usize>,
    /// Rooms one connection may join.
    #[arg(long, env = "TURNOUT_MAX_ROOMS_PER_CONN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rooms_per_conn: Option<usize>,
    /// Connections this node accepts.
    #[arg(long, env = "TURNOUT_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Time a draining node gives its clients before it exits, e.g. 10s.
    #[arg(long, env = "TURNOUT_DRAIN_GRACE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_grace: Option<String>,
    /// How long a room nobody is in stays pinned to its owner (sticky), e.g. 60s.
    #[arg(long, env = "TURNOUT_PLACEMENT_TTL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement_ttl: Option<String>,
    /// Rooms with more connections than this get no presence events, and
    /// `joined` lists a sample of this many users.
    #[arg(long, env = "TURNOUT_PRESENCE_LIMIT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_limit: Option<u64>,
    /// How long a node's presence entries outlive its last renewal (renewed
    /// every third of it), e.g. 15s: a crashed node's users leave presence
    /// within this.
    #[arg(long, env = "TURNOUT_PRESENCE_TTL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_ttl: Option<String>,
    /// Frames of any kind per second one connection may sustain.
    #[arg(long, env = "TURNOUT_MAX_FRAME_RATE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_rate: Option<f64>,
    /// Frames of any kind one connection may send in a burst.
    #[arg(long, env = "TURNOUT_MAX_FRAME_BURST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_burst: Option<u32>,
    /// Publishes per second one connection may sustain.
    #[arg(long, env = "TURNOUT_MAX_PUBLISH_RATE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_publish_rate: Option<f64>,
    /// Publishes one connection may send in a burst.
    #[arg(long, env = "TURNOUT_MAX_PUBLISH_BURST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_publish_burst: Option<u32>,
    /// Joins and leaves per second one connection may sustain.
    #[arg(long, env = "TURNOUT_MAX_JOIN_RATE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_join_rate: Option<f64>,
    /// Joins and leaves one connection may send in a burst.
    #[arg(long, env = "TURNOUT_MAX_JOIN_BURST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_join_burst: Option<u32>,
    /// Different rooms one connection may join within a minute.
    #[arg(long, env = "TURNOUT_MAX_ROOMS_PER_MINUTE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rooms_per_minute: Option<usize>,
    /// Bytes one join's replay (`since`) sends at most; the rest is asked
    /// for with another join.
    #[arg(long, env = "TURNOUT_MAX_REPLAY_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replay_bytes: Option<usize>,
    /// New WebSocket connections per second this node takes, from everyone
    /// (a reconnect storm is admitted at this pace; 503 beyond).
    #[arg(long, env = "TURNOUT_MAX_ACCEPT_RATE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_accept_rate: Option<f64>,
    /// New WebSocket connections this node takes at once.
    #[arg(long, env = "TURNOUT_MAX_ACCEPT_BURST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_accept_burst: Option<u32>,
    /// How often the node pings idle clients, e.g. 20s.
    #[arg(long, env = "TURNOUT_PING_INTERVAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_interval: Option<String>,
    /// A client silent this long (no frame, no pong) is closed, e.g. 60s.
    #[arg(long, env = "TURNOUT_IDLE_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Append what clients publish to the backend inbox stream `turnout:inbox` (true/false).
    #[arg(long, env = "TURNOUT_INBOX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox: Option<bool>,
    /// Entries the inbox stream keeps (older ones are trimmed).
    #[arg(long, env = "TURNOUT_INBOX_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox_size: Option<u64>,
    /// Backend hook asked before each connection is let in: http(s)://… or grpc://host:port.
    #[arg(long, env = "TURNOUT_PROXY_CONNECT_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_connect_url: Option<String>,
    /// Backend hook asked before a join in a namespace with join_proxy.
    #[arg(long, env = "TURNOUT_PROXY_JOIN_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_join_url: Option<String>,
    /// Backend hook asked before a publish in a namespace with publish_proxy.
    #[arg(long, env = "TURNOUT_PROXY_PUBLISH_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_publish_url: Option<String>,
    /// Backend hook that answers clients' `rpc` frames.
    #[arg(long, env = "TURNOUT_PROXY_RPC_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_rpc_url: Option<String>,
    /// Backend hook asked when a connection's expire_at (from the connect hook) comes.
    #[arg(long, env = "TURNOUT_PROXY_REFRESH_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_refresh_url: Option<String>,
    /// How long a hook call may take before the client hears `unavailable`, e.g. 1s.
    #[arg(long, env = "TURNOUT_PROXY_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_timeout: Option<String>,
    /// Hook calls under way on this node at once; beyond, `unavailable`.
    #[arg(long, env = "TURNOUT_PROXY_MAX_INFLIGHT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_max_inflight: Option<usize>,
    /// Largest hook answer read, in bytes.
    #[arg(long, env = "TURNOUT_PROXY_MAX_REPLY_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_max_reply_bytes: Option<usize>,
    /// Put every connection of user U in its personal room `#U` (true/false).
    #[arg(long, env = "TURNOUT_PERSONAL_ROOMS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub personal_rooms: Option<bool>,
    /// Where room and member events are POSTed (http:// or https://).
    #[arg(long, env = "TURNOUT_WEBHOOK_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Key of the batches' HMAC-SHA256 signature (at least 16 bytes).
    #[arg(long, env = "TURNOUT_WEBHOOK_SECRET", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Events per webhook POST at most.
    #[arg(long, env = "TURNOUT_WEBHOOK_BATCH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_batch: Option<usize>,
    /// Events waiting to be sent at most; beyond, dropped (counted).
    #[arg(long, env = "TURNOUT_WEBHOOK_QUEUE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_queue: Option<usize>,
    /// Bytes of events waiting to be sent at most.
    #[arg(long, env = "TURNOUT_WEBHOOK_QUEUE_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_queue_bytes: Option<usize>,
    /// How long one webhook POST may take, e.g. 5s.
    #[arg(long, env = "TURNOUT_WEBHOOK_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_timeout: Option<String>,
    /// Tries per batch (with backoff) before its events are given up.
    #[arg(long, env = "TURNOUT_WEBHOOK_RETRIES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_retries: Option<u32>,
    #[command(flatten)]
    #[serde(flatten)]
    pub jwt: turnout_common::settings::JwtCli,
    #[command(flatten)]
    #[serde(flatten)]
    pub per_ip: turnout_common::settings::PerIpCli,
    #[command(flatten)]
    #[serde(flatten)]
    pub bus: turnout_common::settings::BusCli,
}

turnout_common::process_settings! {
    /// The ws-node's settings after merging file, env and flags.
    pub struct Settings {
        cli: Cli;
        listen: "0.0.0.0:9000";
        shared: [jwt, per_ip, bus, namespaces];
        pub advertise_url: Option<String> = None,
        #[serde(with = "humantime_serde")]
        pub heartbeat_interval: Duration = Duration::from_secs(1),
        #[serde(with = "humantime_serde")]
        pub heartbeat_ttl: Duration = Duration::from_secs(3),
        pub history_size: u64 = 100,
        #[serde(with = "humantime_serde")]
        pub room_ttl: Duration = Duration::from_secs(24 * 3600),
        #[serde(with = "humantime_serde")]
        pub dedupe_window: Duration = Duration::from_secs(120),
        pub send_queue: usize = 1024,
        pub send_queue_bytes: usize = 4 << 20,
        pub max_frame_bytes: usize = 64 * 1024,
        pub max_rooms_per_conn: usize = 100,
        pub max_connections: usize = 20_000,
        #[serde(with = "humantime_serde")]
        pub drain_grace: Duration = Duration::from_secs(10),
        #[serde(with = "humantime_serde")]
        pub placement_ttl: Duration = Duration::from_secs(60),
        pub presence_limit: u64 = 100,
        #[serde(with = "humantime_serde")]
        pub presence_ttl: Duration = Duration::from_secs(15),
        pub max_frame_rate: f64 = 200.0,
        pub max_frame_burst: u32 = 400,
        pub max_publish_rate: f64 = 50.0,
        pub max_publish_burst: u32 = 100,
        pub max_join_rate: f64 = 10.0,
        pub max_join_burst: u32 = 100,
        pub max_rooms_per_minute: usize = 200,
        pub max_replay_bytes: usize = 1 << 20,
        pub max_accept_rate: f64 = 2000.0,
        pub max_accept_burst: u32 = 10_000,
        #[serde(with = "humantime_serde")]
        pub ping_interval: Duration = Duration::from_secs(20),
        #[serde(with = "humantime_serde")]
        pub idle_timeout: Duration = Duration::from_secs(60),
        pub inbox: bool = false,
        pub inbox_size: u64 = 100_000,
        pub proxy_connect_url: Option<String> = None,
        pub proxy_join_url: Option<String> = None,
        pub proxy_publish_url: Option<String> = None,
        pub proxy_rpc_url: Option<String> = None,
        pub proxy_refresh_url: Option<String> = None,
        #[serde(with = "humantime_serde")]
        pub proxy_timeout: Duration = Duration::from_secs(1),
        pub proxy_max_inflight: usize = 1000,
        pub proxy_max_reply_bytes: usize = 64 * 1024,
        pub personal_rooms: bool = true,
        pub webhook_url: Option<String> = None,
        pub webhook_secret: Option<String> = None,
        pub webhook_batch: usize = 100,
        pub webhook_queue: usize = 10_000,
        pub webhook_queue_bytes: usize = 4 << 20,
        #[serde(with = "humantime_serde")]
        pub webhook_timeout: Duration = Duration::from_secs(5),
        pub webhook_retries: u32 = 8,
    }
}

impl Settings {
    fn validate_own(&self) -> Result<(), SettingsError> {
        require_nonzero("heartbeat_interval", self.heartbeat_interval.is_zero())?;
        if self.heartbeat_ttl < self.heartbeat_interval * 2 {
            return Err(SettingsError::invalid(
                "heartbeat_ttl",
                "must be at least twice heartbeat_interval, or one late heartbeat kills the node",
            ));
        }
        if self.placement_ttl < self.heartbeat_ttl {
            return Err(SettingsError::invalid(
                "placement_ttl",
                "must be at least heartbeat_ttl",
            ));
        }
        if self.presence_ttl < self.heartbeat_ttl {
            return Err(SettingsError::invalid(
                "presence_ttl",
                "must be at least heartbeat_ttl",
            ));
        }
        if let Some(id) = &self.node_id {
            turnout_proto::names::check_user(id)
                .map_err(|e| SettingsError::invalid("node_id", e.to_string()))?;
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("ws://") || url.starts_with("wss://"))
        {
            return Err(SettingsError::invalid(
                "advertise_url",
                format!("`{url}` must be a ws:// or wss:// URL ending in /ws"),
            ));
        }
        require_positive("max_frame_rate", self.max_frame_rate)?;
        require_nonzero("max_frame_burst", self.max_frame_burst == 0)?;
        require_positive("max_publish_rate", self.max_publish_rate)?;
        require_nonzero("max_publish_burst", self.max_publish_burst == 0)?;
        require_positive("max_join_rate", self.max_join_rate)?;
        require_nonzero("max_join_burst", self.max_join_burst == 0)?;
        require_nonzero("max_rooms_per_minute", self.max_rooms_per_minute == 0)?;
        require_nonzero("max_replay_bytes", self.max_replay_bytes == 0)?;
        if self.send_queue_bytes < self.max_frame_bytes {
            return Err(SettingsError::invalid(
                "send_queue_bytes",
                "must be at least max_frame_bytes",
            ));
        }
        require_positive("max_accept_rate", self.max_accept_rate)?;
        require_nonzero("max_accept_burst", self.max_accept_burst == 0)?;
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            return Err(SettingsError::invalid(
                "idle_timeout",
                "must be longer than ping_interval (and both > 0)",
            ));
        }
        for (key, v) in [
            ("send_queue", self.send_queue),
            ("send_queue_bytes", self.send_queue_bytes),
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_rooms_per_conn", self.max_rooms_per_conn),
            ("max_connections", self.max_connections),
            ("inbox_size", self.inbox_size as usize),
        ] {
            require_nonzero(key, v == 0)?;
        }
        for (key, url) in self.hook_urls() {
            if let Some(url) = url {
                crate::hooks::check_url(key, url)
                    .map_err(|e| SettingsError::invalid(e.key, e.message))?;
            }
        }
        for (name, ns) in &self.namespaces {
            // The room's keys, presence included, live this long: a room's
            // members must not drop out between two renewals.
            if ns.history_ttl.is_some_and(|t| t < self.presence_ttl) {
                return Err(SettingsError::invalid(
                    &format!("namespaces.{name}.history_ttl"),
                    "must be at least presence_ttl",
                ));
            }
            for (key, on, url) in [
                ("join_proxy", ns.join_proxy, &self.proxy_join_url),
                ("publish_proxy", ns.publish_proxy, &self.proxy_publish_url),
            ] {
                if on == Some(true) && url.is_none() {
                    return Err(SettingsError::invalid(
                        &format!("namespaces.{name}.{key}"),
                        format!("needs proxy_{}_url, the hook to ask", &key[..key.len() - 6]),
                    ));
                }
            }
        }
        if let Some(url) = &self.webhook_url {
            turnout_common::settings::check_http_url("webhook_url", url)?;
            match &self.webhook_secret {
                Some(s) if s.len() < 16 => {
                    return Err(SettingsError::invalid(
                        "webhook_secret",
                        "must be at least 16 bytes",
                    ));
                }
                None if !self.insecure => {
                    return Err(SettingsError::invalid(
                        "webhook_secret",
                        "webhook_url needs a secret to sign its batches (or insecure = true)",
                    ));
                }
                _ => {}
            }
        }
        require_nonzero("webhook_retries", self.webhook_retries == 0)?;
        let minute = Duration::from_secs(60);
        for (key, d) in [
            ("proxy_timeout", self.proxy_timeout),
            ("webhook_timeout", self.webhook_timeout),
        ] {
            if d.is_zero() || d > minute {
                return Err(SettingsError::invalid(
                    key,
                    "must be more than 0 and at most 1m",
                ));
            }
        }
        for (key, v, lo, hi) in [
            ("proxy_max_inflight", self.proxy_max_inflight, 1, 100_000),
            (
                "proxy_max_reply_bytes",
                self.proxy_max_reply_bytes,
                1024,
                16 << 20,
            ),
            ("webhook_batch", self.webhook_batch, 1, 10_000),
            ("webhook_queue", self.webhook_queue, 1, 10_000_000),
            (
                "webhook_queue_bytes",
                self.webhook_queue_bytes,
                1024,
                1 << 30,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(SettingsError::invalid(
                    key,
                    format!("must be between {lo} and {hi}"),
                ));
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The hook URL settings, by name, in [`crate::hooks::Hook::ALL`] order.
    pub(crate) fn hook_urls(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("proxy_connect_url", self.proxy_connect_url.as_deref()),
            ("proxy_join_url", self.proxy_join_url.as_deref()),
            ("proxy_publish_url", self.proxy_publish_url.as_deref()),
            ("proxy_rpc_url", self.proxy_rpc_url.as_deref()),
            ("proxy_refresh_url", self.proxy_refresh_url.as_deref()),
        ]
    }

    /// Each room's options: its namespace's, over the global settings.
    pub fn namespaces(&self) -> Namespaces {
        let global = RoomOptions {
            history_size: self.history_size,
            room_ttl: self.room_ttl,
            presence: true,
            client_publish: true,
            join_proxy: false,
            publish_proxy: false,
        };
        Namespaces::new(global, &self.namespaces)
    }

    /// One connection's limits.
    pub(crate) fn limits(&self) -> crate::limits::LimitSettings {
        crate::limits::LimitSettings {
            frame_rate: self.max_frame_rate,
            frame_burst: self.max_frame_burst,
            publish_rate: self.max_publish_rate,
            publish_burst: self.max_publish_burst,
            join_rate: self.max_join_rate,
            join_burst: self.max_join_burst,
            rooms_per_minute: self.max_rooms_per_minute,
        }
    }

    /// The largest frame the WebSocket layer reads whole: bigger than
    /// `max_frame_bytes`, so a frame over the limit is read and answered
    /// with a clean close 1009 rather than a reset.
    pub(crate) fn read_ceiling(&self) -> usize {
        self.max_frame_bytes
            .saturating_mul(4)
            .max(self.max_frame_bytes + 4096)
    }
}

#[cfg(test)]
mod tests {
    /// One settings file serves a whole cluster: the others pass over a
    /// key only if it is listed.
    #[test]
    fn every_key_is_a_cluster_key() {
        turnout_common::settings::assert_keys_listed::<super::Settings>();
    }
}
