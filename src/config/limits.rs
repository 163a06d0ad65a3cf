//! The range every duration and number from outside may take: config fields, admin bodies and
//! queries, and the state file all check against these, so a value that would overflow a
//! deadline, or make a node never checked, is refused with its field, value and limit.
//! docs/limits.md lists them for operators.

use std::time::Duration;

use super::duration;

/// An inclusive range of durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub min: Duration,
    pub max: Duration,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// A week: the longest any drain, rollout wait or affinity window may be.
const WEEK: Duration = hours(168);
const DAY: Duration = hours(24);

/// `shutdown_grace`.
pub const SHUTDOWN_GRACE: Range = Range::new(ms(0), DAY);
/// `listeners[].timeouts.connect`, `.header_read`, `.response`, `.send`.
pub const LISTENER_TIMEOUT: Range = Range::new(ms(1), DAY);
/// `listeners[].tls.session_tickets.rotate`: a ticket lives two periods, and TLS 1.3 caps a
/// ticket's lifetime at seven days.
pub const TICKET_ROTATION: Range = Range::new(ms(1000), hours(84));
/// `listeners[].timeouts.idle` (TCP sessions may be long-lived).
pub const IDLE_TIMEOUT: Range = Range::new(ms(1), WEEK);
/// `pools[].health.interval`: a node must be checked at least hourly.
pub const HEALTH_INTERVAL: Range = Range::new(ms(10), hours(1));
/// `pools[].health.timeout` (and not longer than the interval).
pub const HEALTH_TIMEOUT: Range = Range::new(ms(1), hours(1));
/// `pools[].discovery.interval`.
pub const DISCOVERY_INTERVAL: Range = Range::new(ms(100), hours(1));
/// `pools[].rollout.preview.for`.
pub const PREVIEW_FOR: Range = Range::new(ms(0), DAY);
/// `pools[].warmup`, and `warmup` in enable and rollout bodies.
pub const WARMUP: Range = Range::new(ms(0), DAY);
/// `pools[].drain.timeout`, `pools[].rollout.drain_timeout`, and the drain body's `timeout`.
pub const DRAIN_TIMEOUT: Range = Range::new(ms(0), WEEK);
/// `pools[].drain.close_spread`.
pub const CLOSE_SPREAD: Range = Range::new(ms(0), hours(1));
/// `pools[].drain.session_timeout`.
pub const SESSION_TIMEOUT: Range = Range::new(ms(0), WEEK);
/// `pools[].rollout.ready_timeout`, and the rollout body's `ready_timeout`.
pub const READY_TIMEOUT: Range = Range::new(ms(1), WEEK);
/// `pools[].rollout.analysis.window`.
pub const ANALYSIS_WINDOW: Range = Range::new(ms(100), DAY);
/// `pools[].rollout.analysis.min_requests`.
pub const MIN_REQUESTS: (u64, u64) = (1, 10_000_000);
/// `pools[].rollout.analysis.max_error_rate`: a fraction of requests.
pub const ERROR_RATE: (f64, f64) = (0.0, 1.0);
/// `pools[].rollout.analysis.max_p99_ratio`: below 1 every node would fail against itself.
pub const P99_RATIO: (f64, f64) = (1.0, 1_000.0);
/// `pools[].affinity.idle_timeout`.
pub const AFFINITY_IDLE: Range = Range::new(ms(1), WEEK);
/// `upgrade.timeout`.
pub const UPGRADE_TIMEOUT: Range = Range::new(ms(100), hours(1));
/// `cluster.lease_ttl`: etcd leases count whole seconds.
pub const LEASE_TTL: Range = Range::new(ms(2_000), hours(1));
/// `timeout=` of the admin `wait` long poll.
pub const WAIT_TIMEOUT: Range = Range::new(ms(0), hours(1));

/// `pools[].nodes[].weight`.
pub const WEIGHT: (u32, u32) = (1, 10_000);
/// `pools[].health.healthy_after` and `unhealthy_after`.
pub const CHECK_STREAK: (u32, u32) = (1, 1_000);
/// `listeners[].max_connections`.
pub const MAX_CONNECTIONS: (usize, usize) = (1, 1_000_000);
/// `listeners[].request_buffer`, bytes.
pub const REQUEST_BUFFER: (usize, usize) = (0, 16 << 20);
/// `pools[].rebalance.max_closes_per_sec`.
pub const CLOSES_PER_SEC: (u32, u32) = (1, 100_000);
/// Finished rollouts kept (in the API and the state file); older ones are forgotten.
pub const FINISHED_ROLLOUTS_KEPT: usize = 50;
/// Longest rollout target version, in bytes.
pub const VERSION_LEN: usize = 256;

impl Range {
    pub const fn new(min: Duration, max: Duration) -> Range {
        Range { min, max }
    }

    /// `d` if it lies in the range; otherwise what is wrong, naming value and limit.
    pub fn check(&self, d: Duration) -> Result<Duration, String> {
        if d > self.max {
            Err(format!(
                "{} is out of range: at most {}",
                duration::format(d),
                duration::format(self.max)
            ))
        } else if d < self.min {
            Err(format!(
                "{} is out of range: at least {}",
                duration::format(d),
                duration::format(self.min)
            ))
        } else {
            Ok(d)
        }
    }

    /// Parses `text` and checks it against the range.
    pub fn parse(&self, text: &str) -> Result<Duration, String> {
        self.check(duration::parse(text)?)
    }
}

/// `value` if it lies in `min..=max`, else what is wrong.
pub fn number<T: PartialOrd + std::fmt::Display + Copy>(
    value: T,
    (min, max): (T, T),
) -> Result<T, String> {
    if value < min || value > max {
        Err(format!(
            "{value} is out of range: must be between {min} and {max}"
        ))
    } else {
        Ok(value)
    }
}

impl crate::config::AnalysisConfig {
    /// Every field within the range `check` accepts (for copies read back from the state
    /// file).
    pub fn check(&self) -> Result<(), String> {
        ANALYSIS_WINDOW
            .check(self.window)
            .map_err(|e| format!("window: {e}"))?;
        number(self.min_requests, MIN_REQUESTS).map_err(|e| format!("min_requests: {e}"))?;
        fraction(self.max_error_rate, ERROR_RATE).map_err(|e| format!("max_error_rate: {e}"))?;
        if let Some(r) = self.max_p99_ratio {
            fraction(r, P99_RATIO).map_err(|e| format!("max_p99_ratio: {e}"))?;
        }
        Ok(())
    }
}

/// A real number in a range (NaN and infinities are refused).
pub fn fraction(value: f64, (min, max): (f64, f64)) -> Result<f64, String> {
    if value.is_finite() && value >= min && value <= max {
        Ok(value)
    } else {
        Err(format!(
            "{value} is out of range: must be between {min} and {max}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_value_and_limit() {
        let e = HEALTH_INTERVAL.parse("999999999h").unwrap_err();
        assert_eq!(e, "999999999h is out of range: at most 1h");
        assert_eq!(
            HEALTH_INTERVAL.parse("1ms").unwrap_err(),
            "1ms is out of range: at least 10ms"
        );
        assert_eq!(DRAIN_TIMEOUT.parse("168h"), Ok(WEEK));
        assert!(number(0u32, WEIGHT).is_err() && number(5u32, WEIGHT).is_ok());
    }
}
