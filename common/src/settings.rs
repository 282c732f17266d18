//! Settings: every setting is a TOML key in the `--config` file, a flag and an
//! environment variable; flag beats env beats file beats default.
//!
//! Each process declares a clap struct whose fields are all `Option`s (clap
//! resolves flag-over-env) and a serde struct with defaults. [`load`] lays the
//! given flags/env over the file and deserialises the result, so one error
//! path names the bad key for every source.

use serde::{Serialize, de::DeserializeOwned};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;

/// Flags and environment variables every process takes; each is optional
/// and overrides the file. Flattened into each process's own `Cli`.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct CommonCli {
    /// TOML file with settings (keys as in the settings table).
    #[arg(long, env = "TURNOUT_CONFIG")]
    #[serde(skip)]
    pub config: Option<std::path::PathBuf>,
    /// Scaling strategy: sticky or pubsub.
    #[arg(long, env = "TURNOUT_STRATEGY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Redis URL: redis://[user:password@]host:port, or rediss:// for TLS.
    #[arg(long, env = "TURNOUT_REDIS_URL", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Redis is a Redis Cluster: `redis_url` is a comma-separated list of
    /// seed nodes (true/false; `--redis-cluster` alone means true).
    #[arg(long, env = "TURNOUT_REDIS_CLUSTER", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cluster: Option<bool>,
    /// PEM file of the CA that signed a TLS Redis's certificate (rediss://),
    /// instead of the system's roots.
    #[arg(long, env = "TURNOUT_REDIS_CA_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Listen address: HOST:PORT (a ws-node also takes HOST:0 and HOST:LOW-HIGH).
    #[arg(long, env = "TURNOUT_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// This process's id (default: host name and port).
    #[arg(long, env = "TURNOUT_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Shared secret required on internal gRPC calls (at least 16 bytes).
    #[arg(long, env = "TURNOUT_INTERNAL_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_token: Option<String>,
    /// Run without secrets, open to anyone who reaches the port (true/false;
    /// `--insecure` alone means true).
    #[arg(long, env = "TURNOUT_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// Time a new connection has to send a whole request (whatever it
    /// sent before), e.g. 10s.
    #[arg(long, env = "TURNOUT_HANDSHAKE_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<String>,
    /// An HTTP connection with no request under way for this long is
    /// closed (WebSockets are not: they have their own pings), e.g. 60s.
    #[arg(long, env = "TURNOUT_HTTP_IDLE_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_idle_timeout: Option<String>,
    /// Interval of HTTP/2 keep-alive pings; a peer that does not answer one
    /// within the same time is dropped, e.g. 20s.
    #[arg(long, env = "TURNOUT_HTTP2_KEEPALIVE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_keepalive: Option<String>,
    /// OTLP/HTTP collector URL for traces, e.g. http://collector:4318
    /// (`/v1/traces` is added); unset: tracing off.
    #[arg(long, env = "TURNOUT_OTLP_ENDPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Share of the traces this process starts that are kept, 0 to 1
    /// (default 1); a trace a caller started is kept if the caller kept it.
    #[arg(long, env = "TURNOUT_OTLP_SAMPLE_RATIO")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_sample_ratio: Option<f64>,
}

/// Client token flags, for the processes that check tokens (gateway,
/// ws-node). Flattened into their `Cli`.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct JwtCli {
    /// HS256 secret for client tokens (at least 16 bytes).
    #[arg(long, env = "TURNOUT_JWT_SECRET", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// Path of a PEM RSA public key for RS256 client tokens.
    #[arg(long, env = "TURNOUT_JWT_PUBLIC_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key: Option<String>,
    /// Audience client tokens must name (`aud`), when set.
    #[arg(long, env = "TURNOUT_JWT_AUDIENCE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    /// Issuer client tokens must name (`iss`), when set.
    #[arg(long, env = "TURNOUT_JWT_ISSUER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
}

/// Limits per client address, for the processes that take client
/// connections (gateway, ws-node). Flattened into their `Cli`.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct PerIpCli {
    /// WebSocket connections one client IP (IPv6: one /64) may hold on
    /// this process.
    #[arg(long, env = "TURNOUT_MAX_CONNECTIONS_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    /// New WebSocket connections per second one client address may open
    /// (IPv6: per /64).
    #[arg(long, env = "TURNOUT_MAX_CONNECT_RATE_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connect_rate_per_ip: Option<f64>,
    /// New WebSocket connections one client address may open in a burst.
    #[arg(long, env = "TURNOUT_MAX_CONNECT_BURST_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connect_burst_per_ip: Option<u32>,
}

/// The buffer between a process's Redis pub/sub reader and what it feeds
/// (ws-node: fan-out; gateway: followed rooms). Flattened into their `Cli`.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct BusCli {
    /// Pub/sub messages buffered between the Redis reader and what it feeds.
    #[arg(long, env = "TURNOUT_BUS_BUFFER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_buffer: Option<usize>,
    /// Bytes of pub/sub messages buffered between the Redis reader and what
    /// it feeds.
    #[arg(long, env = "TURNOUT_BUS_BUFFER_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_buffer_bytes: Option<usize>,
}

/// A setting that could not be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("setting `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl SettingsError {
    pub fn invalid(key: &str, message: impl Into<String>) -> Self {
        SettingsError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Every key that some turnout process takes from a settings file. One
/// file serves a whole cluster: each process passes over the keys of the
/// others and refuses any key not here (a typo), naming it. Each process's
/// tests check that its own keys are listed ([`unlisted_keys`]).
pub const CLUSTER_KEYS: &[&str] = &[
    "advertise_url",
    "api_key",
    "bus_buffer",
    "bus_buffer_bytes",
    "dedupe_window",
    "drain_grace",
    "handshake_timeout",
    "heartbeat_interval",
    "heartbeat_ttl",
    "history_size",
    "http2_keepalive",
    "http_idle_timeout",
    "idle_timeout",
    "inbox",
    "inbox_size",
    "insecure",
    "internal_token",
    "jwt_audience",
    "jwt_issuer",
    "jwt_public_key",
    "jwt_secret",
    "listen",
    "load_factor",
    "max_accept_burst",
    "max_accept_rate",
    "max_body_bytes",
    "max_client_streams",
    "max_connect_burst_per_ip",
    "max_connect_rate_per_ip",
    "max_connections",
    "max_connections_per_ip",
    "max_frame_burst",
    "max_frame_bytes",
    "max_frame_rate",
    "max_join_burst",
    "max_join_rate",
    "max_placement_rate",
    "max_publish_burst",
    "max_publish_rate",
    "max_replay_bytes",
    "max_rooms_per_conn",
    "max_rooms_per_minute",
    "max_streams_per_ip",
    "max_streams_per_user",
    "max_subscribers",
    "namespaces",
    "node_id",
    "otlp_endpoint",
    "otlp_sample_ratio",
    "personal_rooms",
    "ping_interval",
    "placement_ttl",
    "poll_interval",
    "presence_limit",
    "presence_ttl",
    "proxy_connect_url",
    "proxy_join_url",
    "proxy_max_inflight",
    "proxy_max_reply_bytes",
    "proxy_publish_url",
    "proxy_refresh_url",
    "proxy_rpc_url",
    "proxy_timeout",
    "redis_ca_file",
    "redis_cluster",
    "redis_url",
    "room_ttl",
    "router_url",
    "rpc_timeout",
    "send_queue",
    "send_queue_bytes",
    "sse_keepalive",
    "strategy",
    "stream_buffer_bytes",
    "subscriber_buffer",
    "subscriber_buffer_bytes",
    "upstream_timeout",
    "webhook_batch",
    "webhook_queue",
    "webhook_queue_bytes",
    "webhook_retries",
    "webhook_secret",
    "webhook_timeout",
    "webhook_url",
];

/// The keys of settings struct `T` missing from [`CLUSTER_KEYS`] (none, or
/// a file holding them would be refused by every other process).
pub fn unlisted_keys<'de, T: serde::Deserialize<'de>>() -> Vec<&'static str> {
    serde_aux::serde_introspection::serde_introspect::<T>()
        .iter()
        .copied()
        .filter(|k| !CLUSTER_KEYS.contains(k))
        .collect()
}

/// Fails (a test's check) when settings struct `T` has keys missing from
/// [`CLUSTER_KEYS`].
pub fn assert_keys_listed<'de, T: serde::Deserialize<'de>>() {
    let unlisted = unlisted_keys::<T>();
    assert!(
        unlisted.is_empty(),
        "add {unlisted:?} to turnout_common::settings::CLUSTER_KEYS"
    );
}

/// Checks that need more than one field or more than a type.
pub trait Validate {
    fn validate(&self) -> Result<(), SettingsError>;
}

/// Merges `overrides` (flags and env, already resolved by clap; `None`s are
/// skipped) over the TOML file at `path` and deserialises into `T`.
pub fn load<T, O>(overrides: &O, path: Option<&Path>) -> Result<T, SettingsError>
where
    T: DeserializeOwned + Validate,
    O: Serialize,
{
    let mut merged = serde_json::Map::new();
    if let Some(path) = path {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SettingsError::File {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| SettingsError::File {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let value = serde_json::to_value(table).map_err(|e| SettingsError::File {
            path: shown,
            message: e.to_string(),
        })?;
        if let serde_json::Value::Object(map) = value {
            // Another process's keys are passed over; a key no process
            // takes stays, and is refused by name below.
            let own = serde_aux::serde_introspection::serde_introspect::<T>();
            merged.extend(
                map.into_iter().filter(|(k, _)| {
                    own.contains(&k.as_str()) || !CLUSTER_KEYS.contains(&k.as_str())
                }),
            );
        }
    }
    let over =
        serde_json::to_value(overrides).map_err(|e| SettingsError::invalid("?", e.to_string()))?;
    if let serde_json::Value::Object(map) = over {
        merged.extend(map.into_iter().filter(|(_, v)| !v.is_null()));
    }
    let settings: T =
        serde_path_to_error::deserialize(serde_json::Value::Object(merged)).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "config".to_owned() } else { key };
            SettingsError::Invalid {
                key,
                message: e.inner().to_string(),
            }
        })?;
    settings.validate()?;
    Ok(settings)
}

/// Where to listen: `host:port`, `host:0` (any free port) or `host:lo-hi`
/// (the first free port of the range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub ip: IpAddr,
    pub ports: RangeInclusive<u16>,
}

impl ListenSpec {
    /// True when bound to a loopback address only.
    pub fn is_loopback(&self) -> bool {
        self.ip.is_loopback()
    }
}

impl std::str::FromStr for ListenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not HOST:PORT, HOST:0 or HOST:LOW-HIGH (e.g. 0.0.0.0:9000-9099)");
        let (host, ports) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = if host == "localhost" {
            IpAddr::from([127, 0, 0, 1])
        } else {
            host.parse().map_err(|_| bad())?
        };
        let ports = match ports.split_once('-') {
            Some((lo, hi)) => {
                let lo: u16 = lo.parse().map_err(|_| bad())?;
                let hi: u16 = hi.parse().map_err(|_| bad())?;
                if lo == 0 || lo > hi {
                    return Err(format!(
                        "`{s}`: port range must be LOW-HIGH with 0 < LOW <= HIGH"
                    ));
                }
                lo..=hi
            }
            None => {
                let p: u16 = ports.parse().map_err(|_| bad())?;
                p..=p
            }
        };
        Ok(ListenSpec { ip, ports })
    }
}

impl std::fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = match self.ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        if self.ports.start() == self.ports.end() {
            write!(f, "{ip}:{}", self.ports.start())
        } else {
            write!(f, "{ip}:{}-{}", self.ports.start(), self.ports.end())
        }
    }
}

impl<'de> serde::Deserialize<'de> for ListenSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ListenSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl From<SocketAddr> for ListenSpec {
    fn from(a: SocketAddr) -> Self {
        ListenSpec {
            ip: a.ip(),
            ports: a.port()..=a.port(),
        }
    }
}

/// Refuses a zero where a positive value is needed.
pub fn require_nonzero(key: &str, is_zero: bool) -> Result<(), SettingsError> {
    if is_zero {
        return Err(SettingsError::invalid(key, "must be greater than 0"));
    }
    Ok(())
}

/// A rate: a positive, finite number.
pub fn require_positive(key: &str, value: f64) -> Result<(), SettingsError> {
    if !(value > 0.0 && value.is_finite()) {
        return Err(SettingsError::invalid(key, "must be a positive number"));
    }
    Ok(())
}

/// Checks a Redis URL early, so a typo stops the process at start; with
/// `cluster`, a comma-separated list of seed-node URLs.
pub fn check_redis_url(key: &str, url: &str, cluster: bool) -> Result<(), SettingsError> {
    let shown = crate::redis::redacted(url);
    if cluster {
        return crate::redis::cluster_seeds(url).map(|_| ()).map_err(|e| {
            SettingsError::invalid(key, format!("`{shown}` is not a list of Redis URLs ({e})"))
        });
    }
    if url.contains(',') {
        return Err(SettingsError::invalid(
            key,
            format!(
                "`{shown}` lists several Redis servers: set redis_cluster = true for a Redis Cluster"
            ),
        ));
    }
    ::redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| SettingsError::invalid(key, format!("`{shown}` is not a Redis URL ({e})")))
}

/// Checks that an http(s) URL parses.
pub fn check_http_url(key: &str, url: &str) -> Result<(), SettingsError> {
    match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => {
            Ok(())
        }
        _ => Err(SettingsError::invalid(
            key,
            format!("`{url}` is not an http:// URL"),
        )),
    }
}

/// Host name of this machine, for derived node ids.
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct S {
        #[serde(default = "d_listen")]
        listen: ListenSpec,
        #[serde(default)]
        n: u32,
    }
    fn d_listen() -> ListenSpec {
        "0.0.0.0:1".parse().unwrap()
    }
    impl Validate for S {
        fn validate(&self) -> Result<(), SettingsError> {
            Ok(())
        }
    }

    #[test]
    fn cluster_keys_are_sorted_and_unique() {
        assert!(CLUSTER_KEYS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(unlisted_keys::<S>(), ["n"]);
    }

    #[test]
    fn listen_specs() {
        let l: ListenSpec = "127.0.0.1:9000-9099".parse().unwrap();
        assert_eq!(l.ports, 9000..=9099);
        assert!(l.is_loopback());
        assert_eq!(l.to_string(), "127.0.0.1:9000-9099");
        let l: ListenSpec = "[::1]:0".parse().unwrap();
        assert_eq!(l.ports, 0..=0);
        assert!("127.0.0.1".parse::<ListenSpec>().is_err());
        assert!("127.0.0.1:9-1".parse::<ListenSpec>().is_err());
        assert!("nohost:80".parse::<ListenSpec>().is_err());
    }

    #[test]
    fn overrides_beat_file_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("turnout-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:5\"\nn = 3\n").unwrap();
        let s: S = load(&serde_json::json!({"n": 7, "listen": null}), Some(&file)).unwrap();
        assert_eq!(s.n, 7);
        assert_eq!(s.listen.ports, 5..=5);

        std::fs::write(&file, "listen = \"nope\"\n").unwrap();
        let e = load::<S, _>(&serde_json::json!({}), Some(&file))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listen`"), "{e}");

        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let e = load::<S, _>(&serde_json::json!({}), Some(&file))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");

        // Another process's key is passed over, and only from the file.
        std::fs::write(&file, "n = 2\napi_key = \"k\"\n").unwrap();
        let s: S = load(&serde_json::json!({}), Some(&file)).unwrap();
        assert_eq!(s.n, 2);
        let e = load::<S, _>(&serde_json::json!({"api_key": "k"}), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("api_key"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }
}
