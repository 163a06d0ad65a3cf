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
use std::sync::Arc;
use std::task::{Context, Poll};

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
pub struct Serving<C: Future> {
    conn: Pin<Box<C>>,
    ended: Option<C::Output>,
    queued: Spawner,
    running: FuturesUnordered<StreamFuture>,
}

impl<C: Future> Serving<C> {
    pub fn new(conn: C, queued: Spawner) -> Self {
        Serving {
            conn: Box::pin(conn),
            ended: None,
            queued,
            running: FuturesUnordered::new(),
        }
    }

    /// The connection, for as long as it has not ended.
    pub fn conn(&mut self) -> Option<Pin<&mut C>> {
        if self.ended.is_none() {
            Some(self.conn.as_mut())
        } else {
            None
        }
    }

    /// Moves queued streams to the running set and polls those that were woken; true when
    /// a stream finished (its last frames now wait in the connection's buffers).
    fn poll_streams(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progressed = false;
        loop {
            while let Some(stream) = self.queued.0.pop() {
                self.running.push(stream);
            }
            match self.running.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => progressed = true,
                Poll::Ready(None) | Poll::Pending => return progressed,
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
        // Two rounds at most: streams that finished in the first left frames for the
        // connection to write now, rather than on the wake-up they scheduled.
        for _ in 0..2 {
            if this.ended.is_none() {
                if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                    this.ended = Some(out);
                }
            }
            if !this.poll_streams(cx) {
                break;
            }
        }
        if this.running.is_empty() && this.queued.0.is_empty() {
            if let Some(out) = this.ended.take() {
                return Poll::Ready(out);
            }
        }
        Poll::Pending
    }
}
