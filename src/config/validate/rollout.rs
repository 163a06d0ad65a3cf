//! Validation of `pools[].rollout:`, including its `analysis:` (docs/configuration.md).

use serde_yaml::Value;

use super::Validator;
use crate::config::defaults as d;
use crate::config::file::{RawAnalysis, RawRollout};
use crate::config::limits;
use std::time::Duration;

use crate::config::{
    AnalysisConfig, DrainConfig, OnFailure, PreviewConfig, RolloutConfig, Strategy,
};

impl Validator {
    pub(super) fn rollout(
        &mut self,
        path: &str,
        raw: Option<Value>,
        drain: &DrainConfig,
    ) -> RolloutConfig {
        let raw = raw
            .and_then(|v| self.item::<RawRollout>(path, v))
            .unwrap_or_default();
        let hook = raw.hook.map(|h| {
            if h.exec.is_empty() || h.exec[0].is_empty() {
                self.err(
                    &format!("{path}.hook.exec"),
                    "needs a program to run: [\"path\", \"arg\", ...]",
                );
            }
            h.exec
        });
        let ap = format!("{path}.analysis");
        let analysis = raw
            .analysis
            .and_then(|v| self.item::<RawAnalysis>(&ap, v))
            .map(|a| self.analysis(&ap, a));
        RolloutConfig {
            drain_timeout: self.duration(
                &format!("{path}.drain_timeout"),
                raw.drain_timeout.as_deref(),
                drain.timeout,
                limits::DRAIN_TIMEOUT,
            ),
            ready_timeout: self.duration(
                &format!("{path}.ready_timeout"),
                raw.ready_timeout.as_deref(),
                d::ROLLOUT_READY_TIMEOUT,
                limits::READY_TIMEOUT,
            ),
            hook,
            prefer_target_version: raw.prefer_target_version.unwrap_or(false),
            analysis,
            strategy: match raw.strategy.as_deref() {
                None | Some("in_place") => Strategy::InPlace,
                Some("replace") => Strategy::Replace,
                Some(other) => {
                    self.err(
                        &format!("{path}.strategy"),
                        format!("unknown strategy {other:?}: expected \"in_place\" or \"replace\""),
                    );
                    Strategy::InPlace
                }
            },
            preview: raw.preview.map(|p| {
                let header = p.header.unwrap_or_else(|| d::PREVIEW_HEADER.to_string());
                if header.is_empty() || http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    self.err(
                        &format!("{path}.preview.header"),
                        format!("invalid header name {header:?}"),
                    );
                }
                PreviewConfig {
                    header: header.to_ascii_lowercase(),
                    for_: self.duration(
                        &format!("{path}.preview.for"),
                        p.for_.as_deref(),
                        Duration::ZERO,
                        limits::PREVIEW_FOR,
                    ),
                }
            }),
        }
    }

    fn analysis(&mut self, path: &str, a: RawAnalysis) -> AnalysisConfig {
        let window = self.duration(
            &format!("{path}.window"),
            a.window.as_deref(),
            d::ANALYSIS_WINDOW,
            limits::ANALYSIS_WINDOW,
        );
        let min_requests = self.number(
            &format!("{path}.min_requests"),
            a.min_requests.unwrap_or(d::ANALYSIS_MIN_REQUESTS),
            limits::MIN_REQUESTS,
        );
        let max_error_rate = self.fraction(
            &format!("{path}.max_error_rate"),
            a.max_error_rate.unwrap_or(d::ANALYSIS_MAX_ERROR_RATE),
            limits::ERROR_RATE,
        );
        let max_p99_ratio = a
            .max_p99_ratio
            .map(|r| self.fraction(&format!("{path}.max_p99_ratio"), r, limits::P99_RATIO));
        let on_failure = match a.on_failure.as_deref() {
            None | Some("rollback") => OnFailure::Rollback,
            Some("pause") => OnFailure::Pause,
            Some(other) => {
                self.err(
                    &format!("{path}.on_failure"),
                    format!("unknown action {other:?}: expected \"rollback\" or \"pause\""),
                );
                OnFailure::Pause
            }
        };
        AnalysisConfig {
            window,
            min_requests,
            max_error_rate,
            max_p99_ratio,
            on_failure,
        }
    }

    /// A real number in a range (NaN is refused too).
    fn fraction(&mut self, path: &str, value: f64, range: (f64, f64)) -> f64 {
        limits::fraction(value, range).unwrap_or_else(|reason| {
            self.err(path, reason);
            range.0
        })
    }
}
