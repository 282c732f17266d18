//! The fault campaign's checker: it reads what the clients recorded, and
//! nothing of the servers' state, and says where the delivery contract
//! broke. Pure: the campaign hands it a [`History`]; its tests hand it
//! histories with each kind of violation.
//!
//! What a client records is what its application saw: every `joined` of a
//! room (seq, epoch, `recovered`) and every message handed on (seq, and the
//! key its publisher put in its data); a publisher records when it first
//! sent each message and the ack it got, if any. The contract checked:
//! - in each room, each member gets the messages in seq order with no gap
//!   it was not told of (`gap`, `out_of_order`), each once (`duplicate`);
//! - one seq of one epoch is one message for every member (`divergent`),
//!   one message has one seq (`doubled`), and a message's ack names the seq
//!   it was delivered at (`ack_mismatch`);
//! - nothing is delivered that nobody published (`phantom`);
//! - every acked message reaches every member that was in its room when it
//!   was sent (`lost`), unless the member was told afterwards that history
//!   could not fill its hole (a `joined` with `recovered: false`, or a new
//!   epoch): a loss it was told of is counted, not a violation;
//! - no message takes longer than the stated bound to arrive (`silent`);
//! - presence lists exactly the members once the faults are over
//!   (`presence`), and no process outgrew its bound (`memory`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Everything the clients of one run recorded.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub members: Vec<MemberLog>,
    pub publishes: Vec<PublishLog>,
    pub presence: Vec<PresenceCheck>,
    pub memory: Vec<MemoryPeak>,
    /// The longest a message may take from its first send to a member.
    pub silence_bound_ms: u64,
}

/// One member of one room: what its application saw, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberLog {
    pub member: String,
    pub user: String,
    pub room: String,
    pub events: Vec<Event>,
}

/// What a member's application saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub enum Event {
    /// A `joined` (the first join, or a rejoin): `at` in Unix ms.
    Joined {
        at: u64,
        seq: u64,
        epoch: String,
        recovered: Option<bool>,
    },
    /// A message handed to the application.
    Message { at: u64, seq: u64, key: String },
    /// The client met a jump in seq (`seq` after `after`) and rejoined with
    /// `since` to fill it, as the protocol says: counted, not handed on.
    Repair { at: u64, seq: u64, after: u64 },
}

/// One message a client or the server API published.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishLog {
    /// The key in its data, unique per message.
    pub key: String,
    pub room: String,
    pub publisher: String,
    /// When it was first sent, Unix ms.
    pub sent: u64,
    /// The seq its ack gave; None when no ack came (refused, or unknown).
    pub acked: Option<u64>,
    /// Acks of its resends that named another seq than the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_acks: Vec<u64>,
}

/// A room's presence once the faults were over, next to its members' users.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PresenceCheck {
    pub room: String,
    pub expected: Vec<String>,
    pub seen: Vec<String>,
}

/// A process's largest resident memory over the run, and its bound.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryPeak {
    pub process: String,
    pub peak_bytes: u64,
    pub bound_bytes: u64,
}

/// One place where the contract broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub detail: String,
}

/// How much was checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    /// Member logs (a client in ten rooms counts ten).
    pub members: u64,
    /// Messages published (tried), acked, and handed to members.
    pub publishes: u64,
    pub acked: u64,
    pub delivered: u64,
    /// Messages members were told they lost (history could not fill the
    /// hole): allowed, counted.
    pub declared_lost: u64,
    /// Jumps in seq that clients repaired by rejoining with `since`.
    #[serde(default)]
    pub repairs: u64,
}

/// What one member's log says, as the checker walks it.
#[derive(Default)]
struct Walk {
    /// Keys delivered, with (epoch, seq, at).
    got: HashMap<String, (String, u64, u64)>,
    /// When the member was told it lost messages.
    declared: Vec<u64>,
    /// When it first joined.
    first_join: Option<u64>,
}

fn violation(kind: &str, room: &str, member: Option<&str>, detail: String) -> Violation {
    Violation {
        kind: kind.to_owned(),
        room: room.to_owned(),
        member: member.map(str::to_owned),
        seq: None,
        key: None,
        detail,
    }
}

/// Checks a run's history.
pub fn check(h: &History) -> (Checked, Vec<Violation>) {
    let mut out = Vec::new();
    let mut checked = Checked {
        members: h.members.len() as u64,
        publishes: h.publishes.len() as u64,
        acked: h.publishes.iter().filter(|p| p.acked.is_some()).count() as u64,
        ..Checked::default()
    };
    let pubs: HashMap<&str, &PublishLog> =
        h.publishes.iter().map(|p| (p.key.as_str(), p)).collect();
    // Every delivery as (room, segment, seq, key, member), for the checks
    // across members once each member's segments are known.
    let mut deliveries: Vec<(&str, String, u64, &str, &str)> = Vec::new();
    // Per room: every seq a key was delivered at, and whether the room
    // changed epochs (an ack's seq then may count in another epoch).
    let mut delivered_at: HashMap<&str, HashSet<u64>> = HashMap::new();
    let mut epochs: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut walks = Vec::with_capacity(h.members.len());
    for m in &h.members {
        let room = m.room.as_str();
        let who = Some(m.member.as_str());
        let mut w = Walk::default();
        // The epoch as the member knows it (its last `joined`'s, as a client
        // keeps it), and the segment its seqs count in for the checks
        // across members: the epoch, or one of this member's own after a
        // start-over into a room with no epoch yet.
        let mut epoch: Option<String> = None;
        let mut segment = String::new();
        let mut last = 0u64;
        let mut accept_jump = false;
        let mut slowest = 0u64;
        // This member's deliveries: those made before it learnt the room's
        // epoch ("") count in the epoch it learns next, unless the room
        // started over in between.
        let mut mine: Vec<(String, u64, &str)> = Vec::new();
        for ev in &m.events {
            match ev {
                Event::Repair { .. } => checked.repairs += 1,
                Event::Joined {
                    at,
                    seq,
                    epoch: e,
                    recovered,
                } => {
                    if !e.is_empty() {
                        epochs.entry(room).or_default().insert(e.clone());
                    }
                    match &epoch {
                        None => {
                            w.first_join = Some(*at);
                            last = *seq;
                            segment = e.clone();
                        }
                        Some(prev) => {
                            let changed = !prev.is_empty() && e != prev;
                            if changed || *seq < last {
                                // The room started over: counting goes on
                                // from its seq now.
                                w.declared.push(*at);
                                last = *seq;
                                accept_jump = false;
                                segment = if e.is_empty() {
                                    format!("{segment}/after {at}")
                                } else {
                                    e.clone()
                                };
                            } else {
                                if *recovered == Some(false) {
                                    w.declared.push(*at);
                                    accept_jump = true;
                                }
                                if !e.is_empty() {
                                    if segment.is_empty() {
                                        for d in mine.iter_mut().filter(|d| d.0.is_empty()) {
                                            d.0 = e.clone();
                                        }
                                    }
                                    segment = e.clone();
                                }
                            }
                        }
                    }
                    epoch = Some(e.clone());
                }
                Event::Message { at, seq, key } => {
                    checked.delivered += 1;
                    let e = segment.clone();
                    let v = |kind: &str, detail: String| Violation {
                        seq: Some(*seq),
                        key: Some(key.clone()),
                        ..violation(kind, room, who, detail)
                    };
                    if epoch.is_none() {
                        out.push(v(
                            "out_of_order",
                            "a message before the room was joined".into(),
                        ));
                    }
                    if let Some(first) = w.got.get(key) {
                        out.push(v(
                            "duplicate",
                            format!(
                                "delivered again, first at seq {} (epoch {})",
                                first.1, first.0
                            ),
                        ));
                    } else if *seq <= last {
                        out.push(v("out_of_order", format!("seq {seq} after seq {last}")));
                    } else if *seq > last + 1 && !accept_jump {
                        out.push(v(
                            "gap",
                            format!(
                                "seq {seq} after seq {last}: {} message(s) skipped without `recovered: false`",
                                seq - last - 1
                            ),
                        ));
                    }
                    accept_jump = false;
                    last = last.max(*seq);
                    let Some(p) = pubs.get(key.as_str()) else {
                        out.push(v(
                            "phantom",
                            "no client or API call published this key".into(),
                        ));
                        continue;
                    };
                    if p.room != m.room {
                        out.push(v("phantom", format!("published into room {}", p.room)));
                    }
                    slowest = slowest.max(at.saturating_sub(p.sent));
                    w.got.entry(key.clone()).or_insert((e.clone(), *seq, *at));
                    delivered_at.entry(p.key.as_str()).or_default().insert(*seq);
                    mine.push((e, *seq, key.as_str()));
                }
            }
        }
        deliveries.extend(
            mine.into_iter()
                .map(|(e, seq, key)| (room, e, seq, key, m.member.as_str())),
        );
        if slowest > h.silence_bound_ms {
            out.push(violation(
                "silent",
                room,
                who,
                format!(
                    "a message took {slowest} ms to arrive, past the bound of {} ms",
                    h.silence_bound_ms
                ),
            ));
        }
        walks.push(w);
    }
    // One seq of one epoch is one message for everyone, and one message
    // has one seq.
    let mut at_seq: HashMap<(&str, &str, u64), (&str, &str)> = HashMap::new();
    let mut seq_of: HashMap<(&str, &str, &str), u64> = HashMap::new();
    for (room, e, seq, key, member) in &deliveries {
        let v = |kind: &str, detail: String| Violation {
            seq: Some(*seq),
            key: Some((*key).to_owned()),
            ..violation(kind, room, Some(member), detail)
        };
        match at_seq.get(&(room, e.as_str(), *seq)) {
            Some((other, who)) if other != key => out.push(v(
                "divergent",
                format!("{who} got {other} at this seq of epoch {e}"),
            )),
            Some(_) => {}
            None => {
                at_seq.insert((room, e.as_str(), *seq), (key, member));
            }
        }
        match seq_of.get(&(room, key, e.as_str())) {
            Some(s) if s != seq => out.push(v(
                "doubled",
                format!("stored twice: also at seq {s} of epoch {e}"),
            )),
            Some(_) => {}
            None => {
                seq_of.insert((room, key, e.as_str()), *seq);
            }
        }
    }
    // Every acked message reached every member that was in the room when
    // it was sent, or the member was told afterwards that it lost some.
    for (m, w) in h.members.iter().zip(&walks) {
        let Some(joined) = w.first_join else {
            out.push(violation(
                "lost",
                &m.room,
                Some(&m.member),
                "never joined its room".into(),
            ));
            continue;
        };
        let mut missing = BTreeMap::new();
        for p in h.publishes.iter().filter(|p| p.room == m.room) {
            let Some(acked) = p.acked else { continue };
            if p.sent < joined || w.got.contains_key(&p.key) {
                continue;
            }
            if w.declared.iter().any(|&d| d >= p.sent) {
                checked.declared_lost += 1;
                continue;
            }
            missing.insert(p.sent, (p.key.clone(), acked));
        }
        let n = missing.len();
        if let Some((_, (key, seq))) = missing.into_iter().next() {
            out.push(Violation {
                seq: Some(seq),
                key: Some(key),
                ..violation(
                    "lost",
                    &m.room,
                    Some(&m.member),
                    format!("{n} acked message(s) never arrived and no loss was declared (the first named)"),
                )
            });
        }
    }
    // An ack names the seq its message was delivered at (unless the room
    // started over meanwhile: the ack may count in the other epoch).
    for p in &h.publishes {
        let (Some(acked), Some(seqs)) = (p.acked, delivered_at.get(p.key.as_str())) else {
            continue;
        };
        let one_epoch = epochs.get(p.room.as_str()).is_none_or(|e| e.len() <= 1);
        let wrong = std::iter::once(acked)
            .chain(p.other_acks.iter().copied())
            .find(|a| !seqs.contains(a));
        if let Some(wrong) = wrong.filter(|_| one_epoch) {
            out.push(Violation {
                seq: Some(wrong),
                key: Some(p.key.clone()),
                ..violation(
                    "ack_mismatch",
                    &p.room,
                    None,
                    format!("acked at seq {wrong}, delivered at {seqs:?}"),
                )
            });
        }
    }
    for pc in &h.presence {
        let mut want = pc.expected.clone();
        let mut seen = pc.seen.clone();
        want.sort();
        want.dedup();
        seen.sort();
        seen.dedup();
        if want != seen {
            out.push(violation(
                "presence",
                &pc.room,
                None,
                format!("presence lists {seen:?}, the members are {want:?}"),
            ));
        }
    }
    for mp in &h.memory {
        if mp.peak_bytes > mp.bound_bytes {
            out.push(violation(
                "memory",
                "",
                Some(&mp.process),
                format!(
                    "resident memory reached {} MiB, past its bound of {} MiB",
                    mp.peak_bytes >> 20,
                    mp.bound_bytes >> 20
                ),
            ));
        }
    }
    (checked, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(at: u64, seq: u64, epoch: &str, recovered: Option<bool>) -> Event {
        Event::Joined {
            at,
            seq,
            epoch: epoch.into(),
            recovered,
        }
    }

    fn msg(at: u64, seq: u64, key: &str) -> Event {
        Event::Message {
            at,
            seq,
            key: key.into(),
        }
    }

    fn publish(key: &str, sent: u64, acked: Option<u64>) -> PublishLog {
        PublishLog {
            key: key.into(),
            room: "r".into(),
            publisher: "p".into(),
            sent,
            acked,
            other_acks: Vec::new(),
        }
    }

    fn member(name: &str, events: Vec<Event>) -> MemberLog {
        MemberLog {
            member: name.into(),
            user: name.into(),
            room: "r".into(),
            events,
        }
    }

    /// Three messages acked at seq 1..=3; two members.
    fn clean() -> History {
        History {
            members: vec![
                member(
                    "a",
                    vec![
                        joined(10, 0, "e1", None),
                        msg(110, 1, "k1"),
                        msg(210, 2, "k2"),
                        msg(310, 3, "k3"),
                    ],
                ),
                member(
                    "b",
                    vec![
                        joined(20, 0, "e1", None),
                        msg(120, 1, "k1"),
                        // A reconnect, recovered from history.
                        joined(250, 1, "e1", Some(true)),
                        msg(260, 2, "k2"),
                        msg(320, 3, "k3"),
                    ],
                ),
            ],
            publishes: vec![
                publish("k1", 100, Some(1)),
                publish("k2", 200, Some(2)),
                publish("k3", 300, Some(3)),
            ],
            silence_bound_ms: 1000,
            ..History::default()
        }
    }

    fn kinds(h: &History) -> Vec<String> {
        check(h).1.into_iter().map(|v| v.kind).collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let (checked, violations) = check(&clean());
        assert_eq!(violations, vec![]);
        assert_eq!(
            checked,
            Checked {
                members: 2,
                publishes: 3,
                acked: 3,
                delivered: 6,
                declared_lost: 0,
                repairs: 0,
            }
        );
    }

    #[test]
    fn a_message_that_never_arrived_is_lost() {
        let mut h = clean();
        h.members[1].events.remove(4);
        let (_, v) = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].kind.as_str(), v[0].key.as_deref()),
            ("lost", Some("k3"))
        );
        assert_eq!(v[0].member.as_deref(), Some("b"));
    }

    #[test]
    fn a_loss_the_member_was_told_of_is_counted_not_a_violation() {
        let mut h = clean();
        // b misses 2 and is told so on its rejoin (history trimmed).
        h.members[1].events = vec![
            joined(20, 0, "e1", None),
            msg(120, 1, "k1"),
            joined(250, 2, "e1", Some(false)),
            msg(320, 3, "k3"),
        ];
        let (checked, v) = check(&h);
        assert_eq!(v, vec![]);
        assert_eq!(checked.declared_lost, 1);
        // Told before the message was even sent: that does not cover it.
        h.members[1].events[2] = joined(150, 1, "e1", Some(false));
        assert_eq!(kinds(&h), vec!["lost"]);
    }

    #[test]
    fn a_new_epoch_starts_counting_over() {
        let mut h = clean();
        // Redis lost the room after k2: b rejoins in a new epoch at seq 0
        // and k3 comes as seq 1 of it. k3's ack says seq 1.
        h.publishes[2].acked = Some(1);
        h.members[1].events = vec![
            joined(20, 0, "e1", None),
            msg(120, 1, "k1"),
            msg(220, 2, "k2"),
            joined(280, 0, "e2", Some(false)),
            msg(320, 1, "k3"),
        ];
        h.members[0].events = vec![
            joined(10, 0, "e1", None),
            msg(110, 1, "k1"),
            msg(210, 2, "k2"),
            joined(290, 0, "e2", Some(false)),
            msg(310, 1, "k3"),
        ];
        assert_eq!(check(&h).1, vec![]);
    }

    #[test]
    fn a_room_that_starts_over_without_an_epoch_yet_is_not_confused_with_the_old() {
        // A local server restarted: the room is new there, with no epoch
        // until its first message; seq 1 again is another message.
        let mut h = clean();
        h.publishes.push(publish("k4", 400, Some(1)));
        h.members = vec![member(
            "a",
            vec![
                joined(10, 0, "e1", None),
                msg(110, 1, "k1"),
                msg(210, 2, "k2"),
                msg(310, 3, "k3"),
                joined(390, 0, "", Some(false)),
                msg(410, 1, "k4"),
            ],
        )];
        assert_eq!(check(&h).1, vec![]);
    }

    #[test]
    fn a_rejoin_in_the_epoch_a_new_room_took_is_no_start_over() {
        // The room started over without an epoch (`joined` epoch ""), got
        // one with its first message, and the member rejoins with since:
        // the same room, its replay follows.
        let mut h = clean();
        h.publishes.push(publish("k4", 400, Some(1)));
        h.publishes.push(publish("k5", 600, Some(2)));
        h.members = vec![member(
            "a",
            vec![
                joined(10, 0, "e1", None),
                msg(110, 1, "k1"),
                msg(210, 2, "k2"),
                msg(310, 3, "k3"),
                joined(390, 0, "", Some(false)),
                msg(410, 1, "k4"),
                joined(700, 2, "e2", Some(true)),
                msg(701, 2, "k5"),
            ],
        )];
        assert_eq!(check(&h).1, vec![]);
    }

    #[test]
    fn a_message_delivered_twice_is_a_duplicate() {
        let mut h = clean();
        h.members[0].events.push(msg(400, 4, "k2"));
        h.publishes.push(publish("k4", 390, None));
        let k = kinds(&h);
        // Also stored twice (k2 at seq 2 and 4).
        assert!(k.contains(&"duplicate".to_owned()), "{k:?}");
        assert!(k.contains(&"doubled".to_owned()), "{k:?}");
    }

    #[test]
    fn a_seq_again_or_backwards_is_out_of_order() {
        let mut h = clean();
        h.members[0].events.swap(2, 3);
        assert_eq!(kinds(&h), vec!["gap", "out_of_order"]);
    }

    #[test]
    fn a_jump_without_recovered_false_is_a_gap() {
        let mut h = clean();
        h.members[0].events.remove(2);
        assert_eq!(kinds(&h), vec!["gap", "lost"]);
    }

    #[test]
    fn two_messages_at_one_seq_diverge() {
        let mut h = clean();
        h.publishes.push(publish("k9", 290, None));
        if let Event::Message { key, .. } = &mut h.members[1].events[4] {
            *key = "k9".into();
        }
        let k = kinds(&h);
        assert!(k.contains(&"divergent".to_owned()), "{k:?}");
        assert!(k.contains(&"lost".to_owned()), "b never got k3: {k:?}");
    }

    #[test]
    fn an_unknown_key_is_a_phantom() {
        let mut h = clean();
        h.members[0].events.push(msg(400, 4, "nobody"));
        assert_eq!(kinds(&h), vec!["phantom"]);
    }

    #[test]
    fn an_ack_naming_another_seq_is_a_mismatch() {
        let mut h = clean();
        h.publishes[1].acked = Some(7);
        assert_eq!(kinds(&h), vec!["ack_mismatch"]);
    }

    /// As in a campaign: the first members join a room with no messages
    /// yet, so their `joined` has no epoch; they are held to the same
    /// checks as those who joined later.
    fn joined_empty() -> History {
        let mut h = clean();
        h.members[0].events[0] = joined(10, 0, "", None);
        h.members[1].events[0] = joined(20, 0, "", None);
        h.members.push(member(
            "c",
            vec![
                joined(150, 1, "e1", None),
                msg(210, 2, "k2"),
                msg(310, 3, "k3"),
            ],
        ));
        h
    }

    #[test]
    fn members_that_joined_before_the_first_message_are_checked_alike() {
        let h = joined_empty();
        assert_eq!(check(&h).1, vec![]);
        // An ack naming another seq is seen in a room whose first members
        // knew no epoch.
        let mut bad = joined_empty();
        bad.publishes[2].acked = Some(9);
        assert_eq!(kinds(&bad), vec!["ack_mismatch"]);
        // `a` never learnt the epoch; `c` got another message at seq 3.
        let mut bad = joined_empty();
        bad.publishes.push(publish("k9", 290, None));
        if let Event::Message { key, .. } = &mut bad.members[2].events[2] {
            *key = "k9".into();
        }
        let k = kinds(&bad);
        assert!(k.contains(&"divergent".to_owned()), "{k:?}");
        // `b` learnt the epoch at its rejoin: what it got before counts
        // in it, and meets `c`'s.
        let mut bad = joined_empty();
        bad.members[0].events.truncate(1);
        bad.publishes.push(publish("k9", 105, None));
        if let Event::Message { key, .. } = &mut bad.members[1].events[1] {
            *key = "k9".into();
        }
        bad.members[2].events.insert(1, msg(160, 1, "k1"));
        let k = kinds(&bad);
        assert!(k.contains(&"divergent".to_owned()), "{k:?}");
    }

    #[test]
    fn a_resends_ack_naming_another_seq_is_a_mismatch() {
        let mut h = clean();
        h.publishes[1].other_acks = vec![3];
        assert_eq!(kinds(&h), vec!["ack_mismatch"]);
    }

    #[test]
    fn repaired_jumps_are_counted() {
        let mut h = clean();
        h.members[0].events.insert(
            2,
            Event::Repair {
                at: 205,
                seq: 3,
                after: 1,
            },
        );
        let (checked, v) = check(&h);
        assert_eq!((checked.repairs, v), (1, vec![]));
    }

    #[test]
    fn a_message_slower_than_the_bound_is_silence() {
        let mut h = clean();
        h.silence_bound_ms = 5;
        let v = check(&h).1;
        assert_eq!(v.len(), 2, "one per member: {v:?}");
        assert!(v.iter().all(|v| v.kind == "silent"));
    }

    #[test]
    fn unacked_messages_are_not_owed_but_checked_when_delivered() {
        let mut h = clean();
        h.publishes.push(publish("k4", 350, None));
        assert_eq!(check(&h).1, vec![], "not owed");
        h.members[0].events.push(msg(360, 4, "k4"));
        h.members[0].events.push(msg(370, 5, "k4"));
        assert_eq!(kinds(&h), vec!["duplicate", "doubled"]);
    }

    #[test]
    fn members_owe_nothing_sent_before_they_joined() {
        let mut h = clean();
        h.members[1].events = vec![joined(250, 2, "e1", None), msg(320, 3, "k3")];
        assert_eq!(check(&h).1, vec![]);
        h.members[1].events = vec![];
        assert_eq!(kinds(&h), vec!["lost"]);
    }

    #[test]
    fn presence_and_memory_are_checked() {
        let mut h = clean();
        h.presence.push(PresenceCheck {
            room: "r".into(),
            expected: vec!["a".into(), "b".into()],
            seen: vec!["b".into(), "a".into(), "a".into()],
        });
        h.memory.push(MemoryPeak {
            process: "node-1".into(),
            peak_bytes: 10 << 20,
            bound_bytes: 20 << 20,
        });
        assert_eq!(check(&h).1, vec![]);
        h.presence[0].seen.push("ghost".into());
        h.memory[0].peak_bytes = 30 << 20;
        assert_eq!(kinds(&h), vec!["presence", "memory"]);
    }

    #[test]
    fn the_history_reads_back_as_written() {
        let h = clean();
        let json = serde_json::to_string(&h).unwrap();
        let back: History = serde_json::from_str(&json).unwrap();
        assert_eq!(check(&back), check(&h));
    }
}
