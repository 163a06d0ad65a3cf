//! Pooled keep-alive HTTP/1.1 connections to one node.
//!
//! Each node keeps its idle connections in a lock-free bounded queue. A request takes one
//! (or connects anew); the response body hands it back when it ends cleanly. Stale entries
//! (closed by the backend, or idle too long) are discarded on the way out.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crossbeam_queue::ArrayQueue;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use super::body::{once_frame, once_size};
use crate::pool::Node;
use crate::proxy::gated::Gated;

pub type Sender = SendRequest<UpBody>;

/// A request body sent upstream: the client's, streamed; or buffered (a small body of an
/// idempotent request, kept so the request can be sent again; `None`: no body).
pub enum UpBody {
    Client(Incoming),
    Buffered(Option<Bytes>),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Client(body) => Pin::new(body).poll_frame(cx),
            UpBody::Buffered(data) => once_frame(data),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Client(body) => body.is_end_stream(),
            UpBody::Buffered(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Client(body) => body.size_hint(),
            UpBody::Buffered(data) => once_size(data),
        }
    }
}

/// Idle connections kept per node; more concurrent connections are closed when they finish.
/// Below the concurrency a node sees, every request beyond it pays a new connection (and
/// leaves a TIME_WAIT socket): at 1,000 keep-alive clients 256 made three requests in four
/// connect anew. The queue is allocated up front (about 40 KiB a node).
const IDLE_PER_NODE: usize = 1024;
/// An idle connection older than this is not reused: backends commonly close idle
/// connections after 60–75 s, and reusing one just as it closes fails the request.
const IDLE_MAX_AGE: Duration = Duration::from_secs(30);
/// How long a pooled connection may take to become ready for its next request.
const READY_WAIT: Duration = Duration::from_millis(200);

struct Idle {
    sender: Sender,
    since: Instant,
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

    /// Returns a connection whose last response ended cleanly.
    pub fn put(&self, sender: Sender) {
        if !sender.is_closed() {
            // A full queue drops (closes) the connection.
            let _ = self.0.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Takes a live idle connection that is ready for a request, if there is one.
    pub async fn take(&self) -> Option<Sender> {
        while let Some(Idle { mut sender, since }) = self.0.pop() {
            if sender.is_closed() || since.elapsed() > IDLE_MAX_AGE {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            // Just returned: its connection task may not have caught up with the end of the
            // previous response yet.
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                return Some(sender);
            }
        }
        None
    }
}

/// Starts an HTTP/1.1 client connection to `node` over a connected stream. The connection
/// is closed (spread over the drain's close window) if the node reaches a drain deadline,
/// which ends any response still streaming from it.
pub async fn handshake(stream: TcpStream, node: &Node) -> hyper::Result<Sender> {
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    let lifecycle = &node.state.lifecycle;
    let offset = lifecycle.spread_offset(lifecycle.next_id());
    let mut deadline = Gated::new(Box::pin(lifecycle.close_token().cancelled_owned()));
    tokio::spawn(async move {
        let conn = conn.with_upgrades();
        tokio::pin!(conn);
        let mut close_at: Option<Instant> = None;
        loop {
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                    return;
                }
                _ = &mut deadline, if close_at.is_none() => close_at = Some(Instant::now() + offset),
                _ = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => return,
            }
        }
    });
    Ok(sender)
}
