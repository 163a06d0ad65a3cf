//! Client-side connection watching: a wrapper around the client socket that counts bytes per
//! listener and records when the connection last moved, so idle and header-read timeouts can
//! be enforced by one timer per connection instead of one per read.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::time::Instant;

use crate::access_log::Termination;

/// Why a connection was reclaimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// It had not sent a byte since accept.
    Silent,
    /// A keep-alive connection between requests.
    Idle,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Silent => "silent",
            Reason::Idle => "idle",
        }
    }
}

/// When a connection last moved, and what it is waiting for.
pub struct Activity {
    start: Instant,
    /// `start` on the coarse clock (see [`Activity::now_ms`]).
    start_coarse: u64,
    /// Milliseconds since `start` of the last byte read or written.
    last: AtomicU64,
    /// HTTP requests between their head arriving and the end of their response body.
    inflight: AtomicUsize,
    /// 1 + milliseconds since `start` when the first byte of a request head arrived while no
    /// request was in flight; 0 when no head is being read.
    head_started: AtomicU64,
    /// Whether any byte came from the client yet.
    read_any: AtomicBool,
    /// The connection speaks HTTP/2: control frames (PING, WINDOW_UPDATE, SETTINGS) arrive
    /// between requests, so the header-read clock does not apply once a request came.
    h2: AtomicBool,
    /// 1 + milliseconds since `start` when a write to the client last found its socket
    /// full (the client is not reading); 0 once a write went through.
    blocked_since: AtomicU64,
    /// The accept loop picked this connection for closing (see [`super::reclaim`]), and the
    /// connection's task, woken to close it.
    marked: AtomicBool,
    waker: AtomicWaker,
    /// Bytes read from and written to the client so far (the access log's `bytes_in` and
    /// `bytes_out` are differences of these). Only the connection's own task adds to them.
    read_total: AtomicU64,
    written_total: AtomicU64,
    /// Why the connection was cut, as a [`Termination::code`] (0: it was not).
    cut: AtomicU8,
}

/// How long a connection has been doing nothing, and in which way.
pub struct Idleness {
    /// When it last moved, in milliseconds on one clock shared by every connection (so
    /// that connections idle a millisecond apart are ordered right; an `Instant` made from
    /// each connection's own start would carry that start's offset from the coarse clock).
    pub since_ms: u64,
    pub reason: Reason,
}

/// What a connection's watchdog should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing expired; look again at this instant.
    CheckAt(Instant),
    /// No byte moved for the idle timeout with nothing in flight.
    Idle,
    /// A request head has been arriving for longer than the header-read timeout.
    SlowHead,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            start_coarse: crate::time::coarse_ms(),
            last: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            read_any: AtomicBool::new(false),
            marked: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            blocked_since: AtomicU64::new(0),
            read_total: AtomicU64::new(0),
            written_total: AtomicU64::new(0),
            cut: AtomicU8::new(0),
        }
    }

    /// Bytes read from and written to the client so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.read_total.load(Relaxed),
            self.written_total.load(Relaxed),
        )
    }

    fn add_read(&self, n: usize) {
        // One writer (the connection's task): no read-modify-write needed.
        self.read_total
            .store(self.read_total.load(Relaxed) + n as u64, Relaxed);
    }

    fn add_written(&self, n: usize) {
        self.written_total
            .store(self.written_total.load(Relaxed) + n as u64, Relaxed);
    }

    /// The connection is being cut, and why (the exchanges it drops say so in their lines).
    pub fn cut(&self, why: Termination) {
        self.cut.store(why.code(), Relaxed);
    }

    /// Why the connection was cut, if it was.
    pub fn cut_reason(&self) -> Option<Termination> {
        Termination::from_code(self.cut.load(Relaxed))
    }

    /// A write to the client could not proceed (its socket buffer is full).
    fn write_blocked(&self) {
        if self.blocked_since.load(Relaxed) == 0 {
            self.blocked_since.store(self.now_ms() + 1, Relaxed);
        }
    }

    /// How long writes to the client have been waiting for it to read (zero when not).
    pub fn write_blocked_for(&self) -> Duration {
        match self.blocked_since.load(Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(self.now_ms().saturating_sub(since - 1)),
        }
    }

    /// Whether (and since when) an HTTP/1.x connection is doing nothing: silent since
    /// accept, or between requests. `None` while a head arrives or a request is in flight,
    /// for HTTP/2, and once marked.
    pub fn idleness(&self) -> Option<Idleness> {
        if !self.between_requests() || self.h2.load(Relaxed) || self.marked.load(Relaxed) {
            return None;
        }
        let reason = if self.read_any.load(Relaxed) {
            Reason::Idle
        } else {
            Reason::Silent
        };
        let since_ms = self.start_coarse + self.last.load(Relaxed);
        Some(Idleness { since_ms, reason })
    }

    /// Marks the connection for closing and wakes its task; `false` if it already was.
    pub fn mark_reclaimed(&self) -> bool {
        if self.marked.swap(true, Relaxed) {
            return false;
        }
        self.waker.wake();
        true
    }

    pub fn was_marked(&self) -> bool {
        self.marked.load(Relaxed)
    }

    /// Whether the connection should close now to free its slot; wakes `cx` when it is
    /// marked later. Looked at only while the connection waits for a request.
    pub fn poll_marked(&self, cx: &mut Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.marked.load(Relaxed)
    }

    /// Milliseconds since `start`, read at every read and write of the connection: from the
    /// coarse clock (a few ms behind the precise one, and about a tenth of its cost), which
    /// is plenty for timeouts of seconds. The unit tests read tokio's clock, which they
    /// pause and advance; integration tests run this path against real time.
    fn now_ms(&self) -> u64 {
        #[cfg(not(test))]
        {
            crate::time::coarse_ms().saturating_sub(self.start_coarse)
        }
        #[cfg(test)]
        {
            self.start.elapsed().as_millis() as u64
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn touch(&self) {
        self.last.store(self.now_ms(), Relaxed);
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last.store(now, Relaxed);
        if !self.read_any.load(Relaxed) {
            self.read_any.store(true, Relaxed);
        }
        if self.inflight.load(Relaxed) == 0 && self.head_started.load(Relaxed) == 0 {
            self.head_started.store(now + 1, Relaxed);
        }
    }

    /// The connection turned out to be HTTP/2.
    pub fn set_h2(&self) {
        self.h2.store(true, Relaxed);
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Relaxed)
    }

    /// Bytes of a next head are held already (pipelined): its header-read clock starts.
    pub fn head_arriving(&self) {
        if self.inflight.load(Relaxed) == 0 && self.head_started.load(Relaxed) == 0 {
            self.head_started.store(self.now_ms() + 1, Relaxed);
        }
    }

    /// A request head arrived: the header-read clock stops, the request is in flight.
    pub fn request_started(&self) {
        self.inflight.fetch_add(1, Relaxed);
        self.head_started.store(0, Relaxed);
    }

    /// The response body of a request ended (or was abandoned).
    pub fn request_finished(&self) {
        self.inflight.fetch_sub(1, Relaxed);
        self.touch();
    }

    /// No request in flight and no head arriving.
    pub fn between_requests(&self) -> bool {
        self.inflight.load(Relaxed) == 0 && self.head_started.load(Relaxed) == 0
    }

    /// How long ago the connection last moved.
    pub fn quiet_for(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.last.load(Relaxed)))
    }

    /// Decides whether `idle` or `header_read` expired. `header_read` is `None` for TCP.
    ///
    /// A head that starts arriving does not wake the watchdog (that would cost a wake-up per
    /// request); instead, HTTP connections are looked at every quarter of `header_read`, so
    /// a slow head is cut between 1× and 1.25× the header-read timeout.
    pub fn verdict(&self, idle: Duration, header_read: Option<Duration>) -> Verdict {
        let now = Instant::now();
        let tick = header_read.map(|h| (h / 4).max(Duration::from_millis(10)));
        if self.inflight.load(Relaxed) > 0 {
            // A request in flight is bounded by the response timeout, not by client silence.
            return Verdict::CheckAt(now + tick.unwrap_or(idle));
        }
        if let Some(limit) = header_read.filter(|_| !self.h2.load(Relaxed)) {
            // The first head's clock runs from accept: a connection that never sends a byte
            // is cut like one that sends half a head (NGINX's client_header_timeout).
            let started = match self.head_started.load(Relaxed) {
                0 if !self.read_any.load(Relaxed) => 1,
                started => started,
            };
            if started != 0 {
                let deadline = self.at(started - 1) + limit;
                return if now >= deadline {
                    Verdict::SlowHead
                } else {
                    Verdict::CheckAt(deadline)
                };
            }
        }
        let deadline = self.at(self.last.load(Relaxed)) + idle;
        if now >= deadline {
            Verdict::Idle
        } else {
            Verdict::CheckAt(tick.map_or(deadline, |t| deadline.min(now + t)))
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the in-flight count when a response body is done with.
pub struct InflightGuard(Arc<Activity>);

impl InflightGuard {
    pub fn new(activity: &Arc<Activity>) -> Self {
        activity.request_started();
        InflightGuard(Arc::clone(activity))
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

mod watched;

pub use watched::Watched;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_and_slow_head_verdicts() {
        let a = Activity::new();
        let idle = Duration::from_secs(60);
        let head = Some(Duration::from_secs(10));
        assert!(matches!(a.verdict(idle, head), Verdict::CheckAt(_)));
        // A head starts arriving and never completes: slow head after 10 s.
        a.on_read();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(a.verdict(idle, head), Verdict::SlowHead);
        // The head completes; while the request is in flight nothing expires.
        a.request_started();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(matches!(a.verdict(idle, head), Verdict::CheckAt(_)));
        a.request_finished();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(a.verdict(idle, head), Verdict::CheckAt(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(a.verdict(idle, head), Verdict::Idle);
    }
}
