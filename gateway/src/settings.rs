//! Gateway settings (see the README's settings table and `docs/CONFIG.md`).

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use turnout_common::settings::{
    CommonCli, ListenSpec, SettingsError, Validate, check_http_url, check_redis_url,
    require_nonzero, require_positive,
};
use turnout_proto::Strategy;

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

/// The gateway's settings after merging file, env and flags.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub strategy: Strategy,
    pub redis_url: String,
    pub redis_ca_file: Option<std::path::PathBuf>,
    pub redis_cluster: bool,
    pub listen: ListenSpec,
    pub router_url: String,
    pub node_id: Option<String>,
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub rpc_timeout: Duration,
    pub max_body_bytes: usize,
    pub internal_token: Option<String>,
    pub insecure: bool,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub http_idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub http2_keepalive: Duration,
    /// OTLP/HTTP collector for traces (None: tracing off).
    pub otlp_endpoint: Option<String>,
    /// Share of the traces this process starts that are kept.
    pub otlp_sample_ratio: f64,
    pub jwt_secret: Option<String>,
    pub jwt_public_key: Option<std::path::PathBuf>,
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
    pub api_key: Option<String>,
    pub max_connections_per_ip: usize,
    pub max_connect_rate_per_ip: f64,
    pub max_connect_burst_per_ip: u32,
    pub max_subscribers: usize,
    pub max_client_streams: usize,
    pub max_streams_per_user: usize,
    pub max_streams_per_ip: usize,
    pub stream_buffer_bytes: usize,
    pub subscriber_buffer: usize,
    pub subscriber_buffer_bytes: usize,
    pub bus_buffer: usize,
    pub bus_buffer_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub sse_keepalive: Duration,
    /// `[namespaces.<name>]` tables (the settings file only): the gateway
    /// reads whether a namespace has presence.
    pub namespaces:
        std::collections::BTreeMap<String, turnout_common::namespaces::NamespaceSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            strategy: Strategy::Pubsub,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_ca_file: None,
            redis_cluster: false,
            listen: "0.0.0.0:8080".parse().expect("valid default"),
            router_url: "http://127.0.0.1:7070".into(),
            node_id: None,
            upstream_timeout: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(5),
            max_body_bytes: 64 * 1024,
            internal_token: None,
            insecure: false,
            handshake_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            http2_keepalive: Duration::from_secs(20),
            otlp_endpoint: None,
            otlp_sample_ratio: 1.0,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_audience: None,
            jwt_issuer: None,
            api_key: None,
            max_connections_per_ip: 1000,
            max_connect_rate_per_ip: 50.0,
            max_connect_burst_per_ip: 500,
            max_subscribers: 10_000,
            max_client_streams: 10_000,
            max_streams_per_user: 10,
            max_streams_per_ip: 50,
            stream_buffer_bytes: 1 << 20,
            subscriber_buffer: 1024,
            subscriber_buffer_bytes: 1 << 20,
            bus_buffer: 65_536,
            bus_buffer_bytes: 64 << 20,
            sse_keepalive: Duration::from_secs(15),
            namespaces: Default::default(),
        }
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

    /// What every connection to this process may cost in time.
    pub fn serve_limits(&self) -> turnout_common::serve::ServeLimits {
        turnout_common::serve::ServeLimits {
            handshake: self.handshake_timeout,
            idle: self.http_idle_timeout,
            http2_keepalive: self.http2_keepalive,
        }
    }

    /// How client tokens are checked.
    pub fn jwt(&self) -> turnout_common::auth::JwtSettings<'_> {
        turnout_common::auth::JwtSettings {
            secret: self.jwt_secret.as_deref(),
            public_key: self.jwt_public_key.as_deref(),
            audience: self.jwt_audience.as_deref(),
            issuer: self.jwt_issuer.as_deref(),
        }
    }

    /// The router URLs, in failover order.
    pub fn routers(&self) -> Vec<String> {
        self.router_url
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Parses flags and env, reads the file, validates.
    pub fn from_args() -> Result<Self, SettingsError> {
        let cli = Cli::parse();
        turnout_common::settings::load(&cli, cli.common.config.as_deref())
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        turnout_common::namespaces::validate(&self.namespaces)?;
        require_nonzero("handshake_timeout", self.handshake_timeout.is_zero())?;
        require_nonzero("http_idle_timeout", self.http_idle_timeout.is_zero())?;
        require_nonzero("http2_keepalive", self.http2_keepalive.is_zero())?;
        turnout_common::telemetry::check(self.otlp_endpoint.as_deref(), self.otlp_sample_ratio)?;
        check_redis_url("redis_url", &self.redis_url, self.redis_cluster)?;
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
        require_nonzero("max_connections_per_ip", self.max_connections_per_ip == 0)?;
        require_nonzero(
            "max_connect_burst_per_ip",
            self.max_connect_burst_per_ip == 0,
        )?;
        require_positive("max_connect_rate_per_ip", self.max_connect_rate_per_ip)?;
        require_nonzero("max_body_bytes", self.max_body_bytes == 0)?;
        require_nonzero("max_subscribers", self.max_subscribers == 0)?;
        require_nonzero("max_client_streams", self.max_client_streams == 0)?;
        require_nonzero("max_streams_per_user", self.max_streams_per_user == 0)?;
        require_nonzero("max_streams_per_ip", self.max_streams_per_ip == 0)?;
        require_nonzero("stream_buffer_bytes", self.stream_buffer_bytes == 0)?;
        require_nonzero("subscriber_buffer", self.subscriber_buffer == 0)?;
        require_nonzero("subscriber_buffer_bytes", self.subscriber_buffer_bytes == 0)?;
        require_nonzero("bus_buffer", self.bus_buffer == 0)?;
        require_nonzero("bus_buffer_bytes", self.bus_buffer_bytes == 0)?;
        require_nonzero("sse_keepalive", self.sse_keepalive.is_zero())?;
        require_nonzero("rpc_timeout", self.rpc_timeout.is_zero())?;
        require_nonzero("upstream_timeout", self.upstream_timeout.is_zero())?;
        Ok(())
    }
}

turnout_common::impl_served!(Settings);

#[cfg(test)]
mod tests {
    /// One settings file serves a whole cluster: the others pass over a
    /// key only if it is listed.
    #[test]
    fn every_key_is_a_cluster_key() {
        turnout_common::settings::assert_keys_listed::<super::Settings>();
    }
}
