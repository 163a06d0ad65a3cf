//! The HTTP/2 front end (clients with prior knowledge, or `h2` by ALPN): one HTTP/2 server
//! connection per client ([`server`]), a request handler in [`forward`] that sends each request
//! to a node over HTTP/1.1 ([`h1_upstream`]) or HTTP/2 ([`crate::proxy::h2up`]), and the
//! response body in [`body`]. HTTP/1.x clients take handoff's own path,
//! [`crate::proxy::h1`].
//!
//! Per connection, one watchdog timer enforces the idle timeout (see
//! [`crate::proxy::activity`]); on drain the connection gets GOAWAY (in-flight streams
//! finish), and on force it is cut.

pub mod body;
mod forward;
pub mod h1_upstream;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::activity::Verdict;
use super::ctx::ConnCtx;
use crate::gated::{Gated, Timer};

/// After asking an idle connection to close, when to look at it again.
const RECHECK_AFTER_CLOSE: Duration = Duration::from_secs(1);

/// What the server calls per stream: the request handler, and what counts the heads the
/// server refused itself.
struct Streams<F> {
    call: F,
    ctx: Arc<ConnCtx>,
}

impl<F, Fut> server::Service for Streams<F>
where
    F: FnMut(http::Request<server::RequestBody>) -> Fut,
    Fut: std::future::Future<Output = http::Response<body::LoggedBody>>,
{
    type Body = body::LoggedBody;
    type Future = Fut;

    fn call(&mut self, req: http::Request<server::RequestBody>) -> Fut {
        (self.call)(req)
    }

    fn too_large(&mut self) {
        forward::too_large(&self.ctx);
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
    // Boxed: the handler's future is kilobytes, moved once into its box rather than on
    // every move into the connection's set of handlers.
    let service = Streams {
        call: move |req| Box::pin(forward::handle(Arc::clone(&ctx), req)),
        ctx: Arc::clone(&watch),
    };
    // The connection and its streams, run in this task (see `server`).
    let mut conn = server::Connection::new(io, service);
    // Shutdown signals, gated so per-read wake-ups don't poll them (see `gated`). `force`
    // is the parent of `drain`, so `drain` always fires first.
    let mut drain = Gated::new(Box::pin(plane.shutdown.drain.clone().cancelled_owned()));
    let mut retire = Gated::new(Box::pin(plane.shutdown.retire.clone().cancelled_owned()));
    let mut retired = false;
    let mut force = None;
    let forced = || {
        Some(Gated::new(Box::pin(
            plane.shutdown.force.clone().cancelled_owned(),
        )))
    };
    // Whatever asks the connection to close (its node closed, idleness, a drain or a
    // retirement), it is asked once: GOAWAY, and in-flight streams finish.
    let (mut close, mut closing) = (false, false);
    let mut watchdog = Timer::at(Instant::now());
    loop {
        // Checked at every watchdog tick.
        close = close || watch.served_by_closed();
        if activity.write_blocked_for() >= timeouts.send() {
            tracing::debug!(%peer, "the client accepted no bytes within the send timeout: closing");
            watch.listener.metrics.send_timeouts.inc();
            activity.cut(crate::access_log::Termination::SendTimeout);
            break;
        }
        // Streams waiting for a node longer than the response timeout get their 504.
        conn.expire(timeouts.response());
        // Also every quarter of the response and send timeouts (see `server::Waiter`).
        let look = timeouts.response().min(timeouts.send()) / 4;
        let next = match activity.verdict(idle, Some(header_read)) {
            Verdict::CheckAt(at) => at.min(Instant::now() + look),
            Verdict::SlowHead => break,
            Verdict::Idle => {
                close = true;
                Instant::now() + RECHECK_AFTER_CLOSE
            }
        };
        if close && !closing {
            conn.graceful_shutdown();
            closing = true;
        }
        watchdog.reset(next);
        tokio::select! {
            // The connection first: the signals are gated, polled only when they fire.
            biased;
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                break;
            }
            _ = &mut watchdog => {}
            // Replaced by a new process, or draining: GOAWAY now (in-flight streams finish).
            _ = &mut retire, if !retired => {
                retired = true;
                close = true;
                force = forced();
            }
            _ = &mut drain, if force.is_none() => {
                close = true;
                force = forced();
            }
            _ = async { force.as_mut().expect("set when drain fired").await }, if force.is_some() => {
                activity.cut(crate::access_log::Termination::Shutdown);
                break;
            }
        }
    }
}
