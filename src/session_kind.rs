//! The kinds of session handoff counts per node: a leaf type, shared by the pools that count
//! them and the metrics that label them.

/// What kind of session a guard counts (docs/design.md, "Words").
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
