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
mod tests;
