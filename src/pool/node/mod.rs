//! One backend node: its configuration, and its runtime state behind atomics.
//!
//! [`NodeState`] is what survives a config reload (admin state, health, version, session
//! counts, metric handles): it is keyed by `pool/node` and moved into the rebuilt [`Node`].
//! A changed address makes a new `Node` (and so a fresh upstream connection pool) around the
//! same state.

use std::net::SocketAddr;
use std::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
    Ordering::SeqCst,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

mod health;

use super::admin::{Admin, Record};
use super::affinity::AffinityTable;
use super::lifecycle::Lifecycle;
use super::state::{AdminState, Health};
use super::traffic::Traffic;
use super::IdleConns;
use super::SessionKind;
use crate::events::NodeEvents;
use crate::metrics::NodeMetrics;
pub use crate::time::unix_ms;

/// A node as the current snapshot sees it.
pub struct Node {
    pub pool: String,
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: Arc<NodeState>,
    /// Idle keep-alive HTTP/1.1 connections to this node's address.
    pub idle: IdleConns,
    /// The HTTP/2 connection to it (h2c and h2 pools).
    pub h2: super::H2Conn,
    /// The opaque value that names this node in affinity cookies.
    pub token: String,
    /// The file, the admin API or DNS.
    pub source: crate::config::NodeSource,
}

/// Runtime state of a node, kept across reloads by `pool/node` identity.
pub struct NodeState {
    /// The admin state kind, mirrored from `record` for the data path.
    admin: AtomicU8,
    /// The admin record; written only under the pool's serialisation lock.
    record: Mutex<Record>,
    health: AtomicU8,
    /// Unix milliseconds of the last health change.
    health_since: AtomicU64,
    /// Current streak of passing checks (0 while failing).
    passes: AtomicU32,
    /// Current streak of failing checks or passive connect failures (0 while passing).
    fails: AtomicU32,
    /// Version from the last passing check that carried one.
    version: ArcSwapOption<String>,
    /// Sessions in progress, indexed by [`SessionKind`].
    sessions: [AtomicUsize; 4],
    pub metrics: NodeMetrics,
    /// Where this node's changes are published (`/v1/events`).
    pub events: NodeEvents,
    /// Woken on every state or health change, and when the last active session ends while
    /// someone waits.
    pub changed: Notify,
    /// Tasks inside [`NodeState::wait_until`]; lets the data path skip Notify's internal lock
    /// when nobody waits.
    waiters: AtomicUsize,
    /// Consecutive passing checks that reported the current version (readmission needs
    /// `healthy_after` of them with the target version).
    version_passes: AtomicU32,
    /// Sessions the previous generation (a takeover's old process) still holds on this node:
    /// a drain here also waits for them.
    previous_sessions: AtomicUsize,
    /// Bumped when a reload moves the node to another address: a check that was probing the
    /// old address when it moved reports into an older epoch and is ignored.
    address_epoch: AtomicU64,
    /// Drain deadlines, warmup ramp, deadline closes and rebalance signals.
    pub lifecycle: Lifecycle,
    /// Clients pinned here (pools with affinity).
    pub affinity: AffinityTable,
    /// Requests, errors and latency of this node's traffic.
    pub traffic: Traffic,
    /// Set while a rollout judges this node: its 5xx answers to requests that can be sent
    /// again go to a sibling instead of the client.
    probation: AtomicBool,
    /// Recent admin state and health changes, and cluster write outcomes.
    pub history: super::history::History,
    /// The rollout this node is in and its phase there (the access log names it).
    rollout: ArcSwapOption<RolloutTag>,
}

/// A node's place in a rollout: the rollout's ID and the phase the node is in.
#[derive(Debug, PartialEq, Eq)]
pub struct RolloutTag {
    pub id: Box<str>,
    pub phase: &'static str,
}

impl NodeState {
    pub fn new(metrics: NodeMetrics, events: NodeEvents) -> Self {
        let now = unix_ms();
        NodeState {
            admin: AtomicU8::new(AdminState::Active as u8),
            record: Mutex::new(Record::new(Admin::Active, now)),
            health: AtomicU8::new(Health::Unknown as u8),
            health_since: AtomicU64::new(now),
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            version: ArcSwapOption::empty(),
            sessions: Default::default(),
            metrics,
            events,
            changed: Notify::new(),
            waiters: AtomicUsize::new(0),
            version_passes: AtomicU32::new(0),
            address_epoch: AtomicU64::new(0),
            previous_sessions: AtomicUsize::new(0),
            lifecycle: Lifecycle::new(),
            affinity: AffinityTable::default(),
            traffic: Traffic::default(),
            probation: AtomicBool::new(false),
            history: Default::default(),
            rollout: ArcSwapOption::empty(),
        }
    }

    /// The rollout this node is in, and its phase.
    pub fn rollout(&self) -> Option<Arc<RolloutTag>> {
        self.rollout.load_full()
    }

    /// Sets (or, with `None`, clears) the node's rollout and phase.
    pub fn set_rollout(&self, tag: Option<RolloutTag>) {
        if self.rollout.load().as_deref() != tag.as_ref() {
            self.rollout.store(tag.map(Arc::new));
        }
    }

    /// Counts and publishes an admin state (`node_state`) or a health (`node_health`)
    /// entered.
    pub(crate) fn entered(&self, event: &'static str, to: &str) {
        self.metrics.transition(to);
        self.events.publish(event, to);
    }

    /// Whether a rollout is judging this node (see [`NodeState::set_probation`]).
    #[inline]
    pub fn on_probation(&self) -> bool {
        self.probation.load(Relaxed)
    }

    pub fn set_probation(&self, on: bool) {
        self.probation.store(on, Relaxed);
    }

    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Relaxed))
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Relaxed))
    }

    /// The one rule for new sessions: admin state lets it, and health is up.
    #[inline]
    pub fn admits_new(&self) -> bool {
        self.admin().admits_new() && self.health() == Health::Up
    }

    /// The admin record (control plane and views; never held across an await).
    pub fn record(&self) -> Record {
        *self
            .record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn admin_since_ms(&self) -> u64 {
        self.record().since_ms
    }

    pub fn health_since_ms(&self) -> u64 {
        self.health_since.load(Relaxed)
    }

    pub fn version(&self) -> Option<Arc<String>> {
        self.version.load_full()
    }

    pub fn sessions(&self, kind: SessionKind) -> usize {
        self.sessions[kind as usize].load(Relaxed)
    }

    /// Sessions that hold a connection (what least_conn balances): requests, tunnels, TCP.
    #[inline]
    pub fn active_sessions(&self) -> usize {
        self.sessions[0].load(Relaxed)
            + self.sessions[1].load(Relaxed)
            + self.sessions[2].load(Relaxed)
    }

    pub(super) fn session_started(&self, kind: SessionKind) {
        self.sessions[kind as usize].fetch_add(1, Relaxed);
        self.metrics.session_started(kind);
    }

    pub(super) fn session_ended(&self, kind: SessionKind) {
        // SeqCst pairs with the fence in `wait_until`: either the waiter sees this decrement,
        // or this sees the waiter and notifies.
        let before = self.sessions[kind as usize].fetch_sub(1, SeqCst);
        debug_assert!(before > 0, "session count underflow");
        // Every kind read SeqCst: of two sessions of different kinds ending at once on two
        // threads, the later in the total order sees both decrements and notifies.
        let active = self.sessions[..3]
            .iter()
            .map(|c| c.load(SeqCst))
            .sum::<usize>();
        if self.waiters.load(SeqCst) > 0 && active == 0 {
            self.changed.notify_waiters();
        }
    }

    /// Applies the result of an admin transition and mirrors it where the data path reads
    /// it (the state kind, the drain deadline and close spread, the warmup ramp). Returns the
    /// previous kind. The caller holds the pool's serialisation lock.
    pub fn apply(&self, next: Record, close_spread: Duration) -> AdminState {
        let mut rec = self
            .record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let from = rec.kind();
        let fresh = rec.epoch != next.epoch || from != next.kind();
        let life = &self.lifecycle;
        match next.admin {
            Admin::Draining { deadline_ms } if fresh => {
                life.set_drain_deadline(next.since_ms, deadline_ms, close_spread)
            }
            Admin::Draining { .. } => {}
            Admin::Warming { warmup, .. } => {
                if fresh {
                    life.start_warming(warmup);
                }
                life.clear_drain_deadline();
                life.clear_deadline_passed();
            }
            Admin::Active => {
                life.clear_drain_deadline();
                life.clear_deadline_passed();
            }
            Admin::Drained => life.clear_drain_deadline(),
        }
        *rec = next;
        self.admin.store(next.kind() as u8, SeqCst);
        drop(rec);
        if from != next.kind() {
            self.entered("node_state", next.kind().as_str());
            self.history.note(format!("state {}", next.kind().as_str()));
        }
        self.changed.notify_waiters();
        from
    }

    /// Forces the admin state kind, for tests and benchmarks that build pools by hand (the
    /// product changes admin state only through `lifecycle`). Draining has no deadline and
    /// warming no ramp.
    pub fn set_admin(&self, to: AdminState) {
        let admin = match to {
            AdminState::Active => Admin::Active,
            AdminState::Draining => Admin::Draining {
                deadline_ms: crate::time::MAX_UNIX_MS,
            },
            AdminState::Drained => Admin::Drained,
            AdminState::Warming => Admin::Warming {
                until_ms: unix_ms(),
                warmup: Duration::ZERO,
            },
        };
        let epoch = self.record().epoch.wrapping_add(1);
        let next = Record {
            admin,
            since_ms: unix_ms(),
            pending_warmup: None,
            epoch,
        };
        self.apply(next, Duration::ZERO);
    }

    /// Tasks waiting on this node's change signal right now (admin `wait` long polls, drain
    /// and rollout steps): lets a test know a long poll has arrived without sleeping.
    pub fn waiters(&self) -> usize {
        self.waiters.load(SeqCst)
    }

    /// Sessions the previous generation still holds here (see [`NodeState::set_previous_sessions`]).
    pub fn previous_sessions(&self) -> usize {
        self.previous_sessions.load(SeqCst)
    }

    /// The previous generation reported what it holds here; a drain waiting on it wakes
    /// when that reaches zero.
    pub fn set_previous_sessions(&self, n: usize) {
        if self.previous_sessions.swap(n, SeqCst) != n && n == 0 {
            self.changed.notify_waiters();
        }
    }
}

impl NodeState {
    /// Waits until `done` holds, woken by [`NodeState::changed`], for at most `limit`.
    /// Returns whether it holds.
    pub async fn wait_until(
        &self,
        limit: std::time::Duration,
        done: impl Fn(&NodeState) -> bool,
    ) -> bool {
        let deadline = crate::time::instant_after(limit);
        self.waiters.fetch_add(1, SeqCst);
        fence(SeqCst);
        let _waiting = WaiterGuard(&self.waiters);
        loop {
            // Created before the check, so a change between check and await is not missed.
            let changed = self.changed.notified();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(self);
            }
        }
    }
}

struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Node {
    /// Logs, counts and notes one health flip (from a check or a passive failure); a node
    /// going down also loses its idle upstream connections, which would only fail the next
    /// requests.
    pub fn health_flipped(&self, from: Health, to: Health, reason: &str) {
        self.state.entered("node_health", to.as_str());
        self.state
            .history
            .note(format!("health {} ({reason})", to.as_str()));
        if to == Health::Down {
            self.idle.clear();
            self.h2.clear();
            tracing::warn!(node = %self.key(), from = from.as_str(), to = to.as_str(), reason, "node health changed");
        } else {
            let version = self.state.version();
            tracing::info!(
                node = %self.key(),
                from = from.as_str(),
                to = to.as_str(),
                version = version.as_deref().map_or("", |v| v.as_str()),
                "node health changed"
            );
        }
    }

    /// Weight used for balancing right now: a warming node ramps from 10 % to 100 %.
    #[inline]
    pub fn effective_weight(&self) -> u32 {
        if self.state.admin() == AdminState::Warming {
            self.state.lifecycle.warm_weight(self.weight)
        } else {
            self.weight
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.pool, self.name)
    }
}
