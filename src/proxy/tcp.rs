//! TCP proxying: pick a node (retrying connect failures on the others), then copy both ways
//! with half-close passed through, until both sides are done, the idle timeout passes, or
//! shutdown cuts the session (with FIN, not RST).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use super::activity::{Activity, Verdict, Watched};
use super::connect::connect_node;
use super::copy::{copy, Copied, Endpoint, Failed};
use super::logged::Logged;
use super::proxy_protocol;
use super::ListenerStats;
use crate::access_log::{self, Termination};
use crate::config::AffinityMode;
use crate::config::ListenerConfig;
use crate::gated::Gated;
use crate::pool::{unix_ms, Attempts, Pool, SessionGuard, SessionKind, Strategy, Tried};
use crate::proxy::DataPlane;

#[derive(Debug)]
enum End {
    Done(Result<Copied, Failed>),
    Idle,
    /// Shutdown's force deadline.
    Cut,
    /// The node's drain deadline.
    Deadline,
    /// Rebalancing asked this (old) session to go.
    Rebalanced,
}

/// A client connection as the session gets it: plain, or TLS-terminated, already watched
/// (bytes and activity counted), with the bytes to send the backend before any of the
/// client's (a ClientHello read to route by SNI).
pub struct Client<C> {
    pub io: C,
    pub activity: Arc<Activity>,
    pub peer: SocketAddr,
    /// The address the client connected to (for the PROXY header).
    pub local: SocketAddr,
    pub first: Vec<u8>,
    /// The TLS session handoff terminated, for the access log.
    pub tls: Option<super::ctx::TlsInfo>,
}

impl Client<Watched<TcpStream>> {
    /// A plain client connection, watched from now on.
    pub fn plain(stream: TcpStream, peer: SocketAddr, stats: &Arc<ListenerStats>) -> Self {
        let local = stream.local_addr().unwrap_or(peer);
        let activity = Arc::new(Activity::new());
        Client {
            io: Watched::new(stream, Arc::clone(&activity), Arc::clone(stats)),
            activity,
            peer,
            local,
            first: Vec::new(),
            tls: None,
        }
    }
}

pub async fn serve<C: Endpoint>(
    plane: &DataPlane,
    pool: Arc<Pool>,
    cfg: &ListenerConfig,
    stats: &Arc<ListenerStats>,
    client: Client<C>,
) {
    let Client {
        io: mut client,
        activity,
        peer,
        local,
        first,
        tls,
    } = client;
    let mut log = match plane.access_log.get() {
        Some(l) => {
            let conn = access_log::Conn {
                client: peer,
                listener: &stats.name,
                proto: "tcp",
                tls: tls.as_ref().map(|t| (t.version, t.sni.as_deref())),
            };
            let record = access_log::Record::start(&l, Instant::now(), conn, Default::default());
            Logged::of(record, &activity)
        }
        None => Logged::OFF,
    };
    log.pool(&pool);
    // Source-address affinity: continue where the client has a session, else hash.
    let pinned = match pool.config.affinity.as_ref().map(|a| &a.mode) {
        Some(AffinityMode::SourceIp) => Some(pool.keys.address(peer.ip())),
        _ => None,
    };
    let mut attempts = match pinned {
        Some(c) => {
            let first = pool
                .sticky(c, None, unix_ms())
                .or_else(|| pool.hash_pick(c, Tried::default()));
            Attempts::new(&pool, Strategy::Hash(c), Some(first))
        }
        None => Attempts::new(&pool, Strategy::Balance, None),
    };
    let mut tried_any = false;
    let (index, mut backend, _session) = loop {
        let Some(i) = attempts.next_node() else {
            tracing::debug!(listener = %stats.name, %peer, pool = %pool.name, "no node can take the session: closing");
            let tried = std::mem::replace(&mut tried_any, false);
            log.end(
                if tried {
                    Termination::ConnectFailed
                } else {
                    Termination::NoNode
                },
                None,
            );
            return;
        };
        let session = SessionGuard::new(&pool.nodes[i].state, SessionKind::Tcp);
        let asked = tokio::time::Instant::now();
        log.attempt(i);
        tried_any = true;
        if let Ok(stream) = connect_node(&pool, i, cfg.timeouts.connect).await {
            // A TCP node's traffic is its sessions, and its latency the time to connect.
            pool.connected(i, asked.elapsed());
            log.connected(asked.elapsed());
            break (i, stream, session);
        }
    };
    if let Some(c) = pinned {
        pool.pin(c, index, unix_ms());
    }
    let node = Arc::clone(&pool.nodes[index]);
    if let Some(version) = cfg.proxy_protocol {
        // The backend sees the client's address: the header goes first, before any byte.
        let mut header = [0u8; proxy_protocol::MAX_LEN];
        let n = proxy_protocol::encode(version, peer, local, &mut header);
        if let Err(e) = backend.write_all(&header[..n]).await {
            tracing::debug!(node = %node.key(), error = %e, "sending the PROXY header failed");
            log.end(Termination::UpstreamReset, None);
            return;
        }
    }
    if !first.is_empty() {
        if let Err(e) = backend.write_all(&first).await {
            tracing::debug!(node = %node.key(), error = %e, "sending the ClientHello failed");
            log.end(Termination::UpstreamReset, None);
            return;
        }
    }
    drop(first);
    let lifecycle = &node.state.lifecycle;
    let (id, rebalance) = lifecycle.register();
    // Control signals, gated so the per-read wake-ups don't poll them (see `gated`).
    let control = async {
        let close = lifecycle.session_close_token();
        tokio::select! {
            _ = plane.shutdown.force.cancelled() => End::Cut,
            _ = close.cancelled() => End::Deadline,
            _ = rebalance.cancelled() => End::Rebalanced,
        }
    };
    let mut control = Gated::new(Box::pin(control));
    let mut close_at: Option<Instant> = None;
    let end = {
        let copy = copy(&mut client, &mut backend);
        tokio::pin!(copy);
        loop {
            let mut next = match activity.verdict(cfg.timeouts.idle, None) {
                Verdict::CheckAt(at) => at,
                _ => break End::Idle,
            };
            if let Some(at) = close_at {
                if Instant::now() >= at {
                    break End::Deadline;
                }
                next = next.min(at);
            }
            tokio::select! {
                r = &mut copy => break End::Done(r),
                _ = sleep_until(next) => {}
                why = &mut control, if close_at.is_none() => match why {
                    // Deadline closes are spread so clients don't reconnect in one storm.
                    End::Deadline => close_at = Some(Instant::now() + lifecycle.spread_offset(id)),
                    other => break other,
                },
            }
        }
    };
    lifecycle.unregister(id);
    log.end(
        match &end {
            End::Done(Ok(_)) => Termination::Ok,
            End::Done(Err(f)) if f.on_a => Termination::ClientClosed,
            End::Done(Err(_)) => Termination::UpstreamReset,
            End::Idle => Termination::ClientTimeout,
            End::Cut => Termination::Shutdown,
            End::Deadline => Termination::DrainDeadline,
            End::Rebalanced => Termination::Rebalanced,
        },
        None,
    );
    match end {
        End::Deadline => {
            lifecycle.deadline_closes.fetch_add(1, Relaxed);
            node.state.metrics.deadline_close(SessionKind::Tcp);
        }
        End::Rebalanced => {
            lifecycle.rebalance_closes.fetch_add(1, Relaxed);
            node.state.metrics.rebalance_closes.inc();
        }
        _ => {}
    }
    if !matches!(end, End::Done(_)) {
        // Close gracefully: FIN to both peers.
        let _ = client.shutdown().await;
        let _ = backend.shutdown().await;
    }
    let node = node.key();
    match end {
        End::Done(Ok(Copied { up, down, piped })) => {
            tracing::debug!(listener = %stats.name, %peer, %node, up, down, piped, "tcp session ended")
        }
        End::Done(Err(f)) => {
            tracing::debug!(listener = %stats.name, %peer, %node, error = %f.error, client_side = f.on_a, "tcp session ended with an error")
        }
        End::Idle => {
            tracing::debug!(listener = %stats.name, %peer, %node, "tcp session closed: idle timeout")
        }
        End::Cut => {
            tracing::debug!(listener = %stats.name, %peer, %node, "tcp session closed at shutdown")
        }
        End::Deadline => {
            tracing::debug!(listener = %stats.name, %peer, %node, "tcp session closed at the drain deadline")
        }
        End::Rebalanced => {
            tracing::debug!(listener = %stats.name, %peer, %node, "tcp session closed to rebalance")
        }
    }
}
