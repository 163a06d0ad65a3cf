//! The data path: accept loops per listener, TCP and HTTP proxying.
//!
//! Each accept loop owns its listening socket and a stop token (a child of the process's
//! `accept` token, so a reload can stop one listener and shutdown stops all). Per connection
//! it loads the routing snapshot, enforces the listener's connection limit and hands the
//! socket to [`tcp::serve`] or [`h1::serve`] (which hands HTTP/2 to [`h2::serve_h2`]) on a
//! tracked task.
//!
//! The HTTP path is in layers, each using only those before it: [`codec`] (heads, framing,
//! buffers), [`ctx`] (a client connection's shared context), the upstream connections
//! (`connect`, [`h2up`], the pools' idle HTTP/1.1 connections), [`walk`] (the node walk),
//! and the front ends ([`h1`], [`h2`], [`tcp`]).

pub mod activity;
pub mod codec;
mod connect;
mod copy;
pub mod ctx;
pub mod h1;
pub mod h2;
pub mod h2up;
pub mod logged;
mod per_client;
pub mod proxy_protocol;
pub mod reclaim;
#[cfg(target_os = "linux")]
mod splice;
pub mod sticky;
pub mod tcp;
mod tcp_tls;
pub mod walk;
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
use ctx::ConnCtx;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// What the data path needs of the running app, and nothing of its control plane: the
/// routing snapshot it loads per connection or request, and the shutdown tokens and task
/// tracker its connections answer to.
pub struct DataPlane {
    pub snapshot: Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
    pub shutdown: Shutdown,
    /// Where each exchange's line goes, when `access_log:` is set.
    pub access_log: crate::access_log::Slot,
}

/// Per-listener counters that outlive reloads (connections hold them while open).
pub struct ListenerStats {
    pub name: Arc<str>,
    active: AtomicUsize,
    /// The HTTP connections that may be closed to make room at `max_connections`.
    reclaim: reclaim::Registry,
    /// Connections per client address, once `max_connections_per_client` is set.
    per_client: std::sync::OnceLock<per_client::PerClient>,
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
            reclaim: reclaim::Registry::default(),
            per_client: std::sync::OnceLock::new(),
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

    /// Takes a place for a new connection (accept loop only): below `limit`, or, at it, by
    /// marking doing-nothing HTTP connections for closing (see [`reclaim`]); the listener
    /// then stays over `limit` only by the connections about to close.
    fn admit(&self, limit: usize) -> bool {
        let active = self.active.fetch_add(1, Relaxed);
        if active < limit + self.reclaim.pending() {
            return true;
        }
        // NGINX closes up to 32 reusable connections at a time; a batch keeps the scan of
        // the listener's connections off most accepts during a flood.
        let (silent, idle) = self.reclaim.reclaim((limit / 64).clamp(1, 32));
        self.metrics.reclaimed_silent.inc_by(silent as u64);
        self.metrics.reclaimed_idle.inc_by(idle as u64);
        if silent + idle > 0 {
            tracing::debug!(listener = %self.name, silent, idle, "at max_connections: closing connections that do nothing");
            return true;
        }
        self.active.fetch_sub(1, Relaxed);
        self.refused(limit);
        false
    }
}

/// Holds one place of a listener's connection limit, and for HTTP the connection's entry in
/// its reclaim registry.
pub(crate) struct ConnSlot {
    stats: Arc<ListenerStats>,
    /// 1 + the worker thread it runs on, whose count of connections it is in (see
    /// [`crate::workers`]); 0: none. Small, to keep [`ConnCtx`] within its size.
    worker: u16,
    /// Its slot in the listener's reclaim registry, if it has one.
    registered: Option<u32>,
    /// Counted against its address's `max_connections_per_client`.
    client: Option<std::net::IpAddr>,
}

impl ConnSlot {
    fn new(stats: &Arc<ListenerStats>, client: Option<std::net::IpAddr>) -> Self {
        ConnSlot {
            stats: Arc::clone(stats),
            worker: 0,
            registered: None,
            client,
        }
    }

    /// An HTTP connection may be reclaimed while it does nothing.
    fn register(&mut self, activity: &Arc<Activity>) {
        self.registered = self.stats.reclaim.register(activity);
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(index) = self.registered.take() {
            self.stats.reclaim.release(index);
        }
        if let (Some(ip), Some(per)) = (self.client, self.stats.per_client.get()) {
            per.release(ip);
        }
        self.stats.active.fetch_sub(1, Relaxed);
        self.stats.metrics.active.dec();
        if let (Some(i), Some(workers)) = (self.worker.checked_sub(1), crate::workers::get()) {
            workers.closed(usize::from(i));
        }
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
    let stats = Arc::clone(&slot.stats);
    let activity = Arc::clone(watched.activity());
    // A client that never starts its handshake may be reclaimed like a silent one.
    let marked = std::future::poll_fn(|cx| match activity.poll_marked(cx) {
        true => std::task::Poll::Ready(()),
        false => std::task::Poll::Pending,
    });
    let handshake = tokio::time::timeout(handshake_limit(&timeouts), acceptor.accept(watched));
    let done = tokio::select! {
        done = handshake => done,
        _ = marked => return,
    };
    match done {
        Ok(Ok(tls)) => {
            stats.metrics.handshake(tls.get_ref().1.handshake_kind());
            let speaks = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => h1::Speaks::H2,
                _ => h1::Speaks::Http1,
            };
            let conn = tls.get_ref().1;
            let info = ctx::TlsInfo {
                version: tls_version(conn.protocol_version()),
                sni: conn.server_name().map(Into::into),
            };
            let ctx = ConnCtx::new(plane, stats, peer, activity, "https", timeouts, Some(slot))
                .with_tls(info);
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

/// A TLS version as the access log writes it.
pub(crate) fn tls_version(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    }
}

/// A TLS handshake must finish within the header-read timeout, and within 5 s at most: a
/// handshake is a few round trips, and a client stalling in it holds a connection slot.
fn handshake_limit(timeouts: &crate::config::Timeouts) -> Duration {
    timeouts.header_read.min(Duration::from_secs(5))
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
        let client = match routes.config.max_connections_per_client {
            Some(limit) => {
                let max = routes.config.max_connections;
                let per = stats
                    .per_client
                    .get_or_init(|| per_client::PerClient::new(max));
                if !per.admit(peer.ip(), limit) {
                    stats.metrics.rejected_per_client.inc();
                    tracing::debug!(listener = %stats.name, %peer, "max_connections_per_client reached: closing");
                    continue;
                }
                Some(peer.ip())
            }
            None => None,
        };
        if !stats.admit(routes.config.max_connections) {
            if let (Some(ip), Some(per)) = (client, stats.per_client.get()) {
                per.release(ip);
            }
            tracing::debug!(listener = %stats.name, %peer, "connection limit reached: closing");
            continue;
        }
        stats.metrics.accepted.inc();
        stats.metrics.active.inc();
        let mut slot = ConnSlot::new(&stats, client);
        let _ = stream.set_nodelay(true);
        // Registered here: the registry takes slots from the accept loop only.
        let activity = matches!(routes.target, Target::Http(_)).then(|| {
            let activity = Arc::new(Activity::new());
            slot.register(&activity);
            activity
        });
        let Some((worker, i)) = crate::workers::get().and_then(|w| w.pick()) else {
            start(&plane, routes, &stats, (stream, peer), slot, activity);
            continue;
        };
        // To a worker thread: the socket leaves this runtime's poller for the worker's.
        slot.worker = u16::try_from(i + 1).unwrap_or(0);
        let std = match stream.into_std() {
            Ok(std) => std,
            Err(e) => {
                tracing::debug!(listener = %stats.name, %peer, error = %e, "could not hand a connection to a worker");
                continue;
            }
        };
        let (plane, stats) = (Arc::clone(&plane), Arc::clone(&stats));
        worker.spawn(async move {
            match TcpStream::from_std(std) {
                Ok(stream) => start(&plane, routes, &stats, (stream, peer), slot, activity),
                Err(e) => {
                    tracing::debug!(listener = %stats.name, %peer, error = %e, "could not hand a connection to a worker")
                }
            }
        });
    }
    tracing::debug!(listener = %stats.name, "accept loop stopped");
}

/// Starts an accepted connection's task on the current runtime, by the listener's kind.
/// `activity`: an HTTP connection's, registered for reclaiming by the accept loop.
fn start(
    plane: &Arc<DataPlane>,
    routes: Arc<crate::snapshot::ListenerRoutes>,
    stats: &Arc<ListenerStats>,
    (stream, peer): (TcpStream, SocketAddr),
    slot: ConnSlot,
    activity: Option<Arc<Activity>>,
) {
    let task_plane = Arc::clone(plane);
    // One spawn per kind, so a TCP session's task is sized for the TCP future (under
    // 1 KiB), not for the much larger HTTP one.
    match &routes.target {
        Target::Tcp(_) => {
            let stats = Arc::clone(stats);
            tcp_tls::spawn(plane, routes, stats, stream, peer, slot);
        }
        Target::Http(_) => {
            let Some(activity) = activity else { return };
            let watched = Watched::new(stream, Arc::clone(&activity), Arc::clone(stats));
            let timeouts = routes.config.timeouts;
            match (&routes.config.tls, &routes.tls) {
                // The task is the connection's future alone (see `h1::serve`): what it
                // needs is prepared here.
                (None, _) => {
                    let ctx = ConnCtx::new(
                        task_plane,
                        Arc::clone(stats),
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
