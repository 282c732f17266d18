//! turnout ws-node: holds client WebSocket sessions and the rooms they join.
//!
//! # Layout
//! - [`settings`]: the node's settings (file, env, flags) and their defaults.
//! - `node`: the process: HTTP routes, upgrades, drain, [`run`].
//! - `heartbeat`: membership in the cluster (heartbeat, draining mark) and
//!   the periodic work riding on it.
//! - `session`: one WebSocket connection: reads and handles client frames.
//! - `limits`: what one connection may do per unit of time (no I/O).
//! - `conn`: the write path to one client: socket, bounded send queue,
//!   in-place writes.
//! - `strategy`: everything that differs between `local`, `sticky` and
//!   `pubsub`, one file each, chosen once at start.
//! - `hub`: rooms on this node and in-order fan-out; `join`: join (with
//!   replay, no gap at the hand-over) and leave; `presence`: presence and
//!   its leases.
//! - `sequencer`: one room's ordering state machine (no I/O).
//! - `store`: where room state lives: Redis, or memory (`local`).
//! - `bus`: the node's pub/sub connection: room channels (pubsub), the
//!   control channel (sticky).
//! - `grpc`: the internal `turnout.v1.Node` service.
//! - `metrics`: what the node exports on `/metrics`.

mod bus;
mod conn;
mod grpc;
mod heartbeat;
mod hooks;
mod hub;
mod join;
mod limits;
mod metrics;
mod node;
mod presence;
mod sequencer;
mod session;
pub mod settings;
mod store;
mod strategy;
mod webhooks;

pub use node::{LEAVE_CALL, NodeError, run};
pub use settings::Settings;
