//! HTTP/2 from clients (with prior knowledge, or `h2` by ALPN): one hyper HTTP/2 server
//! connection per client, a request handler in [`forward`] that sends each request to a
//! node over HTTP/1.1 ([`upstream`]), header rewriting in [`headers`], and the response body
//! in [`body`]. HTTP/1.x clients take handoff's own path, [`crate::proxy::h1`].
//!
//! Per connection, one watchdog timer enforces the idle timeout (see
//! [`crate::proxy::activity`]); on drain the connection gets GOAWAY (in-flight streams
//! finish), and on force it is cut.

pub mod body;
mod forward;
pub mod headers;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};

use super::activity::{Activity, Verdict};
use super::{ConnSlot, ListenerStats};
use crate::config::Timeouts;
use crate::gated::Gated;
use crate::pool::NodeState;
use crate::proxy::DataPlane;

/// After asking an idle connection to close, when to look at it again.
const RECHECK_AFTER_CLOSE: Duration = Duration::from_secs(1);

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
    /// The connection's slot of its listener's limit, held as long as the connection is.
    _slot: Option<ConnSlot>,
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
            _slot: slot,
        }
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
    pub fn client_addr(&self) -> headers::ClientAddr {
        headers::ClientAddr::new(self.peer.ip())
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

/// Serves one HTTP/2 client connection (`io` has the connection preface still to read).
pub async fn serve_h2<I>(ctx: Arc<ConnCtx>, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::clone(&ctx.activity);
    let timeouts = ctx.timeouts;
    let (idle, header_read) = (timeouts.idle(), timeouts.header_read());
    activity.set_h2();
    let plane = Arc::clone(&ctx.plane);
    let peer = ctx.peer;
    let watch = Arc::clone(&ctx);
    let service = service_fn(move |req| forward::handle(Arc::clone(&ctx), req));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Shutdown signals, gated so per-read wake-ups don't poll them (see `gated`). `force`
    // is the parent of `drain`, so `drain` always fires first.
    let mut drain = Gated::new(Box::pin(plane.shutdown.drain.clone().cancelled_owned()));
    let mut retire = Gated::new(Box::pin(plane.shutdown.retire.clone().cancelled_owned()));
    let mut retired = false;
    let mut force = None;
    let mut closing = false;
    loop {
        // Checked at every watchdog tick.
        if !closing && watch.served_by_closed() {
            conn.as_mut().graceful_shutdown();
            closing = true;
        }
        if activity.write_blocked_for() >= timeouts.send() {
            tracing::debug!(%peer, "the client accepted no bytes within the send timeout: closing");
            watch.listener.metrics.send_timeouts.inc();
            break;
        }
        let next = match activity.verdict(idle, Some(header_read)) {
            Verdict::CheckAt(at) => at.min(Instant::now() + timeouts.send() / 4),
            Verdict::SlowHead => break,
            Verdict::Idle => {
                if !closing {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                Instant::now() + RECHECK_AFTER_CLOSE
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                break;
            }
            _ = sleep_until(next) => {}
            // Replaced by a new process, or draining: GOAWAY now (in-flight streams finish).
            _ = &mut retire, if !retired => {
                retired = true;
                if !closing {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                force = Some(Gated::new(Box::pin(plane.shutdown.force.clone().cancelled_owned())));
            }
            _ = &mut drain, if force.is_none() => {
                if !closing {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                force = Some(Gated::new(Box::pin(plane.shutdown.force.clone().cancelled_owned())));
            }
            _ = async { force.as_mut().expect("set when drain fired").await }, if force.is_some() => break,
        }
    }
}
