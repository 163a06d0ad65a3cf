//! Session accounting: a guard per session increments its node's counter and decrements it
//! when dropped, however the session ends (finished, failed, cancelled, timed out).

use std::sync::Arc;

use super::node::NodeState;

/// A node's sessions by kind, as the node JSON shows them and cluster members publish them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionCounts {
    pub total: usize,
    pub http_inflight: usize,
    pub tunnels: usize,
    pub tcp: usize,
    pub affinity: usize,
}

impl SessionCounts {
    /// `node`'s sessions now (pinned affinity clients counted from `pool`'s table).
    pub fn of(node: &super::Node, pool: &super::Pool) -> Self {
        let s = &node.state;
        let affinity = pool
            .nodes
            .iter()
            .position(|n| n.name == node.name)
            .map_or(0, |i| pool.affinity_sessions(i, super::unix_ms()).0);
        SessionCounts {
            http_inflight: s.sessions(SessionKind::HttpInflight),
            tunnels: s.sessions(SessionKind::Tunnel),
            tcp: s.sessions(SessionKind::Tcp),
            affinity,
            total: s.active_sessions() + affinity,
        }
    }

    /// Adds `other` kind by kind (sessions summed over cluster instances).
    pub fn add(&mut self, other: &SessionCounts) {
        self.total += other.total;
        self.http_inflight += other.http_inflight;
        self.tunnels += other.tunnels;
        self.tcp += other.tcp;
        self.affinity += other.affinity;
    }
}

pub use crate::session_kind::SessionKind;

/// Counts one session on a node for as long as it lives.
pub struct SessionGuard {
    state: Arc<NodeState>,
    kind: SessionKind,
}

impl SessionGuard {
    pub fn new(state: &Arc<NodeState>, kind: SessionKind) -> Self {
        state.session_started(kind);
        SessionGuard {
            state: Arc::clone(state),
            kind,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.state.session_ended(self.kind);
    }
}
