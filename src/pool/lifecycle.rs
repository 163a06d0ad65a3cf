//! The upgrade-lifecycle part of a node's runtime state: drain deadline and deadline
//! closes, the warmup ramp, and the registry of live TCP sessions that rebalancing closes
//! oldest first. Everything is atomics or `ArcSwap`, read by the data path without locks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Slots of the live-session registry. Sessions whose ids collide in a slot are invisible
/// to rebalancing (never to anything else); 4096 covers the long-lived connection counts of
/// the pairs handoff is for, at 32 KiB per node.
const LIVE_SLOTS: usize = 4096;

/// Share of its weight a node gets at the start of warmup.
const WARM_FLOOR: f64 = 0.10;

pub struct Lifecycle {
    /// Time origin for the warmup ramp (tokio time, so paused-time tests reach it).
    base: Instant,
    /// Nanoseconds after `base` when warming began.
    warm_start: AtomicU64,
    warmup_ns: AtomicU64,
    /// Unix ms of the current drain deadline; 0 when not draining.
    drain_deadline: AtomicU64,
    /// Unix ms when the current drain began (affinity continuations are timed from it).
    drain_started: AtomicU64,
    /// Cancelled at a drain deadline: the node's remaining sessions close. Replaced on enable.
    close: ArcSwap<CancellationToken>,
    /// Window over which deadline closes are spread, in ms.
    close_spread_ms: AtomicU64,
    /// Sessions closed at drain deadlines, ever.
    pub deadline_closes: AtomicU64,
    /// The current drain reached its deadline (cleared by the next drain, or once the node
    /// serves again): client connections last served by this node close gracefully (GOAWAY,
    /// `Connection: close`), and sessions that start on it now are closed at once.
    deadline_passed: AtomicBool,
    next_session: AtomicU64,
    live: Box<[AtomicU64]>,
    /// Rebalancing: scan start for the oldest live session (only the controller moves it).
    scan_from: AtomicU64,
    /// Rebalancing: each live session's own close request, by slot (beside `live`), so
    /// asking one session to close wakes that session only, not every session of the node.
    rebalance: Box<[ArcSwapOption<CancellationToken>]>,
    /// Sessions closed by rebalancing, ever.
    pub rebalance_closes: AtomicU64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

/// Fraction of its weight a warming node gets `elapsed` into a `warmup` window.
pub fn warmup_factor(elapsed: Duration, warmup: Duration) -> f64 {
    if warmup.is_zero() || elapsed >= warmup {
        return 1.0;
    }
    WARM_FLOOR + (1.0 - WARM_FLOOR) * elapsed.as_secs_f64() / warmup.as_secs_f64()
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle {
            base: Instant::now(),
            warm_start: AtomicU64::new(0),
            warmup_ns: AtomicU64::new(0),
            drain_deadline: AtomicU64::new(0),
            drain_started: AtomicU64::new(0),
            close: ArcSwap::from_pointee(CancellationToken::new()),
            close_spread_ms: AtomicU64::new(0),
            deadline_closes: AtomicU64::new(0),
            deadline_passed: AtomicBool::new(false),
            next_session: AtomicU64::new(0),
            live: (0..LIVE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            scan_from: AtomicU64::new(0),
            rebalance: (0..LIVE_SLOTS).map(|_| ArcSwapOption::empty()).collect(),
            rebalance_closes: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(Instant::now().duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Starts the warmup ramp now.
    pub fn start_warming(&self, warmup: Duration) {
        let ns = u64::try_from(warmup.as_nanos()).unwrap_or(u64::MAX);
        self.warmup_ns.store(ns, Relaxed);
        self.warm_start.store(self.now_ns(), Relaxed);
    }

    /// The ramp's current fraction.
    pub fn warm_factor(&self) -> f64 {
        let elapsed = self.now_ns().saturating_sub(self.warm_start.load(Relaxed));
        warmup_factor(
            Duration::from_nanos(elapsed),
            Duration::from_nanos(self.warmup_ns.load(Relaxed)),
        )
    }

    /// `weight` scaled by the ramp (at least 1).
    pub fn warm_weight(&self, weight: u32) -> u32 {
        ((f64::from(weight) * self.warm_factor()).round() as u32).max(1)
    }

    pub fn drain_deadline_ms(&self) -> Option<u64> {
        Some(self.drain_deadline.load(Relaxed)).filter(|d| *d != 0)
    }

    pub fn deadline_passed(&self) -> bool {
        self.deadline_passed.load(SeqCst)
    }

    /// The node serves again.
    pub fn clear_deadline_passed(&self) {
        self.deadline_passed.store(false, SeqCst);
    }

    pub fn set_drain_deadline(&self, started_ms: u64, deadline_ms: u64, spread: Duration) {
        self.deadline_passed.store(false, SeqCst);
        self.drain_started.store(started_ms, Relaxed);
        self.drain_deadline.store(deadline_ms, Relaxed);
        let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
        self.close_spread_ms.store(spread_ms, Relaxed);
    }

    pub fn drain_started_ms(&self) -> u64 {
        self.drain_started.load(Relaxed)
    }

    pub fn clear_drain_deadline(&self) {
        self.drain_deadline.store(0, Relaxed);
    }

    /// The token this node's sessions watch for a drain deadline.
    pub fn close_token(&self) -> CancellationToken {
        CancellationToken::clone(&self.close.load())
    }

    /// The token a long-lived session (tunnel, TCP) that starts now watches: already
    /// cancelled when the drain deadline has passed, so a session that starts after it (an
    /// affinity continuation) is closed at once instead of outliving the drain.
    pub fn session_close_token(&self) -> CancellationToken {
        // Token first, flag second: `fire_close` sets the flag before it swaps the token, so
        // either this token is the one cancelled, or the flag is already visible.
        let token = self.close_token();
        if self.deadline_passed() {
            // A token of its own: cancelling the shared one would close every later session
            // of the node too, even once it serves again.
            let closed = CancellationToken::new();
            closed.cancel();
            return closed;
        }
        token
    }

    /// Drain deadline reached: every session watching the token closes (spread). Requests
    /// that start later (affinity continuations) get a fresh token.
    pub fn fire_close(&self) {
        self.deadline_passed.store(true, SeqCst);
        self.close.swap(Arc::new(CancellationToken::new())).cancel();
    }

    /// How long after the deadline session `id` closes, so closes spread over the window.
    pub fn spread_offset(&self, id: u64) -> Duration {
        let spread = self.close_spread_ms.load(Relaxed);
        if spread == 0 {
            return Duration::ZERO;
        }
        // Fibonacci hashing spreads consecutive ids evenly over the window.
        let frac = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_millis((spread as f64 * frac) as u64)
    }

    /// A fresh id (for spreading closes of connections that are not registered sessions).
    pub fn next_id(&self) -> u64 {
        self.next_session.fetch_add(1, Relaxed)
    }

    /// Registers a live TCP session; returns its id (ids grow with age order).
    /// Registers a live session: its id, and the token cancelled when rebalancing asks it
    /// to close.
    pub fn register(&self) -> (u64, CancellationToken) {
        let id = self.next_session.fetch_add(1, Relaxed);
        let slot = (id as usize) % LIVE_SLOTS;
        let token = CancellationToken::new();
        // The token first: whoever sees the id live finds its token.
        self.rebalance[slot].store(Some(Arc::new(token.clone())));
        self.live[slot].store(id + 1, SeqCst);
        (id, token)
    }

    pub fn unregister(&self, id: u64) {
        let _ = self.live[(id as usize) % LIVE_SLOTS].compare_exchange(id + 1, 0, Relaxed, Relaxed);
    }

    /// The oldest registered live session, if any.
    pub fn oldest_live(&self) -> Option<u64> {
        let end = self.next_session.load(Relaxed);
        let mut id = self
            .scan_from
            .load(Relaxed)
            .max(end.saturating_sub(LIVE_SLOTS as u64));
        while id < end {
            if self.live[(id as usize) % LIVE_SLOTS].load(Relaxed) == id + 1 {
                self.scan_from.store(id, Relaxed);
                return Some(id);
            }
            id += 1;
        }
        self.scan_from.store(end, Relaxed);
        None
    }

    /// Asks session `id` to close (rebalancing), if it is still live.
    pub fn ask_to_close(&self, id: u64) {
        let slot = (id as usize) % LIVE_SLOTS;
        if self.live[slot].load(SeqCst) == id + 1 {
            if let Some(token) = &*self.rebalance[slot].load() {
                token.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn warm_weight_ramps_from_ten_percent_to_full() {
        let l = Lifecycle::new();
        l.start_warming(Duration::from_secs(10));
        assert_eq!(l.warm_weight(100), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(l.warm_weight(100), 55);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(l.warm_weight(100), 100);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(l.warm_weight(100), 100);
    }

    #[test]
    fn live_registry_finds_the_oldest() {
        let l = Lifecycle::new();
        let ids: Vec<u64> = (0..5).map(|_| l.register().0).collect();
        assert_eq!(l.oldest_live(), Some(0));
        l.unregister(ids[0]);
        l.unregister(ids[2]);
        assert_eq!(l.oldest_live(), Some(1));
        l.unregister(ids[1]);
        assert_eq!(l.oldest_live(), Some(3));
        l.unregister(ids[3]);
        l.unregister(ids[4]);
        assert_eq!(l.oldest_live(), None);
    }

    #[test]
    fn a_rebalance_request_reaches_its_session_only() {
        let l = Lifecycle::new();
        let sessions: Vec<(u64, CancellationToken)> = (0..3).map(|_| l.register()).collect();
        l.ask_to_close(sessions[1].0);
        let asked: Vec<bool> = sessions.iter().map(|(_, t)| t.is_cancelled()).collect();
        assert_eq!(asked, [false, true, false]);
        // A session that already ended is not asked for (nor is whoever holds its slot).
        l.unregister(sessions[2].0);
        l.ask_to_close(sessions[2].0);
        assert!(!sessions[2].1.is_cancelled());
    }

    #[test]
    fn a_session_that_starts_after_the_deadline_is_closed_at_once() {
        let l = Lifecycle::new();
        l.set_drain_deadline(0, 1, Duration::ZERO);
        let before = l.session_close_token();
        assert!(!before.is_cancelled());
        l.fire_close();
        assert!(
            before.is_cancelled(),
            "a session open at the deadline closes"
        );
        assert!(
            l.session_close_token().is_cancelled(),
            "one that starts later too"
        );
        assert!(
            !l.close_token().is_cancelled(),
            "requests get a fresh token"
        );
        l.clear_deadline_passed();
        assert!(
            !l.session_close_token().is_cancelled(),
            "serving again: sessions live"
        );
    }

    #[test]
    fn spread_offsets_fall_inside_the_window() {
        let l = Lifecycle::new();
        l.set_drain_deadline(0, 1, Duration::from_millis(1000));
        let offsets: Vec<u128> = (0..100).map(|i| l.spread_offset(i).as_millis()).collect();
        assert!(offsets.iter().all(|&o| o < 1000));
        assert!(offsets.iter().any(|&o| o < 250) && offsets.iter().any(|&o| o > 750));
    }
}
