//! The data path: accept loops per listener, TCP and HTTP proxying.
//!
//! Each accept loop owns its listening socket and a stop token (a child of the process's
//! `accept` token, so a reload can stop one listener and shutdown stops all). Per connection
//! it loads the routing snapshot, enforces the listener's connection limit and hands the
//! socket to [`tcp::serve`] or [`http::serve`] on a tracked task.

pub mod activity;
mod connect;
pub mod h1;
pub mod h2up;
pub mod http;
#[cfg(target_os = "linux")]
mod pipe;
pub mod proxy_protocol;
mod splice;
pub mod sticky;
pub mod tcp;
mod tcp_tls;
pub mod tls;
pub mod ws;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::ListenerMetrics;
use crate::shutdown::Shutdown;
use crate::snapshot::Target;
use activity::{Activity, Watched};
use http::ConnCtx;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Per-listener counters that outlive reloads (connections hold them while open).
/// What the data path needs of the running app, and nothing of its control plane: the
/// routing snapshot it loads per connection or request, and the shutdown tokens and task
/// tracker its connections answer to.
pub struct DataPlane {
    pub snapshot: Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
    pub shutdown: Shutdown,
}

pub struct ListenerStats {
    pub name: Arc<str>,
    active: AtomicUsize,
    pub metrics: ListenerMetrics,
    /// Refusals at `max_connections` since the last warning about them, and when (unix
    /// seconds) that warning was written: at most one a second.
    refused: AtomicUsize,
    refused_logged: std::sync::atomic::AtomicU64,
}

impl ListenerStats {
    pub fn new(name: &str, metrics: ListenerMetrics) -> Self {
        ListenerStats {
            name: name.into(),
            active: AtomicUsize::new(0),
            metrics,
            refused: AtomicUsize::new(0),
            refused_logged: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts a connection refused at the limit, and warns about them at most once a second
    /// (a flood must not turn into a flood of log lines).
    fn refused(&self, limit: usize) {
        self.metrics.rejected.inc();
        self.refused.fetch_add(1, Relaxed);
        let now = crate::time::unix_ms() / 1000;
        let last = self.refused_logged.load(Relaxed);
        if now > last
            && self
                .refused_logged
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let n = self.refused.swap(0, Relaxed);
            tracing::warn!(listener = %self.name, refused = n, max_connections = limit, "connections refused at max_connections (at most one such line a second)");
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Relaxed)
    }
}

/// Holds one slot of a listener's connection limit.
pub(crate) struct ConnSlot(Arc<ListenerStats>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
        self.0.metrics.active.dec();
    }
}

/// One HTTPS client connection: TLS terminated first (the handshake is bounded by the
/// header-read timeout, and a failure is logged and counted, touching nothing else), then
/// HTTP/1.x or, by ALPN, HTTP/2.
async fn serve_tls(
    plane: Arc<DataPlane>,
    acceptor: tokio_rustls::TlsAcceptor,
    watched: Watched<TcpStream>,
    peer: SocketAddr,
    timeouts: crate::config::Timeouts,
    slot: ConnSlot,
) {
    let stats = Arc::clone(&slot.0);
    let activity = Arc::clone(watched.activity());
    match tokio::time::timeout(timeouts.header_read, acceptor.accept(watched)).await {
        Ok(Ok(tls)) => {
            let speaks = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => h1::Speaks::H2,
                _ => h1::Speaks::Http1,
            };
            let ctx = ConnCtx::new(plane, stats, peer, activity, "https", timeouts, Some(slot));
            h1::serve(Arc::new(ctx), tls, speaks).await
        }
        Ok(Err(e)) => {
            stats.metrics.tls_failures.inc();
            tracing::debug!(listener = %stats.name, %peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            stats.metrics.tls_failures.inc();
            tracing::debug!(listener = %stats.name, %peer, "TLS handshake timed out");
        }
    }
}

/// After an accept error (out of file descriptors, say), wait this long before retrying
/// instead of spinning on the error.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

pub async fn accept_loop(
    plane: Arc<DataPlane>,
    listener: TcpListener,
    stats: Arc<ListenerStats>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(listener = %stats.name, error = %e, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let routes = plane.snapshot.load().listeners.get(&*stats.name).cloned();
        let Some(routes) = routes else { continue };
        if stats.active.fetch_add(1, Relaxed) >= routes.config.max_connections {
            stats.active.fetch_sub(1, Relaxed);
            stats.refused(routes.config.max_connections);
            tracing::debug!(listener = %stats.name, %peer, "connection limit reached: closing");
            continue;
        }
        stats.metrics.accepted.inc();
        stats.metrics.active.inc();
        let slot = ConnSlot(Arc::clone(&stats));
        let _ = stream.set_nodelay(true);
        let task_plane = Arc::clone(&plane);
        // One spawn per kind, so a TCP session's task is sized for the TCP future (under
        // 1 KiB), not for the much larger HTTP one.
        match &routes.target {
            Target::Tcp(_) => {
                let stats = Arc::clone(&stats);
                tcp_tls::spawn(&plane, routes, stats, stream, peer, slot);
            }
            Target::Http(_) => {
                let activity = Arc::new(Activity::new());
                let watched = Watched::new(stream, Arc::clone(&activity), Arc::clone(&stats));
                let timeouts = routes.config.timeouts;
                match (&routes.config.tls, &routes.tls) {
                    // The task is the connection's future alone (see `h1::serve`): what it
                    // needs is prepared here.
                    (None, _) => {
                        let ctx = ConnCtx::new(
                            task_plane,
                            Arc::clone(&stats),
                            peer,
                            activity,
                            "http",
                            timeouts,
                            Some(slot),
                        );
                        plane.shutdown.tracker.spawn(h1::serve(
                            Arc::new(ctx),
                            watched,
                            h1::Speaks::Sniff,
                        ));
                    }
                    (Some(_), Some(acceptor)) => {
                        let acceptor = acceptor.clone();
                        plane.shutdown.tracker.spawn(serve_tls(
                            task_plane, acceptor, watched, peer, timeouts, slot,
                        ));
                    }
                    // The certificates could not be turned into a TLS config: never serve
                    // in clear.
                    (Some(_), None) => {}
                }
            }
        }
    }
    tracing::debug!(listener = %stats.name, "accept loop stopped");
}
