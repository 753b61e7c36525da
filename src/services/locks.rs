//! Distributed locks with fencing tokens (PROTOCOL.md §10): grants, first-come
//! first-served waiters, extension by the holder, release on unlock, expiry and the
//! holder's disconnect.
//!
//! Owned by the services thread; a pure state machine over a clock it is given, so its
//! rules are tested here without sockets. Durability of the fencing counter (it keeps
//! growing across restarts) is the caller's: it reserves tokens in blocks in the store
//! and starts [`Locks`] past the last reservation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::Hash;

/// An answer to send: a `lockResult`.
#[derive(Debug, PartialEq, Eq)]
pub enum LockEvent<H, R> {
    Granted {
        holder: H,
        request: R,
        name: String,
        token: u64,
        expires_at: u64,
    },
    NotAcquired {
        holder: H,
        request: R,
        name: String,
    },
}

struct Held<H> {
    holder: H,
    token: u64,
    expires_at: u64,
}

struct Waiter<H, R> {
    holder: H,
    request: R,
    ttl_ms: u64,
    deadline: u64,
}

struct Lock<H, R> {
    held: Option<Held<H>>,
    waiters: VecDeque<Waiter<H, R>>,
}

/// Every lock of the node (see the module docs). `H`: who holds (a connection), `R`:
/// what an answer needs to name the request.
pub struct Locks<H, R> {
    locks: HashMap<String, Lock<H, R>>,
    /// `(when, name)`: a hold's expiry or a waiter's deadline may be due then. Checked
    /// lazily: an entry whose lock changed since is skipped.
    timers: BinaryHeap<Reverse<(u64, String)>>,
    next_token: u64,
    waiting: usize,
    /// New grants so far (extensions keep their token and are not counted).
    grants: u64,
}

impl<H: Copy + Eq + Hash, R> Locks<H, R> {
    /// `first_token`: the token the first grant gets.
    pub fn new(first_token: u64) -> Locks<H, R> {
        Locks {
            locks: HashMap::new(),
            timers: BinaryHeap::new(),
            next_token: first_token.max(1),
            waiting: 0,
            grants: 0,
        }
    }

    /// The token the next grant will get.
    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    pub fn held(&self) -> usize {
        self.locks.values().filter(|l| l.held.is_some()).count()
    }

    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// New grants so far (each with a new fencing token).
    pub fn grants(&self) -> u64 {
        self.grants
    }

    /// The earliest instant [`Locks::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn grant(
        &mut self,
        now: u64,
        name: &str,
        holder: H,
        request: R,
        ttl_ms: u64,
    ) -> LockEvent<H, R> {
        let token = self.next_token;
        self.next_token += 1;
        self.grants += 1;
        let expires_at = now.saturating_add(ttl_ms);
        if let Some(l) = self.locks.get_mut(name) {
            l.held = Some(Held {
                holder,
                token,
                expires_at,
            });
        }
        self.timers.push(Reverse((expires_at, name.to_string())));
        LockEvent::Granted {
            holder,
            request,
            name: name.to_string(),
            token,
            expires_at,
        }
    }

    /// `lock`: granted now, extended (the holder asking again keeps its token), queued
    /// behind earlier waiters for up to `wait_ms`, or refused at once.
    pub fn lock(
        &mut self,
        now: u64,
        holder: H,
        request: R,
        name: &str,
        (ttl_ms, wait_ms): (u64, u64),
        out: &mut Vec<LockEvent<H, R>>,
    ) {
        let l = self.locks.entry(name.to_string()).or_insert_with(|| Lock {
            held: None,
            waiters: VecDeque::new(),
        });
        match &mut l.held {
            None => {
                let e = self.grant(now, name, holder, request, ttl_ms);
                out.push(e);
            }
            Some(h) if h.holder == holder => {
                h.expires_at = now.saturating_add(ttl_ms);
                let (token, expires_at) = (h.token, h.expires_at);
                self.timers.push(Reverse((expires_at, name.to_string())));
                out.push(LockEvent::Granted {
                    holder,
                    request,
                    name: name.to_string(),
                    token,
                    expires_at,
                });
            }
            Some(_) if wait_ms == 0 => out.push(LockEvent::NotAcquired {
                holder,
                request,
                name: name.to_string(),
            }),
            Some(_) => {
                let deadline = now.saturating_add(wait_ms);
                l.waiters.push_back(Waiter {
                    holder,
                    request,
                    ttl_ms,
                    deadline,
                });
                self.waiting += 1;
                self.timers.push(Reverse((deadline, name.to_string())));
            }
        }
    }

    /// `unlock`: true if `holder` held it (the first live waiter gets it next).
    pub fn unlock(
        &mut self,
        now: u64,
        holder: H,
        name: &str,
        out: &mut Vec<LockEvent<H, R>>,
    ) -> bool {
        let Some(l) = self.locks.get_mut(name) else {
            return false;
        };
        if !l.held.as_ref().is_some_and(|h| h.holder == holder) {
            return false;
        }
        l.held = None;
        self.pass_on(now, name, out);
        true
    }

    /// The lock `name` is free: its first waiter still waiting gets it; a lock with no
    /// holder and no waiter is forgotten.
    fn pass_on(&mut self, now: u64, name: &str, out: &mut Vec<LockEvent<H, R>>) {
        loop {
            let Some(l) = self.locks.get_mut(name) else {
                return;
            };
            match l.waiters.pop_front() {
                Some(w) => {
                    self.waiting -= 1;
                    if w.deadline < now {
                        out.push(LockEvent::NotAcquired {
                            holder: w.holder,
                            request: w.request,
                            name: name.to_string(),
                        });
                        continue;
                    }
                    let e = self.grant(now, name, w.holder, w.request, w.ttl_ms);
                    out.push(e);
                    return;
                }
                None => {
                    self.locks.remove(name);
                    return;
                }
            }
        }
    }

    /// The holder is gone: its locks pass on, its waits end (no answer: nobody to
    /// send it to).
    pub fn release_holder(&mut self, now: u64, holder: H, out: &mut Vec<LockEvent<H, R>>) {
        let mut freed = Vec::new();
        for (name, l) in self.locks.iter_mut() {
            let before = l.waiters.len();
            l.waiters.retain(|w| w.holder != holder);
            self.waiting -= before - l.waiters.len();
            if l.held.as_ref().is_some_and(|h| h.holder == holder) {
                l.held = None;
                freed.push(name.clone());
            } else if l.held.is_none() && l.waiters.is_empty() {
                freed.push(name.clone());
            }
        }
        for name in freed {
            self.pass_on(now, &name, out);
        }
    }

    /// Expires holds and waits that are due at `now`.
    pub fn tick(&mut self, now: u64, out: &mut Vec<LockEvent<H, R>>) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, name))) = self.timers.pop() else {
                break;
            };
            let Some(l) = self.locks.get_mut(&name) else {
                continue;
            };
            // Waiters whose wait ran out, wherever they are in the queue.
            let mut i = 0;
            while i < l.waiters.len() {
                if l.waiters[i].deadline <= now {
                    if let Some(w) = l.waiters.remove(i) {
                        self.waiting -= 1;
                        out.push(LockEvent::NotAcquired {
                            holder: w.holder,
                            request: w.request,
                            name: name.clone(),
                        });
                    }
                } else {
                    i += 1;
                }
            }
            let expired = l.held.as_ref().is_some_and(|h| h.expires_at <= now);
            if expired {
                l.held = None;
            }
            if l.held.is_none() {
                self.pass_on(now, &name, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type L = Locks<u32, u32>;

    fn granted(e: &LockEvent<u32, u32>) -> Option<(u32, u32, u64)> {
        match e {
            LockEvent::Granted {
                holder,
                request,
                token,
                ..
            } => Some((*holder, *request, *token)),
            _ => None,
        }
    }

    #[test]
    fn grants_extends_refuses_and_serves_waiters_in_order() {
        let mut l = L::new(10);
        let mut out = Vec::new();
        l.lock(0, 1, 100, "a", (1000, 0), &mut out);
        assert_eq!(granted(&out[0]), Some((1, 100, 10)));
        // Another holder without waiting: refused at once.
        l.lock(1, 2, 200, "a", (1000, 0), &mut out);
        assert!(matches!(out[1], LockEvent::NotAcquired { holder: 2, .. }));
        // The holder again: extended, same token.
        l.lock(2, 1, 101, "a", (1000, 0), &mut out);
        assert_eq!(granted(&out[2]), Some((1, 101, 10)));
        // Two waiters, served in arrival order.
        l.lock(3, 3, 300, "a", (500, 5000), &mut out);
        l.lock(4, 4, 400, "a", (500, 5000), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(l.waiting(), 2);
        assert!(!l.unlock(5, 3, "a", &mut out), "a waiter does not hold it");
        assert!(l.unlock(5, 1, "a", &mut out));
        assert_eq!(granted(&out[3]), Some((3, 300, 11)));
        // Holder 3's hold expires at 505: holder 4 gets it then, with a newer token.
        l.tick(504, &mut out);
        assert_eq!(out.len(), 4);
        l.tick(505, &mut out);
        assert_eq!(granted(&out[4]), Some((4, 400, 12)));
        assert_eq!(l.waiting(), 0);
        assert_eq!(l.held(), 1);
    }

    #[test]
    fn waits_run_out_and_disconnects_release() {
        let mut l = L::new(1);
        let mut out = Vec::new();
        l.lock(0, 1, 1, "a", (10_000, 0), &mut out);
        l.lock(0, 2, 2, "a", (10_000, 100), &mut out);
        l.lock(0, 3, 3, "a", (10_000, 5_000), &mut out);
        assert_eq!(l.next_deadline(), Some(100));
        l.tick(100, &mut out);
        assert!(matches!(out[1], LockEvent::NotAcquired { holder: 2, .. }));
        // The holder disconnects: waiter 3 is next.
        l.release_holder(200, 1, &mut out);
        assert_eq!(granted(&out[2]), Some((3, 3, 2)));
        // A disconnecting waiter is dropped silently.
        l.lock(300, 4, 4, "a", (10_000, 5_000), &mut out);
        l.release_holder(301, 4, &mut out);
        assert_eq!(l.waiting(), 0);
        assert!(l.unlock(400, 3, "a", &mut out));
        assert_eq!(out.len(), 3);
        assert_eq!(l.held(), 0);
        assert!(l.locks.is_empty(), "free locks are forgotten");
    }

    #[test]
    fn tokens_only_grow_and_holders_never_overlap() {
        // A pseudo-random schedule of lock/unlock/tick over 3 names and 5 holders.
        let mut l = L::new(1);
        let mut out = Vec::new();
        let mut x: u64 = 7;
        let mut holder_of: HashMap<String, u32> = HashMap::new();
        let mut last_token = 0;
        for step in 0..5000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let h = (x % 5) as u32;
            let name = ["a", "b", "c"][(x >> 8) as usize % 3];
            match (x >> 16) % 4 {
                0 | 1 => l.lock(
                    step,
                    h,
                    0,
                    name,
                    (1 + (x >> 20) % 50, (x >> 30) % 40),
                    &mut out,
                ),
                2 => {
                    l.unlock(step, h, name, &mut out);
                }
                _ => l.tick(step, &mut out),
            }
            l.tick(step, &mut out);
            for e in out.drain(..) {
                if let LockEvent::Granted {
                    holder,
                    name,
                    token,
                    ..
                } = e
                {
                    if holder_of.get(&name) != Some(&holder) || token > last_token {
                        assert!(token > last_token, "token {token} after {last_token}");
                        last_token = token;
                    }
                    holder_of.insert(name, holder);
                }
            }
            // The state never has two holders: by construction one `held` per name;
            // check the map agrees with it.
            for (name, lock) in &l.locks {
                if let Some(h) = &lock.held {
                    assert_eq!(holder_of.get(name), Some(&h.holder));
                }
            }
        }
    }
}
