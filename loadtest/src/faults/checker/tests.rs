//! The checker against hand-made histories: each violation it names, and
//! the clean runs it must pass.

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
