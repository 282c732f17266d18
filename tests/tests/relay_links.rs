//! A follower's periodic check of what it follows
//! (`turnout_common::relay::Links`), in-process against a real Redis: a
//! followed room that is not attached anywhere, or is attached at a node
//! Redis no longer names as its owner (a `MOVED` lost, a detach that raced
//! a rejoin), is attached again. Nothing else tells the follower: no owner
//! streams here, so only the check can find it.

use anyhow::Result;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use turnout_common::relay::{Follower, LinkMetrics, Links, RECHECK, Settings};
use turnout_tests::*;

/// Three of Links' periodic checks.
const CHECKS: Duration = RECHECK.saturating_mul(3);

/// Follows one room and records what Links tells it.
#[derive(Default)]
struct OneRoom {
    owned: Mutex<Vec<(String, u64)>>,
    caught_up: Mutex<Vec<String>>,
}

impl Follower for OneRoom {
    fn message(&self, _: &str, _: u64, _: &str, _: String) {}
    fn presence(&self, _: &str, _: &str, _: String) {}
    fn catch_up(&self, room: &str) {
        self.caught_up.lock().unwrap().push(room.to_owned());
    }
    fn wanted(&self, room: &str) -> bool {
        room == "r"
    }
    fn owned_here(&self, room: &str, epoch: u64) {
        self.owned.lock().unwrap().push((room.to_owned(), epoch));
    }
    fn rooms(&self) -> Vec<String> {
        vec!["r".to_owned()]
    }
}

/// Marks `node` alive in Redis as its heartbeat would.
async fn alive(con: &mut turnout_common::redis::Con, node: &str) -> Result<()> {
    redis::cmd("SET")
        .arg(turnout_proto::keys::node(node))
        .arg("{}")
        .arg("EX")
        .arg(600)
        .query_async::<()>(con)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_followed_room_is_attached_again_where_redis_says_it_lives() -> Result<()> {
    let redis = Redis::start().await?;
    let client = turnout_common::redis::client(&redis.url(), None, false)?;
    let mut con = client.commands().await?;
    alive(&mut con, "n1").await?;
    let pin = Duration::from_secs(600);
    let placed = turnout_common::redis::rooms::claim(&mut con, "r", "n1", pin, &[]).await?;
    assert_eq!(placed.node, "n1");
    let stop = CancellationToken::new();
    let links = Links::new(
        Settings {
            me: "n1".into(),
            token: turnout_common::auth::InternalToken::default(),
            pin,
            load_factor: turnout_common::placement::LOAD_FACTOR,
        },
        con.clone(),
        LinkMetrics::default(),
        stop.clone(),
    );
    let follower = Arc::new(OneRoom::default());
    let weak: Weak<dyn Follower> = Arc::downgrade(&(follower.clone() as Arc<dyn Follower>));
    links.set_follower(weak);

    // Followed, attached nowhere: the check attaches it at its owner, this
    // process, and catches it up from history.
    assert_eq!(links.attached_at("r"), None);
    wait_for("the check to attach the room", CHECKS, || async {
        (links.attached_at("r").as_deref() == Some("n1")).then_some(())
    })
    .await?;
    assert_eq!(
        follower.owned.lock().unwrap().as_slice(),
        &[("r".to_owned(), placed.epoch)]
    );
    assert_eq!(follower.caught_up.lock().unwrap().as_slice(), &["r"]);

    // Attached here, but Redis now names another live node (a claim whose
    // notice never came): the check lets go of the stale attachment and
    // attaches again, at the new owner.
    alive(&mut con, "n2").await?;
    let moved =
        turnout_common::redis::rooms::claim(&mut con, "r", "n2", pin, &["n1".to_owned()]).await?;
    assert_eq!(moved.node, "n2");
    assert!(moved.epoch > placed.epoch, "{moved:?} after {placed:?}");
    wait_for("the check to let go of the old owner", CHECKS, || async {
        (links.attached_at("r").as_deref() != Some("n1")).then_some(())
    })
    .await?;
    stop.cancel();
    Ok(())
}
