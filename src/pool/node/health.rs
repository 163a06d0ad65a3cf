//! A node's health as checks and the data path report it: streaks of passing and failing
//! checks, the version a passing check reports (the readmission gate), passive failures
//! and ejection, and what a takeover or a changed address does to them. Each flip is
//! reported once, to the caller that made it.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;

use super::NodeState;
use crate::config::HealthConfig;
use crate::pool::state::{next_health, Health};
use crate::time::unix_ms;

impl NodeState {
    /// Consecutive passing checks that reported the current version.
    pub fn version_passes(&self) -> u32 {
        self.version_passes.load(Relaxed)
    }

    fn set_health(&self, from: Health, to: Health) -> bool {
        let flipped = self
            .health
            .compare_exchange(from as u8, to as u8, Relaxed, Relaxed)
            .is_ok();
        if flipped {
            self.health_since.store(unix_ms(), Relaxed);
            self.changed.notify_waiters();
        }
        flipped
    }

    /// Takes over what another handoff process knew of this node's health (a takeover), so
    /// the new process serves from its first connection instead of waiting for checks.
    pub fn inherit_health(&self, health: Health, version: Option<String>, version_passes: u32) {
        self.health.store(health as u8, SeqCst);
        self.health_since.store(unix_ms(), Relaxed);
        self.version.store(version.map(Arc::new));
        self.version_passes.store(version_passes, Relaxed);
        if health == Health::Up {
            self.passes.store(version_passes.max(1), Relaxed);
        }
        self.changed.notify_waiters();
    }

    /// The epoch a health check must report into (see [`NodeState::record_check`]).
    pub fn address_epoch(&self) -> u64 {
        self.address_epoch.load(SeqCst)
    }

    /// A reload moved the node to another address: health goes back to `unknown`, streaks
    /// restart and the version is forgotten, so the new address gets no session before it
    /// passes `healthy_after` checks and the version gate reads it afresh. Admin state stays.
    pub fn address_changed(&self) {
        self.address_epoch.fetch_add(1, SeqCst);
        self.passes.store(0, Relaxed);
        self.fails.store(0, Relaxed);
        self.version_passes.store(0, Relaxed);
        self.version.store(None);
        if self.health.swap(Health::Unknown as u8, SeqCst) != Health::Unknown as u8 {
            self.health_since.store(unix_ms(), Relaxed);
            self.entered("node_health", Health::Unknown.as_str());
            self.history.note("health unknown (address changed)");
        }
        self.changed.notify_waiters();
    }

    /// Records one active check of the address as it was at `epoch`. Returns `(from, to)`
    /// when health flipped, exactly once per flip.
    pub fn record_check(
        &self,
        epoch: u64,
        ok: bool,
        version: Option<&str>,
        cfg: &HealthConfig,
    ) -> Option<(Health, Health)> {
        if epoch != self.address_epoch() {
            return None;
        }
        let (passes, fails) = if ok {
            self.metrics.checks_pass.inc();
            self.fails.store(0, Relaxed);
            (self.passes.fetch_add(1, Relaxed).saturating_add(1), 0)
        } else {
            self.metrics.checks_fail.inc();
            self.passes.store(0, Relaxed);
            (0, self.fails.fetch_add(1, Relaxed).saturating_add(1))
        };
        if !ok {
            self.version_passes.store(0, Relaxed);
        } else if let Some(v) = version {
            if self.version.load().as_deref().map(String::as_str) != Some(v) {
                self.version.store(Some(Arc::new(v.to_string())));
                self.events.publish("node_version", v);
                self.version_passes.store(1, Relaxed);
                self.changed.notify_waiters();
            } else if self.version_passes.fetch_add(1, Relaxed) < cfg.healthy_after {
                // Readmission waits for this streak: wake it on every step.
                self.changed.notify_waiters();
            }
        }
        self.apply_streak(passes, fails, cfg)
    }

    /// Records a failed connect seen by the data path; enough of them in a row mark the node
    /// down before the next active check would.
    pub fn record_passive_failure(&self, cfg: &HealthConfig) -> Option<(Health, Health)> {
        self.metrics.connect_failures.inc();
        self.passes.store(0, Relaxed);
        let fails = self.fails.fetch_add(1, Relaxed).saturating_add(1);
        self.apply_streak(0, fails, cfg)
    }

    /// Passive ejection: marks an up node down at once (its checks must then pass
    /// `healthy_after` times in a row to bring it back). Returns the flip when it happened.
    pub fn eject(&self) -> Option<(Health, Health)> {
        if !self.set_health(Health::Up, Health::Down) {
            return None;
        }
        self.passes.store(0, Relaxed);
        self.version_passes.store(0, Relaxed);
        self.traffic.reset_streak();
        Some((Health::Up, Health::Down))
    }

    fn apply_streak(
        &self,
        passes: u32,
        fails: u32,
        cfg: &HealthConfig,
    ) -> Option<(Health, Health)> {
        let from = self.health();
        let to = next_health(from, passes, fails, cfg.healthy_after, cfg.unhealthy_after);
        (to != from && self.set_health(from, to)).then_some((from, to))
    }
}
