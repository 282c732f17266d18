//! Who holds the gateway's room streams (SSE, gRPC `Subscribe`), and how
//! many each may: backends (the API key) draw from one pool, clients (a
//! client token, or anyone when the gateway runs open) from another, each
//! user and each address (IPv6: one /64) from a share of it, so one client
//! cannot lock the backends, or other clients, out. A backend can end a
//! user's streams (`Disconnect`).

use crate::state::ApiError;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use turnout_proto::codes::ErrorCode;

/// Who opens a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holder {
    /// A backend with the API key (or gRPC in open mode).
    Backend,
    /// A client: its token's user, if it has one, and its address.
    Client { user: Option<String>, ip: IpAddr },
}

/// How many streams each may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    pub(crate) backends: usize,
    pub(crate) clients: usize,
    pub(crate) per_user: usize,
    pub(crate) per_ip: usize,
}

#[derive(Default)]
struct Held {
    backends: usize,
    clients: usize,
    per_user: HashMap<String, usize>,
    per_ip: HashMap<IpAddr, usize>,
    /// Open streams of each user, to end them.
    ends: HashMap<String, Vec<(u64, CancellationToken)>>,
    next: u64,
}

pub(crate) struct Book {
    limits: StreamLimits,
    held: Mutex<Held>,
}

/// One admitted stream; it gives its place back when dropped. `end` fires
/// when a backend disconnects its user.
pub(crate) struct Ticket {
    book: Arc<Book>,
    holder: Holder,
    id: u64,
    pub(crate) end: CancellationToken,
}

fn full(what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        format!("{what} hold as many room streams as they may; close one, or retry later"),
    )
}

impl Book {
    pub(crate) fn new(limits: StreamLimits) -> Arc<Book> {
        Arc::new(Book {
            limits,
            held: Mutex::new(Held::default()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Streams held now, all holders.
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        let h = self.held();
        h.backends + h.clients
    }

    /// A place for a stream of `holder`, or why not.
    pub(crate) fn admit(self: &Arc<Self>, holder: Holder) -> Result<Ticket, ApiError> {
        let l = self.limits;
        let mut h = self.held();
        match &holder {
            Holder::Backend => {
                if h.backends >= l.backends {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "this gateway serves max_subscribers backend streams already; retry later or elsewhere",
                    ));
                }
                h.backends += 1;
            }
            Holder::Client { user, ip } => {
                let ip = turnout_common::net::ip_key(*ip);
                if h.clients >= l.clients {
                    return Err(full("clients of this gateway"));
                }
                if h.per_ip.get(&ip).copied().unwrap_or(0) >= l.per_ip {
                    return Err(full("clients at your address"));
                }
                if let Some(u) = user
                    && h.per_user.get(u).copied().unwrap_or(0) >= l.per_user
                {
                    return Err(full("you"));
                }
                h.clients += 1;
                *h.per_ip.entry(ip).or_default() += 1;
                if let Some(u) = user {
                    *h.per_user.entry(u.clone()).or_default() += 1;
                }
            }
        }
        h.next += 1;
        let id = h.next;
        let end = CancellationToken::new();
        if let Holder::Client { user: Some(u), .. } = &holder {
            h.ends.entry(u.clone()).or_default().push((id, end.clone()));
        }
        Ok(Ticket {
            book: self.clone(),
            holder,
            id,
            end,
        })
    }

    /// Ends every stream of `user`; returns how many.
    pub(crate) fn end_user(&self, user: &str) -> usize {
        let ends = self.held().ends.remove(user).unwrap_or_default();
        for (_, t) in &ends {
            t.cancel();
        }
        ends.len()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut h = self.book.held();
        match &self.holder {
            Holder::Backend => h.backends -= 1,
            Holder::Client { user, ip } => {
                h.clients -= 1;
                let ip = turnout_common::net::ip_key(*ip);
                if let Some(n) = h.per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        h.per_ip.remove(&ip);
                    }
                }
                if let Some(u) = user {
                    if let Some(n) = h.per_user.get_mut(u) {
                        *n -= 1;
                        if *n == 0 {
                            h.per_user.remove(u);
                        }
                    }
                    if let Some(v) = h.ends.get_mut(u) {
                        v.retain(|(id, _)| *id != self.id);
                        if v.is_empty() {
                            h.ends.remove(u);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Arc<Book> {
        Book::new(StreamLimits {
            backends: 2,
            clients: 3,
            per_user: 2,
            per_ip: 2,
        })
    }

    fn client(user: &str, ip: &str) -> Holder {
        Holder::Client {
            user: Some(user.into()),
            ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn pools_and_shares() {
        let b = book();
        let _c1 = b.admit(client("ann", "10.0.0.1")).unwrap();
        let _c2 = b.admit(client("ann", "10.0.0.2")).unwrap();
        assert!(b.admit(client("ann", "10.0.0.3")).is_err(), "per user");
        let c3 = b.admit(client("bob", "10.0.0.1")).unwrap();
        assert!(
            b.admit(client("cy", "10.0.0.9")).is_err(),
            "client pool full"
        );
        // The backends' pool is untouched by clients.
        let _b1 = b.admit(Holder::Backend).unwrap();
        let _b2 = b.admit(Holder::Backend).unwrap();
        assert!(b.admit(Holder::Backend).is_err());
        drop(c3);
        let _cy = b.admit(client("cy", "10.0.0.9")).unwrap();
        assert_eq!(b.total(), 5);
    }

    #[test]
    fn ipv6_share_per_64_and_ending_a_user() {
        let b = book();
        let _a = b.admit(client("u1", "2001:db8::1")).unwrap();
        let _b = b.admit(client("u2", "2001:db8::2")).unwrap();
        assert!(b.admit(client("u3", "2001:db8::3")).is_err(), "one /64");
        let t = b.admit(client("u4", "10.1.1.1")).unwrap();
        assert_eq!(b.end_user("u4"), 1);
        assert!(t.end.is_cancelled());
        assert_eq!(b.end_user("u4"), 0);
    }
}
