//! Any bytes a client may send as a text frame: the parser never panics,
//! and what it accepts keeps the rules (names, lengths).
#![no_main]
use libfuzzer_sys::fuzz_target;
use turnout_proto::frames::{
    ClientFrame, MAX_ID_LEN, MAX_METHOD_LEN, MAX_TOKEN_LEN, parse_client_frame,
};
use turnout_proto::names::check_room;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_client_frame(&text) {
        Ok(ClientFrame::Join { room, epoch, .. }) => {
            assert!(check_room(&room).is_ok());
            assert!(epoch.is_none_or(|e| e.len() <= MAX_ID_LEN));
        }
        Ok(ClientFrame::Leave { room }) => assert!(check_room(&room).is_ok()),
        Ok(ClientFrame::Publish { room, id, data }) => {
            assert!(check_room(&room).is_ok());
            assert!(id.is_none_or(|i| i.len() <= MAX_ID_LEN));
            assert!(serde_json_valid(data.get()));
        }
        Ok(ClientFrame::Refresh { token }) => assert!(token.len() <= MAX_TOKEN_LEN),
        Ok(ClientFrame::Rpc { id, method, data }) => {
            assert!(!id.is_empty() && id.len() <= MAX_ID_LEN);
            assert!(!method.is_empty() && method.len() <= MAX_METHOD_LEN);
            assert!(serde_json_valid(data.get()));
        }
        Ok(ClientFrame::Ping) => {}
        Err(e) => assert!(!e.message.is_empty()),
    }
});

fn serde_json_valid(s: &str) -> bool {
    // The payload passed on byte for byte must itself be JSON.
    turnout_proto::bus::room_message(&turnout_proto::bus::frame_parts(
        "r",
        "u",
        "n",
        0,
        &serde_json_raw(s),
    )
    .render(1))
    .is_some()
}

fn serde_json_raw(s: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(s.to_owned()).expect("accepted data is JSON")
}
