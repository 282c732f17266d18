//! Router settings (see the README's settings table and `docs/CONFIG.md`).

use clap::Parser;
use serde::Serialize;
use std::time::Duration;
use turnout_common::settings::{CommonCli, SettingsError, require_nonzero};

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

turnout_common::process_settings! {
    /// The router's settings after merging file, env and flags.
    pub struct Settings {
        cli: Cli;
        listen: "0.0.0.0:7070";
        shared: [];
        #[serde(with = "humantime_serde")]
        pub poll_interval: Duration = Duration::from_millis(250),
        pub load_factor: f64 = 1.25,
        #[serde(with = "humantime_serde")]
        pub placement_ttl: Duration = Duration::from_secs(60),
        pub max_placement_rate: f64 = 500.0,
    }
}

impl Settings {
    fn validate_own(&self) -> Result<(), SettingsError> {
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

#[cfg(test)]
mod tests {
    /// One settings file serves a whole cluster: the others pass over a
    /// key only if it is listed.
    #[test]
    fn every_key_is_a_cluster_key() {
        turnout_common::settings::assert_keys_listed::<super::Settings>();
    }
}
