//! What a stream's handler shares with its connection: the request body the connection
//! fills from DATA frames, the flags that end it, and the wakers both sides need. Lock-free
//! (atomics and a queue), since a body may be read from another task (an HTTP/2 node's
//! connection reads it there).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::AcqRel, Ordering::Acquire};
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

/// The connection's side: its task, and what handlers and bodies tell it.
#[derive(Default)]
pub struct ConnShared {
    pub task: AtomicWaker,
    /// Streams whose response body woke (it has a frame, or ended).
    pub ready: SegQueue<u32>,
    /// Request body octets read by handlers, per stream: window to give back.
    pub consumed: SegQueue<(u32, u32)>,
}

impl ConnShared {
    fn wake(&self) {
        self.task.wake();
    }
}

/// The client sent END_STREAM: the body ends once the queue is empty.
const ENDED: u8 = 1;
/// The stream is gone (the client reset it, it was malformed, or the connection ended):
/// a body still being read fails.
const RESET: u8 = 2;
/// The handler is to stop.
const CANCELLED: u8 = 4;
/// The handler has waited longer than the response timeout (see [`Waiter`]).
const LATE: u8 = 8;

pub enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// One stream's shared part. As a waker, it marks the stream's response body as ready.
pub struct Shared {
    pub id: u32,
    conn: Arc<ConnShared>,
    /// The request body's chunks: only for a request with one (boxed, since the queue is
    /// cache-line aligned and a stream's shared part is allocated for every request).
    queue: Option<Box<SegQueue<Chunk>>>,
    state: AtomicU8,
    reader: AtomicWaker,
    handler: AtomicWaker,
    /// When the handler began waiting for a node (coarse ms + 1; 0: not waiting).
    waiting_since: AtomicU64,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.conn.ready.push(self.id);
        self.conn.wake();
    }
}

impl Shared {
    pub fn new(id: u32, conn: &Arc<ConnShared>, body: bool) -> Arc<Shared> {
        Arc::new(Shared {
            id,
            conn: Arc::clone(conn),
            queue: body.then(Box::default),
            state: AtomicU8::new(0),
            reader: AtomicWaker::new(),
            handler: AtomicWaker::new(),
            waiting_since: AtomicU64::new(0),
        })
    }

    pub fn push(&self, chunk: Chunk) {
        if let Some(q) = &self.queue {
            q.push(chunk);
            self.reader.wake();
        }
    }

    fn set(&self, flag: u8) {
        self.state.fetch_or(flag, AcqRel);
    }

    fn pop(&self) -> Option<Chunk> {
        self.queue.as_ref().and_then(|q| q.pop())
    }

    fn has(&self, flag: u8) -> bool {
        self.state.load(Acquire) & flag != 0
    }

    /// The client has sent the whole body.
    pub fn end(&self) {
        self.set(ENDED);
        self.reader.wake();
    }

    /// The body fails from here on.
    pub fn reset(&self) {
        self.set(RESET);
        self.reader.wake();
    }

    /// Stops the handler (the client reset the stream) and fails its body.
    pub fn cancel(&self) {
        self.set(CANCELLED | RESET);
        self.reader.wake();
        self.handler.wake();
    }

    /// The connection's watchdog: marks the handler late if it has waited `timeout_ms` for
    /// a node, and wakes it.
    pub fn expire(&self, now_ms: u64, timeout_ms: u64) {
        let since = self.waiting_since.load(Relaxed);
        if since != 0 && now_ms + 1 >= since.saturating_add(timeout_ms) && !self.has(LATE) {
            self.set(LATE);
            self.handler.wake();
        }
    }

    /// Registers the handler's waker, for a cancel or a late wait. Once is enough: a
    /// handler runs as one task of the connection's set, whose waker does not change.
    pub fn register_handler(&self, cx: &Context<'_>) {
        self.handler.register(cx.waker());
    }

    /// Whether the handler is to stop.
    pub fn cancelled(&self) -> bool {
        self.has(CANCELLED)
    }
}

/// The body of a request from an HTTP/2 client.
pub struct RequestBody {
    shared: Arc<Shared>,
    /// More may come (the request did not end with its HEADERS, nor the body since).
    open: bool,
    /// Octets still to come when the request said its length.
    remaining: Option<u64>,
}

/// The stream was reset, or the body broke its content-length.
#[derive(Debug, thiserror::Error)]
#[error("the client's HTTP/2 stream ended before its request body did")]
pub struct BodyCut;

impl RequestBody {
    pub fn new(shared: Arc<Shared>, open: bool, length: Option<u64>) -> Self {
        RequestBody {
            shared,
            open,
            remaining: if open { length } else { Some(0) },
        }
    }

    /// The handle the handler times its waits with.
    pub fn waiter(&self) -> Waiter {
        Waiter(Arc::clone(&self.shared))
    }

    fn chunk(&mut self, chunk: Chunk) -> Frame<Bytes> {
        match chunk {
            Chunk::Data(data) => {
                let shared = &self.shared;
                // Window goes back as the handler reads (frames hold at most 16 MiB).
                let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                shared.conn.consumed.push((shared.id, n));
                shared.conn.wake();
                if let Some(r) = &mut self.remaining {
                    *r = r.saturating_sub(data.len() as u64);
                }
                Frame::data(data)
            }
            Chunk::Trailers(t) => Frame::trailers(t),
        }
    }
}

/// A stream's response timeout, kept by the connection's watchdog rather than a timer per
/// request (a timer takes the runtime's timer lock to register and to drop; the watchdog
/// looks at least every quarter of the timeout, so a wait is cut within 1.25 times it).
pub struct Waiter(Arc<Shared>);

impl Waiter {
    /// Runs `fut` as a wait for a node (or for the client's body): `None` if it takes
    /// longer than the response timeout.
    pub async fn wait<F: Future>(&self, fut: F) -> Option<F::Output> {
        let shared = &self.0;
        shared.state.fetch_and(!LATE, AcqRel);
        let since = crate::time::coarse_ms() + 1;
        shared.waiting_since.store(since, Relaxed);
        let mut fut = std::pin::pin!(fut);
        let mut registered = false;
        let out = std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if !registered {
                shared.register_handler(cx);
                registered = true;
            }
            if shared.has(LATE) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        shared.waiting_since.store(0, Relaxed);
        out
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyCut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        let this = self.get_mut();
        if !this.open {
            return Poll::Ready(None);
        }
        if let Some(chunk) = this.shared.pop() {
            return Poll::Ready(Some(Ok(this.chunk(chunk))));
        }
        this.shared.reader.register(cx.waker());
        // Again, for a chunk or flag set between the first look and the registration.
        if let Some(chunk) = this.shared.pop() {
            return Poll::Ready(Some(Ok(this.chunk(chunk))));
        }
        // Ended before reset: a stream removed once both sides are done is reset too.
        let state = this.shared.state.load(Acquire);
        if state & ENDED != 0 {
            this.open = false;
            return Poll::Ready(None);
        }
        if state & RESET != 0 {
            return Poll::Ready(Some(Err(BodyCut)));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let s = &self.shared;
        !self.open || (s.has(ENDED) && s.queue.as_ref().is_none_or(|q| q.is_empty()))
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
