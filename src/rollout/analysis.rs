//! Rollout analysis (docs/upgrade-guide.md, "Judging the new version on live traffic"): the upgraded node is judged on the live traffic it
//! serves from its readmission, against `rollout.analysis`. [`judge`] is the pure verdict;
//! [`Baseline`] takes the node's and its siblings' figures at readmission, so every verdict
//! covers the same window for all of them; [`Probation`] marks the node as judged while it
//! lives (its 5xx answers to requests that can be sent again go to a sibling instead of the
//! client).
//!
//! In a cluster, the rollout's driver judges the traffic it proxies itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::driving::{Driving, Stop};
use super::{Handle, Phase};
use crate::config::AnalysisConfig;
use crate::control::{Control, NodeRef};
use crate::pool::{NodeState, Sample};
use crate::time::instant_after;

/// How often a running analysis looks at the figures (a breach is declared at the first
/// look that sees it).
pub(super) const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Latencies below this count as this much in the p99 comparison, so sub-millisecond noise
/// between two fast nodes never fails a rollout.
const P99_FLOOR: Duration = Duration::from_millis(1);

/// The node's and its siblings' figures over the same window.
#[derive(Clone)]
pub(super) struct Figures {
    pub node: Sample,
    pub siblings: Sample,
    pub elapsed: Duration,
}

/// What the figures say.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// Keep judging.
    Pending,
    /// A limit is exceeded (with the figures).
    Breach(String),
    /// The whole window passed within the limits (with the figures).
    Pass(String),
    /// The window passed on fewer than `min_requests`.
    TooFew(String),
}

/// Judges `f`. A breach needs `min_requests`; a pass also needs the whole window.
pub(super) fn judge(cfg: &AnalysisConfig, f: &Figures) -> Verdict {
    let n = f.node.requests;
    let rate = f.node.error_rate();
    if n >= cfg.min_requests {
        if rate > cfg.max_error_rate {
            return Verdict::Breach(format!(
                "error rate {rate:.2} > {} over {n} requests",
                cfg.max_error_rate
            ));
        }
        if let Some((ratio, p99, theirs)) = p99_ratio(cfg, f) {
            if cfg.max_p99_ratio.is_some_and(|max| ratio > max) {
                return Verdict::Breach(format!(
                    "p99 latency {} is {ratio:.1} × its siblings' {} (max {}) over {n} requests",
                    ms(p99),
                    ms(theirs),
                    cfg.max_p99_ratio.unwrap_or_default()
                ));
            }
        }
    }
    if f.elapsed < cfg.window {
        return Verdict::Pending;
    }
    let over = crate::config::duration::format(f.elapsed);
    if n < cfg.min_requests {
        return Verdict::TooFew(format!(
            "{n} requests in {over}, fewer than min_requests {}",
            cfg.min_requests
        ));
    }
    let mut figures = format!(
        "error rate {rate:.2} ≤ {} over {n} requests in {over}",
        cfg.max_error_rate
    );
    match (p99_ratio(cfg, f), f.node.quantile(0.99)) {
        (Some((ratio, p99, theirs)), _) => figures.push_str(&format!(
            "; p99 {} vs siblings' {} ({ratio:.1} ×)",
            ms(p99),
            ms(theirs)
        )),
        (None, Some(p99)) => figures.push_str(&format!("; p99 {}", ms(p99))),
        (None, None) => {}
    }
    Verdict::Pass(figures)
}

/// The node's p99 over its siblings' (both floored), when both have enough answers to say.
fn p99_ratio(cfg: &AnalysisConfig, f: &Figures) -> Option<(f64, Duration, Duration)> {
    if f.siblings.requests < cfg.min_requests {
        return None;
    }
    let ours = f.node.quantile(0.99)?;
    let theirs = f.siblings.quantile(0.99)?;
    let ratio = ours.max(P99_FLOOR).as_secs_f64() / theirs.max(P99_FLOOR).as_secs_f64();
    Some((ratio, ours, theirs))
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

/// The figures at readmission.
pub(super) struct Baseline {
    at: Instant,
    node: (Arc<NodeState>, Sample),
    siblings: Vec<(Arc<NodeState>, Sample)>,
}

impl Baseline {
    pub fn take(t: &NodeRef) -> Baseline {
        let siblings = t
            .pool
            .nodes
            .iter()
            .filter(|n| n.name != t.node.name)
            .map(|n| (Arc::clone(&n.state), n.state.traffic.sample()))
            .collect();
        Baseline {
            at: Instant::now(),
            node: (Arc::clone(&t.node.state), t.node.state.traffic.sample()),
            siblings,
        }
    }

    /// What happened since the baseline.
    pub fn figures(&self) -> Figures {
        let node = self.node.0.traffic.sample().since(&self.node.1);
        let mut siblings: Option<Sample> = None;
        for (state, base) in &self.siblings {
            let delta = state.traffic.sample().since(base);
            match &mut siblings {
                Some(all) => all.merge(&delta),
                None => siblings = Some(delta),
            }
        }
        Figures {
            siblings: siblings.unwrap_or_else(|| node.since(&node)),
            node,
            elapsed: self.at.elapsed(),
        }
    }
}

/// Marks a node as judged for as long as it lives.
pub(super) struct Probation(Arc<NodeState>);

impl Probation {
    pub fn start(state: &Arc<NodeState>) -> Probation {
        state.set_probation(true);
        Probation(Arc::clone(state))
    }
}

impl Drop for Probation {
    fn drop(&mut self) {
        self.0.set_probation(false);
    }
}

/// The node under analysis: its figures at readmission, and its probation while judged.
pub(super) struct Judged {
    pub baseline: Baseline,
    pub _probation: Probation,
}

/// Phase `analysis`: judged until the window since readmission has passed (waiting up to
/// `ready_timeout` past it for `min_requests`). Resumed after a restart (`judged` is gone),
/// the node is judged afresh from now.
pub(super) async fn phase(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    judged: Option<Judged>,
    target: &NodeRef,
    ready_timeout: Duration,
) -> Result<(), Stop> {
    let Some(cfg) = handle.lock().analysis.clone() else {
        return Ok(());
    };
    let j = judged.unwrap_or_else(|| Judged {
        baseline: Baseline::take(target),
        _probation: Probation::start(&target.node.state),
    });
    let key = target.node.key();
    let limit = instant_after(cfg.window + ready_timeout);
    loop {
        let verdict = tokio::select! {
            _ = handle.abort.cancelled() => return Err(Stop::Aborted),
            v = watch(&cfg, &j.baseline, false) => v,
        };
        match verdict {
            Verdict::Pass(figures) => {
                handle.event(
                    Some(&target.node.name),
                    Some(Phase::Analysis),
                    format!("analysis of {key} passed: {figures}"),
                );
                return Ok(());
            }
            Verdict::TooFew(figures) if Instant::now() >= limit => {
                return Err(Stop::Failed(format!(
                    "analysis of {key} inconclusive: {figures}; {key} left serving"
                )));
            }
            Verdict::TooFew(_) | Verdict::Pending => tokio::time::sleep(LOOK_EVERY).await,
            breached @ Verdict::Breach(_) => {
                return Err(breach(app, cluster, handle, target, breached).await)
            }
        }
    }
}

/// A breached analysis: the node is drained now, and the rollout fails with the figures.
pub(super) async fn breach(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    target: &NodeRef,
    verdict: Verdict,
) -> Stop {
    let figures = match verdict {
        Verdict::Breach(f) => f,
        other => format!("{other:?}"),
    };
    let (reason, back) = super::rollback::on_breach(app, cluster, handle, target, &figures).await;
    Stop::Breach(reason, back)
}

/// Looks at the figures every [`LOOK_EVERY`] until the verdict is not `Pending` (a breach
/// only, when `breach_only`: while warming, success is not for this look to declare).
pub(super) async fn watch(cfg: &AnalysisConfig, baseline: &Baseline, breach_only: bool) -> Verdict {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match judge(cfg, &baseline.figures()) {
            Verdict::Pending => {}
            v @ Verdict::Breach(_) => return v,
            _ if breach_only => {}
            v => return v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnFailure;
    use crate::pool::{Cause, Traffic};

    fn cfg(ratio: Option<f64>) -> AnalysisConfig {
        AnalysisConfig {
            window: Duration::from_secs(30),
            min_requests: 50,
            max_error_rate: 0.05,
            max_p99_ratio: ratio,
            on_failure: OnFailure::Rollback,
        }
    }

    /// `n` requests, every `fail_every`-th failing, each answered after `ms`.
    fn traffic(n: u64, fail_every: u64, ms: u64) -> Sample {
        let t = Traffic::default();
        for i in 1..=n {
            if fail_every > 0 && i % fail_every == 0 {
                t.answered(500, Duration::from_millis(ms));
            } else if fail_every > 0 && i % (fail_every * 7) == 1 {
                t.failed(Cause::NoAnswer);
            } else {
                t.answered(200, Duration::from_millis(ms));
            }
        }
        t.sample()
    }

    fn figures(node: Sample, siblings: Sample, secs: u64) -> Figures {
        Figures {
            node,
            siblings,
            elapsed: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_third_failing_is_a_breach_as_soon_as_min_requests_are_seen() {
        let f = figures(traffic(49, 3, 1), traffic(500, 0, 1), 1);
        assert_eq!(judge(&cfg(None), &f), Verdict::Pending);
        let f = figures(traffic(60, 3, 1), traffic(500, 0, 1), 1);
        match judge(&cfg(None), &f) {
            Verdict::Breach(why) => assert!(why.starts_with("error rate 0.3"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn success_needs_the_whole_window_and_min_requests() {
        let good = || traffic(400, 0, 1);
        assert_eq!(
            judge(&cfg(None), &figures(good(), good(), 29)),
            Verdict::Pending
        );
        match judge(&cfg(None), &figures(good(), good(), 30)) {
            Verdict::Pass(why) => assert!(why.contains("error rate 0.00"), "{why}"),
            v => panic!("{v:?}"),
        }
        match judge(&cfg(None), &figures(traffic(10, 0, 1), good(), 30)) {
            Verdict::TooFew(why) => assert!(why.starts_with("10 requests"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn p99_is_compared_with_the_siblings_only_when_configured() {
        let slow = || traffic(200, 0, 40);
        let fast = || traffic(200, 0, 5);
        assert_eq!(
            judge(&cfg(None), &figures(slow(), fast(), 1)),
            Verdict::Pending
        );
        match judge(&cfg(Some(3.0)), &figures(slow(), fast(), 1)) {
            Verdict::Breach(why) => assert!(why.starts_with("p99 latency"), "{why}"),
            v => panic!("{v:?}"),
        }
        // Sub-millisecond differences are noise, not a regression.
        let quick = traffic(200, 0, 0);
        assert_eq!(
            judge(&cfg(Some(3.0)), &figures(traffic(200, 0, 1), quick, 1)),
            Verdict::Pending
        );
        // Siblings without enough answers: no comparison.
        assert_eq!(
            judge(&cfg(Some(3.0)), &figures(slow(), traffic(3, 0, 5), 1)),
            Verdict::Pending
        );
    }
}
