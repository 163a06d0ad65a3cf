//! Upgrade tunnels (WebSocket and other `Upgrade:` protocols): the request goes to a node on
//! a fresh connection; on `101 Switching Protocols` both sides are spliced together and
//! counted as a `tunnels` session of that node.
//!
//! At the node's drain deadline (after this tunnel's share of the close spread) or at
//! shutdown's force deadline, a WebSocket tunnel finishes the frame in flight in each
//! direction, sends a close frame 1001 "going away" to both peers and closes; other tunnels
//! are closed with FIN.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio::time::{sleep_until, Instant};

use super::body::{local, ProxyBody, Upstream};
use super::headers::prepare_response;
use super::upstream::{handshake, UpBody};
use super::ws::{self, FrameTracker};
use crate::config::Timeouts;
use crate::pool::{Attempts, Node, Pool, SessionGuard, SessionKind, Strategy};
use crate::proxy::activity::InflightGuard;
use crate::proxy::connect::connect_node;
use crate::proxy::gated::Gated;
use crate::proxy::DataPlane;
use crate::proxy::{ConnSlot, ListenerStats};

/// After a tunnel is told to close, how long a frame in flight may take to finish before the
/// tunnel is closed without a close frame.
const FINISH_FRAME: Duration = Duration::from_secs(1);
const BUF: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WebSocket,
    Other,
}

/// The `Upgrade` value of an HTTP/1.1 upgrade request (`Connection: upgrade` present).
pub fn requested(req: &Request<Incoming>) -> Option<HeaderValue> {
    let connection_upgrade = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if req.version() != Version::HTTP_11 || !connection_upgrade {
        return None;
    }
    req.headers().get(UPGRADE).cloned()
}

/// Forwards an upgrade request on a fresh connection; on 101 the tunnel starts on a tracked
/// task. Connect failures move on to the next node; once sent, it is not retried.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    plane: &Arc<DataPlane>,
    listener: &Arc<ListenerStats>,
    pool: &Arc<Pool>,
    mut req: Request<UpBody>,
    client: OnUpgrade,
    upgrade: HeaderValue,
    timeouts: Timeouts,
    inflight: InflightGuard,
) -> Response<ProxyBody> {
    let kind = if upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        Kind::WebSocket
    } else {
        Kind::Other
    };
    req.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    req.headers_mut().insert(UPGRADE, upgrade);
    let mut attempts = Attempts::new(pool, Strategy::Balance, None);
    while let Some(i) = attempts.next_node() {
        let node = &pool.nodes[i];
        let session = SessionGuard::new(&node.state, SessionKind::HttpInflight);
        let Ok(stream) = connect_node(pool, i, timeouts.connect).await else {
            continue;
        };
        let Ok(mut sender) = handshake(stream, node).await else {
            continue;
        };
        let mut resp = match timeout(timeouts.response, sender.send_request(req)).await {
            Err(_) => {
                node.state.metrics.response(504);
                return local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the backend did not answer in time",
                );
            }
            Ok(Err(e)) => {
                node.state.metrics.response(502);
                tracing::info!(node = %node.key(), error = %e, "upgrade request failed");
                return local(
                    StatusCode::BAD_GATEWAY,
                    "the backend closed the connection before answering",
                );
            }
            Ok(Ok(resp)) => resp,
        };
        node.state.metrics.response(resp.status().as_u16());
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            prepare_response(&mut resp);
            let node = Arc::clone(node);
            return resp.map(|body| {
                ProxyBody::Upstream(Upstream::new(body, node, sender, session, inflight))
            });
        }
        let backend = hyper::upgrade::on(&mut resp);
        let agreed = resp.headers().get(UPGRADE).cloned();
        prepare_response(&mut resp);
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(v) = agreed {
            resp.headers_mut().insert(UPGRADE, v);
        }
        // The tunnel is counted before the request's own session ends, so a drain never
        // sees the node empty between the 101 and the tunnel; it also keeps a connection
        // slot of the listener for as long as it lives.
        let held = Held {
            _session: SessionGuard::new(&node.state, SessionKind::Tunnel),
            _slot: ConnSlot::continuing(listener),
        };
        drop(session);
        plane.shutdown.tracker.spawn(run(
            Arc::clone(plane),
            Arc::clone(node),
            kind,
            client,
            backend,
            held,
        ));
        return resp.map(|_| ProxyBody::Local(None));
    }
    pool.metrics.local_response(503);
    local(
        StatusCode::SERVICE_UNAVAILABLE,
        "no node of the pool can take the upgrade",
    )
}

/// What a tunnel holds for as long as it lives: its session on the node, and a connection
/// slot of its listener.
pub struct Held {
    _session: SessionGuard,
    _slot: ConnSlot,
}

/// Splices the two upgraded connections once both upgrades complete. A tunnel that starts
/// after its node's drain deadline (an affinity continuation) is closed at once.
pub async fn run(
    plane: Arc<DataPlane>,
    node: Arc<Node>,
    kind: Kind,
    client: OnUpgrade,
    backend: OnUpgrade,
    held: Held,
) {
    let _held = held;
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(node = %node.key(), error = %e, "upgrade did not complete");
            return;
        }
    };
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
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
    let (mut br, mut bw) = tokio::io::split(TokioIo::new(backend));
    let (mut up, mut down) = (FrameTracker::default(), FrameTracker::default());
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
    let Some(deadline) = at_deadline else { return };
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
