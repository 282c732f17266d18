//! The one recovery cursor: where a reader of a room stands, and how each
//! message it is offered or each history read it makes relates to that.
//!
//! A reader (a ws-node's room sequencer, a gateway's room stream) keeps the
//! last seq it delivered and the history epoch that seq counts in. A new
//! message is the next one, a duplicate, or leaves a gap to fill from
//! history; a history read whose seq went back or whose epoch changed means
//! Redis lost the room's state and the reader must start over. Pure: no
//! I/O here but [`read_history`], which retries a failed read.

use crate::redis::{Con, HistorySlice};
use std::time::Duration;

/// How a seq relates to what a reader delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// At or below the last delivered: drop it.
    Duplicate,
    /// Exactly the next one: deliver it.
    Next,
    /// Beyond the next one: `from..=to` are missing before it.
    Gap { from: u64, to: u64 },
}

/// Last delivered seq and the history epoch it counts in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    last: u64,
    epoch: String,
}

impl Cursor {
    pub fn new(last: u64, epoch: impl Into<String>) -> Self {
        Cursor {
            last,
            epoch: epoch.into(),
        }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// The room's history epoch as last read ("" while unknown).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn classify(&self, seq: u64) -> Step {
        if seq <= self.last {
            Step::Duplicate
        } else if seq == self.last + 1 {
            Step::Next
        } else {
            Step::Gap {
                from: self.last + 1,
                to: seq - 1,
            }
        }
    }

    /// Records `seq` as delivered (never moves back).
    pub fn advance(&mut self, seq: u64) {
        self.last = self.last.max(seq);
    }

    /// Whether `slice` shows that Redis lost the room's state since this
    /// cursor's last read: the room's seq went back, or its epoch changed.
    pub fn lost_state(&self, slice: &HistorySlice) -> bool {
        slice.seq < self.last
            || (!self.epoch.is_empty() && !slice.epoch.is_empty() && slice.epoch != self.epoch)
    }

    /// Whether a message in `epoch` counts in another history epoch than
    /// this cursor's (the room's state was lost and started over); an
    /// epoch seen for the first time is learnt. "" says nothing.
    pub fn epoch_changed(&mut self, epoch: &str) -> bool {
        if epoch.is_empty() {
            return false;
        }
        if self.epoch.is_empty() {
            self.epoch = epoch.to_owned();
            return false;
        }
        self.epoch != epoch
    }

    /// Takes the epoch of a read when none is known yet.
    pub fn learn_epoch(&mut self, slice: &HistorySlice) {
        if self.epoch.is_empty() {
            self.epoch = slice.epoch.clone();
        }
    }

    /// Starts over at `seq` in `epoch` (after the room's state was lost).
    pub fn reset(&mut self, seq: u64, epoch: impl Into<String>) {
        self.last = seq;
        self.epoch = epoch.into();
    }
}

/// Reads history after `since`, retrying with backoff for up to `patience`:
/// right after Redis comes back a connection may still hold the broken
/// socket. Each failure goes to `failed` (count it, log it).
pub async fn read_history(
    con: &Con,
    room: &str,
    since: u64,
    limit: u64,
    patience: Duration,
    failed: impl Fn(&::redis::RedisError),
) -> ::redis::RedisResult<HistorySlice> {
    retrying(patience, failed, || {
        let mut c = con.clone();
        async move { crate::redis::rooms::history(&mut c, room, since, limit).await }
    })
    .await
}

/// Runs `attempt` until it succeeds, with backoff, while a retry still
/// starts within `patience` of the first try.
async fn retrying<T, F: Future<Output = ::redis::RedisResult<T>>>(
    patience: Duration,
    failed: impl Fn(&::redis::RedisError),
    mut attempt: impl FnMut() -> F,
) -> ::redis::RedisResult<T> {
    let started = tokio::time::Instant::now();
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                failed(&e);
                let delay = backoff.next_delay();
                if !retry_within(started.elapsed(), delay, patience) {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Whether a retry after `delay` still starts within `patience` of the
/// first try (`elapsed` ago).
fn retry_within(elapsed: Duration, delay: Duration, patience: Duration) -> bool {
    elapsed + delay <= patience
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(seq: u64, epoch: &str) -> HistorySlice {
        HistorySlice {
            seq,
            epoch: epoch.into(),
            ..Default::default()
        }
    }

    #[test]
    fn classifies_seqs() {
        let mut c = Cursor::new(5, "e1");
        assert_eq!(c.classify(4), Step::Duplicate);
        assert_eq!(c.classify(5), Step::Duplicate);
        assert_eq!(c.classify(6), Step::Next);
        assert_eq!(c.classify(9), Step::Gap { from: 6, to: 8 });
        c.advance(9);
        c.advance(3);
        assert_eq!(c.last(), 9);
    }

    #[test]
    fn learns_and_compares_epochs() {
        let mut c = Cursor::new(3, "");
        assert!(!c.epoch_changed(""));
        assert!(!c.epoch_changed("e1"), "learnt");
        assert!(!c.epoch_changed("e1"));
        assert!(c.epoch_changed("e2"));
        assert_eq!(c.epoch(), "e1", "only a reset moves it");
    }

    #[test]
    fn retries_only_within_patience() {
        let s = Duration::from_secs;
        assert!(retry_within(s(1), s(1), s(5)));
        assert!(retry_within(s(4), s(1), s(5)), "up to the patience itself");
        assert!(
            !retry_within(s(4), s(2), s(5)),
            "the retry would start past it"
        );
        assert!(!retry_within(s(6), s(0), s(5)));
        assert!(retry_within(s(0), s(5), s(5)));
    }

    #[test]
    fn detects_lost_state() {
        let c = Cursor::new(5, "e1");
        assert!(!c.lost_state(&slice(5, "e1")));
        assert!(!c.lost_state(&slice(9, "e1")));
        assert!(c.lost_state(&slice(2, "e1")), "seq went back");
        assert!(c.lost_state(&slice(9, "e2")), "epoch changed");
        assert!(!c.lost_state(&slice(9, "")), "epoch not set yet");
        let mut unknown = Cursor::new(5, "");
        assert!(!unknown.lost_state(&slice(9, "e2")));
        unknown.learn_epoch(&slice(9, "e2"));
        assert_eq!(unknown.epoch(), "e2");
        assert!(unknown.lost_state(&slice(9, "e3")));
        unknown.reset(0, "e3");
        assert_eq!((unknown.last(), unknown.epoch()), (0, "e3"));
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_retried_within_patience_and_no_longer() {
        use std::cell::Cell;
        let broken = || ::redis::RedisError::from((::redis::ErrorKind::Io, "broken pipe"));
        let tries = Cell::new(0u32);
        let failures = Cell::new(0u32);
        let got = retrying(
            Duration::from_secs(5),
            |_| failures.set(failures.get() + 1),
            || {
                tries.set(tries.get() + 1);
                let n = tries.get();
                async move { if n < 4 { Err(broken()) } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(got.ok(), Some(4), "the fourth try succeeds");
        assert_eq!(failures.get(), 3);
        // Redis that stays away: given up once the next retry would start
        // past patience, well before any backoff grows unbounded.
        tries.set(0);
        let started = tokio::time::Instant::now();
        let gave_up = tokio::time::timeout(
            Duration::from_secs(60),
            retrying(
                Duration::from_secs(2),
                |_| {},
                || {
                    tries.set(tries.get() + 1);
                    async { Err::<(), _>(broken()) }
                },
            ),
        )
        .await;
        assert!(matches!(gave_up, Ok(Err(_))), "gave up: {gave_up:?}");
        assert!(
            started.elapsed() <= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(tries.get() > 2, "retried: {}", tries.get());
    }
}
