//! The closed set of error codes carried by `error` frames (and HTTP/gRPC
//! errors), and the WebSocket close codes turnout uses.
//!
//! Close codes follow one rule clients can act on without knowing them all:
//! 1000-2999 are the WebSocket standard's, 3000-3499 mean "reconnect (with
//! backoff), resume with `since`", 3500-3999 mean "do not reconnect as is".

/// Codes of `{"type":"error","code":…}` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not JSON, or not a JSON object.
    BadJson,
    /// `type` is missing or not one of the client frame types.
    UnknownType,
    /// A required field is missing or has the wrong type.
    BadFrame,
    /// A room name or user id breaks the charset/length rules.
    BadName,
    /// The room was not joined on this connection.
    NotJoined,
    /// The connection already holds the maximum number of rooms.
    TooManyRooms,
    /// Publishing faster than the per-connection rate.
    RateLimited,
    /// The room is owned by another node (sticky); see `redirect`.
    WrongNode,
    /// Not allowed by the token's claims.
    Forbidden,
    /// The node is shutting down and takes no new rooms.
    Draining,
    /// A dependency (Redis) failed; retry later.
    Unavailable,
    /// Unexpected server failure; details are in the server's log only.
    Internal,
    /// The API key or client token is missing or wrong (a `refresh` frame's
    /// token too).
    Unauthorized,
    /// The client token expired: send a fresh one (`refresh`) in time, or
    /// reconnect with one.
    TokenExpired,
    /// Server API and upgrades only: the HTTP request is not what the endpoint takes.
    BadRequest,
    /// The backend refused a publish or an rpc (its hook answered an error).
    Rejected,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownType,
        ErrorCode::BadFrame,
        ErrorCode::BadName,
        ErrorCode::NotJoined,
        ErrorCode::TooManyRooms,
        ErrorCode::RateLimited,
        ErrorCode::WrongNode,
        ErrorCode::Forbidden,
        ErrorCode::Draining,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::BadRequest,
        ErrorCode::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadName => "bad_name",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::WrongNode => "wrong_node",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Draining => "draining",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Rejected => "rejected",
        }
    }

    /// The HTTP status the server API answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadJson
            | ErrorCode::BadFrame
            | ErrorCode::BadName
            | ErrorCode::UnknownType
            | ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::Rejected => 422,
            ErrorCode::NotJoined | ErrorCode::WrongNode => 409,
            ErrorCode::RateLimited | ErrorCode::TooManyRooms => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Draining | ErrorCode::Unavailable => 503,
        }
    }

    /// The gRPC status code for this code.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::BadJson
            | ErrorCode::BadFrame
            | ErrorCode::BadName
            | ErrorCode::UnknownType
            | ErrorCode::BadRequest => tonic::Code::InvalidArgument,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => tonic::Code::Unauthenticated,
            ErrorCode::Forbidden => tonic::Code::PermissionDenied,
            ErrorCode::Rejected => tonic::Code::FailedPrecondition,
            ErrorCode::RateLimited | ErrorCode::TooManyRooms => tonic::Code::ResourceExhausted,
            ErrorCode::NotJoined | ErrorCode::WrongNode => tonic::Code::FailedPrecondition,
            ErrorCode::Draining | ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// A gRPC status with this code and `message`.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), message)
    }
}

impl From<crate::names::NameError> for ErrorCode {
    fn from(_: crate::names::NameError) -> Self {
        ErrorCode::BadName
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes sent by turnout.
pub mod close {
    /// Normal close.
    pub const NORMAL: u16 = 1000;
    /// The peer broke the protocol.
    pub const PROTOCOL: u16 = 1002;
    /// Sustained abuse (e.g. publishing far over the rate limit).
    pub const POLICY: u16 = 1008;
    /// A server bug ended the session.
    pub const INTERNAL: u16 = 1011;
    /// A text frame was not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A frame exceeded `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The backend did not answer the connect hook: reconnect with backoff.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The node is restarting or draining: reconnect through the gateway.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client read too slowly and its send queue filled up; reconnect and
    /// resume with `since`.
    pub const SLOW_CONSUMER: u16 = 3008;
    /// No frame or pong within `idle_timeout`; reconnect when needed.
    pub const IDLE: u16 = 3009;
    /// The client token expired and no fresh one came (`refresh`):
    /// reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 3010;
    /// A backend disconnected the user (server API `Disconnect`); do not
    /// reconnect as is.
    pub const KICKED: u16 = 3500;
    /// The backend's connect hook refused the connection (the reason is its
    /// message); do not reconnect as is.
    pub const REFUSED: u16 = 4403;
}
