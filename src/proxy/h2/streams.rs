//! Runs a client connection's HTTP/2 streams inside the connection's own task.
//!
//! hyper hands each accepted stream to an executor. With a runtime executor every stream is
//! a task of its own: a task allocation and registration, a schedule per wake-up, and on a
//! multi-threaded runtime streams of one connection that run on other threads than the
//! connection, so every response crosses threads to reach the socket. Here the executor
//! only queues the stream; [`Serving`] polls the connection and its streams together, so a
//! request is read, forwarded and answered within one task, as NGINX and HAProxy do on one
//! connection. The queue is lock-free: hyper only pushes from within the connection's poll,
//! which `Serving` itself runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;
use futures_util::stream::{FuturesUnordered, StreamExt};

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor given to hyper: queues each stream for [`Serving`] to run.
#[derive(Clone, Default)]
pub struct Spawner(Arc<SegQueue<StreamFuture>>);

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.push(Box::pin(fut));
    }
}

/// A connection future and the streams it started, polled as one: ready when the
/// connection has ended and every stream it started has too (a stream still waiting on
/// its node when the client leaves finishes, as it would as a task of its own).
///
/// Each side is polled only when it was woken: the connection through its own waker (a
/// flag, then the task's), the streams through `FuturesUnordered`'s. Polling hyper's
/// connection costs about as much as a stream's whole exchange, so a wake-up for a
/// node's answer must not poll it for nothing.
pub struct Serving<C: Future> {
    conn: Pin<Box<C>>,
    conn_woken: Arc<ConnWaker>,
    conn_waker: Waker,
    ended: Option<C::Output>,
    queued: Spawner,
    running: FuturesUnordered<StreamFuture>,
}

/// The connection's waker: marks it for polling, then wakes the task.
struct ConnWaker {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Release);
        self.task.wake();
    }
}

/// Rounds of connection-then-streams in one poll before yielding to other tasks.
const ROUNDS: usize = 4;

impl<C: Future> Serving<C> {
    pub fn new(conn: C, queued: Spawner) -> Self {
        let conn_woken = Arc::new(ConnWaker {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Serving {
            conn: Box::pin(conn),
            conn_waker: Waker::from(Arc::clone(&conn_woken)),
            conn_woken,
            ended: None,
            queued,
            running: FuturesUnordered::new(),
        }
    }

    /// The connection, for as long as it has not ended (it is polled next, since the
    /// caller may change its state: a graceful shutdown has a GOAWAY to send).
    pub fn conn(&mut self) -> Option<Pin<&mut C>> {
        if self.ended.is_none() {
            self.conn_woken.woken.store(true, Release);
            Some(self.conn.as_mut())
        } else {
            None
        }
    }

    /// Moves queued streams to the running set and polls those that were woken.
    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        loop {
            while let Some(stream) = self.queued.0.pop() {
                self.running.push(stream);
            }
            match self.running.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => {}
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
    }
}

impl<C: Future> Future for Serving<C>
where
    C::Output: Unpin,
{
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        this.conn_woken.task.register(cx.waker());
        for _ in 0..ROUNDS {
            if this.ended.is_none() && this.conn_woken.woken.swap(false, Acquire) {
                let mut conn_cx = Context::from_waker(&this.conn_waker);
                if let Poll::Ready(out) = this.conn.as_mut().poll(&mut conn_cx) {
                    this.ended = Some(out);
                }
            }
            this.poll_streams(cx);
            // Streams that answered have woken the connection to write their frames: do
            // it now rather than on another wake-up of the task.
            if this.ended.is_some() || !this.conn_woken.woken.load(Acquire) {
                break;
            }
        }
        if this.running.is_empty() && this.queued.0.is_empty() {
            if let Some(out) = this.ended.take() {
                return Poll::Ready(out);
            }
        }
        if this.ended.is_none() && this.conn_woken.woken.load(Acquire) {
            // Out of rounds with the connection still to poll: come back after others.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
