//! Room state in the node's own memory (strategy `local`): what a single
//! server without Redis keeps. Seq, history and presence per room, bounded
//! like the Redis store: `history_size` messages per room, and rooms nobody
//! is in are forgotten after `room_ttl` (at once when they hold no history).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use turnout_common::namespaces::Namespaces;
use turnout_common::redis::{HistorySlice, Presence, Published, RoomConfig};
use turnout_proto::bus::FrameParts;

pub(crate) struct MemoryStore {
    pub(crate) cfg: RoomConfig,
    /// Each room's history size and time to live, by its namespace.
    pub(crate) namespaces: Arc<Namespaces>,
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
    /// Publish ids accepted within `dedupe_window`: "<sender>/<id>" → seq
    /// and when, and the same in the order they came, to let them go.
    ids: HashMap<String, (u64, Instant)>,
    id_order: VecDeque<(Instant, String)>,
}

impl Room {
    /// Messages after `since`: at most `limit`, and at most `max_bytes` of
    /// them but at least one (as the Redis store reads them).
    fn slice(&self, since: u64, limit: u64, max_bytes: usize) -> HistorySlice {
        let oldest = self.history.front().map(|m| m.0).unwrap_or(0);
        let mut bytes = 0usize;
        let messages = self
            .history
            .iter()
            .filter(|m| m.0 > since)
            .take(limit as usize)
            .enumerate()
            .take_while(|(i, m)| {
                bytes += m.1.len();
                *i == 0 || bytes <= max_bytes
            })
            .map(|(_, m)| m.clone())
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
    pub(crate) fn new(cfg: RoomConfig, namespaces: Arc<Namespaces>) -> Self {
        MemoryStore {
            cfg,
            namespaces,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Assigns the message its seq and keeps it. With `id` (sender, publish
    /// id), an id the sender used in the room within `dedupe_window` gets
    /// the first one's seq back, marked duplicate, and nothing is kept.
    pub(crate) fn publish(
        &self,
        room: &str,
        parts: &FrameParts,
        id: Option<(&str, &str)>,
    ) -> Published {
        self.publish_at(room, parts, id, Instant::now())
    }

    fn publish_at(
        &self,
        room: &str,
        parts: &FrameParts,
        id: Option<(&str, &str)>,
        now: Instant,
    ) -> Published {
        let mut rooms = self.rooms();
        let r = rooms.entry(room.to_owned()).or_default();
        let window = self.cfg.dedupe_window;
        while let Some((at, _)) = r.id_order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            if let Some((_, key)) = r.id_order.pop_front() {
                r.ids.remove(&key);
            }
        }
        let key = id
            .filter(|_| !window.is_zero())
            .map(|(sender, id)| format!("{sender}/{id}"));
        if let Some((seq, _)) = key.as_ref().and_then(|k| r.ids.get(k)) {
            return Published {
                seq: *seq,
                epoch: r.epoch.clone(),
                duplicate: true,
                first_of_epoch: false,
            };
        }
        r.seq += 1;
        let first_of_epoch = r.seq == 1;
        if first_of_epoch {
            r.epoch = epoch_now();
        }
        r.touched = Some(now);
        let frame = parts.rendered(r.seq, &r.epoch, first_of_epoch);
        r.history.push_back((r.seq, frame));
        let keep = self.namespaces.of(room).history_size;
        let excess = r.history.len().saturating_sub(keep as usize);
        r.history.drain(..excess);
        if let Some(key) = key {
            r.ids.insert(key.clone(), (r.seq, now));
            r.id_order.push_back((now, key));
        }
        Published {
            seq: r.seq,
            epoch: r.epoch.clone(),
            duplicate: false,
            first_of_epoch,
        }
    }

    /// The seq publish `id` of `sender` got in `room`, if it is still
    /// remembered.
    pub(crate) fn seen(&self, room: &str, sender: &str, id: &str) -> Option<u64> {
        self.seen_at(room, sender, id, Instant::now())
    }

    fn seen_at(&self, room: &str, sender: &str, id: &str, now: Instant) -> Option<u64> {
        let rooms = self.rooms();
        let (seq, at) = rooms.get(room)?.ids.get(&format!("{sender}/{id}"))?;
        (now.saturating_duration_since(*at) < self.cfg.dedupe_window).then_some(*seq)
    }

    pub(crate) fn history(
        &self,
        room: &str,
        since: u64,
        limit: u64,
        max_bytes: usize,
    ) -> HistorySlice {
        match self.rooms().get(room) {
            Some(r) => r.slice(since, limit, max_bytes),
            None => HistorySlice::new(since, 0, 0, Vec::new(), String::new()),
        }
    }

    pub(crate) fn join(
        &self,
        room: &str,
        (since, limit, max_bytes): (u64, u64, usize),
        conn: &str,
        user: &str,
        presence_limit: u64,
    ) -> (HistorySlice, Presence) {
        let mut rooms = self.rooms();
        let r = rooms.entry(room.to_owned()).or_default();
        r.presence.insert(conn.to_owned(), user.to_owned());
        r.touched = Some(Instant::now());
        (r.slice(since, limit, max_bytes), r.users(presence_limit))
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

    /// Forgets rooms nobody has been in for their `room_ttl` (their
    /// namespace's `history_ttl`); returns how many.
    pub(crate) fn sweep(&self) -> usize {
        self.sweep_at(Instant::now())
    }

    fn sweep_at(&self, now: Instant) -> usize {
        let mut rooms = self.rooms();
        let before = rooms.len();
        rooms.retain(|name, r| {
            let ttl = self.namespaces.of(name).room_ttl;
            !r.presence.is_empty()
                || r.touched
                    .is_some_and(|t| now.saturating_duration_since(t) < ttl)
        });
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
    use turnout_common::namespaces::{NamespaceSettings, RoomOptions};

    fn store(history: u64, ttl: Duration) -> MemoryStore {
        with_namespaces(history, ttl, &Default::default())
    }

    fn with_namespaces(
        history: u64,
        ttl: Duration,
        named: &std::collections::BTreeMap<String, NamespaceSettings>,
    ) -> MemoryStore {
        let global = RoomOptions {
            history_size: history,
            room_ttl: ttl,
            presence: true,
            client_publish: true,
            join_proxy: false,
            publish_proxy: false,
        };
        MemoryStore::new(
            RoomConfig {
                history_size: history,
                room_ttl: ttl,
                inbox_size: 0,
                dedupe_window: Duration::from_secs(60),
                bus: false,
            },
            Arc::new(Namespaces::new(global, named)),
        )
    }

    fn parts(text: &str) -> FrameParts {
        let data = RawValue::from_string(format!("\"{text}\"")).unwrap();
        turnout_proto::bus::frame_parts("r", "u", "n", 1, &data)
    }

    #[test]
    fn seq_history_and_presence() {
        let s = store(2, Duration::from_secs(60));
        let first = s.publish("r", &parts("a"), None);
        assert_eq!(first.seq, 1);
        let second = s.publish("r", &parts("b"), None);
        assert_eq!((second.seq, &second.epoch), (2, &first.epoch));
        assert_eq!(s.publish("r", &parts("c"), None).seq, 3);
        let (h, p) = s.join("r", (0, 100, usize::MAX), "n-1", "alice", 10);
        assert_eq!(h.seq, 3);
        assert!(!h.epoch.is_empty());
        assert_eq!(
            h.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(!h.complete, "seq 1 fell out of the 2 kept");
        assert!(s.history("r", 1, 100, usize::MAX).complete);
        // A read bounded in bytes brings at least one message, and says the
        // rest is still there.
        let one = s.history("r", 1, 100, 1);
        assert_eq!(one.messages.len(), 1);
        assert!(!one.complete && one.covered);
        assert_eq!(p.users, vec!["alice"]);
        s.join("r", (3, 0, usize::MAX), "n-2", "alice", 10);
        assert_eq!(s.presence("r", 10).connections, 2);
        assert_eq!(s.presence("r", 10).users, vec!["alice"]);
        assert_eq!(s.leave("r", "n-1"), 1);
    }

    #[test]
    fn a_publish_id_is_taken_once_per_sender() {
        let s = store(10, Duration::from_secs(60));
        let a = s.publish("r", &parts("a"), Some(("alice", "c-1")));
        assert!(!a.duplicate);
        let again = s.publish("r", &parts("a"), Some(("alice", "c-1")));
        assert_eq!((again.seq, again.duplicate), (a.seq, true));
        assert_eq!(
            s.history("r", 0, 10, usize::MAX).seq,
            1,
            "the resend was not kept"
        );
        let bob = s.publish("r", &parts("b"), Some(("bob", "c-1")));
        assert_eq!((bob.seq, bob.duplicate), (2, false), "another sender's id");
        let other_room = s.publish("q", &parts("a"), Some(("alice", "c-1")));
        assert!(!other_room.duplicate);
    }

    #[test]
    fn publish_ids_are_forgotten_after_the_window() {
        let mut s = store(10, Duration::from_secs(60));
        s.cfg.dedupe_window = Duration::ZERO;
        s.publish("r", &parts("a"), Some(("alice", "c-1")));
        let again = s.publish("r", &parts("a"), Some(("alice", "c-1")));
        assert_eq!((again.seq, again.duplicate), (2, false), "window 0: off");
    }

    #[test]
    fn empty_rooms_are_forgotten() {
        let s = store(10, Duration::ZERO);
        s.join("quiet", (0, 0, usize::MAX), "n-1", "a", 10);
        s.leave("quiet", "n-1");
        assert_eq!(s.len(), 0, "no history: forgotten at once");
        s.publish("kept", &parts("x"), None);
        s.join("busy", (0, 0, usize::MAX), "n-2", "b", 10);
        assert_eq!(
            s.sweep(),
            1,
            "the idle room with history goes after room_ttl"
        );
        assert_eq!(s.len(), 1, "a room with members stays");
        assert_eq!(
            s.history("kept", 0, 10, usize::MAX).seq,
            0,
            "forgotten rooms start over"
        );
    }

    #[test]
    fn a_taken_publish_id_is_seen_for_exactly_the_window() {
        let s = store(10, Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(s.seen_at("r", "alice", "c-1", t), None, "no room yet");
        s.publish_at("r", &parts("a"), None, t);
        let taken = s.publish_at("r", &parts("b"), Some(("alice", "c-1")), t);
        assert_eq!(taken.seq, 2);
        let window = Duration::from_secs(60);
        let just_before = t + window - Duration::from_millis(1);
        assert_eq!(s.seen_at("r", "alice", "c-1", just_before), Some(2));
        assert_eq!(s.seen("r", "alice", "c-1"), Some(2));
        assert_eq!(s.seen_at("r", "alice", "c-1", t + window), None);
        assert_eq!(s.seen_at("r", "bob", "c-1", t), None, "another sender's");
        assert_eq!(s.seen_at("q", "alice", "c-1", t), None, "another room's");
    }

    #[test]
    fn publish_ids_last_exactly_the_window() {
        let s = store(10, Duration::from_secs(60));
        let t = Instant::now();
        let first = s.publish_at("r", &parts("a"), Some(("alice", "c-1")), t);
        let early = Duration::from_secs(59);
        let within = s.publish_at("r", &parts("a"), Some(("alice", "c-1")), t + early);
        assert_eq!((within.seq, within.duplicate), (first.seq, true));
        let after = s.publish_at(
            "r",
            &parts("a"),
            Some(("alice", "c-1")),
            t + Duration::from_secs(60),
        );
        assert_eq!(
            (after.seq, after.duplicate),
            (2, false),
            "the window is over"
        );
        // The id is taken again from then on.
        let again = s.publish_at(
            "r",
            &parts("a"),
            Some(("alice", "c-1")),
            t + Duration::from_secs(61),
        );
        assert_eq!((again.seq, again.duplicate), (2, true));
    }

    #[test]
    fn no_history_kept_at_size_zero() {
        let s = store(0, Duration::from_secs(60));
        assert_eq!(s.publish("r", &parts("a"), None).seq, 1);
        let h = s.history("r", 0, 10, usize::MAX);
        assert_eq!((h.seq, h.messages.len()), (1, 0));
        assert!(!h.complete, "seq 1 is not there to read");
    }

    #[test]
    fn a_byte_bound_counts_whole_messages() {
        let s = store(10, Duration::from_secs(60));
        for text in ["a", "b", "c"] {
            s.publish("r", &parts(text), None);
        }
        let all = s.history("r", 0, 10, usize::MAX);
        let two: usize = all.messages[..2].iter().map(|m| m.1.len()).sum();
        let read = s.history("r", 0, 10, two);
        assert_eq!(
            read.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![1, 2],
            "exactly two messages' bytes bring two"
        );
        assert_eq!(s.history("r", 0, 10, two - 1).messages.len(), 1);
        assert_eq!(s.history("r", 0, 2, usize::MAX).messages.len(), 2, "limit");
        let after_two = s.history("r", 2, 10, usize::MAX);
        assert_eq!(
            after_two.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![3]
        );
    }

    #[test]
    fn presence_is_bounded_and_leaving_keeps_the_room_for_the_rest() {
        let s = store(10, Duration::from_secs(60));
        s.join("r", (0, 0, usize::MAX), "n-1", "alice", 10);
        s.join("r", (0, 0, usize::MAX), "n-2", "bob", 10);
        let one = s.presence("r", 1);
        assert_eq!((one.users.len(), one.connections), (1, 2));
        assert_eq!(s.presence("r", 0).users.len(), 1, "at least one name");
        assert_eq!(s.leave("r", "n-1"), 1);
        assert_eq!(
            s.presence("r", 10).users,
            vec!["bob"],
            "the room is still there"
        );
        assert_eq!(s.leave("r", "n-2"), 0);
        assert_eq!(s.len(), 0);
        assert_eq!(s.leave("r", "n-2"), 0, "a room that is gone");
        // A room with history outlives its last member (until room_ttl).
        s.publish("h", &parts("x"), None);
        s.join("h", (0, 0, usize::MAX), "n-3", "carol", 10);
        assert_eq!(s.leave("h", "n-3"), 0);
        assert_eq!(s.history("h", 0, 10, usize::MAX).seq, 1);
    }

    #[test]
    fn idle_rooms_last_exactly_room_ttl() {
        let ttl = Duration::from_secs(30);
        let s = store(10, ttl);
        let t = Instant::now();
        s.publish_at("r", &parts("x"), None, t);
        assert_eq!(s.sweep_at(t + ttl - Duration::from_millis(1)), 0);
        assert_eq!(s.history("r", 0, 10, usize::MAX).seq, 1);
        assert_eq!(s.sweep_at(t + ttl), 1);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn a_namespace_keeps_its_own_history_and_lives_its_own_ttl() {
        let ttl = Duration::from_secs(30);
        let short = Duration::from_secs(5);
        let named = [(
            "brief".to_owned(),
            NamespaceSettings {
                history_size: Some(1),
                history_ttl: Some(short),
                ..Default::default()
            },
        )]
        .into();
        let s = with_namespaces(3, ttl, &named);
        let t = Instant::now();
        for text in ["a", "b", "c", "d"] {
            s.publish_at("brief:r", &parts(text), None, t);
            s.publish_at("r", &parts(text), None, t);
        }
        let kept = |room| s.history(room, 0, 10, usize::MAX).messages.len();
        assert_eq!((kept("brief:r"), kept("r")), (1, 3));
        assert_eq!(s.sweep_at(t + short - Duration::from_millis(1)), 0);
        assert_eq!(s.sweep_at(t + short), 1, "the namespace's room goes first");
        assert_eq!(s.history("r", 0, 10, usize::MAX).seq, 4);
        assert_eq!(s.sweep_at(t + ttl), 1);
    }

    #[test]
    fn epochs_are_the_clock_in_microseconds() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let s = store(10, Duration::from_secs(60));
        let epoch: u128 = s.publish("r", &parts("a"), None).epoch.parse().unwrap();
        assert!(
            epoch >= before && epoch < before + 60_000_000,
            "{epoch} vs {before}"
        );
    }
}
