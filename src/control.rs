//! The narrow handle the control plane works through (`lifecycle`, `rollout`, `persist`):
//! the routing snapshot, the metrics, the stop token for background steps, and the state
//! store. It holds nothing of the listeners or the admin server, so the control plane never
//! reaches back into the app that composes it.
//!
//! It also owns what the snapshot is built from: the config file as last applied and the
//! runtime member changes made against it ([`crate::members`]). A reload, an admin API
//! change of a pool's nodes, and (in a cluster) one made on another instance all rebuild the
//! snapshot here, in one place, and restart the health checkers with it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::Events;
use crate::members::{MemberError, Membership};
use crate::metrics::Metrics;
use crate::pool::{Node, Pool};
use crate::snapshot::Snapshot;

/// How long a flush waits for the writer before giving up (and logging).
const FLUSH_WAIT: Duration = Duration::from_secs(10);

pub struct Control {
    /// The routing snapshot, shared with the data path (which only loads it).
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// The event stream (`/v1/events`): what happened, as it happens.
    pub events: Arc<Events>,
    /// Cancelled when the process stops: background steps end with it.
    pub stop: CancellationToken,
    /// Change requests for the state file's one writer; `None` without a state file.
    store: Option<StateStore>,
    /// Pools with a rebalance in progress (at most one each).
    pub rebalancing: Mutex<HashSet<String>>,
    /// Set while a takeover hands the state to another process, and for good once it has:
    /// admin writes are refused, and the state file is the new process's to write.
    handing_over: AtomicBool,
    /// Bumped at every change of admin state or rollouts (what the cluster publishes).
    changed: watch::Sender<u64>,
    /// The file as last applied, and the runtime member changes made against it.
    members: Mutex<(Arc<Config>, Membership)>,
    /// Cancels the current generation of health checkers.
    health: Mutex<CancellationToken>,
}

/// A node resolved from one snapshot, with the pool it belongs to.
#[derive(Clone)]
pub struct NodeRef {
    pub pool: Arc<Pool>,
    pub node: Arc<Node>,
}

impl NodeRef {
    /// `pool/node` in `snapshot`.
    pub fn of(snapshot: &Snapshot, pool: &str, node: &str) -> Option<NodeRef> {
        let p = snapshot.pool(pool)?;
        Some(NodeRef {
            pool: Arc::clone(p),
            node: Arc::clone(p.node(node)?),
        })
    }
}

impl Control {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
        stop: CancellationToken,
        store: Option<StateStore>,
    ) -> Control {
        Control {
            metrics,
            events,
            stop,
            store,
            rebalancing: Mutex::new(HashSet::new()),
            handing_over: AtomicBool::new(false),
            changed: watch::channel(0).0,
            members: Mutex::new((
                Arc::new(snapshot.load().config.as_ref().clone()),
                Membership::default(),
            )),
            health: Mutex::new(CancellationToken::new()),
            snapshot,
        }
    }

    /// Notes the file the first snapshot was built from, with `changes` (restored or handed
    /// over) already applied to it.
    pub fn set_members(&self, file: Config, changes: Membership) {
        *lock(&self.members) = (Arc::new(file), changes);
    }

    /// The file as last applied.
    pub fn file(&self) -> Arc<Config> {
        Arc::clone(&lock(&self.members).0)
    }

    /// The runtime member changes (what the state file and a takeover carry).
    pub fn membership(&self) -> Membership {
        lock(&self.members).1.clone()
    }

    /// What `file` would keep of the runtime member changes (a reload's check before it
    /// changes anything).
    pub fn rebased(&self, file: &Config) -> Result<Membership, MemberError> {
        let members = lock(&self.members);
        members.1.rebase(&members.0, file)
    }

    /// Applies a new file (a reload): runtime member changes are rebased onto it.
    pub fn install_file(&self, file: Config) -> Result<(), MemberError> {
        let mut members = lock(&self.members);
        let changes = members.1.rebase(&members.0, &file)?;
        self.install(&mut members, file, changes, |_| {});
        Ok(())
    }

    /// Changes the pools' members: `change` edits the runtime changes (against the file);
    /// on `Ok` the snapshot is rebuilt with them, `prepare` sees it before anything else
    /// does (to set a new node's admin state before it can be picked), and it is installed.
    /// On `Err` nothing changed.
    pub fn change_members(
        &self,
        change: impl FnOnce(&mut Membership, &Config) -> Result<(), MemberError>,
        prepare: impl FnOnce(&Snapshot),
    ) -> Result<(), MemberError> {
        let mut members = lock(&self.members);
        let mut next = members.1.clone();
        change(&mut next, &members.0)?;
        let file = members.0.as_ref().clone();
        self.install(&mut members, file, next, prepare);
        Ok(())
    }

    fn install(
        &self,
        members: &mut (Arc<Config>, Membership),
        file: Config,
        changes: Membership,
        prepare: impl FnOnce(&Snapshot),
    ) {
        let effective = changes.effective(&file);
        let before = self.snapshot.load_full();
        let next = Arc::new(Snapshot::build(
            effective,
            Some(&before),
            &self.metrics,
            &self.events,
        ));
        prepare(&next);
        self.snapshot.store(Arc::clone(&next));
        *members = (Arc::new(file), changes);
        self.restart_health();
        self.mark_dirty();
        self.say_member_changes(&before, &next);
    }

    /// Publishes `node_added` / `node_removed` and counts every member change between two
    /// snapshots, whoever made it (a reload, the API, another instance, DNS).
    fn say_member_changes(&self, before: &Snapshot, after: &Snapshot) {
        let count = |pool: &str, change: &str, node: &Node| {
            self.metrics
                .membership_changes
                .with_label_values(&[pool, change, node.source.as_str()])
                .inc();
        };
        for pool in &after.pools {
            let old = before.pool(&pool.name);
            for node in &pool.nodes {
                match old.and_then(|p| p.node(&node.name)) {
                    None => {
                        count(&pool.name, "added", node);
                        node.state.events.publish(
                            "node_added",
                            serde_json::json!({
                                "addr": node.addr.to_string(),
                                "weight": node.weight,
                                "source": node.source.as_str(),
                                "state": node.state.admin().as_str(),
                            }),
                        );
                    }
                    Some(o) if o.addr != node.addr || o.weight != node.weight => {
                        count(&pool.name, "changed", node);
                    }
                    Some(_) => {}
                }
            }
        }
        for pool in &before.pools {
            let new = after.pool(&pool.name);
            for node in &pool.nodes {
                if new.and_then(|p| p.node(&node.name)).is_none() {
                    count(&pool.name, "removed", node);
                    node.state.events.publish(
                        "node_removed",
                        serde_json::json!({ "addr": node.addr.to_string(), "source": node.source.as_str() }),
                    );
                }
            }
        }
    }

    /// Starts a health checker per pool of the current snapshot, stopping the previous ones
    /// (a node's state is kept by identity; a result probed at an old address is ignored).
    pub fn restart_health(&self) {
        let mut health = lock(&self.health);
        health.cancel();
        *health = self.stop.child_token();
        for pool in &self.snapshot.load().pools {
            crate::health::spawn(pool, &health);
        }
    }

    /// Stops every health checker (a takeover handed the nodes over).
    pub fn stop_health(&self) {
        lock(&self.health).cancel();
    }

    /// `pool/node` in the current snapshot.
    pub fn node(&self, pool: &str, node: &str) -> Option<NodeRef> {
        NodeRef::of(&self.snapshot.load(), pool, node)
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
        if let Some(s) = self.store.as_ref().filter(|_| !self.handing_over()) {
            s.mark();
        }
    }

    /// Waits until the writer has written the state as it is now (shutdown, tests).
    pub async fn flush(&self) {
        if let Some(s) = self.store.as_ref().filter(|_| !self.handing_over()) {
            s.flush().await;
        }
    }

    /// A takeover starts handing the state over (`true`), or failed (`false`): the one
    /// switch that refuses admin writes and leaves the state file alone meanwhile.
    pub(crate) fn set_handing_over(&self, on: bool) {
        self.handing_over.store(on, SeqCst);
        if !on {
            self.mark_dirty();
        }
    }

    /// Whether a takeover is handing the state to another process.
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(SeqCst)
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
