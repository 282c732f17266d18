//! Router settings (see the README's settings table and `docs/CONFIG.md`).

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use turnout_common::settings::{
    CommonCli, ListenSpec, SettingsError, Validate, check_redis_url, require_nonzero,
};
use turnout_proto::Strategy;

/// Flags and environment variables; every one is optional and overrides the file.
#[derive(Parser, Serialize, Debug, Default)]
#[command(
    name = "turnout-router",
    version,
    about = "turnout router: tracks live ws-nodes and places rooms"
)]
pub struct Cli {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonCli,
    /// How often the live set is re-read from Redis besides change announcements, e.g. 250ms.
    #[arg(long, env = "TURNOUT_POLL_INTERVAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    /// Sticky: no node takes more than this times the average room count.
    #[arg(long, env = "TURNOUT_LOAD_FACTOR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_factor: Option<f64>,
    /// Sticky: how long a placement nobody joined stays pinned, e.g. 60s
    /// (the owner keeps rooms with members pinned itself).
    #[arg(long, env = "TURNOUT_PLACEMENT_TTL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement_ttl: Option<String>,
    /// Sticky: placements this router writes per second at most (burst: twice
    /// as many); past it, a route is an unwritten hint and the room is
    /// claimed when its first member joins.
    #[arg(long, env = "TURNOUT_MAX_PLACEMENT_RATE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_placement_rate: Option<f64>,
}

/// The router's settings after merging file, env and flags.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub strategy: Strategy,
    pub redis_url: String,
    pub redis_ca_file: Option<std::path::PathBuf>,
    pub redis_cluster: bool,
    pub listen: ListenSpec,
    pub node_id: Option<String>,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub load_factor: f64,
    #[serde(with = "humantime_serde")]
    pub placement_ttl: Duration,
    pub max_placement_rate: f64,
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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            strategy: Strategy::Pubsub,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_ca_file: None,
            redis_cluster: false,
            listen: "0.0.0.0:7070".parse().expect("valid default"),
            node_id: None,
            poll_interval: Duration::from_millis(250),
            load_factor: 1.25,
            placement_ttl: Duration::from_secs(60),
            max_placement_rate: 500.0,
            internal_token: None,
            insecure: false,
            handshake_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            http2_keepalive: Duration::from_secs(20),
            otlp_endpoint: None,
            otlp_sample_ratio: 1.0,
        }
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        require_nonzero("handshake_timeout", self.handshake_timeout.is_zero())?;
        require_nonzero("http_idle_timeout", self.http_idle_timeout.is_zero())?;
        require_nonzero("http2_keepalive", self.http2_keepalive.is_zero())?;
        turnout_common::telemetry::check(self.otlp_endpoint.as_deref(), self.otlp_sample_ratio)?;
        check_redis_url("redis_url", &self.redis_url, self.redis_cluster)?;
        require_nonzero("poll_interval", self.poll_interval.is_zero())?;
        if !(self.load_factor >= 1.0 && self.load_factor.is_finite()) {
            return Err(SettingsError::invalid(
                "load_factor",
                "must be a number >= 1.0 (e.g. 1.25)",
            ));
        }
        require_nonzero("placement_ttl", self.placement_ttl.is_zero())?;
        if !(self.max_placement_rate > 0.0 && self.max_placement_rate.is_finite()) {
            return Err(SettingsError::invalid(
                "max_placement_rate",
                "must be a positive number",
            ));
        }
        if self.listen.ports.start() != self.listen.ports.end() {
            return Err(SettingsError::invalid(
                "listen",
                "a router listens on one port, not a range",
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// What every connection to this process may cost in time.
    pub fn serve_limits(&self) -> turnout_common::serve::ServeLimits {
        turnout_common::serve::ServeLimits {
            handshake: self.handshake_timeout,
            idle: self.http_idle_timeout,
            http2_keepalive: self.http2_keepalive,
        }
    }

    /// Parses flags and env, reads the file, validates.
    pub fn from_args() -> Result<Self, SettingsError> {
        let cli = Cli::parse();
        turnout_common::settings::load(&cli, cli.common.config.as_deref())
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
