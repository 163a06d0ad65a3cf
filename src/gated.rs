//! `Gated`: polls an inner future only when that future's own waker fired.
//!
//! A connection task `select!`s its I/O against control signals (shutdown, drain deadline,
//! rebalance). `select!` re-polls every branch on every wake-up, and re-polling a waiting
//! `Notify`-based future (which `CancellationToken::cancelled` is) takes `Notify`'s internal
//! lock. Gating the control signals keeps the per-read path down to atomics.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

struct Flag {
    /// Wake-ups so far. A count rather than a flag: a poll sees, with plain loads, both
    /// whether it was woken and whether the wake-up used up its registration.
    wakes: AtomicU32,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::AcqRel);
        self.task.wake();
    }
}

pub struct Gated<F> {
    inner: F,
    flag: Arc<Flag>,
    /// The task's waker as last registered: a task polls with the same one every time, and
    /// while no wake-up took it the registration (an atomic swap) is skipped.
    task: Option<Waker>,
    /// `wakes` read just before that registration, and when the inner future was last polled.
    registered_at: u32,
    seen: u32,
}

impl<F> Gated<F> {
    pub fn new(inner: F) -> Self {
        Gated {
            inner,
            flag: Arc::new(Flag {
                wakes: AtomicU32::new(0),
                task: AtomicWaker::new(),
            }),
            task: None,
            registered_at: 0,
            // Unlike `wakes`: the first poll registers the inner future's interest.
            seen: u32::MAX,
        }
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let mut wakes = this.flag.wakes.load(Ordering::Acquire);
        let same = this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !same || wakes != this.registered_at {
            this.flag.task.register(cx.waker());
            this.task = Some(cx.waker().clone());
            this.registered_at = wakes;
            // A wake-up between the load and the registration is seen now.
            wakes = this.flag.wakes.load(Ordering::Acquire);
        }
        if wakes == this.seen {
            return Poll::Pending;
        }
        this.seen = wakes;
        let waker = Waker::from(Arc::clone(&this.flag));
        let mut inner_cx = Context::from_waker(&waker);
        Pin::new(&mut this.inner).poll(&mut inner_cx)
    }
}

/// A timer polled only when it fired or was reset. A connection's watchdog is otherwise
/// re-polled on every wake-up of its task, and `Sleep::poll` costs a few hundred
/// instructions each time (the timer wheel's entry state, the coop budget).
pub type Timer = Gated<Pin<Box<tokio::time::Sleep>>>;

impl Timer {
    pub fn at(deadline: tokio::time::Instant) -> Self {
        Gated::new(Box::pin(tokio::time::sleep_until(deadline)))
    }

    /// A new deadline, registered at the next poll.
    pub fn reset(&mut self, deadline: tokio::time::Instant) {
        self.inner.as_mut().reset(deadline);
        self.seen = self.seen.wrapping_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn completes_when_the_inner_future_is_woken() {
        let token = CancellationToken::new();
        let mut gated = Gated::new(Box::pin(token.clone().cancelled_owned()));
        let pending = futures_poll_once(&mut gated).await;
        assert!(pending);
        token.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(1), gated)
            .await
            .expect("woken");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_at_its_deadline_and_again_after_a_reset() {
        use tokio::time::{Duration, Instant};
        let start = Instant::now();
        let mut timer = Timer::at(start + Duration::from_secs(5));
        assert!(futures_poll_once(&mut timer).await);
        (&mut timer).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        timer.reset(Instant::now() + Duration::from_secs(3));
        assert!(
            futures_poll_once(&mut timer).await,
            "pending again after a reset"
        );
        (&mut timer).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(8));
    }

    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_pending())).await
    }
}
