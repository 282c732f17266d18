//! The one encoding of a room message.
//!
//! A message is rendered to its client frame JSON exactly once, when it is
//! published: the publisher builds a `prefix` and `suffix` around the seq,
//! the Redis script that assigns the seq joins them, appends the frame to the
//! room's history and (pubsub strategy) publishes it. Nodes forward the bytes
//! to their members unchanged.
//!
//! Bus payload (pub/sub): `<seq> <epoch> <frame JSON>`, seq in ASCII
//! decimal, the room's history epoch (digits), one space after each; a
//! reader that sees the epoch change knows the room's state was lost and
//! started over, without waiting for a reconnect to find out. A presence
//! event is `p <conn> <frame JSON>`. History entry: stream id `<seq>-0`,
//! field `f` = frame JSON.

use serde::Serialize;
use serde_json::value::RawValue;

/// The parts of a message frame around its seq.
#[derive(Debug, Clone)]
pub struct FrameParts {
    pub prefix: String,
    pub suffix: String,
}

#[derive(Serialize)]
struct Head<'a> {
    r#type: &'static str,
    room: &'a str,
}

#[derive(Serialize)]
struct Tail<'a> {
    from: &'a str,
    node: &'a str,
    ts: u64,
    data: &'a RawValue,
}

/// Builds the frame `{"type":"message","room":…,"seq":N,"from":…,"node":…,"ts":…,"data":…}`
/// around a seq that is not yet known.
pub fn frame_parts(room: &str, from: &str, node: &str, ts: u64, data: &RawValue) -> FrameParts {
    let head = serde_json::to_string(&Head {
        r#type: "message",
        room,
    })
    .expect("serialising strings cannot fail");
    let tail = serde_json::to_string(&Tail {
        from,
        node,
        ts,
        data,
    })
    .expect("serialising strings cannot fail");
    // head = {"type":"message","room":"r"}  ->  {"type":"message","room":"r","seq":
    let prefix = format!("{},\"seq\":", &head[..head.len() - 1]);
    // tail = {"from":…}  ->  ,"from":…}
    let suffix = format!(",{}", &tail[1..]);
    FrameParts { prefix, suffix }
}

impl FrameParts {
    /// The full frame for a given seq (what the Redis script builds).
    pub fn render(&self, seq: u64) -> String {
        format!("{}{}{}", self.prefix, seq, self.suffix)
    }

    /// The frame of a message that began history epoch `epoch`: it names
    /// the epoch, so that a member that joined the room before it had one
    /// learns it (what the Redis script builds then).
    pub fn render_in(&self, seq: u64, epoch: &str) -> String {
        format!(
            "{}{},\"epoch\":\"{}\"{}",
            self.prefix, seq, epoch, self.suffix
        )
    }

    /// The frame as a publish's outcome says it was stored.
    pub fn rendered(&self, seq: u64, epoch: &str, first_of_epoch: bool) -> String {
        if first_of_epoch {
            self.render_in(seq, epoch)
        } else {
            self.render(seq)
        }
    }
}

/// A message frame's `ts` (when it was published, in ms since the epoch),
/// found without parsing the frame: its first `,"ts":` is the field (a
/// quote inside a JSON string is escaped, and `data` comes after it).
pub fn frame_ts(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b",\"ts\":";
    let at = frame.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// A bus payload: a room message with its seq, or a presence event.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Message {
        seq: u64,
        /// The room's history epoch the seq counts in.
        epoch: &'a str,
        frame: &'a [u8],
    },
    /// `origin` is the connection the event is about (it is not sent to it).
    Presence { origin: &'a str, frame: &'a [u8] },
}

/// Encodes a presence event: `p <origin conn> <frame>`.
pub fn encode_presence(origin: &str, frame: &str) -> String {
    format!("p {origin} {frame}")
}

/// Decodes any bus payload.
pub fn decode_any(payload: &[u8]) -> Option<Payload<'_>> {
    if let Some(rest) = payload.strip_prefix(b"p ") {
        let space = rest.iter().position(|&b| b == b' ')?;
        let origin = std::str::from_utf8(&rest[..space]).ok()?;
        return Some(Payload::Presence {
            origin,
            frame: &rest[space + 1..],
        });
    }
    decode(payload).map(|(seq, epoch, frame)| Payload::Message { seq, epoch, frame })
}

/// Splits a bus payload into seq, epoch and frame.
pub fn decode(payload: &[u8]) -> Option<(u64, &str, &[u8])> {
    let space = payload.iter().position(|&b| b == b' ')?;
    let seq = std::str::from_utf8(&payload[..space]).ok()?.parse().ok()?;
    let rest = &payload[space + 1..];
    let space = rest.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..space]).ok()?;
    if !epoch.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((seq, epoch, &rest[space + 1..]))
}

/// Encodes a bus payload (the Redis script does the same in Lua).
pub fn encode(seq: u64, epoch: &str, frame: &str) -> String {
    format!("{seq} {epoch} {frame}")
}

/// A stored message frame as a gRPC `RoomMessage`. The data goes through
/// as it was published, byte for byte: valid JSON that a JSON value type
/// would refuse (a number past `f64`, such as `1e999`) must not make a
/// message unreadable for gRPC streams and history.
pub fn room_message(frame: &str) -> Option<crate::v1::RoomMessage> {
    #[derive(serde::Deserialize)]
    struct Stored<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        room: String,
        seq: u64,
        from: String,
        node: String,
        ts: u64,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let m: Stored<'_> = serde_json::from_str(frame).ok()?;
    (m.kind == "message").then(|| crate::v1::RoomMessage {
        room: m.room,
        seq: m.seq,
        from: m.from,
        node: m.node,
        ts: m.ts,
        data_json: m.data.get().to_owned(),
        epoch: String::new(),
    })
}

/// A gRPC `RoomMessage` as the frame clients get (the inverse of
/// [`room_message`]).
pub fn message_frame(m: &crate::v1::RoomMessage) -> Option<String> {
    let data = RawValue::from_string(m.data_json.clone()).ok()?;
    Some(frame_parts(&m.room, &m.from, &m.node, m.ts, &data).render(m.seq))
}

/// Parses a history stream id `<seq>-0` into its seq.
pub fn seq_from_stream_id(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::ServerFrame;

    #[test]
    fn a_frames_ts_is_found_without_parsing_it() {
        let data = RawValue::from_string(r#"{"ts":1,"x":",\"ts\":2"}"#.into()).unwrap();
        let parts = frame_parts("r", r#"a,"ts":3"#, "n1", 1_700_000_000_123, &data);
        assert_eq!(
            frame_ts(parts.render(7).as_bytes()),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            frame_ts(parts.render_in(7, "e").as_bytes()),
            Some(1_700_000_000_123)
        );
        assert_eq!(frame_ts(br#"{"type":"presence","room":"r"}"#), None);
    }

    #[test]
    fn data_past_a_json_value_type_goes_through_as_published() {
        // Valid JSON, though past f64: found by fuzz/fuzz_targets/client_frame.rs.
        for raw in ["1e999", r#"[5E0505920,2.5,null]"#, r#"{"n":-1e400}"#] {
            let data = RawValue::from_string(raw.into()).unwrap();
            let frame = frame_parts("r", "u", "n", 1, &data).render(3);
            let m = room_message(&frame).expect("a message");
            assert_eq!((m.seq, m.data_json.as_str()), (3, raw));
        }
        assert!(room_message(r#"{"type":"joined","room":"r","seq":1}"#).is_none());
    }

    #[test]
    fn rendered_frame_parses_as_message() {
        let data = RawValue::from_string(r#"{"text":"hi \"there\""}"#.into()).unwrap();
        let parts = frame_parts("r\"1", "u1", "node-a", 1700, &data);
        let frame = parts.render(42);
        let parsed: ServerFrame = serde_json::from_str(&frame).unwrap();
        match parsed {
            ServerFrame::Message {
                room,
                seq,
                epoch,
                from,
                node,
                ts,
                data,
            } => {
                assert_eq!(epoch, None);
                assert_eq!(room, "r\"1");
                assert_eq!(seq, 42);
                assert_eq!(from, "u1");
                assert_eq!(node, "node-a");
                assert_eq!(ts, 1700);
                assert_eq!(data["text"], "hi \"there\"");
            }
            other => panic!("not a message: {other:?}"),
        }
        let payload = encode(42, "17951", &frame);
        let (seq, epoch, body) = decode(payload.as_bytes()).unwrap();
        assert_eq!((seq, epoch), (42, "17951"));
        assert_eq!(body, frame.as_bytes());
    }

    #[test]
    fn the_first_message_of_an_epoch_names_it() {
        let data = RawValue::from_string("1".into()).unwrap();
        let parts = frame_parts("r", "u", "n", 7, &data);
        let frame = parts.rendered(1, "1700000000123456", true);
        match serde_json::from_str(&frame).unwrap() {
            ServerFrame::Message { seq, epoch, .. } => {
                assert_eq!((seq, epoch.as_deref()), (1, Some("1700000000123456")))
            }
            other => panic!("not a message: {other:?}"),
        }
        assert_eq!(
            room_message(&frame).unwrap().seq,
            1,
            "still a stored message"
        );
        assert_eq!(
            parts.rendered(2, "1700000000123456", false),
            parts.render(2)
        );
    }

    #[test]
    fn room_messages_round_trip() {
        let data = RawValue::from_string(r#"{"k":[1,"x"]}"#.into()).unwrap();
        let frame = frame_parts("r", "u", "n", 7, &data).render(3);
        let m = room_message(&frame).unwrap();
        assert_eq!(
            (m.seq, m.ts, m.data_json.as_str()),
            (3, 7, r#"{"k":[1,"x"]}"#)
        );
        assert_eq!(message_frame(&m).unwrap(), frame);
        assert!(room_message(r#"{"type":"pong"}"#).is_none());
    }

    #[test]
    fn presence_payloads() {
        let p = encode_presence("n1-7", r#"{"type":"presence"}"#);
        assert_eq!(
            decode_any(p.as_bytes()),
            Some(Payload::Presence {
                origin: "n1-7",
                frame: br#"{"type":"presence"}"#
            })
        );
        assert_eq!(
            decode_any(b"5 123 {}"),
            Some(Payload::Message {
                seq: 5,
                epoch: "123",
                frame: b"{}"
            })
        );
    }

    #[test]
    fn bad_payloads() {
        assert_eq!(decode(b"nospace"), None);
        assert_eq!(decode(b"x1 1 {}"), None);
        assert_eq!(decode(b"1 {}"), None, "no epoch");
        assert_eq!(decode(b"1 x {}"), None, "epoch not digits");
        assert_eq!(seq_from_stream_id("17-0"), Some(17));
        assert_eq!(seq_from_stream_id("junk"), None);
    }
}
