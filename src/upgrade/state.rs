//! The messages of the upgrade socket. What they carry besides the sockets is
//! [`crate::app::carry`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::app::carry::{Handover, PreviousView};

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
