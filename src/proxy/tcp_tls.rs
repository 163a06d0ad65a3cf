//! TLS in front of tcp pools: termination (`tls:`, as on http listeners, the plain bytes
//! go to the pool), and passthrough by server name (`sni_routes:`): the ClientHello is read
//! and parsed by rustls' own `Acceptor`, then sent to the chosen pool untouched, followed by
//! the rest of the connection, so the client sees the backend's certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::activity::{Activity, Watched};
use super::copy::Endpoint;
use super::tcp::{self, Client};
use super::{DataPlane, ListenerStats};
use crate::snapshot::{ListenerRoutes, Target};

/// A ClientHello larger than this (one TLS record is at most 16 KiB, plus its header) is
/// not routed: the connection goes to the default pool, or is closed.
const MAX_HELLO: usize = 16 * 1024 + 5;

/// A terminated client: its bytes are counted and watched under the TLS layer.
impl Endpoint for TlsStream<Watched<TcpStream>> {}

/// Terminates TLS (within the listener's header-read timeout), then proxies the plain bytes.
pub async fn terminate(
    plane: Arc<DataPlane>,
    routes: Arc<ListenerRoutes>,
    acceptor: TlsAcceptor,
    stats: Arc<ListenerStats>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Target::Tcp(target) = &routes.target else {
        return;
    };
    let Some(pool) = target.default.clone() else {
        return;
    };
    let local = stream.local_addr().unwrap_or(routes.config.listen);
    let activity = Arc::new(Activity::new());
    let watched = Watched::new(stream, Arc::clone(&activity), Arc::clone(&stats));
    let limit = routes.config.timeouts.header_read;
    let io = match tokio::time::timeout(limit, acceptor.accept(watched)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            stats.metrics.tls_failures.inc();
            tracing::debug!(listener = %stats.name, %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            stats.metrics.tls_failures.inc();
            tracing::debug!(listener = %stats.name, %peer, "TLS handshake timed out");
            return;
        }
    };
    let session = io.get_ref().1;
    stats.metrics.handshake(session.handshake_kind());
    let tls = Some(super::ctx::TlsInfo {
        version: super::tls_version(session.protocol_version()),
        sni: session.server_name().map(Into::into),
    });
    let client = Client {
        io,
        activity,
        peer,
        local,
        first: Vec::new(),
        tls,
    };
    tcp::serve(&plane, pool, &routes.config, &stats, client).await;
}

/// Reads the ClientHello, picks the pool by its server name, and proxies the connection
/// untouched (the hello first).
pub async fn by_sni(
    plane: Arc<DataPlane>,
    routes: Arc<ListenerRoutes>,
    stats: Arc<ListenerStats>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Target::Tcp(target) = &routes.target else {
        return;
    };
    let mut client = Client::plain(stream, peer, &stats);
    let limit = routes.config.timeouts.header_read;
    let (hello, name) = match tokio::time::timeout(limit, read_hello(&mut client.io)).await {
        Ok(read) => read,
        Err(_) => {
            tracing::debug!(listener = %stats.name, %peer, "no ClientHello within the header-read timeout");
            return;
        }
    };
    let Some(pool) = target.route(name.as_deref()).cloned() else {
        tracing::debug!(listener = %stats.name, %peer, sni = name.as_deref().unwrap_or(""), "no SNI route and no default pool: closing");
        return;
    };
    tracing::debug!(listener = %stats.name, %peer, sni = name.as_deref().unwrap_or(""), pool = %pool.name, "routed by SNI");
    client.first = hello;
    tcp::serve(&plane, pool, &routes.config, &stats, client).await;
}

/// Reads until rustls has seen a whole ClientHello, and returns the bytes read with its
/// server name (`None`: no SNI, not TLS, too large, or the client stopped sending).
async fn read_hello(io: &mut Watched<TcpStream>) -> (Vec<u8>, Option<String>) {
    let mut bytes = Vec::with_capacity(1024);
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 2048];
    loop {
        let n = match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return (bytes, None),
            Ok(n) => n,
        };
        bytes.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh).is_err() {
                return (bytes, None);
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(str::to_owned);
                return (bytes, name);
            }
            Ok(None) if bytes.len() < MAX_HELLO => {}
            Ok(None) | Err(_) => return (bytes, None),
        }
    }
}

/// Hands a connection accepted on a tcp listener to its path: plain, TLS terminated, or
/// routed by SNI. When the listener's TLS acceptor could not be built (`tls:` set, none
/// here) the connection is dropped, never served in clear.
pub fn spawn(
    plane: &Arc<DataPlane>,
    routes: Arc<ListenerRoutes>,
    stats: Arc<ListenerStats>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: super::ConnSlot,
) {
    let Target::Tcp(target) = &routes.target else {
        return;
    };
    let task_plane = Arc::clone(plane);
    match (&routes.config.tls, &routes.tls) {
        (Some(_), Some(acceptor)) => {
            let acceptor = acceptor.clone();
            plane.shutdown.tracker.spawn(async move {
                let _slot = slot;
                terminate(task_plane, routes, acceptor, stats, stream, peer).await
            });
        }
        (Some(_), None) => {}
        (None, _) if target.by_sni() => {
            plane.shutdown.tracker.spawn(async move {
                let _slot = slot;
                by_sni(task_plane, routes, stats, stream, peer).await
            });
        }
        (None, _) => {
            let Some(pool) = target.default.clone() else {
                return;
            };
            plane.shutdown.tracker.spawn(async move {
                let _slot = slot;
                let client = Client::plain(stream, peer, &stats);
                tcp::serve(&task_plane, pool, &routes.config, &stats, client).await
            });
        }
    }
}
