//! Cluster (docs/cluster.md): instances that share a `cluster.prefix` share node admin states,
//! rollouts and the affinity key through etcd, and each publishes what it holds under its
//! lease.
//!
//! - [`session`] keeps one etcd session: connect, lease, read everything at revision R,
//!   apply it, watch from R+1, publish this instance's [`store::Member`] (the revision it has
//!   applied, its sessions and health per node). Any error ends the session; the next one
//!   starts with a full resync, so a lost watch or a compacted revision never leaves an
//!   instance silently behind.
//! - [`ops`] writes drains and enables (a transaction conditioned on the pool's node keys
//!   and on every instance's [`store::View`], so the pair guard ([`guard`]) holds for every
//!   instance's own view of the nodes) and answers once every member live at the write
//!   reports its revision, naming those that did not; and the cluster-wide `wait`.
//! - [`commit`] makes every admin write's answer true: a write whose outcome etcd did not
//!   tell is settled (read back, or cancelled for good) before it is answered, or answered
//!   504 "outcome unknown" and settled later.
//! - [`term`] bounds what a rollout driver does to its lease: its hooks are killed before
//!   the lease could expire in etcd, even when this process is frozen.
//! - [`apply`] applies what etcd holds: the whole state at a resync, then watched events.
//! - [`election`] elects the one instance that drives each rollout (first the one that
//!   started it), and fences its writes.
//!
//! Fail static: while etcd is unreachable an instance keeps its last state and serves with
//! it; writes are refused ([`ClusterError::Unavailable`]) until it has resynced.

mod apply;
mod commit;
pub mod election;
mod etcd;
pub mod guard;
pub mod ops;
mod session;
pub mod store;
pub mod term;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::control::Control;
use crate::pool::affinity::{KeySource, Keys};
use crate::pool::SessionKind;
use store::{Member, View};

/// How long one etcd request may take before the instance counts etcd as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write waits for a session being set up before it answers 503.
pub const RECONNECT_WAIT: Duration = Duration::from_secs(1);
/// How long a drain or enable waits for every live member to apply it.
pub const APPLY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: etcd is unreachable ({0}); admin writes are refused until this instance has reconnected and resynced, and it serves with the state it last knew")]
    Unavailable(String),
    #[error(transparent)]
    Guard(#[from] crate::lifecycle::OpError),
    #[error("cluster: {0}")]
    Conflict(String),
    #[error(transparent)]
    Members(crate::members::MemberError),
    /// etcd did not say whether the write was applied, and no member could tell in time.
    #[error("outcome unknown")]
    Unknown {
        /// The write's id, as `write_outcome` events name it.
        write: String,
        what: String,
        reason: String,
    },
}

/// Rollout records and abort requests as etcd has them (for [`crate::rollout`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutMirror {
    /// id → the record's JSON.
    pub records: BTreeMap<String, Vec<u8>>,
    /// Ids whose abort was requested.
    pub aborts: BTreeSet<String>,
    /// Rollout id → old node → the replacement an operator offered (JSON).
    pub offers: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// Who drives which rollout: each running rollout has an election of its own, won first by
/// the instance that started it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drivers {
    /// Rollout id → the instance holding its driver key.
    pub holders: BTreeMap<String, String>,
    /// Rollout id → the term of its driver (the driver key's create revision).
    pub terms: BTreeMap<String, i64>,
    /// Rollout id → this instance's term (the key's create revision) where it holds the key
    /// in this session.
    pub mine: BTreeMap<String, i64>,
}

pub struct Cluster {
    /// This cluster, for tasks that outlive a call (settling a write in the background).
    me: Weak<Cluster>,
    pub config: ClusterConfig,
    pub keys: store::Keys,
    /// The admin API's address, published for operators.
    admin: String,
    since: String,
    ctl: Arc<Control>,
    /// Ends the session (process stop, or this process handed over to another).
    pub stop: CancellationToken,
    client: Mutex<Option<etcd_client::Client>>,
    /// Set once a session has resynced; cleared at the first error.
    connected: watch::Sender<bool>,
    lease: AtomicI64,
    last_error: Mutex<String>,
    /// The revision of shared admin state this instance has applied.
    applied: watch::Sender<i64>,
    /// Live members by name, as last published (this instance's own included).
    members: watch::Sender<BTreeMap<String, Member>>,
    rollouts: watch::Sender<RolloutMirror>,
    drivers: watch::Sender<Drivers>,
    /// `pool/node` → mod revision of its key as applied (0: no key), for the pool's
    /// compare-and-swap.
    node_revs: Mutex<HashMap<String, i64>>,
    /// `pool` → mod revision of its runtime members key as applied (0: none).
    pool_revs: Mutex<HashMap<String, i64>>,
    /// Every live instance's view of the nodes (this one's as published).
    views: watch::Sender<BTreeMap<String, View>>,
    /// The revision up to which this instance has seen every change under the prefix (the
    /// resync's, then each watched event's): a view changed after it is one not yet read.
    seen: watch::Sender<i64>,
    /// The mod revision of this instance's write fence as last known ([`commit`]).
    fence_rev: AtomicI64,
    /// One admin write of this instance at a time (held on while an unknown outcome is
    /// settled in the background).
    writes: Arc<tokio::sync::Mutex<()>>,
    /// The lease's safe deadline and the hooks bound by it.
    pub term: term::Term,
    /// The affinity key etcd holds (hex), once read.
    affinity_key: Mutex<Option<String>>,
    /// This instance's affinity key (hex), offered when etcd has none.
    own_affinity_key: String,
}

/// `GET /v1/cluster`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ClusterView {
    pub prefix: String,
    pub instance: String,
    pub connected: bool,
    /// Running (or just finished) rollouts by id, with the instance that drives each. Empty
    /// while not connected: a cut-off instance claims no driver role, its own or another's.
    pub drivers: BTreeMap<String, String>,
    /// `members` is what this instance last knew before it lost etcd (not connected).
    #[serde(default)]
    pub members_stale: bool,
    /// The revision of shared state this instance has applied.
    pub revision: i64,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct MemberView {
    pub instance: String,
    pub admin: String,
    pub since: String,
    pub revision: i64,
    /// `pool/node` → sessions this instance holds on it.
    pub sessions: BTreeMap<String, usize>,
}

/// The affinity keys of an instance joining a cluster: the ones etcd holds (this instance's
/// are stored there when it holds none), so a cookie issued by any instance names the same
/// node on all. A shared secret (`affinity_key_env`) wins; without etcd at start the
/// instance keeps its own and says so.
pub async fn shared_keys(config: &ClusterConfig, own: Arc<Keys>) -> Arc<Keys> {
    if own.source() == KeySource::Secret {
        return own;
    }
    match session::shared_affinity_key(config, &own.to_hex()).await {
        Ok(hex) => match Keys::parse_hex(&hex) {
            Some(key) => Arc::new(Keys::stored(key)),
            None => {
                tracing::error!("cluster: the shared affinity key in etcd is not 32 hex digits; using this instance's own");
                own
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cluster: could not read the shared affinity key; this instance's cookies are its own until it restarts with etcd reachable");
            own
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Cluster {
    /// Replaces the cluster's TLS ticket keys `from` by `to`: `Ok(true)` when this
    /// instance's write landed, `Ok(false)` when another instance rotated first (its keys
    /// arrive by the watch), `Err` when etcd is not reachable (the keys stay as they are).
    pub async fn rotate_tickets(
        &self,
        from: &crate::tickets::KeySet,
        to: &crate::tickets::KeySet,
    ) -> Result<bool, String> {
        session::rotate_tickets(self, from, to).await
    }

    /// Starts the session task. `own_key` is this instance's affinity key (hex).
    pub fn start(
        config: ClusterConfig,
        admin: String,
        ctl: Arc<Control>,
        own_key: String,
    ) -> Arc<Cluster> {
        let cluster = Arc::new_cyclic(|me| Cluster {
            me: me.clone(),
            keys: store::Keys::new(&config.prefix),
            config,
            admin,
            since: crate::time::rfc3339(crate::time::unix_ms()),
            stop: ctl.stop.child_token(),
            ctl,
            client: Mutex::new(None),
            connected: watch::channel(false).0,
            lease: AtomicI64::new(0),
            last_error: Mutex::new("not connected yet".into()),
            applied: watch::channel(0).0,
            members: watch::channel(BTreeMap::new()).0,
            rollouts: watch::channel(RolloutMirror::default()).0,
            drivers: watch::channel(Drivers::default()).0,
            node_revs: Mutex::new(HashMap::new()),
            pool_revs: Mutex::new(HashMap::new()),
            views: watch::channel(BTreeMap::new()).0,
            seen: watch::channel(0).0,
            fence_rev: AtomicI64::new(0),
            writes: Arc::new(tokio::sync::Mutex::new(())),
            term: term::Term::default(),
            affinity_key: Mutex::new(None),
            own_affinity_key: own_key,
        });
        tokio::spawn(session::run(Arc::clone(&cluster)));
        cluster
    }

    /// Stops the session and revokes the lease: other instances stop counting this one at
    /// once, and another is elected driver of the rollouts this one drove.
    pub async fn leave(&self) {
        self.stop.cancel();
        session::revoke(self).await;
    }

    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    pub fn connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The client, when connected and resynced; else why not. A write that arrives while a
    /// session is being set up (etcd just came back, or a member went) waits for it a moment
    /// rather than fail at once.
    async fn writable(&self) -> Result<etcd_client::Client, ClusterError> {
        let mut connected = self.connected.subscribe();
        let _ = tokio::time::timeout(RECONNECT_WAIT, connected.wait_for(|c| *c)).await;
        if !self.connected() {
            return Err(ClusterError::Unavailable(lock(&self.last_error).clone()));
        }
        lock(&self.client)
            .clone()
            .ok_or_else(|| ClusterError::Unavailable("no session".into()))
    }

    /// Who drives rollout `id`, and in which term, as etcd last said; `None` while this
    /// instance is cut off (it cannot know).
    pub fn driver_of(&self, id: &str) -> Option<(String, i64)> {
        if !self.connected() {
            return None;
        }
        let d = self.drivers.borrow();
        Some((d.holders.get(id)?.clone(), *d.terms.get(id)?))
    }

    /// Waits until some instance's view of the nodes changes, for at most `limit`.
    pub async fn views_changed(&self, limit: Duration) {
        let mut views = self.views.subscribe();
        let _ = tokio::time::timeout(limit, views.changed()).await;
    }

    pub fn rollouts(&self) -> watch::Receiver<RolloutMirror> {
        self.rollouts.subscribe()
    }

    pub fn drivers(&self) -> watch::Receiver<Drivers> {
        self.drivers.subscribe()
    }

    pub fn members(&self) -> watch::Receiver<BTreeMap<String, Member>> {
        self.members.subscribe()
    }

    pub fn view(&self) -> ClusterView {
        let members = self.members.borrow();
        let connected = self.connected();
        ClusterView {
            prefix: self.config.prefix.clone(),
            instance: self.config.instance.clone(),
            connected,
            drivers: if connected {
                self.drivers.borrow().holders.clone()
            } else {
                BTreeMap::new()
            },
            members_stale: !connected,
            revision: *self.applied.borrow(),
            members: members
                .values()
                .map(|m| MemberView {
                    instance: m.instance.clone(),
                    admin: m.admin.clone(),
                    since: m.since.clone(),
                    revision: m.revision,
                    sessions: m
                        .nodes
                        .iter()
                        .map(|(k, n)| (k.clone(), n.sessions.total))
                        .collect(),
                })
                .collect(),
        }
    }

    /// A cheap digest of what the report shows but pinned affinity clients: admin state,
    /// health, version and session counts of every node (atomics only).
    fn pulse(&self) -> u64 {
        let snapshot = self.ctl.snapshot.load();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |v: u64| h = (h ^ v).wrapping_mul(0x0100_0000_01b3);
        for pool in &snapshot.pools {
            for node in &pool.nodes {
                let s = &node.state;
                mix(s.admin() as u64);
                mix(s.health() as u64);
                mix(s.version().map_or(0, |v| Arc::as_ptr(&v) as u64));
                for kind in [
                    SessionKind::HttpInflight,
                    SessionKind::Tunnel,
                    SessionKind::Tcp,
                ] {
                    mix(s.sessions(kind) as u64);
                }
            }
        }
        h
    }

    /// What this instance sees of every node now (published as its [`View`]).
    fn own_view(&self) -> View {
        let snapshot = self.ctl.snapshot.load();
        let mut nodes = BTreeMap::new();
        for pool in &snapshot.pools {
            for node in &pool.nodes {
                nodes.insert(
                    node.key(),
                    store::ViewNode {
                        state: node.state.admin().as_str().to_string(),
                        health: node.state.health().as_str().to_string(),
                    },
                );
            }
        }
        View { nodes }
    }

    /// This instance's report as it would publish it now.
    fn member(&self) -> Member {
        let snapshot = self.ctl.snapshot.load();
        let mut nodes = BTreeMap::new();
        for pool in &snapshot.pools {
            for node in &pool.nodes {
                nodes.insert(
                    node.key(),
                    store::MemberNode {
                        state: node.state.admin().as_str().to_string(),
                        health: node.state.health().as_str().to_string(),
                        version: node.state.version().map(|v| v.to_string()),
                        sessions: crate::pool::SessionCounts::of(node, pool),
                    },
                );
            }
        }
        Member {
            instance: self.config.instance.clone(),
            admin: self.admin.clone(),
            since: self.since.clone(),
            revision: *self.applied.borrow(),
            nodes,
        }
    }
}
