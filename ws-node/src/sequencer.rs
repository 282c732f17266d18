//! One room's sequencer on a node: the state machine that puts the room's
//! messages in seq order before fan-out. No tokio, no Redis: the hub feeds
//! it messages as they arrive and history as it reads it, and fans out
//! what it hands back.
//!
//! The next seq is handed back at once, an early one is held, a duplicate is
//! dropped. Messages that arrive before the room's start is known (a join's
//! read of the room is under way) are held until it is: they may come out
//! of order (relay's owner sends each message when its own store answers),
//! so none of them can say where the room starts. A gap that stays open asks the hub (once) to repair it: the hub
//! reads the missing range from history and [`Sequencer::fill`]s it in, or,
//! when history no longer holds it, [`Sequencer::give_up`] skips it.

use std::collections::BTreeMap;
use turnout_common::recovery::{Cursor, Step};

/// What became of an offered message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer<F> {
    /// The next seq: deliver it now, then whatever [`Sequencer::next_ready`] gives.
    Now(F),
    /// Already delivered.
    Duplicate,
    /// Held until the gap before it closes; `repair`: start repairing it.
    Held { repair: bool },
}

/// What setting the start released: the held messages now in order, and
/// whether a gap stays open behind them (start repairing it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Started<F> {
    pub(crate) ready: Vec<(u64, F)>,
    pub(crate) repair: bool,
    /// Messages of another history epoch than the read's came meanwhile
    /// (Redis lost the room's state around the read): they were dropped,
    /// and the room is to catch up from history (`Hub::resync`).
    pub(crate) resync: bool,
}

/// Messages a repair hands back, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Filled<F> {
    pub(crate) ready: Vec<(u64, F)>,
    /// How many of them came from history.
    pub(crate) from_history: u64,
}

#[derive(Debug)]
pub(crate) struct Sequencer<F> {
    cursor: Cursor,
    /// False until the first join's read sets the start.
    started: bool,
    /// Messages that arrived ahead of a gap.
    pending: BTreeMap<u64, F>,
    repairing: bool,
    /// Before the start: a message of an epoch other than the held ones'
    /// was turned away.
    turned_away: bool,
}

impl<F> Default for Sequencer<F> {
    fn default() -> Self {
        Sequencer {
            cursor: Cursor::default(),
            started: false,
            pending: BTreeMap::new(),
            repairing: false,
            turned_away: false,
        }
    }
}

impl<F> Sequencer<F> {
    /// The last seq delivered; None before the start is known.
    pub(crate) fn last(&self) -> Option<u64> {
        self.started.then(|| self.cursor.last())
    }

    pub(crate) fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Sets the start from a join's read of the room, unless an earlier
    /// join's did; learns the room's history epoch. The messages held
    /// meanwhile are all released, in seq order: those at or below `seq`
    /// too, as another join still under way may have read less (each
    /// joining member takes what is above its own read); after them the
    /// ones that follow `seq`, and a gap before the rest is to be repaired.
    ///
    /// Held messages count in the epoch the first of them named. When the
    /// read names another (Redis lost the room's state between them), their
    /// seqs say nothing about the read's: they are dropped, and the room
    /// catches up from history instead (`resync`), as it does when a
    /// message of a third epoch was turned away meanwhile.
    pub(crate) fn start_at(&mut self, seq: u64, epoch: &str) -> Started<F> {
        if !self.started {
            self.started = true;
            let held = self.cursor.epoch();
            let other_epoch = !epoch.is_empty() && !held.is_empty() && held != epoch;
            let resync = other_epoch || self.turned_away;
            if other_epoch {
                self.pending.clear();
            }
            let epoch = if epoch.is_empty() { held } else { epoch };
            self.cursor = Cursor::new(seq, epoch);
            self.turned_away = false;
            let later = self.pending.split_off(&(seq + 1));
            let mut ready: Vec<(u64, F)> = std::mem::replace(&mut self.pending, later)
                .into_iter()
                .collect();
            self.drain(&mut ready);
            let repair = !self.pending.is_empty() && !self.repairing;
            self.repairing |= repair;
            return Started {
                ready,
                repair,
                resync,
            };
        }
        if !epoch.is_empty() && self.cursor.epoch().is_empty() {
            self.cursor = Cursor::new(self.cursor.last(), epoch);
        }
        Started {
            ready: Vec::new(),
            repair: false,
            resync: false,
        }
    }

    /// Whether a message in `epoch` belongs to another history epoch than
    /// the room's (Redis lost the room's state and it started over); an
    /// epoch seen for the first time is learnt. Before the start, the epoch
    /// is the held messages': the start then catches up (see `start_at`).
    pub(crate) fn epoch_changed(&mut self, epoch: &str) -> bool {
        let changed = self.cursor.epoch_changed(epoch);
        self.turned_away |= changed && !self.started;
        changed
    }

    /// Whether the room already counts in history epoch `epoch` (known, and
    /// not ""): a reset to it would replay what members have.
    pub(crate) fn in_epoch(&self, epoch: &str) -> bool {
        self.started && !epoch.is_empty() && self.cursor.epoch() == epoch
    }

    /// Starts over at `seq` in `epoch` (the room's state was lost in Redis),
    /// or forgets everything (`None`: the room moved away and back).
    pub(crate) fn reset(&mut self, to: Option<(u64, &str)>) {
        self.pending.clear();
        self.turned_away = false;
        match to {
            Some((seq, epoch)) => {
                self.started = true;
                self.cursor.reset(seq, epoch);
            }
            None => {
                self.started = false;
                self.cursor = Cursor::default();
            }
        }
    }

    pub(crate) fn offer(&mut self, seq: u64, frame: F) -> Offer<F> {
        if !self.started {
            // Where the room starts is the join's read to say.
            self.pending.insert(seq, frame);
            return Offer::Held { repair: false };
        }
        match self.cursor.classify(seq) {
            Step::Duplicate => Offer::Duplicate,
            Step::Next => {
                self.cursor.advance(seq);
                Offer::Now(frame)
            }
            Step::Gap { .. } => {
                self.pending.insert(seq, frame);
                let repair = !self.repairing;
                self.repairing = true;
                Offer::Held { repair }
            }
        }
    }

    /// Moves every held message that is now in order to `ready`.
    fn drain(&mut self, ready: &mut Vec<(u64, F)>) {
        while let Some(m) = self.next_ready() {
            ready.push(m);
        }
    }

    /// The next held message that is now in order, if any.
    pub(crate) fn next_ready(&mut self) -> Option<(u64, F)> {
        while let Some(entry) = self.pending.first_entry() {
            match self.cursor.classify(*entry.key()) {
                // Not reachable through offer/fill/give_up, which never
                // move the cursor past a held seq; dropped all the same.
                Step::Duplicate => {
                    entry.remove();
                }
                Step::Next => {
                    let (seq, frame) = entry.remove_entry();
                    self.cursor.advance(seq);
                    return Some((seq, frame));
                }
                Step::Gap { .. } => return None,
            }
        }
        None
    }

    /// The open gap as (last delivered, first held); None ends a repair.
    pub(crate) fn gap(&mut self) -> Option<(u64, u64)> {
        match self.pending.first_key_value() {
            Some((&first, _)) => Some((self.cursor.last(), first)),
            None => {
                self.repairing = false;
                None
            }
        }
    }

    /// Fills the gap before `first_pending` with messages read from history,
    /// then releases what was held behind it.
    pub(crate) fn fill(
        &mut self,
        found: impl IntoIterator<Item = (u64, F)>,
        first_pending: u64,
    ) -> Filled<F> {
        let mut ready = Vec::new();
        for (seq, frame) in found {
            if seq == self.cursor.last() + 1 && seq < first_pending {
                self.cursor.advance(seq);
                ready.push((seq, frame));
            }
        }
        let from_history = ready.len() as u64;
        self.drain(&mut ready);
        Filled {
            ready,
            from_history,
        }
    }

    /// Skips a gap history could not fill, if it is still exactly the gap
    /// that was read (`last`, `first_pending`): anything else means messages
    /// were still arriving. `first_found` is the first seq history held
    /// after `last`. Returns how many messages were lost and what is
    /// released behind them.
    pub(crate) fn give_up(
        &mut self,
        last: u64,
        first_pending: u64,
        first_found: Option<u64>,
    ) -> Option<(u64, Vec<(u64, F)>)> {
        let same_gap = self.cursor.last() == last
            && self.pending.first_key_value().map(|(k, _)| *k) == Some(first_pending);
        if !same_gap {
            return None;
        }
        let skip_to = first_found.map_or(first_pending, |f| f.min(first_pending)) - 1;
        let lost = skip_to - last;
        self.cursor.advance(skip_to);
        let mut ready = Vec::new();
        self.drain(&mut ready);
        Some((lost, ready))
    }

    /// Whether nothing is held (a repair may end).
    pub(crate) fn settled(&mut self) -> bool {
        if self.pending.is_empty() {
            self.repairing = false;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(v: &[(u64, &'static str)]) -> Vec<u64> {
        v.iter().map(|m| m.0).collect()
    }

    #[test]
    fn in_order_and_duplicates() {
        let mut s = Sequencer::default();
        s.start_at(3, "e");
        assert_eq!(s.offer(4, "a"), Offer::Now("a"));
        assert_eq!(s.offer(4, "a"), Offer::Duplicate);
        assert_eq!(s.offer(2, "old"), Offer::Duplicate);
        assert_eq!(s.last(), Some(4));
        assert_eq!(s.cursor().epoch(), "e");
    }

    #[test]
    fn a_known_epoch_is_kept_and_a_new_one_noticed() {
        let mut s: Sequencer<&str> = Sequencer::default();
        s.start_at(3, "e1");
        // A later read of the room does not move the start or its epoch.
        s.start_at(5, "e2");
        assert_eq!((s.last(), s.cursor().epoch()), (Some(3), "e1"));
        assert!(!s.epoch_changed("e1"));
        assert!(!s.epoch_changed(""), "no epoch says nothing");
        assert!(s.epoch_changed("e2"));
        // An epoch still unknown is learnt from a read.
        let mut s: Sequencer<&str> = Sequencer::default();
        s.start_at(0, "");
        s.start_at(0, "e3");
        assert_eq!(s.cursor().epoch(), "e3");
    }

    #[test]
    fn messages_before_the_start_wait_for_it() {
        let mut s = Sequencer::default();
        assert_eq!(s.last(), None);
        // Out of order, before the join's read answered: neither can say
        // where the room starts (taking 10 as the first would lose 9).
        assert_eq!(s.offer(10, "j"), Offer::Held { repair: false });
        assert_eq!(s.offer(8, "h"), Offer::Held { repair: false });
        assert_eq!(s.last(), None);
        // The read says 7: 8 goes out, 9 is missing, so 10 waits for a repair.
        let started = s.start_at(7, "e");
        assert_eq!(seqs(&started.ready), vec![8]);
        assert!(started.repair);
        // That repair is under way: a later message does not ask again.
        assert_eq!(s.offer(11, "k"), Offer::Held { repair: false });
        assert_eq!(s.gap(), Some((8, 10)));
        let f = s.fill([(9, "i")], 10);
        assert_eq!(seqs(&f.ready), vec![9, 10, 11]);
        assert!(s.settled());
        assert_eq!(s.cursor().epoch(), "e");
        // What the first read already counted still goes out (in order):
        // a join under way may have read less; each member takes what is
        // above its own read. A later read does not move the start.
        let mut s = Sequencer::default();
        s.offer(3, "c");
        s.offer(2, "b");
        s.offer(5, "e");
        let started = s.start_at(3, "e");
        assert_eq!(seqs(&started.ready), vec![2, 3]);
        assert!(started.repair, "4 is missing");
        assert_eq!(s.gap(), Some((3, 5)));
        let f = s.fill([(4, "d")], 5);
        assert_eq!(seqs(&f.ready), vec![4, 5]);
        assert!(s.settled());
        assert_eq!(s.start_at(1, "e").ready.len(), 0);
        assert_eq!(s.last(), Some(5));
        assert_eq!(s.offer(4, "d"), Offer::Duplicate);
        assert_eq!(s.offer(6, "f"), Offer::Now("f"));
    }

    #[test]
    fn held_messages_of_another_epoch_than_the_read_are_dropped() {
        // Held in e1; the read names e2 (the room's state was lost between
        // them): seqs 4 and 5 of e1 say nothing about e2's.
        let mut s = Sequencer::default();
        assert!(!s.epoch_changed("e1"), "the first epoch is learnt");
        s.offer(5, "e1:5");
        s.offer(4, "e1:4");
        let started = s.start_at(3, "e2");
        assert_eq!(started.ready, vec![], "nothing of e1 goes out");
        assert!(started.resync && !started.repair);
        assert_eq!((s.last(), s.cursor().epoch()), (Some(3), "e2"));
        assert_eq!(s.gap(), None, "nothing is held");
        assert_eq!(s.offer(4, "e2:4"), Offer::Now("e2:4"));
        // The same epoch: held messages go out, no catch-up.
        let mut s = Sequencer::default();
        assert!(!s.epoch_changed("e1"));
        s.offer(4, "e1:4");
        let started = s.start_at(3, "e1");
        assert_eq!((seqs(&started.ready), started.resync), (vec![4], false));
        // A read before the room's first message names no epoch: the held
        // messages' is the room's.
        let mut s = Sequencer::default();
        assert!(!s.epoch_changed("e1"));
        s.offer(1, "e1:1");
        let started = s.start_at(0, "");
        assert_eq!((seqs(&started.ready), started.resync), (vec![1], false));
        assert_eq!(s.cursor().epoch(), "e1");
        assert!(!s.epoch_changed("e1"));
        // A message of another epoch than the held ones' was turned away
        // before the start: whichever the read names, the room catches up.
        let mut s = Sequencer::default();
        assert!(!s.epoch_changed("e1"));
        s.offer(1, "e1:1");
        assert!(s.epoch_changed("e2"), "turned away");
        let started = s.start_at(0, "e1");
        assert_eq!((seqs(&started.ready), started.resync), (vec![1], true));
        // Once started, a new epoch is the hub's to reset, not the start's.
        assert!(s.epoch_changed("e2"));
        s.reset(Some((7, "e2")));
        assert!(!s.start_at(9, "e2").resync);
        // A reset forgets what was turned away before it.
        let mut s = Sequencer::<&str>::default();
        assert!(!s.epoch_changed("e1"));
        assert!(s.epoch_changed("e2"));
        s.reset(None);
        assert!(!s.start_at(0, "e1").resync);
    }

    #[test]
    fn early_messages_wait_and_ask_for_one_repair() {
        let mut s = Sequencer::default();
        s.start_at(0, "");
        assert_eq!(s.offer(3, "c"), Offer::Held { repair: true });
        assert_eq!(s.offer(4, "d"), Offer::Held { repair: false });
        assert!(!s.settled(), "messages are held: the repair goes on");
        assert_eq!(s.gap(), Some((0, 3)));
        // The missing ones arrive late, out of order.
        assert_eq!(s.offer(2, "b"), Offer::Held { repair: false });
        assert_eq!(s.offer(1, "a"), Offer::Now("a"));
        let mut out = Vec::new();
        while let Some(m) = s.next_ready() {
            out.push(m);
        }
        assert_eq!(seqs(&out), vec![2, 3, 4]);
        assert!(s.settled());
        assert_eq!(s.gap(), None);
        // A new gap asks for a new repair.
        assert_eq!(s.offer(6, "f"), Offer::Held { repair: true });
    }

    #[test]
    fn history_fills_a_gap() {
        let mut s = Sequencer::default();
        s.start_at(1, "");
        s.offer(4, "d");
        s.offer(5, "e");
        let (last, first) = s.gap().unwrap();
        assert_eq!((last, first), (1, 4));
        let f = s.fill([(2, "b"), (3, "c"), (4, "dup")], first);
        assert_eq!(seqs(&f.ready), vec![2, 3, 4, 5]);
        assert_eq!(f.from_history, 2);
        assert_eq!(f.ready[2].1, "d", "the held message, not history's copy");
        assert!(s.settled());
    }

    #[test]
    fn an_unfillable_gap_is_skipped_only_if_unchanged() {
        let mut s = Sequencer::default();
        s.start_at(1, "");
        s.offer(5, "e");
        s.offer(6, "f");
        // History holds only 4 of 2..=4.
        assert_eq!(s.give_up(0, 5, Some(4)), None, "another gap than was read");
        let f = s.fill([(4, "d")], 5);
        assert!(f.ready.is_empty(), "4 cannot go before 2 and 3");
        let (lost, ready) = s.give_up(1, 5, Some(4)).unwrap();
        assert_eq!(lost, 2, "2 and 3 are gone");
        assert!(ready.is_empty(), "4 is next, not 5");
        assert_eq!(s.last(), Some(3));
        let f = s.fill([(4, "d")], 5);
        assert_eq!(seqs(&f.ready), vec![4, 5, 6]);
        // Nothing in history after the gap at all: skip to the held one.
        s.offer(9, "i");
        let (lost, ready) = s.give_up(6, 9, None).unwrap();
        assert_eq!((lost, seqs(&ready)), (2, vec![9]));
    }

    #[test]
    fn a_room_is_in_the_epoch_it_counts_in() {
        let mut s = Sequencer::<&str>::default();
        assert!(!s.in_epoch("e1"), "not started");
        s.start_at(0, "");
        assert!(!s.in_epoch(""), "\"\" says nothing");
        assert!(!s.in_epoch("e1"));
        s.reset(Some((3, "e1")));
        assert!(s.in_epoch("e1"));
        assert!(!s.in_epoch("e2"));
        assert!(!s.in_epoch(""));
        s.reset(None);
        assert!(!s.in_epoch("e1"), "forgotten");
    }

    #[test]
    fn reset_starts_over() {
        let mut s = Sequencer::default();
        s.start_at(0, "e1");
        s.offer(2, "b");
        // Redis lost the room: the held message belongs to the old epoch.
        s.reset(Some((5, "e2")));
        assert_eq!(s.next_ready(), None);
        assert_eq!((s.last(), s.cursor().epoch()), (Some(5), "e2"));
        assert_eq!(s.offer(6, "f"), Offer::Now("f"));
        // Moved away and back: the start is unknown again, until the
        // join that brought the room back read it.
        s.reset(None);
        assert_eq!(s.last(), None);
        assert_eq!(s.offer(40, "x"), Offer::Held { repair: false });
        assert_eq!(seqs(&s.start_at(39, "e2").ready), vec![40]);
    }
}
