//! The narrow handle the control plane works through (`lifecycle`, `rollout`, `persist`):
//! the routing snapshot, the metrics, the stop token for background steps, and the state
//! store. It holds nothing of the listeners or the admin server, so the control plane never
//! reaches back into the app that composes it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pool::{Node, Pool};
use crate::snapshot::Snapshot;

/// How long a flush waits for the writer before giving up (and logging).
const FLUSH_WAIT: Duration = Duration::from_secs(10);

pub struct Control {
    /// The routing snapshot, shared with the data path (which only loads it).
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the process stops: background steps end with it.
    pub stop: CancellationToken,
    /// Change requests for the state file's one writer; `None` without a state file.
    store: Option<StateStore>,
    /// Pools with a rebalance in progress (at most one each).
    pub rebalancing: Mutex<HashSet<String>>,
    /// Set while a takeover hands the state to another process, and for good once it has:
    /// the state file is then the new process's to write.
    store_paused: AtomicBool,
    /// Bumped at every change of admin state or rollouts (what the cluster publishes).
    changed: watch::Sender<u64>,
}

/// A node resolved from one snapshot, with the pool it belongs to.
#[derive(Clone)]
pub struct NodeRef {
    pub pool: Arc<Pool>,
    pub node: Arc<Node>,
}

impl Control {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        store: Option<StateStore>,
    ) -> Control {
        Control {
            snapshot,
            metrics,
            stop,
            store,
            rebalancing: Mutex::new(HashSet::new()),
            store_paused: AtomicBool::new(false),
            changed: watch::channel(0).0,
        }
    }

    /// `pool/node` in the current snapshot.
    pub fn node(&self, pool: &str, node: &str) -> Option<NodeRef> {
        let snapshot = self.snapshot.load();
        let p = snapshot.pool(pool)?;
        let n = p.node(node)?;
        Some(NodeRef {
            pool: Arc::clone(p),
            node: Arc::clone(n),
        })
    }

    /// A node named `pool/node` (how the state file and a takeover name nodes).
    pub fn node_by_key(&self, key: &str) -> Option<NodeRef> {
        let (pool, node) = key.split_once('/')?;
        self.node(pool, node)
    }

    /// Wakes at every [`Control::mark_dirty`].
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The state changed: the writer will write it (no-op without a state file).
    pub fn mark_dirty(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        if let Some(s) = self.store.as_ref().filter(|_| !self.store_paused()) {
            s.mark();
        }
    }

    /// Waits until the writer has written the state as it is now (shutdown, tests).
    pub async fn flush(&self) {
        if let Some(s) = self.store.as_ref().filter(|_| !self.store_paused()) {
            s.flush().await;
        }
    }

    /// Stops (or resumes) writing the state file, for a takeover.
    pub fn pause_store(&self, paused: bool) {
        self.store_paused.store(paused, SeqCst);
        if !paused {
            self.mark_dirty();
        }
    }

    fn store_paused(&self) -> bool {
        self.store_paused.load(SeqCst)
    }
}

/// The requesting side of the state file: changes bump a counter; the one writer task
/// ([`crate::persist::writer`]) writes and reports the count it wrote.
pub struct StateStore {
    requested: watch::Sender<u64>,
    written: watch::Receiver<u64>,
}

/// The writer's side of a [`StateStore`].
pub struct StoreWriter {
    pub requested: watch::Receiver<u64>,
    pub written: watch::Sender<u64>,
}

impl StateStore {
    pub fn new() -> (StateStore, StoreWriter) {
        let (req_tx, req_rx) = watch::channel(0);
        let (wr_tx, wr_rx) = watch::channel(0);
        (
            StateStore {
                requested: req_tx,
                written: wr_rx,
            },
            StoreWriter {
                requested: req_rx,
                written: wr_tx,
            },
        )
    }

    fn mark(&self) -> u64 {
        let mut n = 0;
        self.requested.send_modify(|v| {
            *v += 1;
            n = *v;
        });
        n
    }

    async fn flush(&self) {
        let want = self.mark();
        let mut written = self.written.clone();
        let done = tokio::time::timeout(FLUSH_WAIT, written.wait_for(|w| *w >= want)).await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::error!("the state file writer did not write within {FLUSH_WAIT:?}");
        }
    }
}
