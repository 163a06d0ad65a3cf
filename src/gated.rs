//! `Gated`: polls an inner future only when that future's own waker fired.
//!
//! A connection task `select!`s its I/O against control signals (shutdown, drain deadline,
//! rebalance). `select!` re-polls every branch on every wake-up, and re-polling a waiting
//! `Notify`-based future (which `CancellationToken::cancelled` is) takes `Notify`'s internal
//! lock. Gating the control signals keeps the per-read path down to atomics.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pub struct Gated<F> {
    inner: F,
    flag: Arc<Flag>,
    waker: Waker,
}

impl<F> Gated<F> {
    pub fn new(inner: F) -> Self {
        // Woken at first, so the first poll registers the inner future's interest.
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&flag));
        Gated { inner, flag, waker }
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        let mut inner_cx = Context::from_waker(&this.waker);
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
        self.flag.woken.store(true, Ordering::Release);
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
