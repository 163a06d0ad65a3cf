//! What a takeover carries from the old process to the new one, besides the sockets: every
//! node's admin state (drain deadlines included), health and reported version, the
//! rollouts, the affinity key and the generation. Counters and histograms start from zero in
//! the new process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pool::{Admin, AdminState, Health};
use crate::rollout::Rollout;
use crate::snapshot::Snapshot;

/// The messages of the upgrade socket, one JSON object each.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// New → old: who is asking, and which listeners its config has.
    Hello {
        pid: u32,
        listeners: Vec<(String, SocketAddr)>,
        admin: SocketAddr,
    },
    /// Old → new, with the listening sockets attached in the order of `listeners` (then the
    /// admin listener, when `admin` is true).
    Handover {
        listeners: Vec<String>,
        admin: bool,
        state: Box<Handover>,
    },
    /// New → old: the new process accepts on every listener.
    Ready,
    /// Old → new, while the old generation drains: what it still holds.
    Draining(PreviousView),
    /// Old → new: the takeover is refused, and why.
    Refused { reason: String },
}

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
