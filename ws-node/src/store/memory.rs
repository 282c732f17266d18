//! Room state in the node's own memory (strategy `local`): what a single
//! server without Redis keeps. Seq, history and presence per room, bounded
//! like the Redis store: `history_size` messages per room, and rooms nobody
//! is in are forgotten after `room_ttl` (at once when they hold no history).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;
use turnout_common::redis::{HistorySlice, Presence, RoomConfig};
use turnout_proto::bus::FrameParts;

pub(crate) struct MemoryStore {
    pub(crate) cfg: RoomConfig,
    rooms: Mutex<HashMap<String, Room>>,
}

#[derive(Default)]
struct Room {
    seq: u64,
    /// Set when the room's seq starts at 1, as in Redis.
    epoch: String,
    history: VecDeque<(u64, String)>,
    /// conn label → user.
    presence: HashMap<String, String>,
    touched: Option<Instant>,
}

impl Room {
    fn slice(&self, since: u64, limit: u64) -> HistorySlice {
        let oldest = self.history.front().map(|m| m.0).unwrap_or(0);
        let messages = self
            .history
            .iter()
            .filter(|m| m.0 > since)
            .take(limit as usize)
            .cloned()
            .collect();
        HistorySlice::new(since, self.seq, oldest, messages, self.epoch.clone())
    }

    fn users(&self, limit: u64) -> Presence {
        let mut users: Vec<String> = self
            .presence
            .values()
            .take(limit.max(1) as usize)
            .cloned()
            .collect();
        users.sort_unstable();
        users.dedup();
        Presence {
            users,
            connections: self.presence.len() as u64,
            new_lease: false,
        }
    }
}

impl MemoryStore {
    pub(crate) fn new(cfg: RoomConfig) -> Self {
        MemoryStore {
            cfg,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns the message's seq and the room's epoch.
    pub(crate) fn publish(&self, room: &str, parts: &FrameParts) -> (u64, String) {
        let mut rooms = self.rooms();
        let r = rooms.entry(room.to_owned()).or_default();
        r.seq += 1;
        if r.seq == 1 {
            r.epoch = epoch_now();
        }
        r.touched = Some(Instant::now());
        if self.cfg.history_size > 0 {
            r.history.push_back((r.seq, parts.render(r.seq)));
            while r.history.len() as u64 > self.cfg.history_size {
                r.history.pop_front();
            }
        }
        (r.seq, r.epoch.clone())
    }

    pub(crate) fn history(&self, room: &str, since: u64, limit: u64) -> HistorySlice {
        match self.rooms().get(room) {
            Some(r) => r.slice(since, limit),
            None => HistorySlice::new(since, 0, 0, Vec::new(), String::new()),
        }
    }

    pub(crate) fn join(
        &self,
        room: &str,
        since: u64,
        limit: u64,
        conn: &str,
        user: &str,
        presence_limit: u64,
    ) -> (HistorySlice, Presence) {
        let mut rooms = self.rooms();
        let r = rooms.entry(room.to_owned()).or_default();
        r.presence.insert(conn.to_owned(), user.to_owned());
        r.touched = Some(Instant::now());
        (r.slice(since, limit), r.users(presence_limit))
    }

    pub(crate) fn presence(&self, room: &str, limit: u64) -> Presence {
        self.rooms()
            .get(room)
            .map(|r| r.users(limit))
            .unwrap_or_default()
    }

    /// Removes a member; returns how many are left.
    pub(crate) fn leave(&self, room: &str, conn: &str) -> u64 {
        let mut rooms = self.rooms();
        let Some(r) = rooms.get_mut(room) else {
            return 0;
        };
        r.presence.remove(conn);
        r.touched = Some(Instant::now());
        let left = r.presence.len() as u64;
        if left == 0 && r.history.is_empty() {
            rooms.remove(room);
        }
        left
    }

    /// Forgets rooms nobody has been in for `room_ttl`; returns how many.
    pub(crate) fn sweep(&self) -> usize {
        let ttl = self.cfg.room_ttl;
        let mut rooms = self.rooms();
        let before = rooms.len();
        rooms.retain(|_, r| !r.presence.is_empty() || r.touched.is_some_and(|t| t.elapsed() < ttl));
        before - rooms.len()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rooms().len()
    }
}

/// A fresh history epoch: the time in microseconds, as Redis' clock gives it.
fn epoch_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}{:06}", t.as_secs(), t.subsec_micros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use std::time::Duration;

    fn store(history: u64, ttl: Duration) -> MemoryStore {
        MemoryStore::new(RoomConfig {
            history_size: history,
            room_ttl: ttl,
            inbox_size: 0,
        })
    }

    fn parts(text: &str) -> FrameParts {
        let data = RawValue::from_string(format!("\"{text}\"")).unwrap();
        turnout_proto::bus::frame_parts("r", "u", "n", 1, &data)
    }

    #[test]
    fn seq_history_and_presence() {
        let s = store(2, Duration::from_secs(60));
        let (seq, epoch) = s.publish("r", &parts("a"));
        assert_eq!(seq, 1);
        assert_eq!(s.publish("r", &parts("b")), (2, epoch.clone()));
        assert_eq!(s.publish("r", &parts("c")).0, 3);
        let (h, p) = s.join("r", 0, 100, "n-1", "alice", 10);
        assert_eq!(h.seq, 3);
        assert!(!h.epoch.is_empty());
        assert_eq!(
            h.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(!h.complete, "seq 1 fell out of the 2 kept");
        assert!(s.history("r", 1, 100).complete);
        assert_eq!(p.users, vec!["alice"]);
        s.join("r", 3, 0, "n-2", "alice", 10);
        assert_eq!(s.presence("r", 10).connections, 2);
        assert_eq!(s.presence("r", 10).users, vec!["alice"]);
        assert_eq!(s.leave("r", "n-1"), 1);
    }

    #[test]
    fn empty_rooms_are_forgotten() {
        let s = store(10, Duration::ZERO);
        s.join("quiet", 0, 0, "n-1", "a", 10);
        s.leave("quiet", "n-1");
        assert_eq!(s.len(), 0, "no history: forgotten at once");
        s.publish("kept", &parts("x"));
        s.join("busy", 0, 0, "n-2", "b", 10);
        assert_eq!(
            s.sweep(),
            1,
            "the idle room with history goes after room_ttl"
        );
        assert_eq!(s.len(), 1, "a room with members stays");
        assert_eq!(
            s.history("kept", 0, 10).seq,
            0,
            "forgotten rooms start over"
        );
    }
}
