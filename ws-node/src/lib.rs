//! turnout ws-node: holds client WebSocket sessions and the rooms they join.
//!
//! # Layout
//! - [`settings`]: the node's settings (file, env, flags) and their defaults.
//! - `node`: the process: HTTP routes, upgrades, heartbeats, drain, [`run`].
//! - `session`: one WebSocket connection: frame handling, bounded send queue.
//! - `hub`: rooms on this node, in-order fan-out, join with replay, publish.
//! - `bus`: the Redis pub/sub relay (pubsub strategy) and its subscriptions.
//! - `grpc`: the internal `turnout.v1.Node` service.
//! - `metrics`: what the node exports on `/metrics`.

mod bus;
mod grpc;
mod hub;
mod metrics;
mod node;
mod session;
pub mod settings;

pub use node::{NodeError, run};
pub use settings::Settings;
