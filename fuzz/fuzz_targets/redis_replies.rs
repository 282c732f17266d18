//! Any reply Redis might send to the history and presence scripts (a
//! corrupted key, another program's data in turnout's keys): decoding
//! never panics, and a decoded slice is consistent.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use turnout_common::redis::{HistorySlice, Presence};

#[derive(Arbitrary, Debug)]
enum V {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
    Array(Vec<V>),
}

fn value(v: V, depth: u32) -> redis::Value {
    match v {
        V::Nil => redis::Value::Nil,
        V::Int(i) => redis::Value::Int(i),
        V::Bulk(b) => redis::Value::BulkString(b),
        V::Simple(s) => redis::Value::SimpleString(s),
        V::Array(a) if depth < 4 => {
            redis::Value::Array(a.into_iter().map(|v| value(v, depth + 1)).collect())
        }
        V::Array(_) => redis::Value::Nil,
    }
}

fuzz_target!(|input: (u64, V, V)| {
    let (since, history, presence) = input;
    if let Ok(slice) = HistorySlice::decode(since, value(history, 0)) {
        // Complete means nothing after `since` is missing.
        if slice.complete && since < slice.seq {
            assert!(slice.messages.last().is_some_and(|m| m.0 >= slice.seq));
        }
    }
    if let Ok(p) = Presence::decode(value(presence, 0)) {
        assert!(p.users.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
    }
});
