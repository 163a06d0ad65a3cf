//! HTTP proxying: one hyper server connection per client (HTTP/1.1, or HTTP/2 with prior
//! knowledge), a request handler in [`forward`], pooled upstream connections in
//! [`upstream`], header rewriting in [`headers`], and the response body in [`body`].
//!
//! Per connection, one watchdog timer enforces the idle and header-read timeouts (see
//! [`crate::proxy::activity`]); on drain the connection is closed gracefully (in-flight
//! requests finish, keep-alive stops), and on force it is cut.

pub mod body;
mod forward;
pub mod headers;
mod sticky;
mod tunnel;
pub mod upstream;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};

use super::activity::{Activity, Verdict};
use super::gated::Gated;
use super::ListenerStats;
use crate::config::Timeouts;
use crate::proxy::DataPlane;
use forward::ConnCtx;

/// Largest request head accepted (HTTP/1.1); a larger one is answered 431. NGINX allows
/// 4 × 8 KiB by default, HAProxy 16 KiB; 64 KiB leaves room for big cookies.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// After asking an idle connection to close, when to look at it again.
const RECHECK_AFTER_CLOSE: Duration = Duration::from_secs(1);

/// Serves one client connection. `io` is the (watched) client stream, plain or TLS; `proto`
/// is what `X-Forwarded-Proto` says.
pub async fn serve<I>(
    plane: Arc<DataPlane>,
    stats: Arc<ListenerStats>,
    timeouts: Timeouts,
    io: I,
    activity: Arc<Activity>,
    peer: SocketAddr,
    proto: &'static str,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let ctx = Arc::new(ConnCtx {
        plane: Arc::clone(&plane),
        listener: stats,
        peer,
        forwarded_for: headers::forwarded_for(peer.ip()),
        activity: Arc::clone(&activity),
        proto,
        served_by: ArcSwapOption::empty(),
    });
    let watch = Arc::clone(&ctx);
    let service = service_fn(move |req| forward::handle(Arc::clone(&ctx), req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // handoff's own watchdog enforces header-read and idle timeouts (hyper's header timer
    // would also cut idle keep-alive connections at the header-read timeout).
    builder
        .http1()
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(MAX_HEADER_BYTES);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // Shutdown signals, gated so per-read wake-ups don't poll them (see `gated`). `force`
    // is the parent of `drain`, so `drain` always fires first.
    let mut drain = Gated::new(Box::pin(plane.shutdown.drain.clone().cancelled_owned()));
    let mut retire = Gated::new(Box::pin(plane.shutdown.retire.clone().cancelled_owned()));
    let mut retired = false;
    let mut force = None;
    let mut closing = false;
    loop {
        // Checked at every watchdog tick (at least every quarter of the header-read timeout).
        if !closing
            && watch
                .served_by
                .load()
                .as_ref()
                .is_some_and(|n| n.lifecycle.deadline_passed())
        {
            conn.as_mut().graceful_shutdown();
            closing = true;
        }
        let next = match activity.verdict(timeouts.idle, Some(timeouts.header_read)) {
            Verdict::CheckAt(at) => at,
            Verdict::SlowHead => {
                tracing::debug!(%peer, "request head not received within the header-read timeout: closing");
                break;
            }
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
            _ = &mut retire, if !retired => {
                // Replaced by a new process: HTTP/2 clients get GOAWAY now (in-flight streams
                // finish); HTTP/1.1 clients get `Connection: close` on their next response.
                retired = true;
                if activity.is_h2() && !closing {
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
