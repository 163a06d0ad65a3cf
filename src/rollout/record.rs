//! A rollout's record: what the API shows, the state file keeps and etcd shares.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::config::Strategy;
use crate::config::{duration, AnalysisConfig};

/// Per-node phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Replace: the hook starts the new node (or an operator adds it, `"replaces"`).
    Provisioning,
    /// Replace: requests asking for the target version reach the new node, others not.
    Preview,
    /// Replace: the old node is removed once drained, then the hook's `retire`.
    Retiring,
    Guard,
    Draining,
    WaitingUpgrade,
    WaitingReady,
    Warming,
    /// After warming, until `rollout.analysis.window` has passed since readmission (only
    /// with `analysis:`).
    Analysis,
    Done,
}

impl Phase {
    pub const ORDER: [Phase; 7] = [
        Phase::Guard,
        Phase::Draining,
        Phase::WaitingUpgrade,
        Phase::WaitingReady,
        Phase::Warming,
        Phase::Analysis,
        Phase::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Guard => "guard",
            Phase::Draining => "draining",
            Phase::WaitingUpgrade => "waiting_upgrade",
            Phase::WaitingReady => "waiting_ready",
            Phase::Warming => "warming",
            Phase::Analysis => "analysis",
            Phase::Done => "done",
            Phase::Provisioning => "provisioning",
            Phase::Preview => "preview",
            Phase::Retiring => "retiring",
        }
    }

    /// The phases of one node in a replace rollout: the new node first, the old one after.
    pub const REPLACE_ORDER: [Phase; 8] = [
        Phase::Provisioning,
        Phase::WaitingReady,
        Phase::Preview,
        Phase::Warming,
        Phase::Analysis,
        Phase::Draining,
        Phase::Retiring,
        Phase::Done,
    ];

    /// The phases of `strategy`, in order.
    pub fn order(strategy: Strategy) -> &'static [Phase] {
        match strategy {
            Strategy::InPlace => &Phase::ORDER,
            Strategy::Replace => &Phase::REPLACE_ORDER,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    Succeeded,
    /// Stopped at a step, with the reason.
    Failed,
    Aborted,
}

/// One entry of a rollout's timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// RFC 3339.
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub phase: Option<Phase>,
    pub message: String,
}

/// A rollout as the API shows it and the state file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub pool: String,
    /// Target version.
    pub version: String,
    pub order: Vec<String>,
    #[serde(with = "duration::text")]
    pub drain_timeout: Duration,
    #[serde(with = "duration::text")]
    pub ready_timeout: Duration,
    #[serde(with = "duration::text")]
    pub warmup: Duration,
    pub state: RolloutState,
    /// Index into `order` of the node being upgraded.
    pub node_index: usize,
    pub current_node: Option<String>,
    pub phase: Option<Phase>,
    /// Why it failed or was aborted, and the state it left the nodes in.
    pub reason: Option<String>,
    pub abort_requested: bool,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub timeline: Vec<TimelineEntry>,
    /// The pool's `rollout.analysis` when the rollout started: each upgraded node is judged
    /// on its live traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisConfig>,
    /// The version each node reported before the rollout touched it (what a rollback goes
    /// back to).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub previous_versions: BTreeMap<String, String>,
    /// After a failed analysis with `on_failure: rollback`: the node going back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// `in_place` or `replace`.
    #[serde(default)]
    pub strategy: Strategy,
    /// Replace: each old node's replacement, once provisioned.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replacements: BTreeMap<String, Replacement>,
}

/// The node that replaces an old one in a replace rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replacement {
    pub name: String,
    pub addr: std::net::SocketAddr,
}

/// A node being rolled back to the version it had before, after it failed analysis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollback {
    pub node: String,
    pub version: String,
    pub state: RollbackState,
    /// How it ended, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackState {
    Running,
    Succeeded,
    Failed,
}

impl Rollout {
    /// Whether this rollout still acts on its pool: running, or rolling a node back.
    pub fn busy(&self) -> bool {
        self.state == RolloutState::Running
            || self
                .rollback
                .as_ref()
                .is_some_and(|b| b.state == RollbackState::Running)
    }
}
