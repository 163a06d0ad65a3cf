//! The runtime state a process starts from, and how it is applied: one [`CarryOver`], read
//! from the state file at a restart or handed over by the old process at a takeover, applied
//! in one place ([`apply`]) before anything serves.
//!
//! A takeover carries every node's admin state (drain deadlines included), health and
//! reported version, the rollouts, the runtime member changes, the affinity key and the
//! generation ([`Handover`]); a restart, what the state file keeps (admin states, rollouts,
//! member changes, the affinity key): the sessions and the health died with the old
//! process. Both carry the TLS session ticket keys, so clients resume. Counters and histograms start from zero in the new process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::App;
use crate::lifecycle::{self, Carried};
use crate::members::Membership;
use crate::persist::StateFile;
use crate::pool::{Admin, AdminState, Health};
use crate::rollout::{self, Rollout};
use crate::snapshot::Snapshot;
use crate::tickets::KeySet;

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
    /// The TLS session ticket keys (absent from a generation before them).
    #[serde(default)]
    pub tickets: Option<KeySet>,
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
        tickets: Some(snapshot.tickets.keys()),
    }
}

/// What a new process starts from, wherever it came from.
#[derive(Debug)]
pub struct CarryOver {
    /// Why the rollouts go on ("resumed after a restart of handoff", ...).
    why: &'static str,
    /// The previous process's generation (0: none known).
    pub generation: u64,
    /// 32 hex digits, when one was kept.
    pub affinity_key: Option<String>,
    nodes: BTreeMap<String, CarriedNode>,
    rollouts: Vec<Rollout>,
    /// Nodes added, changed or removed at runtime, relative to the config file.
    pub membership: Membership,
    /// The TLS session ticket keys, so that sessions resume on this process.
    pub tickets: Option<KeySet>,
}

#[derive(Debug)]
struct CarriedNode {
    admin: Carried,
    /// Health, reported version and its streak: only a takeover knows them.
    health: Option<(Health, Option<String>, u32)>,
}

impl From<StateFile> for CarryOver {
    fn from(f: StateFile) -> Self {
        let nodes = f.nodes.into_iter().map(|(key, record)| {
            let admin = Carried {
                kind: record.state,
                since_ms: record.since_ms,
                pending: record.enable_pending,
                // The sessions died with that process: a draining node is drained now.
                deadline_ms: None,
            };
            (
                key,
                CarriedNode {
                    admin,
                    health: None,
                },
            )
        });
        CarryOver {
            why: "resumed after a restart of handoff",
            generation: 0,
            affinity_key: f.affinity_key,
            nodes: nodes.collect(),
            rollouts: f.rollouts,
            membership: f.membership,
            tickets: f.tls_tickets,
        }
    }
}

impl From<Handover> for CarryOver {
    fn from(h: Handover) -> Self {
        let nodes = h.nodes.into_iter().map(|(key, n)| {
            let admin = Carried {
                kind: n.state,
                since_ms: n.since_ms,
                pending: n.enable_pending,
                // The old process's sessions carry on, so the drain does too.
                deadline_ms: n.deadline_ms,
            };
            let health = Some((n.health, n.version, n.version_passes));
            (key, CarriedNode { admin, health })
        });
        CarryOver {
            why: "continued after a takeover of handoff",
            generation: h.generation,
            affinity_key: Some(h.affinity_key),
            nodes: nodes.collect(),
            rollouts: h.rollouts,
            membership: h.membership,
            tickets: h.tickets,
        }
    }
}

/// Applies what was carried over before anything serves: each node's health and admin
/// state (a node the config no longer has is skipped), then the rollouts, which resume at
/// their current step.
pub fn apply(app: &Arc<App>, carried: CarryOver) {
    if let Some(keys) = carried.tickets {
        // Checked when read; a set that still does not fit leaves this process's own.
        if let Err(e) = app.snapshot.load().tickets.install(keys) {
            tracing::warn!(error = %e, "the carried-over TLS ticket keys were refused; sessions start afresh");
        }
    }
    for (key, n) in carried.nodes {
        let Some(t) = app.control.node_by_key(&key) else {
            tracing::info!(node = %key, "the carried-over state names a node the config no longer has");
            continue;
        };
        if let Some((health, version, passes)) = n.health {
            t.node.state.inherit_health(health, version, passes);
        }
        lifecycle::restore(&app.control, &t, n.admin);
    }
    rollout::adopt(&app.control, &app.rollouts, carried.rollouts, carried.why);
}
