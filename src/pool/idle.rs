//! A node's idle keep-alive HTTP/1.1 connections: plain sockets at a message boundary, in a
//! lock-free bounded stack. A request takes one (or connects anew) and puts it back when its
//! response ended cleanly. Nothing runs for an idle connection: whether the backend closed
//! it is read off the socket's readiness when it is taken, and by a sweep every few seconds
//! (a connection deep in the stack may wait long for a take).
//!
//! Each connection carries its watch on the node's drain deadline, made once when it
//! connects: at the deadline (plus the connection's share of the close spread) whatever it
//! carries is cut, a request waiting for its answer included.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crossbeam_utils::atomic::AtomicCell;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::upstream_io::UpstreamIo;
use super::Lifecycle;
use crate::gated::Gated;
use crate::time::coarse_ms;

/// A connection to a node, and its drain-deadline watch.
pub struct Upstream {
    pub stream: UpstreamIo,
    pub close: CloseWatch,
}

impl Upstream {
    pub fn new(stream: UpstreamIo, lifecycle: &Lifecycle) -> Self {
        Upstream {
            stream,
            close: CloseWatch::new(lifecycle),
        }
    }
}

/// Ready at the node's drain deadline plus this connection's share of the close spread.
pub struct CloseWatch {
    token: Gated<Pin<Box<WaitForCancellationFutureOwned>>>,
    offset: Duration,
    at: Option<Pin<Box<Sleep>>>,
}

impl CloseWatch {
    pub fn new(life: &Lifecycle) -> Self {
        CloseWatch {
            token: Gated::new(Box::pin(life.close_token().cancelled_owned())),
            offset: life.spread_offset(life.next_id()),
            at: None,
        }
    }

    /// Whether the deadline came (the connection must not be reused).
    fn fired(&self) -> bool {
        self.at.is_some()
    }
}

impl Future for CloseWatch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.at.is_none() {
            if Pin::new(&mut self.token).poll(cx).is_pending() {
                return Poll::Pending;
            }
            let offset = self.offset;
            self.at = Some(Box::pin(tokio::time::sleep(offset)));
        }
        match &mut self.at {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Idle connections kept per node; more concurrent connections are closed when they finish.
/// Below the concurrency a node sees, every request beyond it pays a new connection (and
/// leaves a TIME_WAIT socket): at 1,000 keep-alive clients 256 made three requests in four
/// connect anew. The slots are allocated up front (8 KiB a node).
const IDLE_PER_NODE: usize = 1024;
/// With many worker threads, each one's stack still holds this many.
const MIN_PER_STACK: usize = 128;
/// An idle connection older than this is not reused: backends commonly close idle
/// connections after 60–75 s, and reusing one just as it closes fails the request.
const IDLE_MAX_AGE: Duration = Duration::from_secs(30);

struct Idle {
    up: Upstream,
    /// [`coarse_ms`] when it went idle.
    since_ms: u64,
}

/// A node's idle connections (cloning shares them): a stack per worker thread (see
/// [`crate::workers`]), so a request takes the connection its own thread put back last,
/// whose memory is still in that core's caches and whose socket that thread's runtime
/// polls (NGINX's keepalive cache is per worker and last-in, first-out too). Only when its
/// own stack is empty does a request take another thread's connection rather than connect,
/// and moves it to its own runtime.
/// Lock-free: each slot is one atomic pointer, and `top` is only a hint of where the stack
/// ends, so that racing puts and takes never lose a connection (a put carries whatever it
/// displaces one slot up).
#[derive(Clone)]
pub struct IdleConns(Arc<[Stack]>);

struct Stack {
    slots: Box<[AtomicCell<Option<Box<Idle>>>]>,
    /// The first free slot, roughly.
    top: AtomicUsize,
    len: AtomicUsize,
}

impl Default for IdleConns {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleConns {
    pub fn new() -> Self {
        let workers = crate::workers::count();
        let per = (IDLE_PER_NODE / workers).max(MIN_PER_STACK);
        IdleConns(
            (0..workers)
                .map(|_| Stack {
                    slots: (0..per).map(|_| AtomicCell::new(None)).collect(),
                    top: AtomicUsize::new(0),
                    len: AtomicUsize::new(0),
                })
                .collect(),
        )
    }

    /// The calling worker thread's stack.
    fn mine(&self) -> &Stack {
        &self.0[crate::workers::index() % self.0.len()]
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|s| s.len.load(Relaxed)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every idle connection (node went down or is being drained).
    pub fn clear(&self) {
        for stack in self.0.iter() {
            for slot in stack.slots.iter() {
                if slot.swap(None).is_some() {
                    stack.len.fetch_sub(1, Relaxed);
                }
            }
            stack.top.store(0, Relaxed);
        }
    }

    /// Returns a connection whose last response ended cleanly, with nothing unread.
    pub fn put(&self, up: Upstream) {
        if up.close.fired() {
            return;
        }
        let stack = self.mine();
        // Counted before it can be taken, so the count never goes below zero.
        stack.len.fetch_add(1, Relaxed);
        let idle = Box::new(Idle {
            up,
            since_ms: coarse_ms(),
        });
        stack.place(stack.top.load(Relaxed), idle);
    }

    /// Closes the idle connections the backend closed (or wrote to) and those too old to be
    /// reused: at the bottom of a stack, a connection may wait long for a take. Run every
    /// few seconds by the control plane.
    pub fn sweep(&self) {
        self.0.iter().for_each(Stack::sweep);
    }

    /// Takes an idle connection that is still open, if there is one: the calling thread's
    /// own first. One from another thread's stack is moved to this thread's reactor.
    pub fn take(&self) -> Option<Upstream> {
        let n = self.0.len();
        let own = crate::workers::index() % n;
        if let Some(up) = self.0[own].take() {
            return Some(up);
        }
        (1..n).find_map(|k| {
            let mut up = self.0[(own + k) % n].take()?;
            up.stream.rebind().ok()?;
            Some(up)
        })
    }
}

impl Stack {
    /// Puts `idle` in the first free slot from `from` on, carrying up what it displaces (a
    /// racing put's). Full: the connection displaced last is closed.
    fn place(&self, from: usize, idle: Box<Idle>) {
        let mut carry = Some(idle);
        for i in from..self.slots.len() {
            carry = self.slots[i].swap(carry);
            if carry.is_none() {
                self.top.store(i + 1, Relaxed);
                return;
            }
        }
        self.len.fetch_sub(1, Relaxed);
    }

    fn sweep(&self) {
        let now = coarse_ms();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(idle) = slot.swap(None) else {
                continue;
            };
            if fresh(now, idle.since_ms) && idle.up.stream.quiet() {
                // Back in its slot, unless a put took it meanwhile: then above it.
                if let Some(other) = slot.swap(Some(idle)) {
                    self.place(i + 1, other);
                }
            } else {
                self.len.fetch_sub(1, Relaxed);
            }
        }
    }

    fn take(&self) -> Option<Upstream> {
        let mut i = self.top.load(Relaxed).min(self.slots.len());
        let mut now = None;
        while i > 0 {
            i -= 1;
            let Some(idle) = self.slots[i].swap(None) else {
                continue;
            };
            self.top.store(i, Relaxed);
            self.len.fetch_sub(1, Relaxed);
            let now = *now.get_or_insert_with(coarse_ms);
            let Idle { up, since_ms } = *idle;
            if fresh(now, since_ms) && up.stream.quiet() {
                return Some(up);
            }
        }
        self.top.store(0, Relaxed);
        None
    }
}

/// Whether a connection idle since `since_ms` may still be reused at `now`.
fn fresh(now: u64, since_ms: u64) -> bool {
    now.saturating_sub(since_ms) <= IDLE_MAX_AGE.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair(
        listener: &tokio::net::TcpListener,
    ) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let s = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (s, listener.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_or_wrote_to_is_not_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = IdleConns::new();
        let (closed, peer) = pair(&listener).await;
        drop(peer);
        let (talked_to, mut peer2) = pair(&listener).await;
        peer2.write_all(b"HTTP/1.1 408\r\n\r\n").await.unwrap();
        let (fine, _peer3) = pair(&listener).await;
        for s in [&closed, &talked_to] {
            tokio::time::timeout(Duration::from_secs(5), s.readable())
                .await
                .unwrap()
                .unwrap();
        }
        let life = Lifecycle::new();
        for s in [closed, talked_to, fine] {
            idle.put(Upstream::new(UpstreamIo::Plain(s), &life));
        }
        assert!(idle.take().is_some(), "the quiet connection");
        assert!(idle.take().is_none());
        assert!(idle.is_empty());
    }

    #[tokio::test]
    async fn the_connection_that_went_idle_last_is_taken_first() {
        assert!(
            AtomicCell::<Option<Box<Idle>>>::is_lock_free(),
            "a slot is one atomic pointer"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = IdleConns::new();
        let life = Lifecycle::new();
        let mut ports = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (s, peer) = pair(&listener).await;
            ports.push(s.local_addr().unwrap().port());
            peers.push(peer);
            idle.put(Upstream::new(UpstreamIo::Plain(s), &life));
        }
        assert_eq!(idle.len(), 3);
        let port = |up: Upstream| match up.stream {
            UpstreamIo::Plain(s) => s.local_addr().unwrap().port(),
            UpstreamIo::Tls(_) => unreachable!("plain"),
        };
        assert_eq!(port(idle.take().unwrap()), ports[2]);
        assert_eq!(port(idle.take().unwrap()), ports[1]);
        idle.clear();
        assert!(idle.is_empty() && idle.take().is_none(), "cleared");
    }

    #[tokio::test]
    async fn a_sweep_closes_what_the_backend_closed_and_keeps_the_rest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = IdleConns::new();
        let life = Lifecycle::new();
        let (fine, _peer) = pair(&listener).await;
        let (closed, peer) = pair(&listener).await;
        idle.put(Upstream::new(UpstreamIo::Plain(fine), &life));
        idle.put(Upstream::new(UpstreamIo::Plain(closed), &life));
        drop(peer);
        // The closed one is at the top; once its FIN is in, the sweep closes it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while idle.len() == 2 {
            assert!(tokio::time::Instant::now() < deadline, "swept within 5 s");
            // The reactor sees the FIN while this task waits.
            tokio::time::sleep(Duration::from_millis(5)).await;
            idle.sweep();
        }
        assert_eq!(idle.len(), 1);
        assert!(idle.take().is_some(), "the open one stays");
    }
}
