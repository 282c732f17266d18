//! What one connection may do per unit of time: frames of any kind,
//! publishes, joins, leaves and token refreshes (token buckets), new rooms
//! per minute (a sliding window), and how many refusals make it abuse
//! (close 1008): being over a limit, and sending frames that are refused
//! (bad JSON, unknown types, rooms not joined) alike. Pure: time is passed
//! in, so the rules are unit-tested without a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Refused frames a connection may run up at once before it is closed
/// (1008)...
pub(crate) const MAX_STRIKES: u32 = 100;

/// ...and how many a second are forgiven: a client that backs off when it
/// is told `rate_limited` stays, one that keeps sending past its limits
/// (whether or not some frames get through) is closed.
pub(crate) const STRIKES_FORGIVEN_PER_SEC: f64 = 10.0;

/// A token bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> Self {
        Bucket {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            at: now,
        }
    }

    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    Frames,
    Publishes,
    Joins,
    NewRooms,
    /// Not over a limit: a refused frame, counted as a strike.
    Refused,
}

impl Over {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Over::Frames => "sending frames too fast",
            Over::Publishes => "publishing (or sending rpc) too fast",
            Over::Joins => "joining, leaving or refreshing too fast",
            Over::NewRooms => "too many different rooms in the last minute",
            Over::Refused => "too many refused frames",
        }
    }
}

/// The settings behind [`Limits`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitSettings {
    pub(crate) frame_rate: f64,
    pub(crate) frame_burst: u32,
    pub(crate) publish_rate: f64,
    pub(crate) publish_burst: u32,
    pub(crate) join_rate: f64,
    pub(crate) join_burst: u32,
    pub(crate) rooms_per_minute: usize,
}

/// One connection's limits.
#[derive(Debug)]
pub(crate) struct Limits {
    frames: Bucket,
    publishes: Bucket,
    joins: Bucket,
    /// Rooms joined for the first time in the last minute, oldest first.
    recent_rooms: VecDeque<(Instant, String)>,
    rooms_per_minute: usize,
    /// Refusals left before the connection counts as abusive.
    strikes: Bucket,
    abusive: bool,
}

const WINDOW: Duration = Duration::from_secs(60);

impl Limits {
    pub(crate) fn new(s: LimitSettings, now: Instant) -> Self {
        Limits {
            frames: Bucket::new(s.frame_rate, s.frame_burst, now),
            publishes: Bucket::new(s.publish_rate, s.publish_burst, now),
            joins: Bucket::new(s.join_rate, s.join_burst, now),
            recent_rooms: VecDeque::new(),
            rooms_per_minute: s.rooms_per_minute,
            strikes: Bucket::new(STRIKES_FORGIVEN_PER_SEC, MAX_STRIKES, now),
            abusive: false,
        }
    }

    fn verdict(&mut self, ok: bool, over: Over, now: Instant) -> Result<(), Over> {
        if ok {
            return Ok(());
        }
        if !self.strikes.take(now) {
            self.abusive = true;
        }
        Err(over)
    }

    /// Any frame, before it is read: pings, refreshes and frames that will
    /// be refused cost as much as the rest.
    pub(crate) fn frame(&mut self, now: Instant) -> Result<(), Over> {
        let ok = self.frames.take(now);
        self.verdict(ok, Over::Frames, now)
    }

    /// A frame was refused (bad JSON, unknown type, a room not joined…):
    /// a strike, like a frame over a limit.
    pub(crate) fn refused(&mut self, now: Instant) {
        let _ = self.verdict(false, Over::Refused, now);
    }

    /// A token refresh (a signature check each): from the join bucket.
    pub(crate) fn refresh(&mut self, now: Instant) -> Result<(), Over> {
        let ok = self.joins.take(now);
        self.verdict(ok, Over::Joins, now)
    }

    pub(crate) fn publish(&mut self, now: Instant) -> Result<(), Over> {
        let ok = self.publishes.take(now);
        self.verdict(ok, Over::Publishes, now)
    }

    /// A leave (or a join of a room the connection is in).
    pub(crate) fn leave(&mut self, now: Instant) -> Result<(), Over> {
        let ok = self.joins.take(now);
        self.verdict(ok, Over::Joins, now)
    }

    /// A join of `room`, which the connection is not in.
    pub(crate) fn join(&mut self, room: &str, now: Instant) -> Result<(), Over> {
        while self
            .recent_rooms
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.recent_rooms.pop_front();
        }
        let known = self.recent_rooms.iter().any(|(_, r)| r == room);
        if !known && self.recent_rooms.len() >= self.rooms_per_minute {
            return self.verdict(false, Over::NewRooms, now);
        }
        let ok = self.joins.take(now);
        if ok && !known {
            self.recent_rooms.push_back((now, room.to_owned()));
        }
        self.verdict(ok, Over::Joins, now)
    }

    /// Whether the connection keeps going over its limits (close 1008).
    pub(crate) fn abusive(&self) -> bool {
        self.abusive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(now: Instant) -> Limits {
        Limits::new(
            LimitSettings {
                frame_rate: 20.0,
                frame_burst: 40,
                publish_rate: 10.0,
                publish_burst: 2,
                join_rate: 1.0,
                join_burst: 3,
                rooms_per_minute: 2,
            },
            now,
        )
    }

    #[test]
    fn buckets_refill_with_time() {
        let t = Instant::now();
        let mut l = limits(t);
        assert!(l.publish(t).is_ok() && l.publish(t).is_ok());
        assert_eq!(l.publish(t), Err(Over::Publishes));
        assert!(l.publish(t + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn joins_and_leaves_share_a_bucket() {
        let t = Instant::now();
        let mut l = limits(t);
        assert!(l.join("a", t).is_ok());
        assert!(l.leave(t).is_ok());
        assert!(
            l.join("a", t).is_ok(),
            "a room seen in the window is not new"
        );
        assert_eq!(l.leave(t), Err(Over::Joins));
        assert!(l.leave(t + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn new_rooms_per_minute() {
        let t = Instant::now();
        let mut l = limits(t);
        assert!(l.join("a", t).is_ok());
        assert!(l.join("b", t + Duration::from_secs(1)).is_ok());
        assert_eq!(l.join("c", t + Duration::from_secs(2)), Err(Over::NewRooms));
        // A minute after the first, one more room may come.
        assert!(l.join("c", t + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn refusals_past_the_allowance_are_abuse() {
        let t = Instant::now();
        let mut l = limits(t);
        let _ = l.publish(t);
        let _ = l.publish(t);
        for _ in 0..MAX_STRIKES {
            let _ = l.publish(t);
            assert!(!l.abusive());
        }
        let _ = l.publish(t);
        assert!(l.abusive());
    }

    #[test]
    fn frames_getting_through_do_not_excuse_a_flood() {
        // 10 publishes a second allowed, 200 sent a second: one in twenty
        // gets through, the rest add up.
        let t = Instant::now();
        let mut l = limits(t);
        let mut at = t;
        for _ in 0..400 {
            at += Duration::from_millis(5);
            let _ = l.publish(at);
        }
        assert!(l.abusive());
    }

    #[test]
    fn every_frame_counts_and_refused_frames_are_strikes() {
        let t = Instant::now();
        let mut l = limits(t);
        for _ in 0..40 {
            assert!(l.frame(t).is_ok());
        }
        assert_eq!(l.frame(t), Err(Over::Frames));
        assert!(
            l.frame(t + Duration::from_millis(50)).is_ok(),
            "20 a second"
        );
        // Refused frames add up to abuse like frames over a limit.
        let mut l = limits(t);
        for _ in 0..MAX_STRIKES {
            l.refused(t);
        }
        assert!(!l.abusive());
        l.refused(t);
        assert!(l.abusive());
        // Refreshes come from the join bucket.
        let mut l = limits(t);
        for _ in 0..3 {
            assert!(l.refresh(t).is_ok());
        }
        assert_eq!(l.refresh(t), Err(Over::Joins));
    }

    #[test]
    fn a_client_that_backs_off_stays() {
        // 15 a second against a limit of 10: a third refused, fewer a
        // second than are forgiven.
        let t = Instant::now();
        let mut l = limits(t);
        let mut at = t;
        let mut refused = 0;
        for _ in 0..2000 {
            at += Duration::from_micros(66_667);
            refused += l.publish(at).is_err() as u32;
        }
        assert!(refused > 500, "{refused}");
        assert!(!l.abusive());
    }

    #[test]
    fn a_refused_join_does_not_use_up_a_new_room() {
        let t = Instant::now();
        let mut l = limits(t);
        for _ in 0..3 {
            assert!(l.leave(t).is_ok());
        }
        assert_eq!(l.join("a", t), Err(Over::Joins));
        let t1 = t + Duration::from_secs(1);
        assert!(l.join("b", t1).is_ok());
        let t2 = t + Duration::from_secs(2);
        assert!(l.join("c", t2).is_ok(), "only b and c are new this minute");
    }

    #[test]
    fn each_refusal_says_what_it_is() {
        let all = [
            Over::Frames,
            Over::Publishes,
            Over::Joins,
            Over::NewRooms,
            Over::Refused,
        ];
        for (word, over) in ["frames", "publishing", "joining", "rooms", "refused"]
            .iter()
            .zip(all)
        {
            assert!(
                over.message().contains(word),
                "{over:?}: {}",
                over.message()
            );
        }
    }
}
