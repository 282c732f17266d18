//! Counting connections per client address: one IPv4 address, or one IPv6
//! /64 (what one host or customer usually holds; counting single IPv6
//! addresses would let one host open 2^64 slots). An address may hold so
//! many connections at once, and open so many per second: a client that is
//! closed for abuse cannot come straight back with fresh per-connection
//! budgets.

use dashmap::DashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Header a gateway sets on upgrades it forwards: the client's address,
/// believed by a node only next to the internal token (or in open mode).
pub const CLIENT_IP_HEADER: &str = "x-turnout-client-ip";

/// Header on a node's `503` to an upgrade, saying why it refused:
/// [`REFUSED_FULL`] (at `max_connections`), [`REFUSED_BUSY`] (at
/// `max_accept_rate`), `draining`, or `lease` (it lost contact with Redis).
/// A gateway moves a client elsewhere for the last two; a sticky room stays
/// on its full or busy owner.
pub const REFUSAL_HEADER: &str = "x-turnout-refusal";

/// [`REFUSAL_HEADER`]'s value for a node at `max_connections`.
pub const REFUSED_FULL: &str = "full";

/// [`REFUSAL_HEADER`]'s value for a node taking new connections at its
/// `max_accept_rate`: busy for a moment.
pub const REFUSED_BUSY: &str = "busy";

/// The unit a limit counts: an IPv4 address, or an IPv6 /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// How many connections an address may hold, and open per second.
#[derive(Debug, Clone, Copy)]
pub struct IpLimits {
    pub max: usize,
    /// New connections per second (a token bucket of `burst`).
    pub rate: f64,
    pub burst: u32,
}

struct Entry {
    open: usize,
    tokens: f64,
    at: Instant,
}

/// Connections per client address.
pub struct IpSlots {
    entries: DashMap<IpAddr, Entry>,
    limits: IpLimits,
    takes: AtomicU64,
}

/// One connection counted against its address; released on drop.
pub struct IpSlot {
    slots: Arc<IpSlots>,
    key: IpAddr,
}

/// Why an address got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It holds `max` connections.
    Full,
    /// It opens connections faster than `rate`.
    TooFast,
}

impl Refused {
    /// What the client is told (with HTTP 429).
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full => "too many connections from your address",
            Refused::TooFast => "your address opens connections too fast; retry later",
        }
    }
}

impl IpSlots {
    pub fn new(limits: IpLimits) -> Arc<IpSlots> {
        Arc::new(IpSlots {
            entries: DashMap::new(),
            limits,
            takes: AtomicU64::new(0),
        })
    }

    /// A slot for `ip`, or why not.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, Refused> {
        let now = Instant::now();
        let l = self.limits;
        if self.takes.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.sweep(now);
        }
        let key = ip_key(ip);
        let mut e = self.entries.entry(key).or_insert(Entry {
            open: 0,
            tokens: l.burst as f64,
            at: now,
        });
        let refill = now.saturating_duration_since(e.at).as_secs_f64() * l.rate;
        e.tokens = (e.tokens + refill).min(l.burst as f64);
        e.at = now;
        if e.open >= l.max {
            return Err(Refused::Full);
        }
        if e.tokens < 1.0 {
            return Err(Refused::TooFast);
        }
        e.tokens -= 1.0;
        e.open += 1;
        Ok(IpSlot {
            slots: self.clone(),
            key,
        })
    }

    /// Forgets addresses with nothing open and a full bucket.
    fn sweep(&self, now: Instant) {
        let l = self.limits;
        self.entries.retain(|_, e| {
            let tokens = e.tokens + now.saturating_duration_since(e.at).as_secs_f64() * l.rate;
            e.open > 0 || tokens < l.burst as f64
        });
    }
}

impl IpSlot {
    /// Charges the address one second of its opening rate (at least one
    /// connection): its connection was closed for abuse. A bucket may go
    /// below zero, down to minus its burst, so an address that keeps
    /// coming back with abusive connections gets about one a second, not
    /// a fresh budget with each.
    pub fn penalize(&self) {
        let l = self.slots.limits;
        if let Some(mut e) = self.slots.entries.get_mut(&self.key) {
            e.tokens = (e.tokens - l.rate.max(1.0)).max(-(l.burst as f64));
        }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(mut e) = self.slots.entries.get_mut(&self.key) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize, rate: f64, burst: u32) -> Arc<IpSlots> {
        IpSlots::new(IpLimits { max, rate, burst })
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let s = slots(2, 1000.0, 1000);
        let one = s.take(a).unwrap();
        let _two = s.take(b).unwrap();
        assert_eq!(
            s.take("2001:db8:1:2::77".parse().unwrap()).err(),
            Some(Refused::Full)
        );
        assert!(s.take(c).is_ok());
        drop(one);
        assert!(s.take(a).is_ok());
    }

    #[test]
    fn opening_rate_survives_closing() {
        let s = slots(100, 0.001, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            drop(s.take(ip).unwrap());
        }
        // Closed again at once: the budget is not given back.
        assert_eq!(s.take(ip).err(), Some(Refused::TooFast));
    }

    #[test]
    fn abuse_costs_a_second_of_rate() {
        let s = slots(100, 2.0, 5);
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let slot = s.take(ip).unwrap();
        slot.penalize();
        drop(slot);
        // 5 - 1 taken - 2 charged: two left.
        assert!(s.take(ip).is_ok());
        assert!(s.take(ip).is_ok());
        assert_eq!(s.take(ip).err(), Some(Refused::TooFast));
        // The debt is bounded by the burst.
        let other: IpAddr = "10.0.0.3".parse().unwrap();
        let slot = s.take(other).unwrap();
        for _ in 0..100 {
            slot.penalize();
        }
        let e = s.entries.get(&ip_key(other)).unwrap();
        assert_eq!(e.tokens, -5.0);
    }
}
