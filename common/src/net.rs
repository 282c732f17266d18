//! Counting connections per client address: one IPv4 address, or one IPv6
//! /64 (what one host or customer usually holds; counting single IPv6
//! addresses would let one host open 2^64 slots).

use dashmap::DashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

/// Header a gateway sets on upgrades it forwards: the client's address,
/// believed by a node only next to the internal token (or in open mode).
pub const CLIENT_IP_HEADER: &str = "x-turnout-client-ip";

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

/// Connections per client address, at most `max` each.
pub struct IpSlots {
    counts: DashMap<IpAddr, usize>,
    max: usize,
}

/// One connection counted against its address; released on drop.
pub struct IpSlot {
    slots: Arc<IpSlots>,
    key: IpAddr,
}

impl IpSlots {
    pub fn new(max: usize) -> Arc<IpSlots> {
        Arc::new(IpSlots {
            counts: DashMap::new(),
            max,
        })
    }

    /// A slot for `ip`, or None when its address already holds `max`.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = ip_key(ip);
        let mut n = self.counts.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            slots: self.clone(),
            key,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.slots.counts.remove_if_mut(&self.key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let slots = IpSlots::new(2);
        let one = slots.take(a).unwrap();
        let _two = slots.take(b).unwrap();
        assert!(slots.take("2001:db8:1:2::77".parse().unwrap()).is_none());
        assert!(slots.take(c).is_some());
        drop(one);
        assert!(slots.take(a).is_some());
    }
}
