//! JSON frames of the client protocol (see `docs/PROTOCOL.md`).
//!
//! Client frames are parsed by [`parse_client_frame`], which never panics and
//! maps every malformed input to an [`ErrorCode`] with a message safe to show
//! the client. Server frames are [`ServerFrame`]; `message` frames are normally
//! rendered once by [`crate::bus`] rather than through this type.

use crate::codes::ErrorCode;
use crate::names::RoomName;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A validated frame from a client.
#[derive(Debug)]
pub enum ClientFrame {
    Join {
        room: RoomName,
        since: Option<u64>,
        /// The room's history epoch the client's `since` belongs to.
        epoch: Option<String>,
    },
    Leave {
        room: RoomName,
    },
    Publish {
        room: RoomName,
        data: Box<RawValue>,
        id: Option<String>,
    },
    /// A fresh client token, before the current one expires.
    Refresh {
        token: String,
    },
    /// A request to the backend's rpc hook, answered by `rpc_result` (or an
    /// `error`) with the same `id`.
    Rpc {
        id: String,
        method: String,
        data: Box<RawValue>,
    },
    Ping,
}

/// Longest accepted client-chosen publish `id`, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Longest accepted token in a `refresh` frame, in bytes.
pub const MAX_TOKEN_LEN: usize = 8192;

/// Longest accepted rpc `method`, in bytes.
pub const MAX_METHOD_LEN: usize = 64;

/// Why a client frame was refused: the code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
        }
    }
}

// Every field optional so that a missing one is reported precisely rather
// than as a generic serde error.
#[derive(Deserialize)]
struct RawFrame {
    #[serde(rename = "type")]
    kind: Option<String>,
    room: Option<String>,
    since: Option<u64>,
    // `"data": null` is a payload like any other, not a missing field.
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    id: Option<String>,
    epoch: Option<String>,
    token: Option<String>,
    method: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Parses and validates one client text frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let raw: RawFrame = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(FrameError::new(
                ErrorCode::BadJson,
                "frame is not valid JSON",
            ));
        }
        Err(e) => {
            // Valid JSON with a wrong shape: not an object, or a field of the wrong type.
            let msg = e.to_string();
            let msg = msg.split(" at line").next().unwrap_or("bad frame");
            let code = if text.trim_start().starts_with('{') {
                ErrorCode::BadFrame
            } else {
                ErrorCode::BadJson
            };
            return Err(FrameError::new(code, format!("malformed frame: {msg}")));
        }
    };
    let kind = raw
        .kind
        .ok_or_else(|| FrameError::new(ErrorCode::UnknownType, "missing field `type`"))?;
    let room = |room: Option<String>| -> Result<RoomName, FrameError> {
        let room =
            room.ok_or_else(|| FrameError::new(ErrorCode::BadFrame, "missing field `room`"))?;
        RoomName::parse(room)
            .map_err(|e| FrameError::new(ErrorCode::BadName, format!("room name {e}")))
    };
    match kind.as_str() {
        "join" => {
            if raw.epoch.as_ref().is_some_and(|e| e.len() > MAX_ID_LEN) {
                return Err(FrameError::new(ErrorCode::BadFrame, "`epoch` is too long"));
            }
            Ok(ClientFrame::Join {
                room: room(raw.room)?,
                since: raw.since,
                epoch: raw.epoch,
            })
        }
        "leave" => Ok(ClientFrame::Leave {
            room: room(raw.room)?,
        }),
        "publish" => {
            let room = room(raw.room)?;
            let data = raw
                .data
                .ok_or_else(|| FrameError::new(ErrorCode::BadFrame, "missing field `data`"))?;
            if let Some(id) = &raw.id
                && id.len() > MAX_ID_LEN
            {
                return Err(FrameError::new(
                    ErrorCode::BadFrame,
                    format!("`id` must be at most {MAX_ID_LEN} bytes"),
                ));
            }
            Ok(ClientFrame::Publish {
                room,
                data,
                id: raw.id,
            })
        }
        "ping" => Ok(ClientFrame::Ping),
        "rpc" => {
            let id = raw
                .id
                .filter(|i| !i.is_empty())
                .ok_or_else(|| FrameError::new(ErrorCode::BadFrame, "missing field `id`"))?;
            if id.len() > MAX_ID_LEN {
                return Err(FrameError::new(
                    ErrorCode::BadFrame,
                    format!("`id` must be at most {MAX_ID_LEN} bytes"),
                ));
            }
            let method = raw
                .method
                .ok_or_else(|| FrameError::new(ErrorCode::BadFrame, "missing field `method`"))?;
            if method.is_empty()
                || method.len() > MAX_METHOD_LEN
                || !method.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@')
                })
            {
                return Err(FrameError::new(
                    ErrorCode::BadFrame,
                    format!("`method` must be 1 to {MAX_METHOD_LEN} bytes of [A-Za-z0-9-_.:/@]"),
                ));
            }
            let data = raw
                .data
                .unwrap_or_else(|| RawValue::from_string("null".to_owned()).expect("null is JSON"));
            Ok(ClientFrame::Rpc { id, method, data })
        }
        "refresh" => {
            let token = raw
                .token
                .ok_or_else(|| FrameError::new(ErrorCode::BadFrame, "missing field `token`"))?;
            if token.len() > MAX_TOKEN_LEN {
                return Err(FrameError::new(ErrorCode::BadFrame, "`token` is too long"));
            }
            Ok(ClientFrame::Refresh { token })
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(FrameError::new(
                ErrorCode::UnknownType,
                format!(
                    "unknown frame type {shown:?}; expected join, leave, publish, rpc, refresh or ping"
                ),
            ))
        }
    }
}

/// Frames the server sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        node: String,
        strategy: String,
        conn: String,
        /// What the backend's connect hook attached to the connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<serde_json::Value>,
    },
    Joined {
        room: String,
        seq: u64,
        /// The room's history epoch; it changes when the room's state was lost.
        #[serde(default)]
        epoch: String,
        presence: Vec<String>,
        /// Present when the join asked for `since`: whether every message
        /// after `since` was replayed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Present when the replay was cut (`max_replay_bytes`): it ends at
        /// this seq; join again with `since` = it for the rest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replay_until: Option<u64>,
    },
    Left {
        room: String,
    },
    Message {
        room: String,
        seq: u64,
        /// On the first message of a history epoch only: the epoch, for a
        /// member that joined the room before it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        from: String,
        node: String,
        ts: u64,
        data: serde_json::Value,
    },
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        seq: u64,
        /// The publish id was accepted before: `seq` is the first one's and
        /// the message was not published again.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    Presence {
        room: String,
        event: String,
        user: String,
    },
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redirect: Option<String>,
    },
    Reconnect {
        reason: String,
    },
    /// A `refresh` was accepted: the connection lives until `exp`.
    Refreshed {
        exp: u64,
    },
    /// The backend's answer to an `rpc` frame.
    RpcResult {
        id: String,
        data: serde_json::Value,
    },
    Pong,
}

impl ServerFrame {
    /// An error frame for a refused client frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            code: code.as_str().to_owned(),
            message: message.into(),
            room: None,
            id: None,
            redirect: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_client_frame(text).unwrap_err().code
    }

    #[test]
    fn valid_frames() {
        match parse_client_frame(r#"{"type":"join","room":"r1","since":41}"#).unwrap() {
            ClientFrame::Join { room, since, .. } => {
                assert_eq!(room, "r1");
                assert_eq!(since, Some(41));
            }
            f => panic!("{f:?}"),
        }
        match parse_client_frame(r#"{"type":"publish","room":"r1","data":{"a":[1,2]},"id":"c-7"}"#)
            .unwrap()
        {
            ClientFrame::Publish { room, data, id } => {
                assert_eq!(room, "r1");
                assert_eq!(data.get(), r#"{"a":[1,2]}"#);
                assert_eq!(id.as_deref(), Some("c-7"));
            }
            f => panic!("{f:?}"),
        }
        assert!(matches!(
            parse_client_frame(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        ));
        // A null payload is data, not a missing field.
        match parse_client_frame(r#"{"type":"publish","room":"r1","data":null}"#).unwrap() {
            ClientFrame::Publish { data, .. } => assert_eq!(data.get(), "null"),
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn bad_frames_get_codes() {
        assert_eq!(code("not json"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code("{}"), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"join"}"#), ErrorCode::BadFrame);
        assert_eq!(code(r#"{"type":"join","room":7}"#), ErrorCode::BadFrame);
        assert_eq!(code(r#"{"type":"join","room":"a b"}"#), ErrorCode::BadName);
        assert_eq!(
            code(r#"{"type":"publish","room":"r"}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(r#"{"type":"join","room":"r","since":-1}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(code(r#"{"type":"rpc","method":"m"}"#), ErrorCode::BadFrame);
        assert_eq!(
            code(r#"{"type":"rpc","id":"","method":"m"}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(code(r#"{"type":"rpc","id":"r1"}"#), ErrorCode::BadFrame);
        assert_eq!(
            code(r#"{"type":"rpc","id":"r1","method":"a b"}"#),
            ErrorCode::BadFrame
        );
        let long = "m".repeat(MAX_METHOD_LEN + 1);
        assert_eq!(
            code(&format!(r#"{{"type":"rpc","id":"r1","method":"{long}"}}"#)),
            ErrorCode::BadFrame
        );
        match parse_client_frame(r#"{"type":"rpc","id":"r1","method":"m"}"#).unwrap() {
            ClientFrame::Rpc { data, .. } => assert_eq!(data.get(), "null", "data is optional"),
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let f = ServerFrame::Joined {
            room: "r".into(),
            seq: 3,
            epoch: "e".into(),
            presence: vec!["u".into()],
            recovered: None,
            replay_until: None,
        };
        let json = f.to_json();
        assert_eq!(
            json,
            r#"{"type":"joined","room":"r","seq":3,"epoch":"e","presence":["u"]}"#
        );
        assert_eq!(serde_json::from_str::<ServerFrame>(&json).unwrap(), f);
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    }
}

/// Property tests over the parser: it never panics, and what it accepts is
/// exactly what it should. `PROPTEST_CASES` sets the number of inputs.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".{0,80}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_owned()),
                        Just("room".to_owned()),
                        Just("since".to_owned()),
                        Just("data".to_owned()),
                        Just("id".to_owned()),
                        Just("epoch".to_owned()),
                        ".{0,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn frame_like() -> impl Strategy<Value = serde_json::Value> {
        (
            prop_oneof![
                Just("join"),
                Just("leave"),
                Just("publish"),
                Just("ping"),
                Just("other")
            ],
            prop::option::of(prop_oneof!["[a-z0-9]{1,70}", ".{0,10}"]),
            prop::option::of(any::<u64>()),
            prop::option::of(json_value()),
            prop::option::of(".{0,70}"),
        )
            .prop_map(|(t, room, since, data, id)| {
                let mut m = serde_json::Map::new();
                m.insert("type".into(), t.into());
                if let Some(r) = room {
                    m.insert("room".into(), r.into());
                }
                if let Some(s) = since {
                    m.insert("since".into(), s.into());
                }
                if let Some(d) = data {
                    m.insert("data".into(), d);
                }
                if let Some(i) = id {
                    m.insert("id".into(), i.into());
                }
                serde_json::Value::Object(m)
            })
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = parse_client_frame(&s);
        }

        #[test]
        fn arbitrary_bytes_as_text_never_panic(b in prop::collection::vec(any::<u8>(), 0..200)) {
            let s = String::from_utf8_lossy(&b);
            let _ = parse_client_frame(&s);
        }

        #[test]
        fn arbitrary_json_never_panics(v in json_value()) {
            let _ = parse_client_frame(&v.to_string());
        }

        #[test]
        fn accepted_frames_are_valid(v in frame_like()) {
            let text = v.to_string();
            match parse_client_frame(&text) {
                Ok(ClientFrame::Join { room, .. }) | Ok(ClientFrame::Leave { room }) => {
                    prop_assert!(crate::names::check_room(&room).is_ok());
                }
                Ok(ClientFrame::Publish { room, data, id }) => {
                    prop_assert!(crate::names::check_room(&room).is_ok());
                    // The payload is passed through byte for byte.
                    let sent = v.get("data").map(|d| d.to_string());
                    prop_assert_eq!(Some(data.get().to_owned()), sent);
                    prop_assert!(id.is_none_or(|i| i.len() <= MAX_ID_LEN));
                }
                Ok(ClientFrame::Ping) => prop_assert_eq!(v["type"].as_str(), Some("ping")),
                Ok(ClientFrame::Refresh { token }) => prop_assert!(token.len() <= MAX_TOKEN_LEN),
                Ok(ClientFrame::Rpc { id, method, .. }) => {
                    prop_assert!(!id.is_empty() && id.len() <= MAX_ID_LEN);
                    prop_assert!(!method.is_empty() && method.len() <= MAX_METHOD_LEN);
                }
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }

        // The other half: a parser that refused everything would pass the
        // tests above. Every well-formed frame is taken, as it was sent.
        #[test]
        fn well_formed_frames_are_taken_as_sent(
            kind in 0..5u8,
            room in "[A-Za-z0-9_.:@-]{1,64}",
            since in prop::option::of(any::<u64>()),
            data in json_value(),
            id in prop::option::of("[A-Za-z0-9-]{1,64}"),
        ) {
            let v = match kind {
                0 => serde_json::json!({"type": "join", "room": room, "since": since}),
                1 => serde_json::json!({"type": "leave", "room": room}),
                2 => serde_json::json!({"type": "publish", "room": room, "data": data, "id": id}),
                3 => serde_json::json!({"type": "rpc", "id": room, "method": room, "data": data}),
                _ => serde_json::json!({"type": "ping"}),
            };
            let parsed = parse_client_frame(&v.to_string());
            match (kind, parsed) {
                (0, Ok(ClientFrame::Join { room: r, since: s, .. })) => {
                    prop_assert_eq!(r.as_str(), room.as_str());
                    prop_assert_eq!(s, since);
                }
                (1, Ok(ClientFrame::Leave { room: r })) => prop_assert_eq!(r.as_str(), room.as_str()),
                (2, Ok(ClientFrame::Publish { room: r, data: d, id: i })) => {
                    prop_assert_eq!(r.as_str(), room.as_str());
                    prop_assert_eq!(d.get(), data.to_string());
                    prop_assert_eq!(i, id);
                }
                (3, Ok(ClientFrame::Rpc { id: i, method: m, data: d })) => {
                    prop_assert_eq!(i, room.clone());
                    prop_assert_eq!(m, room.clone());
                    prop_assert_eq!(d.get(), data.to_string());
                }
                (4, Ok(ClientFrame::Ping)) => {}
                (k, other) => prop_assert!(false, "kind {} {} parsed as {:?}", k, v, other),
            }
        }
    }
}
