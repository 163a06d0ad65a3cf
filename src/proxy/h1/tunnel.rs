//! Upgrade tunnels (WebSocket and other `Upgrade:` protocols): the request went to a node on
//! a fresh connection; on `101 Switching Protocols` the client connection and the backend
//! connection are spliced together, counted as a `tunnels` session of that node.
//!
//! At the node's drain deadline (after this tunnel's share of the close spread) or at
//! shutdown's force deadline, a WebSocket tunnel finishes the frame in flight in each
//! direction, sends a close frame 1001 "going away" to both peers and closes; other tunnels
//! are closed with FIN.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::pool::UpstreamIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};

use super::ClientIo;
use crate::access_log::Termination;
use crate::gated::Gated;
use crate::pool::{Node, SessionGuard, SessionKind};
use crate::proxy::codec::buf::{Buf, Out};
use crate::proxy::logged::Logged;
use crate::proxy::ws::{self, FrameTracker};
use crate::proxy::DataPlane;

/// After a tunnel is told to close, how long a frame in flight may take to finish before the
/// tunnel is closed without a close frame.
const FINISH_FRAME: Duration = Duration::from_secs(1);
const BUF: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WebSocket,
    Other,
}

/// A 101 answered: what the tunnel starts from.
pub struct Start {
    pub node: Arc<Node>,
    pub kind: Kind,
    pub backend: UpstreamIo,
    /// The 101 head for the client.
    pub head: Out,
    /// Bytes the backend sent after its 101.
    pub early: Buf,
    /// The upgrade request's session, ended once the tunnel's own is counted.
    pub session: SessionGuard,
    /// The upgrade request's access log line, written when the tunnel ends.
    pub log: Logged,
}

/// Runs a tunnel on the client connection's task until either side closes or it is closed
/// at a deadline. `pending`: bytes the client sent after its upgrade request. A tunnel that
/// starts after its node's drain deadline (an affinity continuation) is closed at once.
pub async fn run<I: ClientIo>(
    plane: &DataPlane,
    mut client: I,
    pending: Option<Buf>,
    start: Start,
) {
    let Start {
        node,
        kind,
        mut backend,
        mut head,
        early,
        session,
        mut log,
    } = start;
    // Counted before the request's own session ends, so a drain never sees the node empty
    // between the 101 and the tunnel.
    let _tunnel = SessionGuard::new(&node.state, SessionKind::Tunnel);
    drop(session);
    let (mut up, mut down) = (FrameTracker::default(), FrameTracker::default());
    down.feed(early.data());
    head.0.extend_from_slice(early.data());
    drop(early);
    if client.write_all(&head.0).await.is_err() || client.flush().await.is_err() {
        return;
    }
    drop(head);
    if let Some(pending) = pending.filter(|b| !b.is_empty()) {
        up.feed(pending.data());
        if backend.write_all(pending.data()).await.is_err() {
            log.end(Termination::UpstreamReset, None);
            return;
        }
    }
    let life = &node.state.lifecycle;
    let id = life.next_id();
    let stop = async {
        let close = life.session_close_token();
        tokio::select! {
            _ = plane.shutdown.force.cancelled() => false,
            _ = close.cancelled() => true,
        }
    };
    let mut stop = Gated::new(Box::pin(stop));
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(&mut backend);
    let mut closing_at: Option<Instant> = None;
    let at_deadline;
    {
        let to_backend = pump(&mut cr, &mut bw, &mut up);
        let to_client = pump(&mut br, &mut cw, &mut down);
        tokio::pin!(to_backend, to_client);
        let (mut up_done, mut down_done) = (false, false);
        at_deadline = loop {
            if up_done && down_done {
                break None;
            }
            tokio::select! {
                _ = &mut to_backend, if !up_done => up_done = true,
                _ = &mut to_client, if !down_done => down_done = true,
                deadline = &mut stop, if closing_at.is_none() => {
                    // Drain deadline closes are spread; shutdown closes at once.
                    let offset = if deadline { life.spread_offset(id) } else { Duration::ZERO };
                    closing_at = Some(Instant::now() + offset);
                    if offset.is_zero() {
                        break Some(deadline);
                    }
                }
                _ = sleep_until(closing_at.unwrap_or_else(Instant::now)), if closing_at.is_some() => {
                    break Some(true);
                }
            }
        };
    }
    let Some(deadline) = at_deadline else {
        log.end(Termination::Ok, None);
        return;
    };
    log.end(
        match deadline {
            true => Termination::DrainDeadline,
            false => Termination::Shutdown,
        },
        None,
    );
    if deadline {
        life.deadline_closes.fetch_add(1, Relaxed);
        node.state.metrics.deadline_close(SessionKind::Tunnel);
    }
    match kind {
        Kind::WebSocket => {
            // Finish the frame in flight each way, then say "going away" to both peers.
            let mask = (id as u32).wrapping_mul(0x9E37_79B9).to_be_bytes();
            let to_server = ws::close_to_server(mask);
            let finish = async {
                tokio::join!(
                    finish_and_close(&mut cr, &mut bw, &mut up, &to_server),
                    finish_and_close(&mut br, &mut cw, &mut down, &ws::CLOSE_TO_CLIENT),
                )
            };
            let _ = tokio::time::timeout(FINISH_FRAME, finish).await;
        }
        Kind::Other => {}
    }
    let _ = cw.shutdown().await;
    let _ = bw.shutdown().await;
    tracing::debug!(node = %node.key(), ?kind, deadline, "tunnel closed");
}

/// Copies one direction until EOF (then passes the EOF on), following WebSocket frames.
async fn pump<R, W>(r: &mut R, w: &mut W, frames: &mut FrameTracker) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        frames.feed(&buf[..n]);
        w.write_all(&buf[..n]).await?;
    }
}

/// Forwards only what completes the frame in flight, then writes `close`.
async fn finish_and_close<R, W>(
    r: &mut R,
    w: &mut W,
    frames: &mut FrameTracker,
    close: &[u8],
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    while !frames.at_boundary() {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let end = frames.feed(&buf[..n]).unwrap_or(n);
        w.write_all(&buf[..end]).await?;
    }
    w.write_all(close).await?;
    w.flush().await
}
