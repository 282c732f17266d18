//! Gateway settings (see the README's settings table and `docs/CONFIG.md`).

use clap::Parser;
use serde::Serialize;
use std::time::Duration;
use turnout_common::settings::{CommonCli, SettingsError, check_http_url, require_nonzero};

/// Flags and environment variables; every one is optional and overrides the file.
#[derive(Parser, Serialize, Debug, Default)]
#[command(
    name = "turnout-gateway",
    version,
    about = "turnout gateway: the public door (WebSocket, HTTP and gRPC API)"
)]
pub struct Cli {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonCli,
    /// Router URL(s), comma-separated; the gateway fails over between them.
    #[arg(long, env = "TURNOUT_ROUTER_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_url: Option<String>,
    /// Time a ws-node has to take a proxied upgrade (connect, request, answer), e.g. 2s.
    #[arg(long, env = "TURNOUT_UPSTREAM_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_timeout: Option<String>,
    /// Deadline of every internal gRPC call (to routers and ws-nodes), e.g. 5s.
    #[arg(long, env = "TURNOUT_RPC_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_timeout: Option<String>,
    /// Largest accepted HTTP API request body, in bytes.
    #[arg(long, env = "TURNOUT_MAX_BODY_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Key required in X-API-Key on the server API (HTTP and gRPC).
    #[arg(long, env = "TURNOUT_API_KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Room streams of backends (API key) this gateway serves at once.
    #[arg(long, env = "TURNOUT_MAX_SUBSCRIBERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscribers: Option<usize>,
    /// Room streams of clients (SSE with a client token) served at once.
    #[arg(long, env = "TURNOUT_MAX_CLIENT_STREAMS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_client_streams: Option<usize>,
    /// Room streams one user (token `sub`) may hold.
    #[arg(long, env = "TURNOUT_MAX_STREAMS_PER_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams_per_user: Option<usize>,
    /// Client room streams one address (IPv6: one /64) may hold.
    #[arg(long, env = "TURNOUT_MAX_STREAMS_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams_per_ip: Option<usize>,
    /// Bytes of messages one stream may have waiting for its reader.
    #[arg(long, env = "TURNOUT_STREAM_BUFFER_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_buffer_bytes: Option<usize>,
    /// Live messages buffered per followed room; a stream that falls further
    /// behind catches up from history.
    #[arg(long, env = "TURNOUT_SUBSCRIBER_BUFFER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber_buffer: Option<usize>,
    /// Bytes of live messages buffered per followed room; past it, streams
    /// read the rest from history.
    #[arg(long, env = "TURNOUT_SUBSCRIBER_BUFFER_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber_buffer_bytes: Option<usize>,
    /// Interval of SSE keep-alive comments, e.g. 15s.
    #[arg(long, env = "TURNOUT_SSE_KEEPALIVE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_keepalive: Option<String>,
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
    /// The gateway's settings after merging file, env and flags.
    pub struct Settings {
        cli: Cli;
        listen: "0.0.0.0:8080";
        shared: [jwt, per_ip, bus, namespaces];
        pub router_url: String = "http://127.0.0.1:7070".into(),
        #[serde(with = "humantime_serde")]
        pub upstream_timeout: Duration = Duration::from_secs(2),
        #[serde(with = "humantime_serde")]
        pub rpc_timeout: Duration = Duration::from_secs(5),
        pub max_body_bytes: usize = 64 * 1024,
        pub api_key: Option<String> = None,
        pub max_subscribers: usize = 10_000,
        pub max_client_streams: usize = 10_000,
        pub max_streams_per_user: usize = 10,
        pub max_streams_per_ip: usize = 50,
        pub stream_buffer_bytes: usize = 1 << 20,
        pub subscriber_buffer: usize = 1024,
        pub subscriber_buffer_bytes: usize = 1 << 20,
        #[serde(with = "humantime_serde")]
        pub sse_keepalive: Duration = Duration::from_secs(15),
    }
}

impl Settings {
    /// The table of `room`'s namespace, if the file has one.
    fn namespace(&self, room: &str) -> Option<&turnout_common::namespaces::NamespaceSettings> {
        turnout_common::namespaces::namespace_of(room).and_then(|ns| self.namespaces.get(ns))
    }

    /// Whether `room`'s namespace asks the backend's join hook.
    pub fn join_proxy_on(&self, room: &str) -> bool {
        self.namespace(room)
            .and_then(|n| n.join_proxy)
            .unwrap_or(false)
    }

    /// Whether `room`'s namespace shows who is in its rooms.
    pub fn presence_on(&self, room: &str) -> bool {
        self.namespace(room)
            .and_then(|n| n.presence)
            .unwrap_or(true)
    }

    /// The router URLs, in failover order.
    pub fn routers(&self) -> Vec<String> {
        self.router_url
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

impl Settings {
    fn validate_own(&self) -> Result<(), SettingsError> {
        let routers = self.routers();
        if routers.is_empty() {
            return Err(SettingsError::invalid(
                "router_url",
                "needs at least one http:// URL",
            ));
        }
        for r in &routers {
            check_http_url("router_url", r)?;
        }
        if self.listen.ports.start() != self.listen.ports.end() {
            return Err(SettingsError::invalid(
                "listen",
                "a gateway listens on one port, not a range",
            ));
        }
        if self.api_key.as_ref().is_some_and(|k| k.len() < 16) {
            return Err(SettingsError::invalid(
                "api_key",
                "must be at least 16 bytes",
            ));
        }
        require_nonzero("max_body_bytes", self.max_body_bytes == 0)?;
        require_nonzero("max_subscribers", self.max_subscribers == 0)?;
        require_nonzero("max_client_streams", self.max_client_streams == 0)?;
        require_nonzero("max_streams_per_user", self.max_streams_per_user == 0)?;
        require_nonzero("max_streams_per_ip", self.max_streams_per_ip == 0)?;
        require_nonzero("stream_buffer_bytes", self.stream_buffer_bytes == 0)?;
        require_nonzero("subscriber_buffer", self.subscriber_buffer == 0)?;
        require_nonzero("subscriber_buffer_bytes", self.subscriber_buffer_bytes == 0)?;
        require_nonzero("sse_keepalive", self.sse_keepalive.is_zero())?;
        require_nonzero("rpc_timeout", self.rpc_timeout.is_zero())?;
        require_nonzero("upstream_timeout", self.upstream_timeout.is_zero())?;
        Ok(())
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
