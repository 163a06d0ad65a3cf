//! handoff's own HTTP/1.x path, for client connections and pooled upstream connections.
//!
//! The client connection's task does everything for its requests: it reads a head into a
//! buffer taken when bytes arrive, parses it with httparse ([`head`]), decides its framing
//! ([`framing`]), picks a node, writes the rewritten head and body to a pooled or new
//! upstream connection, and relays the response ([`exchange`], [`send`], [`relay`]); a 101
//! turns the two connections into a [`tunnel`]. Nothing is handed between tasks. Between
//! requests the connection holds no buffer ([`buf`]): an idle keep-alive client costs its
//! socket and a few hundred bytes of task state.
//!
//! Per connection, one watchdog timer enforces the idle and header-read timeouts (see
//! [`crate::proxy::activity`]). On drain, or when the node that served the last request
//! passes its drain deadline, an idle connection closes at once and a busy one after its
//! response, which says `Connection: close`; at the force deadline it is cut.

pub mod buf;
mod exchange;
pub mod framing;
pub mod head;
pub(crate) mod relay;
mod rewind;
pub(crate) mod send;
pub mod tunnel;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::activity::{Verdict, Watched};
use super::http::ConnCtx;
use crate::config::Timeouts;
use crate::gated::Gated;
use buf::Buf;

/// A client connection: plain TCP, or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would not block. Plain sockets wait here holding no buffer; TLS
    /// answers at once (rustls holds its own buffers anyway).
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ClientIo for Watched<TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<Watched<TcpStream>> {}

/// What a connection does after a request.
pub enum Next {
    KeepAlive,
    Close,
    Tunnel(Box<tunnel::Start>),
}

/// The HTTP/2 connection preface: a client speaking HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// After the last response of a closing connection, how long what the client still sends
/// is read and dropped: closing with unread bytes would reset the connection, and the
/// client could lose the response (NGINX's lingering close).
const LINGER: Duration = Duration::from_secs(1);

type Signal = Gated<Pin<Box<WaitForCancellationFutureOwned>>>;

/// Serves one client connection. `h2`: TLS agreed on HTTP/2 by ALPN.
pub async fn serve<I: ClientIo>(ctx: ConnCtx, timeouts: Timeouts, mut io: I, h2: bool) {
    if h2 {
        return super::http::serve_h2(Arc::new(ctx), timeouts, io).await;
    }
    let closing = AtomicBool::new(false);
    // One timer for the connection's life, reset only when it fires (NGINX's lazy timers):
    // a request costs no timer of its own.
    let watchdog = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(watchdog);
    // Shutdown signals, gated so per-read wake-ups don't poll them (see `gated`). `drain` is
    // watched while idle (an idle connection closes at once); a busy one reads the flag
    // when its response goes out. `force` (the parent of `drain`) is watched once drain
    // fired.
    let mut drain = Gated::new(Box::pin(ctx.plane.shutdown.drain.clone().cancelled_owned()));
    let mut force: Option<Signal> = None;
    let mut held: Option<Buf> = None;
    let mut first = true;
    loop {
        if held.as_ref().is_none_or(Buf::is_empty) {
            // Idle between requests: no buffer, only the socket's readiness.
            held = None;
            loop {
                if closing.load(Relaxed) {
                    return linger(&mut io).await;
                }
                tokio::select! {
                    biased;
                    r = std::future::poll_fn(|cx| io.poll_read_ready(cx)) => match r {
                        Ok(()) => break,
                        Err(_) => return,
                    },
                    _ = &mut drain, if force.is_none() => {
                        closing.store(true, Relaxed);
                        force = Some(signal(&ctx.plane.shutdown.force));
                    }
                    _ = &mut watchdog => {
                        if tick(&ctx, &timeouts, &closing, watchdog.as_mut(), &mut force) == Tick::Cut {
                            return;
                        }
                    }
                }
            }
        }
        let mut buf = held.take().unwrap_or_else(Buf::take);
        if first {
            first = false;
            match preface(&mut io, &mut buf).await {
                Ok(false) => {}
                Ok(true) => {
                    let io = rewind::Rewind::new(buf, io);
                    return super::http::serve_h2(Arc::new(ctx), timeouts, io).await;
                }
                Err(_) => return,
            }
        }
        // Boxed: the request's state lives on the heap only while it is in flight, so the
        // connection's own future stays small while it idles.
        let mut one = Box::pin(exchange::one(&ctx, &mut io, &mut buf, &closing));
        let next = loop {
            tokio::select! {
                biased;
                r = &mut one => break Some(r),
                _ = async { force.as_mut().expect("set when drain fired").await }, if force.is_some() => break None,
                _ = &mut watchdog => {
                    if tick(&ctx, &timeouts, &closing, watchdog.as_mut(), &mut force) == Tick::Cut {
                        break None;
                    }
                }
            }
        };
        drop(one);
        match next {
            Some(Next::KeepAlive) => held = Some(buf),
            Some(Next::Close) => return linger(&mut io).await,
            Some(Next::Tunnel(start)) => {
                return tunnel::run(&ctx.plane, io, Some(buf), *start).await;
            }
            None => return,
        }
    }
}

fn signal(token: &tokio_util::sync::CancellationToken) -> Signal {
    Gated::new(Box::pin(token.clone().cancelled_owned()))
}

#[derive(PartialEq, Eq)]
enum Tick {
    Go,
    /// Cut the connection now (a slow head, an idle connection, the force deadline).
    Cut,
}

/// The watchdog fired: applies the timeouts and the shutdown and drain-deadline closes, and
/// sets the next look (at least every quarter of the header-read timeout, and of the
/// response timeout while a response head is awaited).
fn tick(
    ctx: &ConnCtx,
    timeouts: &Timeouts,
    closing: &AtomicBool,
    watchdog: Pin<&mut tokio::time::Sleep>,
    force: &mut Option<Signal>,
) -> Tick {
    let shutdown = &ctx.plane.shutdown;
    if force.is_none() && shutdown.is_draining() {
        closing.store(true, Relaxed);
        *force = Some(signal(&shutdown.force));
    }
    if ctx.served_by_closed() {
        closing.store(true, Relaxed);
    }
    let waiting = ctx.waiting_head.load(Relaxed);
    if waiting && ctx.activity.quiet_for() >= timeouts.response {
        // The exchange sees it when polled next, right after this tick.
        ctx.timed_out.store(true, Relaxed);
    }
    let next = match ctx
        .activity
        .verdict(timeouts.idle, Some(timeouts.header_read))
    {
        Verdict::CheckAt(at) => at,
        Verdict::SlowHead => {
            tracing::debug!(peer = %ctx.peer, "request head not received within the header-read timeout: closing");
            return Tick::Cut;
        }
        Verdict::Idle => return Tick::Cut,
    };
    let next = if waiting {
        next.min(tokio::time::Instant::now() + timeouts.response / 4)
    } else {
        next
    };
    watchdog.reset(next);
    Tick::Go
}

/// Reads the first bytes; `true` when they are the HTTP/2 preface.
async fn preface<I: ClientIo>(io: &mut I, buf: &mut Buf) -> io::Result<bool> {
    loop {
        let held = buf.data();
        let n = held.len().min(H2_PREFACE.len());
        if held[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        if buf.read_from(io, buf::SIZE).await? == 0 {
            return Ok(false);
        }
    }
}

/// Closes the connection after its last response: FIN first, then what the client still
/// sends is read and dropped, for at most [`LINGER`].
async fn linger<I: ClientIo>(io: &mut I) {
    let drain = async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 1024];
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
