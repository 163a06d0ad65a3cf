//! The listener table: each listener's accept loop, its stop token and counters, and a
//! duplicate of its listening socket to hand to a new process. Only start, reload and
//! takeover touch it (behind the app's mutex); the data path never does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{plan, App};
use crate::config::ListenerConfig;
use crate::metrics::ListenerMetrics;
use crate::proxy::{self, ListenerStats};

/// Listeners, touched only by start and reload.
pub(super) struct ListenerTable {
    pub(super) listeners: HashMap<String, ListenerEntry>,
}

pub(super) struct ListenerEntry {
    /// The address as configured (may have port 0).
    pub(super) configured: SocketAddr,
    /// The address actually bound.
    pub(super) local: SocketAddr,
    pub(super) stop: CancellationToken,
    pub(super) stats: Arc<ListenerStats>,
    /// The listening socket (a duplicate of the accept loop's), to hand to a new process.
    pub(super) socket: Option<std::os::fd::OwnedFd>,
}

impl App {
    pub(super) fn start_listener(
        self: &Arc<Self>,
        cfg: &ListenerConfig,
        socket: TcpListener,
        stats: Option<Arc<ListenerStats>>,
    ) -> ListenerEntry {
        let local = socket.local_addr().unwrap_or(cfg.listen);
        let dup = std::os::fd::AsFd::as_fd(&socket).try_clone_to_owned();
        let stats = stats.unwrap_or_else(|| {
            Arc::new(ListenerStats::new(
                &cfg.name,
                ListenerMetrics::new(&self.metrics, &cfg.name),
            ))
        });
        let stop = self.shutdown.accept.child_token();
        tokio::spawn(proxy::accept_loop(
            Arc::clone(&self.data),
            socket,
            Arc::clone(&stats),
            stop.clone(),
        ));
        tracing::info!(listener = %cfg.name, addr = %local, protocol = cfg.kind.protocol(), "listening");
        ListenerEntry {
            configured: cfg.listen,
            local,
            stop,
            stats,
            socket: dup.ok(),
        }
    }

    /// Addresses the listeners are actually bound to, by name.
    pub async fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        let control = self.listeners.lock().await;
        control
            .listeners
            .iter()
            .map(|(n, e)| (n.clone(), e.local))
            .collect()
    }

    /// Duplicates of the listening sockets of every listener whose name and address are in
    /// `wanted` (a new process's config), for a takeover.
    pub async fn listener_sockets(
        &self,
        wanted: &[(String, SocketAddr)],
    ) -> Vec<(String, std::os::fd::OwnedFd)> {
        let table = self.listeners.lock().await;
        let have = table
            .listeners
            .iter()
            .map(|(name, e)| (name.clone(), e.configured))
            .collect();
        plan::Plan::for_listeners(&have, wanted)
            .keep
            .into_iter()
            .filter_map(|name| {
                let fd = table
                    .listeners
                    .get(&name)?
                    .socket
                    .as_ref()?
                    .try_clone()
                    .ok()?;
                Some((name, fd))
            })
            .collect()
    }

    /// Open client connections of one listener.
    pub async fn listener_connections(&self, name: &str) -> Option<usize> {
        let control = self.listeners.lock().await;
        control.listeners.get(name).map(|e| e.stats.active())
    }
}
