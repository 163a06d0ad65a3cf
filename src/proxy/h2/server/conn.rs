//! One client connection: the state every frame reads and writes, the poll loop that reads
//! frames, runs the streams' handlers, pumps their responses and writes, and the graceful
//! close (GOAWAY). Frames in are handled in [`super::recv`], frames out made in
//! [`super::send`], each request run by [`super::handler`].

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, Reason};
use super::handler::{Handler, Service};
use super::hpack;
use super::stream::{ConnShared, RequestBody, Shared};

/// Streams a client may have open at once (advertised; more are refused, REFUSED_STREAM).
pub const MAX_STREAMS: usize = 200;
/// The receive window of each stream, advertised in SETTINGS.
pub const STREAM_WINDOW: u32 = 512 * 1024;
/// The connection's receive window: request body octets held for handlers at most.
pub const CONN_WINDOW: u32 = 1024 * 1024;
/// Unwritten octets at which handoff stops reading frames and pumping bodies until the
/// client reads (a client that sends but never reads cannot make it buffer more).
pub const WRITE_HIGH: usize = 256 * 1024;
/// A header block's encoded size at most, with its CONTINUATION frames (a flood of them is
/// refused before it costs memory).
pub const MAX_BLOCK: usize = 2 * super::request::MAX_HEAD;
/// Streams handoff closed while the client could still send on them, remembered so that
/// frames already on their way are ignored rather than taken for a protocol error.
pub const RECENT_CLOSED: usize = 64;
/// Client resets of streams still being served, past which a client is told to calm down
/// when they also outnumber streams served (the "rapid reset" attack, CVE-2023-44487).
pub const MAX_RESETS: u32 = 200;
/// The opaque data of the PING that follows the first GOAWAY of a graceful close.
pub const DRAIN_PING: [u8; 8] = *b"handoff.";
/// Handler and body rounds in one poll before yielding to other tasks.
const ROUNDS: usize = 8;

/// Why a connection ended other than by a close both sides agreed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the client did not open with the HTTP/2 connection preface")]
    Preface,
    #[error("the client broke HTTP/2 ({reason:?}): {why}")]
    Protocol { reason: Reason, why: &'static str },
}

pub fn conn_error(reason: Reason, why: &'static str) -> Error {
    Error::Protocol { reason, why }
}

/// Stream IDs hash to themselves: they are distinct odd numbers.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

/// A stream's response, as far as it has gone.
pub enum Resp<B> {
    /// The handler is running.
    Waiting,
    /// HEADERS sent; the body goes out as the windows allow.
    Body {
        body: B,
        /// Data polled from the body but not yet sent (no window for it).
        pending: Option<Bytes>,
        /// The body said it is over: the last of `pending` carries END_STREAM.
        last: bool,
    },
    /// END_STREAM sent.
    Done,
}

pub struct Stream<B> {
    pub shared: Arc<Shared>,
    pub waker: Option<Waker>,
    /// What the client lets handoff send on this stream.
    pub send_window: i64,
    /// What the client may still send (it never goes below zero for a client that obeys).
    pub recv_window: i64,
    /// Octets read by the handler, not yet given back by WINDOW_UPDATE.
    pub recv_unacked: u32,
    /// Octets received, not yet read by the handler (given back to the connection's window
    /// when the stream goes).
    pub unconsumed: u64,
    /// The client may still send DATA (no END_STREAM yet).
    pub recv_open: bool,
    pub content_length: Option<u64>,
    pub received: u64,
    pub resp: Resp<B>,
}

/// A header block still arriving in CONTINUATION frames.
pub struct Block {
    pub id: u32,
    pub flags: u8,
    pub buf: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Preface,
    /// The preface was read: the client's first frame must be SETTINGS.
    Settings,
    Open,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Goaway {
    None,
    /// GOAWAY with the largest ID, and a PING: streams already on their way still count.
    Draining,
    /// The real last stream ID: later streams are ignored.
    Final(u32),
}

/// An HTTP/2 server connection (RFC 9113), as a future that ends when the connection does.
pub struct Connection<I, S: Service> {
    pub io: I,
    pub service: S,
    pub shared: Arc<ConnShared>,
    pub rbuf: BytesMut,
    pub wbuf: Vec<u8>,
    pub written: usize,
    pub dec: hpack::Decoder,
    pub phase: Phase,
    pub streams: HashMap<u32, Stream<S::Body>, BuildHasherDefault<IdHasher>>,
    pub handlers: FuturesUnordered<Handler<S::Future>>,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    pub peer_window: i64,
    pub peer_frame: usize,
    /// What the client lets handoff send on the connection.
    pub send_window: i64,
    pub recv_window: i64,
    pub recv_unacked: u32,
    pub last_id: u32,
    pub block: Option<Block>,
    pub goaway: Goaway,
    /// The client sent GOAWAY, or closed its side: no new streams.
    pub peer_done: bool,
    pub read_closed: bool,
    pub resets: u32,
    pub served: u32,
    /// Streams with data waiting for the connection's window, or for the writes to drain.
    pub blocked: Vec<u32>,
    /// A header block being encoded (kept for its capacity).
    pub scratch: Vec<u8>,
    /// See [`RECENT_CLOSED`].
    pub recent_closed: std::collections::VecDeque<u32>,
}

impl<I, S: Service> Connection<I, S> {
    pub fn new(io: I, service: S) -> Self {
        let mut wbuf = Vec::with_capacity(4096);
        frame::put_settings(
            &mut wbuf,
            &[
                (frame::SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS as u32),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (
                    frame::SETTINGS_MAX_HEADER_LIST_SIZE,
                    super::request::MAX_HEAD as u32,
                ),
            ],
        );
        frame::put_window_update(&mut wbuf, 0, CONN_WINDOW - 65_535);
        Connection {
            io,
            service,
            shared: Arc::default(),
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf,
            written: 0,
            dec: hpack::Decoder::default(),
            phase: Phase::Preface,
            streams: HashMap::default(),
            handlers: FuturesUnordered::new(),
            peer_window: 65_535,
            peer_frame: frame::DEFAULT_FRAME,
            send_window: 65_535,
            recv_window: i64::from(CONN_WINDOW),
            recv_unacked: 0,
            last_id: 0,
            block: None,
            goaway: Goaway::None,
            peer_done: false,
            read_closed: false,
            resets: 0,
            served: 0,
            blocked: Vec::new(),
            scratch: Vec::new(),
            recent_closed: std::collections::VecDeque::new(),
        }
    }

    /// The watchdog's look: handlers that have waited `timeout` for a node are told so.
    pub fn expire(&self, timeout: std::time::Duration) {
        let now = crate::time::coarse_ms();
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        for s in self.streams.values() {
            s.shared.expire(now, ms);
        }
    }

    /// Closes gracefully: GOAWAY, streams in flight finish, new ones are refused.
    pub fn graceful_shutdown(&mut self) {
        match self.goaway {
            // Even before the client's SETTINGS: its first requests may be on the wire.
            Goaway::None => {
                frame::put_goaway(&mut self.wbuf, (1 << 31) - 1, Reason::NoError);
                frame::put_ping(&mut self.wbuf, 0, DRAIN_PING);
                self.goaway = Goaway::Draining;
            }
            Goaway::Draining => self.go_final(),
            Goaway::Final(_) => {}
        }
        self.shared.task.wake();
    }

    pub fn go_final(&mut self) {
        if !matches!(self.goaway, Goaway::Final(_)) {
            frame::put_goaway(&mut self.wbuf, self.last_id, Reason::NoError);
            self.goaway = Goaway::Final(self.last_id);
        }
    }
}

impl<I, S> Connection<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service,
{
    /// Reads what the socket has and handles every whole frame. Whether it read anything.
    fn read(&mut self, cx: &mut Context<'_>) -> Result<bool, Error> {
        let mut any = false;
        loop {
            self.frames()?;
            if self.read_closed || self.wbuf.len() >= WRITE_HIGH {
                return Ok(any);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(16 * 1024);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) => {
                    self.read_closed = true;
                    self.peer_done = true;
                    // No more DATA can come: bodies still open are cut, not waited for.
                    for s in self.streams.values_mut() {
                        if s.recv_open {
                            s.recv_open = false;
                            s.shared.reset();
                        }
                    }
                    if self.block.is_some() || self.phase != Phase::Open {
                        return Err(conn_error(Reason::Protocol, "the client left mid-frame"));
                    }
                    return Ok(true);
                }
                Poll::Ready(Ok(_)) => any = true,
                Poll::Ready(Err(e)) => return Err(e.into()),
                Poll::Pending => return Ok(any),
            }
        }
    }

    /// Handles every whole frame in the read buffer.
    fn frames(&mut self) -> Result<(), Error> {
        if self.phase == Phase::Preface {
            let n = self.rbuf.len().min(frame::PREFACE.len());
            if self.rbuf[..n] != frame::PREFACE[..n] {
                return Err(Error::Preface);
            }
            if n < frame::PREFACE.len() {
                return Ok(());
            }
            let _ = self.rbuf.split_to(n);
            self.phase = Phase::Settings;
        }
        while self.rbuf.len() >= frame::HEAD_LEN && self.wbuf.len() < WRITE_HIGH {
            let head = frame::Head::parse(
                self.rbuf[..frame::HEAD_LEN]
                    .try_into()
                    .map_err(|_| conn_error(Reason::Internal, "frame head"))?,
            );
            if head.len > frame::DEFAULT_FRAME {
                return Err(conn_error(
                    Reason::FrameSize,
                    "a frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if self.rbuf.len() < frame::HEAD_LEN + head.len {
                self.rbuf
                    .reserve(frame::HEAD_LEN + head.len - self.rbuf.len());
                return Ok(());
            }
            let mut whole = self.rbuf.split_to(frame::HEAD_LEN + head.len);
            let payload = whole.split_off(frame::HEAD_LEN).freeze();
            if self.phase == Phase::Settings && head.kind != frame::SETTINGS {
                return Err(conn_error(
                    Reason::Protocol,
                    "the first frame is not SETTINGS",
                ));
            }
            self.frame(head, payload)?;
        }
        Ok(())
    }

    /// Writes what is buffered. Whether all of it went.
    fn flush(&mut self, cx: &mut Context<'_>) -> Result<bool, io::Error> {
        while self.written < self.wbuf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.written..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(false),
            }
        }
        if self.written > 0 {
            self.written = 0;
            self.wbuf.clear();
            if self.wbuf.capacity() > 4 * WRITE_HIGH {
                self.wbuf.shrink_to(4096);
            }
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => Ok(true),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(false),
        }
    }

    /// One round: frames in, handlers, bodies, frames out. Whether anything moved.
    fn round(&mut self, cx: &mut Context<'_>) -> Result<bool, Error> {
        let mut moved = self.read(cx)?;
        while let Poll::Ready(Some((id, resp))) = self.handlers.poll_next_unpin(cx) {
            self.respond(id, resp);
            moved = true;
        }
        while let Some((id, n)) = self.shared.consumed.pop() {
            self.give_back(id, n);
        }
        while let Some(id) = self.shared.ready.pop() {
            self.pump(id);
        }
        if self.wbuf.len() < WRITE_HIGH && !self.blocked.is_empty() && self.send_window > 0 {
            for id in std::mem::take(&mut self.blocked) {
                self.pump(id);
            }
        }
        let before = self.wbuf.len();
        let all = self.flush(cx)?;
        // Room again after a backlog: read and pump on.
        Ok(moved || (all && before >= WRITE_HIGH))
    }

    /// The connection is over: no streams, nothing to write, and no more can come.
    fn over(&self) -> bool {
        let closing = self.peer_done || matches!(self.goaway, Goaway::Final(_));
        closing && self.streams.is_empty() && self.handlers.is_empty() && self.wbuf.is_empty()
    }

    /// GOAWAY for a connection error, written if the socket takes it now.
    fn fail(&mut self, e: Error, cx: &mut Context<'_>) -> Error {
        if let Error::Protocol { reason, .. } = &e {
            frame::put_goaway(&mut self.wbuf, self.last_id, *reason);
            let _ = self.flush(cx);
        }
        e
    }
}

impl<I, S> Future for Connection<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service + Unpin,
{
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.shared.task.register(cx.waker());
        for _ in 0..ROUNDS {
            match this.round(cx) {
                Err(e) => return Poll::Ready(Err(this.fail(e, cx))),
                Ok(moved) => {
                    if this.over() {
                        return Pin::new(&mut this.io).poll_shutdown(cx).map(|_| Ok(()));
                    }
                    if !moved {
                        return Poll::Pending;
                    }
                }
            }
        }
        // Still busy: let other connections run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<I, S: Service> Drop for Connection<I, S> {
    fn drop(&mut self) {
        // Bodies read elsewhere (an HTTP/2 node's connection) end rather than wait.
        for s in self.streams.values() {
            s.shared.reset();
        }
    }
}

impl<I, S: Service> Connection<I, S> {
    /// A new stream's state.
    pub fn stream(
        &self,
        shared: Arc<Shared>,
        recv_open: bool,
        len: Option<u64>,
    ) -> Stream<S::Body> {
        Stream {
            shared,
            waker: None,
            send_window: self.peer_window,
            recv_window: i64::from(STREAM_WINDOW),
            recv_unacked: 0,
            unconsumed: 0,
            recv_open,
            content_length: len,
            received: 0,
            resp: Resp::Waiting,
        }
    }

    /// A new stream's request, to its handler.
    pub fn start(&mut self, req: Request<()>, id: u32, end: bool, len: Option<u64>) {
        let shared = Shared::new(id, &self.shared, !end);
        let body = RequestBody::new(Arc::clone(&shared), !end, len);
        let fut = self.service.call(req.map(|()| body));
        self.handlers.push(Handler::new(Arc::clone(&shared), fut));
        let stream = self.stream(shared, !end, len);
        self.streams.insert(id, stream);
    }
}
