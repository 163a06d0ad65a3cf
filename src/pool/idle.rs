//! A node's idle keep-alive HTTP/1.1 connections: plain sockets at a message boundary, in a
//! lock-free bounded queue. A request takes one (or connects anew) and puts it back when its
//! response ended cleanly. Nothing runs for an idle connection: whether the backend closed
//! it is read off the socket's readiness when it is taken.
//!
//! Each connection carries its watch on the node's drain deadline, made once when it
//! connects: at the deadline (plus the connection's share of the close spread) whatever it
//! carries is cut, a request waiting for its answer included.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
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
/// connect anew. The queue is allocated up front (about 32 KiB a node).
const IDLE_PER_NODE: usize = 1024;
/// An idle connection older than this is not reused: backends commonly close idle
/// connections after 60–75 s, and reusing one just as it closes fails the request.
const IDLE_MAX_AGE: Duration = Duration::from_secs(30);

struct Idle {
    up: Upstream,
    /// [`coarse_ms`] when it went idle.
    since_ms: u64,
}

/// A node's idle connections (cloning shares them).
#[derive(Clone)]
pub struct IdleConns(Arc<ArrayQueue<Idle>>);

impl Default for IdleConns {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleConns {
    pub fn new() -> Self {
        IdleConns(Arc::new(ArrayQueue::new(IDLE_PER_NODE)))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Closes every idle connection (node went down or is being drained).
    pub fn clear(&self) {
        while self.0.pop().is_some() {}
    }

    /// Returns a connection whose last response ended cleanly, with nothing unread.
    pub fn put(&self, up: Upstream) {
        if up.close.fired() {
            return;
        }
        // A full queue drops (closes) the connection.
        let _ = self.0.push(Idle {
            up,
            since_ms: coarse_ms(),
        });
    }

    /// Takes an idle connection that is still open, if there is one.
    pub fn take(&self) -> Option<Upstream> {
        let now = coarse_ms();
        while let Some(Idle { up, since_ms }) = self.0.pop() {
            if now.saturating_sub(since_ms) <= IDLE_MAX_AGE.as_millis() as u64 && up.stream.quiet()
            {
                return Some(up);
            }
        }
        None
    }
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
}
