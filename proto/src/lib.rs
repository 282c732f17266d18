//! turnout's contracts: everything that crosses a process boundary, and no I/O.
//!
//! # Layout
//! - [`v1`]: gRPC services and messages generated from `proto/turnout/v1/turnout.proto`
//!   (`Router`, `Node`, `Gateway`), plus [`FILE_DESCRIPTOR_SET`] for reflection.
//! - [`frames`]: the JSON frames clients and servers exchange over WebSocket.
//! - [`codes`]: the closed set of error codes (each with its HTTP status and
//!   gRPC code) and WebSocket close codes.
//! - [`keys`]: every Redis key and channel name.
//! - [`bus`]: how a room message is encoded once, for the pub/sub bus and history.
//! - [`names`]: the charset and length rules for room names and user ids, and
//!   the validated [`names::RoomName`] and [`names::UserId`] every edge parses into.

pub mod bus;
pub mod codes;
pub mod frames;
pub mod keys;
pub mod names;

/// Generated gRPC code for package `turnout.v1`.
#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("turnout.v1");
}

/// Encoded `FileDescriptorSet` of every turnout proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/turnout_descriptor.bin"));

/// The two ways of scaling WebSockets past one server, and the baseline
/// they fix.
/// The default is `pubsub`, as in every process's settings.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Servers that share nothing: each serves only its own clients, with
    /// room state in its own memory (the single-server baseline).
    Local,
    /// Every room has one owner node; all its members connect there.
    Sticky,
    /// Clients land anywhere; nodes relay room messages over Redis pub/sub.
    #[default]
    Pubsub,
    /// Clients land anywhere; each room's owner node sequences its messages
    /// and streams them to the nodes holding its members (no Redis pub/sub).
    Relay,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Local => "local",
            Strategy::Sticky => "sticky",
            Strategy::Pubsub => "pubsub",
            Strategy::Relay => "relay",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Strategy::Local),
            "sticky" => Ok(Strategy::Sticky),
            "pubsub" => Ok(Strategy::Pubsub),
            "relay" => Ok(Strategy::Relay),
            other => Err(format!(
                "`{other}` is not a strategy; accepted values: sticky, pubsub, relay, local"
            )),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
