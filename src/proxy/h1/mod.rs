//! The HTTP/1.x front end: handoff's own path, for client connections and pooled upstream
//! connections.
//!
//! The client connection's task does everything for its requests: it reads a head into a
//! buffer taken when bytes arrive, parses it and decides its framing (the codec,
//! [`crate::proxy::codec`]), routes and rewrites it ([`plan`]), walks the pool's nodes
//! ([`crate::proxy::walk`]), writes the head and body to a pooled or new upstream
//! connection and relays the response ([`exchange`], [`send`], [`relay`]), or sends it to
//! an HTTP/2 backend ([`bridge`]); a 101 turns the two connections into a [`tunnel`].
//! Nothing is handed between tasks. Between requests the connection holds no buffer: an
//! idle keep-alive client costs its socket and a few hundred bytes of task state.
//!
//! Per connection, one watchdog timer enforces the idle and header-read timeouts (see
//! [`crate::proxy::activity`]). On drain, or when the node that served the last request
//! passes its drain deadline, an idle connection closes at once and a busy one after its
//! response, which says `Connection: close`; at the force deadline it is cut.

pub mod bridge;
mod exchange;
mod local;
mod plan;
pub(crate) mod relay;
mod rewind;
pub(crate) mod send;
pub mod tunnel;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::activity::{Verdict, Watched};
use super::ctx::ConnCtx;
use crate::access_log::Termination;
use crate::gated::{Gated, Timer};
use crate::proxy::codec::buf::{self, Buf};
use crate::proxy::logged::Logged;
use tokio::time::Instant;

/// A client connection: plain TCP, or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether [`ClientIo::poll_read_ready`] can wait: then a busy spell that finds nothing
    /// to read goes back to waiting idle, without a buffer.
    const WAITS_IDLE: bool = false;

    /// Ready when a read may not block. Plain sockets wait here holding no buffer; TLS
    /// answers at once (rustls holds its own buffers anyway).
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ClientIo for Watched<TcpStream> {
    const WAITS_IDLE: bool = true;

    /// May be ready with nothing to read: tokio takes a new socket as readable until a read
    /// says otherwise.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<Watched<TcpStream>> {}

/// How a busy spell of a connection ended.
pub enum Done {
    /// Every request read was answered: wait for the next.
    Idle,
    Close,
    /// A tunnel starts, with what the client sent after its upgrade request.
    Tunnel(Box<tunnel::Start>, Buf),
    /// The connection opened with the HTTP/2 preface (held in the buffer).
    H2(Buf),
}

/// What a connection does after a request.
pub enum Next {
    KeepAlive,
    Close,
    Tunnel(Box<tunnel::Start>),
    /// The connection opened with the HTTP/2 preface.
    H2,
}

/// The HTTP/2 connection preface: a client speaking HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// After the last response of a closing connection, how long what the client still sends
/// is read and dropped: closing with unread bytes would reset the connection, and the
/// client could lose the response (NGINX's lingering close).
const LINGER: Duration = Duration::from_secs(1);

type Signal = Gated<Pin<Box<WaitForCancellationFutureOwned>>>;

/// How a client connection's protocol is known.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Speaks {
    /// Cleartext: HTTP/1.x, or HTTP/2 with prior knowledge (its preface is looked for).
    Sniff,
    /// TLS agreed on http/1.1, or on nothing: HTTP/1.x only.
    Http1,
    /// TLS agreed on h2: HTTP/2 only (RFC 9113 §3.3).
    H2,
}

/// Serves one client connection.
pub fn serve<I: ClientIo>(ctx: Arc<ConnCtx>, io: I, speaks: Speaks) -> Conn<I> {
    let state = if speaks == Speaks::H2 {
        State::Finish(Box::pin(h2_only(Arc::clone(&ctx), io)))
    } else {
        State::Idle(io)
    };
    Conn {
        // Fires at once: the first look sets the real deadline.
        watchdog: Timer::at(tokio::time::Instant::now()),
        ctx,
        force: None,
        first: speaks == Speaks::Sniff,
        state,
    }
}

/// A client connection's task, written out by hand so that it holds exactly what an idle
/// connection needs: its socket, its context, one timer and the shutdown signal once drain
/// began. An idle keep-alive connection costs this (under 256 bytes with tokio's task
/// header), its context and tokio's registration of the socket.
///
/// - Idle: waits for the socket to be readable, holding no buffer.
/// - Busy: a boxed future (the requests' state, their buffer included) owns the socket
///   until every request read was answered, and hands it back.
/// - Finish: a boxed continuation owns it to the end (HTTP/2, a tunnel, a lingering close).
///
/// The timer is the connection's only one, reset only when it fires (NGINX's lazy timers):
/// a request costs no timer of its own. Each time it applies the idle, header-read and
/// response timeouts and notices shutdown (an idle connection closes at the first look
/// after `drain`, within a quarter of the header-read timeout; a busy one says
/// `Connection: close` on its response) and the serving node's drain deadline. `force`
/// (gated so per-read wake-ups don't poll it) cuts what remains.
pub struct Conn<I: ClientIo> {
    ctx: Arc<ConnCtx>,
    watchdog: Timer,
    force: Option<Box<Signal>>,
    /// The next head is the connection's first, and HTTP/2's preface is looked for.
    first: bool,
    state: State<I>,
}

type Busy<I> = Pin<Box<dyn Future<Output = (I, Done)> + Send>>;

enum State<I> {
    Idle(I),
    Busy(Busy<I>),
    Finish(Pin<Box<dyn Future<Output = ()> + Send>>),
    Done,
}

impl<I: ClientIo> Future for Conn<I> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            // The connection's own work first; the signals and the timer after.
            match &mut this.state {
                State::Done => return Poll::Ready(()),
                State::Finish(rest) => return rest.as_mut().poll(cx),
                State::Idle(io) => {
                    if this.ctx.closing.load(Relaxed) {
                        this.finish_with(linger);
                        continue;
                    }
                    match io.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            // Readiness can be stale (tokio takes a new socket as readable,
                            // and a keep-alive one after a read that got data): one read
                            // decides, into a buffer from the free list that goes back if
                            // nothing was there. A connection waiting for a request holds
                            // no buffer, silent or keep-alive.
                            let mut buf = Buf::take();
                            let read = match I::WAITS_IDLE {
                                true => buf.poll_read_from(io, cx, buf::SIZE).map(Some),
                                false => Poll::Ready(None),
                            };
                            match read {
                                Poll::Ready(Some(Ok(0)) | Some(Err(_))) => return Poll::Ready(()),
                                // Nothing there: the read registered the wake-up.
                                Poll::Pending => drop(buf),
                                Poll::Ready(Some(Ok(_)) | None) => {
                                    let State::Idle(io) =
                                        std::mem::replace(&mut this.state, State::Done)
                                    else {
                                        return Poll::Ready(());
                                    };
                                    let (ctx, first) = (Arc::clone(&this.ctx), this.first);
                                    this.state = State::Busy(boxed_in_place(move || {
                                        exchange::busy(ctx, io, first, buf)
                                    }));
                                    continue;
                                }
                            }
                        }
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Pending => {}
                    }
                }
                State::Busy(busy) => match busy.as_mut().poll(cx) {
                    Poll::Ready((io, done)) => {
                        this.after(io, done);
                        continue;
                    }
                    Poll::Pending => {}
                },
            }
            // Picked to make room at max_connections while waiting for a request (idle, or
            // in the busy state before a byte of the next head): nothing is owed, it goes.
            // (A request in flight is never marked: it skips the waker registration.)
            let activity = &this.ctx.activity;
            if activity.between_requests() && activity.poll_marked(cx) {
                return Poll::Ready(());
            }
            if let Some(force) = &mut this.force {
                if Pin::new(force.as_mut()).poll(cx).is_ready() {
                    this.ctx.activity.cut(Termination::Shutdown);
                    return Poll::Ready(());
                }
            }
            if Pin::new(&mut this.watchdog).poll(cx).is_pending() {
                return Poll::Pending;
            }
            if tick(&this.ctx, &mut this.watchdog, &mut this.force) == Tick::Cut {
                return Poll::Ready(());
            }
            // The reset timer is polled on the next pass, which registers it (and a busy
            // connection's exchange sees `timed_out`).
        }
    }
}

impl<I: ClientIo> Conn<I> {
    /// A busy spell ended with `done`.
    fn after(&mut self, io: I, done: Done) {
        self.first = false;
        self.state = match done {
            Done::Idle => State::Idle(io),
            Done::Close => State::Finish(Box::pin(linger(io))),
            Done::H2(buf) => {
                let io = rewind::Rewind::new(buf, io);
                State::Finish(Box::pin(super::h2::serve_h2(Arc::clone(&self.ctx), io)))
            }
            Done::Tunnel(start, buf) => {
                let ctx = Arc::clone(&self.ctx);
                State::Finish(Box::pin(async move {
                    tunnel::run(&ctx.plane, io, Some(buf), *start).await
                }))
            }
        };
    }

    fn finish_with<F: Future<Output = ()> + Send + 'static>(&mut self, f: fn(I) -> F) {
        if let State::Idle(io) = std::mem::replace(&mut self.state, State::Done) {
            self.state = State::Finish(Box::pin(f(io)));
        }
    }
}

/// Allocates, then builds: the future (a few KiB) can then be written in place, where
/// `Box::pin(make())` builds it on the stack and copies it whole into the new box.
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot = Box::new_uninit();
    Box::into_pin(Box::write(slot, make()))
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
/// sets the next look (at least every quarter of the header-read and response timeouts).
fn tick(ctx: &ConnCtx, watchdog: &mut Timer, force: &mut Option<Box<Signal>>) -> Tick {
    let closing = &ctx.closing;
    let timeouts = &ctx.timeouts;
    let shutdown = &ctx.plane.shutdown;
    if force.is_none() && shutdown.is_draining() {
        closing.store(true, Relaxed);
        *force = Some(Box::new(signal(&shutdown.force)));
    }
    if ctx.served_by_closed() {
        closing.store(true, Relaxed);
    }
    // A closing connection between requests goes now, also one waiting for a head's first
    // byte inside its busy state (TLS connections wait there: see `ClientIo`).
    if closing.load(Relaxed) && ctx.activity.between_requests() {
        return Tick::Cut;
    }
    // A client that accepts no byte of its response for `send` is gone or hostile: closing
    // it releases the response's backend connection too (NGINX's send_timeout).
    if ctx.activity.write_blocked_for() >= timeouts.send() {
        tracing::debug!(peer = %ctx.peer, "the client accepted no bytes within the send timeout: closing");
        ctx.listener.metrics.send_timeouts.inc();
        ctx.activity.cut(Termination::SendTimeout);
        return Tick::Cut;
    }
    let waiting = ctx.waiting_head.load(Relaxed);
    if waiting && ctx.activity.quiet_for() >= timeouts.response() {
        // The exchange sees it when polled next, right after this tick.
        ctx.timed_out.store(true, Relaxed);
    }
    let next = match ctx
        .activity
        .verdict(timeouts.idle(), Some(timeouts.header_read()))
    {
        Verdict::CheckAt(at) => at,
        Verdict::SlowHead => {
            tracing::debug!(peer = %ctx.peer, "request head not received within the header-read timeout: closing");
            // A head began and never ended: its line says so (HAProxy's `cR`).
            let mut log = Logged::start(ctx, "HTTP/1.1", Default::default(), Instant::now(), 0);
            log.end(Termination::ClientTimeout, None);
            ctx.activity.cut(Termination::ClientTimeout);
            return Tick::Cut;
        }
        Verdict::Idle => return Tick::Cut,
    };
    // Also every quarter of the response and send timeouts: a request that starts waiting
    // (or a client that stops reading) between two looks is seen within 1.25 times it.
    let look = timeouts.response().min(timeouts.send()) / 4;
    watchdog.reset(next.min(tokio::time::Instant::now() + look));
    Tick::Go
}

/// The server's (empty) SETTINGS, then GOAWAY with PROTOCOL_ERROR and no stream processed.
const GOAWAY_PROTOCOL_ERROR: [u8; 26] = [
    0, 0, 0, 4, 0, 0, 0, 0, 0, // SETTINGS, empty
    0, 0, 8, 7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes
    0, 0, 0, 0, 0, 0, 0, 1, // last stream 0, PROTOCOL_ERROR
];

/// A TLS connection that agreed on h2 by ALPN speaks HTTP/2 only: anything but the preface
/// is a connection error of type PROTOCOL_ERROR (RFC 9113 §3.4), answered with a GOAWAY,
/// never in HTTP/1.1.
async fn h2_only<I: ClientIo>(ctx: Arc<ConnCtx>, mut io: I) {
    let mut buf = Buf::take();
    let read = tokio::time::timeout(ctx.timeouts.header_read(), preface(&mut io, &mut buf));
    match read.await {
        Ok(Ok(true)) => {
            let io = rewind::Rewind::new(buf, io);
            super::h2::serve_h2(ctx, io).await
        }
        Ok(Ok(false)) if !buf.is_empty() => {
            drop(buf);
            ctx.listener
                .metrics
                .client_error(crate::metrics::ClientError::BadRequest);
            tracing::debug!(peer = %ctx.peer, "not the HTTP/2 preface on an h2 connection");
            if io.write_all(&GOAWAY_PROTOCOL_ERROR).await.is_ok() {
                linger(io).await
            }
        }
        _ => {}
    }
}

/// Reads the first bytes; `true` when they are the HTTP/2 preface.
pub(super) async fn preface<I: ClientIo>(io: &mut I, buf: &mut Buf) -> io::Result<bool> {
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
async fn linger<I: ClientIo>(mut io: I) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::metrics::Metrics;
    use crate::proxy::{DataPlane, ListenerStats};
    use crate::shutdown::Shutdown;
    use crate::snapshot::Snapshot;

    /// The per-request future's size when this test was written, with a little room (2816
    /// before the access log's record and its timings).
    const BUSY_MAX: usize = 2832;

    fn size_of_future<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection's memory is its task, its context, its timer and tokio's record of
    /// its socket: the per-request state and the rare continuations (HTTP/2, tunnels,
    /// linger) are boxed, and nothing else may creep into the first two.
    #[tokio::test]
    async fn an_idle_connection_holds_little() {
        let yaml = "listeners:\n  - { name: web, listen: \"127.0.0.1:0\", protocol: http, routes: [ { pool: p } ] }\npools:\n  - { name: p, nodes: [ { name: a, addr: \"127.0.0.1:1\" } ] }\n";
        let metrics = Metrics::new();
        let snapshot = Snapshot::build(
            config::parse(yaml).expect("config"),
            None,
            &metrics,
            &Default::default(),
        );
        let plane = Arc::new(DataPlane {
            snapshot: Arc::new(arc_swap::ArcSwap::from_pointee(snapshot)),
            shutdown: Shutdown::new(),
            access_log: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let peer = stream.local_addr().unwrap();
        let stats = Arc::new(ListenerStats::new(
            "web",
            crate::metrics::ListenerMetrics::new(&metrics, "web"),
        ));
        let activity = Arc::new(crate::proxy::activity::Activity::new());
        let io = Watched::new(stream, Arc::clone(&activity), Arc::clone(&stats));
        let secs = Duration::from_secs;
        let timeouts = config::Timeouts {
            connect: secs(3),
            idle: secs(60),
            header_read: secs(10),
            response: secs(60),
            send: secs(60),
        };
        let ctx = Arc::new(ConnCtx::new(
            plane, stats, peer, activity, "http", timeouts, None,
        ));
        // The per-request state (boxed while a request is in flight): rare paths (HTTP/2
        // backends, tunnels) are boxed inside it, so it stays what an HTTP/1.1 exchange needs.
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let io2 = Watched::new(
            stream,
            Arc::new(crate::proxy::activity::Activity::new()),
            Arc::clone(&ctx.listener),
        );
        let busy = size_of_future(&exchange::busy(Arc::clone(&ctx), io2, false, Buf::take()));
        println!("busy future: {busy} bytes");
        assert!(busy <= BUSY_MAX, "the per-request future is {busy} bytes");
        let fut = serve(ctx, io, Speaks::Sniff);
        let size = size_of_future(&fut);
        // tokio's task cell (a 32-byte header, 24 bytes and the future, a 48-byte trailer)
        // is 128-byte aligned: a future of at most 152 bytes keeps it at 256.
        assert!(size <= 152, "the connection future is {size} bytes");
        let ctx = std::mem::size_of::<ConnCtx>();
        // 112 before the reclaim registry's index and the per-client address (the abusive-client
        // defences); 128 before the TLS session's version and SNI (the access log's `tls`).
        assert!(ctx <= 136, "the connection context is {ctx} bytes");
    }
}
