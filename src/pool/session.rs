//! Session accounting: a guard per session increments its node's counter and decrements it
//! when dropped, however the session ends (finished, failed, cancelled, timed out).

use std::sync::Arc;

use super::node::NodeState;

/// What kind of session a guard counts (design.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum SessionKind {
    /// One HTTP request from headers in to the end of the response body.
    HttpInflight = 0,
    /// One upgraded (WebSocket or other Upgrade) stream.
    Tunnel = 1,
    /// One proxied TCP connection.
    Tcp = 2,
    /// One pinned affinity client.
    Affinity = 3,
}

impl SessionKind {
    pub const ALL: [SessionKind; 4] = [Self::HttpInflight, Self::Tunnel, Self::Tcp, Self::Affinity];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpInflight => "http_inflight",
            Self::Tunnel => "tunnels",
            Self::Tcp => "tcp",
            Self::Affinity => "affinity",
        }
    }
}

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
