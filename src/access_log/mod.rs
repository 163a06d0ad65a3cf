//! The access log: one line per HTTP request, TCP session and tunnel, written when it ends,
//! saying which node (and version, and rollout phase) served it and how it ended.
//!
//! - [`record`]: a line in the making ([`Record`]) and the [`Termination`] words;
//! - [`format`](mod@format): JSON or text, with [`escape`] for the values;
//! - [`writer`]: the bounded queue and the one thread that appends to the file.
//!
//! It sits below the data path: the proxy fills records, nothing here knows of sockets.

pub mod escape;
pub mod format;
pub mod record;
pub mod writer;

pub use record::{Conn, Record, Request, Termination, FIELDS};
pub use writer::{AccessLog, Slot};
