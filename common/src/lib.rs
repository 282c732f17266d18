//! Runtime pieces every turnout process shares.
//!
//! # Layout
//! - [`settings`]: TOML file + env + flags merged into one typed, validated struct,
//!   with errors that name the setting; listen specs with port ranges.
//! - [`redis`]: connections to Redis (RESP3, keepalive, reconnect with backoff),
//!   the Lua scripts every process runs the same way, room operations, the
//!   room-push reader and channel subscriptions.
//! - [`recovery`]: the recovery cursor every reader of a room keeps.
//! - [`backoff`]: exponential backoff with jitter for retry loops.
//! - [`serve`]: binding, serving HTTP + gRPC on one port, shutdown signals.
//! - [`metrics`]: a per-process Prometheus registry and its `/metrics` handler.
//! - [`net`]: connections counted per client address (IPv6 per /64).
//! - [`auth`]: client JWTs, API key, internal token, the open-mode rule.
//! - [`readiness`]: what a process waits for, for `/readyz` and its log, and
//!   the app it serves while it starts.
//! - [`grpc`]: health and reflection services for every gRPC port.
//! - [`namespaces`]: per-namespace room options (`[namespaces.<name>]`).
//! - [`process_settings`]: the macro that declares each process's settings,
//!   with the keys several processes share declared once.

pub mod auth;
pub mod backoff;
pub mod grpc;
pub mod metrics;
pub mod namespaces;
pub mod net;
pub mod placement;
pub mod process_settings;
pub mod readiness;
pub mod recovery;
pub mod redis;
pub mod relay;
pub mod serve;
pub mod settings;
pub mod telemetry;

/// This build's version, reported in heartbeats and `/api/cluster`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
