//! The connection context: what every request on one client connection shares (the data
//! plane, the listener, the peer, the watchdog's flags and timeouts), for both front ends
//! and the layers below them.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::activity::Activity;
use super::codec::translate::ClientAddr;
use super::{ConnSlot, DataPlane, ListenerStats};
use crate::config::Timeouts;
use crate::pool::NodeState;

/// What every request on one client connection shares.
pub struct ConnCtx {
    pub plane: Arc<DataPlane>,
    pub listener: Arc<ListenerStats>,
    pub peer: SocketAddr,
    pub activity: Arc<Activity>,
    /// TLS terminated here: `X-Forwarded-Proto` says `https`.
    https: bool,
    /// The node that answered the last request: when its drain deadline passes, this client
    /// connection closes gracefully (GOAWAY, or `Connection: close`) and reconnects.
    pub served_by: ArcSwapOption<NodeState>,
    /// HTTP/1.x: a request waits for its response head (the watchdog applies the response
    /// timeout), and the watchdog found it late.
    pub waiting_head: AtomicBool,
    pub timed_out: AtomicBool,
    /// HTTP/1.x: the client's body is still being sent on: a stall then is the client's
    /// (408), not the node's.
    pub uploading: AtomicBool,
    /// HTTP/1.x: the connection closes after the response in flight (shutdown, or the
    /// serving node's drain deadline); an idle one closes at once.
    pub closing: AtomicBool,
    /// The listener's timeouts when the connection was accepted.
    pub timeouts: ConnTimeouts,
    /// The TLS version and SNI, when TLS was terminated here (the access log's `tls`).
    tls: Option<Box<TlsInfo>>,
    /// The connection's slot of its listener's limit, held as long as the connection is.
    _slot: Option<ConnSlot>,
}

/// What the access log says of a client's TLS session.
pub struct TlsInfo {
    pub version: &'static str,
    pub sni: Option<Box<str>>,
}

impl ConnCtx {
    pub(crate) fn new(
        plane: Arc<DataPlane>,
        listener: Arc<ListenerStats>,
        peer: SocketAddr,
        activity: Arc<Activity>,
        proto: &'static str,
        timeouts: Timeouts,
        slot: Option<ConnSlot>,
    ) -> Self {
        ConnCtx {
            plane,
            listener,
            peer,
            activity,
            https: proto == "https",
            served_by: ArcSwapOption::empty(),
            waiting_head: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            uploading: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            timeouts: ConnTimeouts::new(&timeouts),
            tls: None,
            _slot: slot,
        }
    }

    /// The connection's TLS session, as the access log names it.
    pub fn with_tls(mut self, tls: TlsInfo) -> Self {
        self.tls = Some(Box::new(tls));
        self
    }

    /// TLS version and SNI, when TLS was terminated here.
    pub fn tls(&self) -> Option<(&str, Option<&str>)> {
        self.tls.as_deref().map(|t| (t.version, t.sni.as_deref()))
    }

    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub fn proto(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// The peer's address as an `X-Forwarded-For` value. Formatted per request (a few tens
    /// of nanoseconds) rather than held: every idle connection would carry it.
    pub fn client_addr(&self) -> ClientAddr {
        ClientAddr::new(self.peer.ip())
    }

    /// `node` answered a request on this connection (the store, and its refcount traffic,
    /// only when the node changes).
    pub fn served(&self, node: &Arc<NodeState>) {
        if !self
            .served_by
            .load()
            .as_ref()
            .is_some_and(|n| Arc::ptr_eq(n, node))
        {
            self.served_by.store(Some(Arc::clone(node)));
        }
    }

    /// Whether the node that served the last request has passed its drain deadline.
    pub fn served_by_closed(&self) -> bool {
        self.served_by
            .load()
            .as_ref()
            .is_some_and(|n| n.lifecycle.deadline_passed())
    }
}

/// The timeouts a client connection's watchdog applies, in milliseconds (compact: every
/// connection holds them).
#[derive(Clone, Copy)]
pub struct ConnTimeouts {
    idle_ms: u32,
    header_read_ms: u32,
    response_ms: u32,
    send_ms: u32,
}

impl ConnTimeouts {
    pub fn new(t: &Timeouts) -> Self {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        ConnTimeouts {
            idle_ms: ms(t.idle),
            header_read_ms: ms(t.header_read),
            response_ms: ms(t.response),
            send_ms: ms(t.send),
        }
    }

    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms.into())
    }

    pub fn header_read(&self) -> Duration {
        Duration::from_millis(self.header_read_ms.into())
    }

    pub fn response(&self) -> Duration {
        Duration::from_millis(self.response_ms.into())
    }

    pub fn send(&self) -> Duration {
        Duration::from_millis(self.send_ms.into())
    }
}
