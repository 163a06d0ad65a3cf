//! What a takeover carries from the old process to the new one, besides the sockets: every
//! node's admin state (drain deadlines included), health and reported version, the
//! rollouts, the runtime member changes, the affinity key and the generation; and how the
//! new process applies it. Counters and histograms start from zero in the new process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::App;
use crate::lifecycle::{self, Carried};
use crate::pool::{Admin, AdminState, Health};
use crate::rollout::{self, Rollout};
use crate::snapshot::Snapshot;

/// The runtime state handed over.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Handover {
    /// The old process's generation; the new one is the next.
    pub generation: u64,
    /// 32 hex digits.
    pub affinity_key: String,
    /// By `pool/node`.
    pub nodes: BTreeMap<String, NodeHandover>,
    pub rollouts: Vec<Rollout>,
    /// Nodes added, changed or removed at runtime, relative to the config file.
    #[serde(default)]
    pub membership: crate::members::Membership,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeHandover {
    pub state: AdminState,
    pub since_ms: u64,
    /// While draining: the deadline.
    pub deadline_ms: Option<u64>,
    #[serde(with = "crate::persist::optional_duration", default)]
    pub enable_pending: Option<Duration>,
    pub health: Health,
    pub version: Option<String>,
    pub version_passes: u32,
}

/// The old generation as the new process's `/v1/status` shows it (`previous`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreviousView {
    pub pid: u32,
    pub sessions: PreviousSessions,
    /// RFC 3339: when the old process closes what is left (its `shutdown_grace`).
    pub deadline: String,
    /// Sessions per `pool/node` (the new process's drains wait for these too).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreviousSessions {
    pub total: usize,
    pub http_inflight: usize,
    pub tunnels: usize,
    pub tcp: usize,
}

/// The state of `snapshot` to hand over.
pub fn collect(
    snapshot: &Snapshot,
    membership: crate::members::Membership,
    rollouts: Vec<Rollout>,
    generation: u64,
) -> Handover {
    let mut nodes = BTreeMap::new();
    for pool in &snapshot.pools {
        for node in &pool.nodes {
            let s = &node.state;
            let rec = s.record();
            let deadline_ms = match rec.admin {
                Admin::Draining { deadline_ms } => Some(deadline_ms),
                _ => None,
            };
            nodes.insert(
                node.key(),
                NodeHandover {
                    state: rec.kind(),
                    since_ms: rec.since_ms,
                    deadline_ms,
                    enable_pending: rec.pending_warmup,
                    health: s.health(),
                    version: s.version().map(|v| v.to_string()),
                    version_passes: s.version_passes(),
                },
            );
        }
    }
    Handover {
        generation,
        affinity_key: snapshot.keys.to_hex(),
        nodes,
        rollouts,
        membership,
    }
}

/// Applies a handed-over state before anything serves.
pub fn apply(app: &Arc<App>, state: Handover) {
    for (key, n) in state.nodes {
        let Some(t) = app.control.node_by_key(&key) else {
            continue;
        };
        t.node
            .state
            .inherit_health(n.health, n.version, n.version_passes);
        let carried = Carried {
            kind: n.state,
            since_ms: n.since_ms,
            pending: n.enable_pending,
            deadline_ms: n.deadline_ms,
        };
        lifecycle::restore(&app.control, &t, carried);
    }
    let why = "continued after a takeover of handoff";
    rollout::adopt(&app.control, &app.rollouts, state.rollouts, why);
}
