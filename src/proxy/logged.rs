//! An exchange's access log record as the data path holds it: the record, and what it needs
//! of the client connection to fill in the bytes moved and why the connection was cut.
//!
//! Everything here does nothing when the access log is off (one `Option` test). The line is
//! queued when the [`Logged`] is dropped: at the end of the exchange, or when the connection
//! is cut under it (a send timeout, shutdown's force deadline, a drain deadline), which the
//! connection's [`Activity`] then says.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::activity::Activity;
use super::ctx::ConnCtx;
use crate::access_log::{Conn, Record, Request, Termination};
use crate::pool::Pool;

/// Which bytes a line counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bytes {
    /// What crossed the client connection from the mark on (HTTP/1, tunnels, TCP).
    Connection,
    /// What the exchange set itself (an HTTP/2 stream's bodies).
    Own,
}

/// One exchange's record, with the client connection it happens on (one pointer: the
/// per-request future carries it whether the log is on or not).
pub struct Logged(Option<Box<Held>>);

struct Held {
    record: Record,
    activity: Arc<Activity>,
    bytes: Bytes,
    /// The connection's byte counts when the exchange began.
    mark: (u64, u64),
    /// Bytes read past the exchange's end (a pipelined request's).
    ahead: u64,
}

impl Logged {
    pub const OFF: Logged = Logged(None);

    /// A record of an exchange on `ctx`'s connection that began at `started`, when the
    /// access log is on. `held`: bytes already read that belong to it (or to what follows).
    pub fn start(
        ctx: &ConnCtx,
        proto: &str,
        req: Request<'_>,
        started: Instant,
        held: usize,
    ) -> Logged {
        let Some(log) = ctx.plane.access_log.get() else {
            return Logged::OFF;
        };
        let conn = Conn {
            client: ctx.peer,
            listener: &ctx.listener.name,
            proto,
            tls: ctx.tls(),
        };
        let record = Record::start(&log, started, conn, req);
        let mut logged = Logged::of(record, &ctx.activity);
        if let Some(h) = logged.0.as_deref_mut() {
            h.mark.0 = h.mark.0.saturating_sub(held as u64);
        }
        logged
    }

    /// A record whose bytes the exchange counts itself (an HTTP/2 stream).
    pub fn own_bytes(mut self) -> Logged {
        if let Some(h) = self.0.as_deref_mut() {
            h.bytes = Bytes::Own;
        }
        self
    }

    /// A record built elsewhere (a TCP session), with the connection's counts from now on.
    pub fn of(record: Record, activity: &Arc<Activity>) -> Logged {
        Logged(Some(Box::new(Held {
            record,
            activity: Arc::clone(activity),
            bytes: Bytes::Connection,
            mark: activity.bytes(),
            ahead: 0,
        })))
    }

    #[inline]
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    #[inline]
    pub fn with(&mut self, f: impl FnOnce(&mut Record)) {
        if let Some(h) = self.0.as_deref_mut() {
            f(&mut h.record);
        }
    }

    /// How the exchange ended, and the status the client got (if any).
    #[inline]
    pub fn end(&mut self, termination: Termination, status: Option<u16>) {
        self.with(|r| {
            r.termination = termination;
            if status.is_some() {
                r.status = status;
            }
        });
    }

    #[inline]
    pub fn pool(&mut self, pool: &Arc<Pool>) {
        self.with(|r| r.pool(pool));
    }

    /// Node `index` of the pool is tried.
    #[inline]
    pub fn attempt(&mut self, index: usize) {
        self.with(|r| r.attempt(index));
    }

    /// The connection to the node took `d` (zero: a pooled one).
    #[inline]
    pub fn connected(&mut self, d: Duration) {
        self.with(|r| r.connect = Some(d));
    }

    /// The node's response head came `d` after the request went out.
    #[inline]
    pub fn answered(&mut self, d: Duration, status: u16) {
        self.with(|r| {
            r.header = Some(d);
            r.status = Some(status);
        });
    }

    /// `n` bytes read belong to the next exchange, not this one.
    #[inline]
    pub fn read_ahead(&mut self, n: usize) {
        if let Some(h) = self.0.as_deref_mut() {
            h.ahead = n as u64;
        }
    }

    /// Bytes an exchange counted itself.
    #[inline]
    pub fn add_bytes(&mut self, read: u64, written: u64) {
        self.with(|r| {
            r.bytes_in += read;
            r.bytes_out += written;
        });
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let record = &mut self.record;
        if self.bytes == Bytes::Connection {
            let (read, written) = self.activity.bytes();
            record.bytes_in = read.saturating_sub(self.mark.0 + self.ahead);
            record.bytes_out = written.saturating_sub(self.mark.1);
        }
        // Dropped without an end of its own while the connection was being cut: the cut
        // says why.
        if record.termination == Termination::ClientClosed {
            if let Some(why) = self.activity.cut_reason() {
                record.termination = why;
            }
        }
        // The record's own drop, right after this, queues the line.
    }
}
