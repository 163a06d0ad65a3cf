//! What each node did with the traffic it was given (docs/api.md, "A node"), always on: requests,
//! errors by cause, and a latency histogram. The data path only adds to atomics (one
//! `fetch_add` per counter and one for the latency bucket); the control plane reads them as
//! [`Sample`]s: totals, a sliding window for the API and metrics ([`Traffic::roll`],
//! [`Traffic::recent`]), and the difference from a baseline for rollout analysis.
//!
//! A node is charged only for what it did: a 5xx it answered, a connect to it that failed, a
//! connection it closed or reset before answering, or no answer within the response timeout.
//! A pooled keep-alive connection the node had closed while idle is not charged (the request
//! is sent again on a fresh connection), nor is anything a client did.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use histogram::{AtomicHistogram, Histogram};
use tokio::time::Instant;

/// Latency buckets: microseconds, grouping power 4 (each bucket within 6.25 % of its value),
/// up to 2^26 µs (67 s; longer answers count as 67 s).
const GROUPING_POWER: u8 = 4;
const MAX_VALUE_POWER: u8 = 26;
const MAX_MICROS: u64 = (1 << MAX_VALUE_POWER) - 1;

/// The sliding window the API and metrics show, and its resolution.
pub const WINDOW: Duration = Duration::from_secs(60);
pub const WINDOW_STEP: Duration = Duration::from_secs(5);

/// Why a request counted as an error against the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The node answered 5xx.
    Status5xx = 0,
    /// A connect to the node failed or timed out.
    Connect = 1,
    /// The node closed or reset the connection before answering, or did not answer within
    /// the response timeout.
    NoAnswer = 2,
}

impl Cause {
    pub const ALL: [Cause; 3] = [Cause::Status5xx, Cause::Connect, Cause::NoAnswer];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Status5xx => "5xx",
            Cause::Connect => "connect",
            Cause::NoAnswer => "no_answer",
        }
    }
}

/// A node's traffic counters.
pub struct Traffic {
    requests: AtomicU64,
    errors: [AtomicU64; 3],
    /// Errors in a row (reset by any answer below 500): passive ejection reads it.
    streak: AtomicU32,
    latency: AtomicHistogram,
    /// Requests routed here as previews (also in `requests`): before its admission the node
    /// serves only these.
    previews: AtomicU64,
    /// Control plane only: samples taken every [`WINDOW_STEP`], oldest first, spanning
    /// [`WINDOW`].
    ring: Mutex<VecDeque<(Instant, Sample)>>,
}

/// The counters at one moment, or the difference between two moments.
#[derive(Clone)]
pub struct Sample {
    pub requests: u64,
    pub errors: [u64; 3],
    latency: Histogram,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            requests: AtomicU64::new(0),
            errors: Default::default(),
            streak: AtomicU32::new(0),
            previews: AtomicU64::new(0),
            latency: AtomicHistogram::new(GROUPING_POWER, MAX_VALUE_POWER)
                .expect("static histogram parameters"),
            ring: Mutex::new(VecDeque::new()),
        }
    }
}

impl Traffic {
    /// The node answered with `status` after `elapsed`. Returns the error streak (0 unless
    /// the answer was a 5xx).
    #[inline]
    pub fn answered(&self, status: u16, elapsed: Duration) -> u32 {
        self.requests.fetch_add(1, Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(MAX_MICROS);
        // In range by construction (clamped to the histogram's largest value).
        let _ = self.latency.increment(micros.min(MAX_MICROS));
        if status >= 500 {
            self.errors[Cause::Status5xx as usize].fetch_add(1, Relaxed);
            return self.streak.fetch_add(1, Relaxed).saturating_add(1);
        }
        // A load before the store keeps the cache line shared while nothing fails.
        if self.streak.load(Relaxed) != 0 {
            self.streak.store(0, Relaxed);
        }
        0
    }

    /// A request the node failed without answering. Returns the error streak.
    pub fn failed(&self, cause: Cause) -> u32 {
        self.requests.fetch_add(1, Relaxed);
        self.errors[cause as usize].fetch_add(1, Relaxed);
        self.streak.fetch_add(1, Relaxed).saturating_add(1)
    }

    /// A request routed here because it asked for this node's version (a preview).
    pub fn preview(&self) {
        self.previews.fetch_add(1, Relaxed);
    }

    /// Preview requests routed here, ever.
    pub fn previews(&self) -> u64 {
        self.previews.load(Relaxed)
    }

    /// Starts a new streak (the node was ejected, or came back).
    pub fn reset_streak(&self) {
        self.streak.store(0, Relaxed);
    }

    /// The counters now.
    pub fn sample(&self) -> Sample {
        Sample {
            requests: self.requests.load(Relaxed),
            errors: [0, 1, 2].map(|i| self.errors[i].load(Relaxed)),
            latency: self.latency.load(),
        }
    }

    /// Takes a sample into the sliding window (every [`WINDOW_STEP`]).
    pub fn roll(&self) {
        let now = Instant::now();
        let sample = self.sample();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.push_back((now, sample));
        while ring
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            ring.pop_front();
        }
    }

    /// What happened over the last [`WINDOW`] (or since the node appeared, if sooner), and
    /// how long that is.
    pub fn recent(&self) -> (Sample, Duration) {
        let now = self.sample();
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        match ring.front() {
            Some((at, oldest)) => (now.since(oldest), at.elapsed()),
            None => (now, Duration::ZERO),
        }
    }
}

impl Sample {
    /// What happened between `earlier` and this sample.
    pub fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: [0, 1, 2].map(|i| self.errors[i].saturating_sub(earlier.errors[i])),
            latency: self
                .latency
                .checked_sub(&earlier.latency)
                .unwrap_or_else(|_| self.latency.clone()),
        }
    }

    /// Adds another node's figures (the siblings' combined latency).
    pub fn merge(&mut self, other: &Sample) {
        self.requests += other.requests;
        for i in 0..3 {
            self.errors[i] += other.errors[i];
        }
        if let Ok(sum) = self.latency.wrapping_add(&other.latency) {
            self.latency = sum;
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Errors over requests (0 with no request).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors() as f64 / self.requests as f64
        }
    }

    /// The latency at quantile `q` (0.5, 0.99) of the answers in the sample, as the upper
    /// edge of its bucket; `None` without an answer.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let result = self.latency.quantile(q).ok().flatten()?;
        let bucket = result.entries().values().next()?;
        Some(Duration::from_micros(bucket.end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_by_cause_and_streaks() {
        let t = Traffic::default();
        assert_eq!(t.answered(200, Duration::from_millis(1)), 0);
        assert_eq!(t.answered(500, Duration::from_millis(1)), 1);
        assert_eq!(t.failed(Cause::Connect), 2);
        assert_eq!(t.failed(Cause::NoAnswer), 3);
        assert_eq!(t.answered(404, Duration::from_millis(1)), 0);
        assert_eq!(t.answered(503, Duration::from_millis(1)), 1);
        let s = t.sample();
        assert_eq!(s.requests, 6);
        assert_eq!(s.errors, [2, 1, 1]);
        assert!((s.error_rate() - 4.0 / 6.0).abs() < 1e-9);
    }

    #[test]
    fn quantiles_of_a_window_come_from_its_own_answers() {
        let t = Traffic::default();
        for _ in 0..1000 {
            t.answered(200, Duration::from_millis(100));
        }
        let base = t.sample();
        for i in 0..100u64 {
            let ms = if i < 98 { 2 } else { 40 };
            t.answered(200, Duration::from_millis(ms));
        }
        let window = t.sample().since(&base);
        assert_eq!(window.requests, 100);
        let p50 = window.quantile(0.5).expect("answers");
        let p99 = window.quantile(0.99).expect("answers");
        // Within a bucket (6.25 %) of the true values, untouched by the 100 ms before.
        assert!(
            p50 >= Duration::from_millis(2) && p50 <= Duration::from_micros(2_130),
            "{p50:?}"
        );
        assert!(
            p99 >= Duration::from_millis(40) && p99 <= Duration::from_micros(42_600),
            "{p99:?}"
        );
        assert_eq!(Sample::quantile(&t.sample().since(&t.sample()), 0.5), None);
    }

    #[test]
    fn very_long_answers_are_clamped_not_lost() {
        let t = Traffic::default();
        t.answered(200, Duration::from_secs(3600));
        let s = t.sample();
        assert_eq!(s.requests, 1);
        assert!(s.quantile(0.99).expect("one answer") >= Duration::from_secs(60));
    }

    #[test]
    fn merged_siblings_add_up() {
        let (a, b) = (Traffic::default(), Traffic::default());
        a.answered(200, Duration::from_millis(1));
        b.failed(Cause::Connect);
        let mut s = a.sample();
        s.merge(&b.sample());
        assert_eq!((s.requests, s.errors()), (2, 1));
    }
}
