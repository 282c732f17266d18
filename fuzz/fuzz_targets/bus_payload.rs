//! Any payload on a room channel (another process, or whoever can write to
//! Redis): decoding never panics, and a decoded message keeps its parts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use turnout_proto::bus::{Payload, decode_any, room_message};

fuzz_target!(|data: &[u8]| {
    match decode_any(data) {
        Some(Payload::Message { epoch, frame, .. }) => {
            assert!(epoch.bytes().all(|b| b.is_ascii_digit()));
            assert!(frame.len() < data.len());
            if let Ok(text) = std::str::from_utf8(frame) {
                let _ = room_message(text);
            }
        }
        Some(Payload::Presence { origin, frame }) => {
            assert!(!origin.contains(' '));
            assert!(frame.len() < data.len());
        }
        None => {}
    }
});
