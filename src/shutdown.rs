//! Process lifecycle: a token tree (force → drain → accept), one task tracker for every
//! connection task, and a watch of the stage that tests and the CLI can wait on.
//!
//! Cancelling `accept` stops the accept loops; cancelling `drain` also asks HTTP connections
//! to finish gracefully (hyper's `graceful_shutdown`); cancelling `force` cuts tunnels and TCP
//! copies. A parent's cancellation reaches its children, so `force` implies the rest.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Running,
    /// No new connections; in-flight work is finishing.
    Draining,
    /// Every connection task has ended (or was cut at the grace deadline).
    Stopped,
}

/// After the grace deadline, how long forced connections get to close before we give up.
const FORCE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Shutdown {
    pub force: CancellationToken,
    pub drain: CancellationToken,
    pub accept: CancellationToken,
    /// A new process took over (self-upgrade): keep-alive clients are asked to reconnect on
    /// their next response (`Connection: close`; HTTP/2 GOAWAY), which the new process
    /// accepts. Unlike `drain`, it never closes an idle HTTP/1.1 connection under a client
    /// that may be sending on it.
    pub retire: CancellationToken,
    /// `retire` as a plain flag, for the per-request path (a token's state sits behind a
    /// mutex).
    retired: Arc<AtomicBool>,
    /// `drain` (or `force`) fired, as a plain flag for the per-request path.
    draining: Arc<AtomicBool>,
    pub tracker: TaskTracker,
    stage: watch::Sender<Stage>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let force = CancellationToken::new();
        let drain = force.child_token();
        let accept = drain.child_token();
        Shutdown {
            retire: force.child_token(),
            retired: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            force,
            drain,
            accept,
            tracker: TaskTracker::new(),
            stage: watch::Sender::new(Stage::Running),
        }
    }

    /// Whether a new process took over (see [`Shutdown::retire`]): one atomic load.
    #[inline]
    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    /// Whether the process is shutting down (`drain` fired): one atomic load.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub fn stage(&self) -> watch::Receiver<Stage> {
        self.stage.subscribe()
    }

    /// Stops accepting, lets in-flight work finish within `grace`, then cuts what remains.
    /// Returns how many connection tasks had to be cut.
    pub async fn run(&self, grace: Duration) -> usize {
        // Cancel first, publish second: whoever sees `Draining` can rely on accepting
        // having stopped.
        self.draining.store(true, Relaxed);
        self.drain.cancel();
        self.wind_down(grace).await
    }

    /// A new process took over: stop accepting (it accepts on the same sockets), let every
    /// connection end by itself within `grace` (keep-alive clients are asked to reconnect on
    /// their next response), then cut what remains.
    pub async fn retire(&self, grace: Duration) -> usize {
        self.accept.cancel();
        self.retired.store(true, Relaxed);
        self.retire.cancel();
        self.wind_down(grace).await
    }

    async fn wind_down(&self, grace: Duration) -> usize {
        self.stage.send_replace(Stage::Draining);
        self.tracker.close();
        let mut cut = 0;
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            cut = self.tracker.len();
            tracing::warn!(
                remaining = cut,
                "grace period over: closing remaining connections"
            );
            self.draining.store(true, Relaxed);
            self.force.cancel();
            if tokio::time::timeout(FORCE_WAIT, self.tracker.wait())
                .await
                .is_err()
            {
                tracing::error!(
                    remaining = self.tracker.len(),
                    "connections did not close after force"
                );
            }
        }
        self.draining.store(true, Relaxed);
        self.force.cancel();
        self.stage.send_replace(Stage::Stopped);
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cuts_work_that_outlives_the_grace_period() {
        let s = Shutdown::new();
        let force = s.force.clone();
        s.tracker.spawn(async move { force.cancelled().await });
        let quick = s.drain.clone();
        s.tracker.spawn(async move { quick.cancelled().await });
        let mut stage = s.stage();
        assert_eq!(s.run(Duration::from_secs(1)).await, 1);
        assert_eq!(*stage.borrow_and_update(), Stage::Stopped);
        assert!(s.accept.is_cancelled());
    }
}
