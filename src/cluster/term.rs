//! A rollout driver's term, bounded by its lease.
//!
//! A lease holder learns that it lost its lease only from a keep-alive that fails, which can
//! take longer than the lease itself. So it keeps its own deadline instead: the send time of
//! the last keep-alive etcd answered, plus the TTL, less a margin ([`Term::safe_until`]).
//! Past it the session ends ([`super::session`]) and every hook running under this
//! instance's terms is killed first (its whole process group). A frozen process cannot do
//! that, so each such hook runs under a watchdog process (`handoff hook-guard`, see
//! [`crate::rollout`]'s hook) that kills the group at the same deadline unless told of a
//! renewal. A new driver is elected only once the old lease expired in etcd, after that
//! deadline: two hooks of one rollout never run at once.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How often the lease is renewed: four chances per TTL, so one slow answer (an etcd leader
/// election) does not end the term.
pub fn keep_alive_every(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(250))
}

/// How long before the lease could expire in etcd this instance stops acting under it.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(250))
}

#[derive(Debug)]
pub struct Term {
    safe_until: watch::Sender<Option<Instant>>,
    /// Process groups of the hooks running under this instance's terms.
    groups: Mutex<BTreeSet<u32>>,
}

impl Default for Term {
    fn default() -> Self {
        Term {
            safe_until: watch::channel(None).0,
            groups: Mutex::new(BTreeSet::new()),
        }
    }
}

impl Term {
    /// Until when this instance may act under its lease; `None` without a session.
    pub fn safe_until(&self) -> watch::Receiver<Option<Instant>> {
        self.safe_until.subscribe()
    }

    /// A keep-alive sent at `sent` was answered (or the lease granted): the lease lives until
    /// at least `sent + ttl` in etcd.
    pub(super) fn renewed(&self, sent: Instant, ttl: Duration) {
        let until = sent + ttl.saturating_sub(margin(ttl));
        self.safe_until.send_modify(|s| {
            *s = Some(s.map_or(until, |old| old.max(until)));
        });
    }

    /// The session ended (or its deadline passed): nothing runs under its terms any more.
    pub(super) fn end(&self) {
        self.safe_until.send_replace(None);
        let groups = std::mem::take(&mut *self.lock());
        for pgid in groups {
            tracing::warn!(
                pgid,
                "cluster: this instance's term ended; killing a rollout hook's process group"
            );
            crate::child::kill_group(pgid);
        }
    }

    /// Registers a hook's process group until the returned value is dropped. `None` when no
    /// term is held now (the hook must not start).
    pub fn enter(&self, pgid: u32) -> Option<Registered<'_>> {
        self.safe_until.borrow().filter(|u| Instant::now() < *u)?;
        self.lock().insert(pgid);
        Some(Registered { term: self, pgid })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A hook's process group, registered with the term it runs under.
pub struct Registered<'a> {
    term: &'a Term,
    pgid: u32,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.term.lock().remove(&self.pgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_follows_answered_renewals_only() {
        let term = Term::default();
        let ttl = Duration::from_secs(2);
        assert!(term.enter(1).is_none(), "no lease, no hook");
        let t0 = Instant::now();
        term.renewed(t0, ttl);
        assert_eq!(
            *term.safe_until().borrow(),
            Some(t0 + Duration::from_millis(1500))
        );
        // An answer to an older keep-alive arriving late does not move it back.
        term.renewed(t0 - Duration::from_secs(1), ttl);
        assert_eq!(
            *term.safe_until().borrow(),
            Some(t0 + Duration::from_millis(1500))
        );
        {
            let _hook = term.enter(12345).expect("within the term");
            assert_eq!(term.lock().len(), 1);
        }
        assert!(term.lock().is_empty());
        tokio::time::advance(Duration::from_millis(1600)).await;
        assert!(term.enter(1).is_none(), "past the safe deadline");
        term.end();
        assert_eq!(*term.safe_until().borrow(), None);
    }
}
