//! Pools of interchangeable nodes: node runtime state, the admission rule, session
//! accounting and node selection.

pub mod admin;
pub mod affinity;
pub mod attempts;
mod idle;
mod lifecycle;
mod node;
mod pick;
mod session;
pub mod state;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwapOption;

pub use admin::{Admin, Effect, Record};
pub use attempts::{Attempts, Strategy};
pub use lifecycle::{warmup_factor, Lifecycle};
pub use node::{unix_ms, Node, NodeState};
pub use pick::Tried;
pub use session::{SessionCounts, SessionGuard, SessionKind};
pub use state::{AdminState, Health};

use crate::config::{Balance, HealthConfig, PoolConfig};
use crate::metrics::{Metrics, NodeMetrics, PoolMetrics};
pub use idle::{CloseWatch, IdleConns, Upstream};

/// A pool as one snapshot sees it. Rebuilt on reload; node states carry over.
pub struct Pool {
    pub name: String,
    pub balance: Balance,
    pub nodes: Vec<Arc<Node>>,
    pub config: PoolConfig,
    pub metrics: PoolMetrics,
    /// Round-robin order (node indexes), built once.
    ring: Vec<u8>,
    /// Sum of the configured weights.
    total_weight: f64,
    /// Rotating start for picks.
    next: AtomicUsize,
    /// What outlives this snapshot of the pool: its control lock and version preference.
    pub control: Arc<PoolControl>,
    /// Affinity keys (node tokens, client ids, address hashing), shared by every pool.
    pub keys: Arc<affinity::Keys>,
}

/// A pool's control-plane state, kept across reloads by pool name (one home for each piece).
#[derive(Default)]
pub struct PoolControl {
    /// Serialises every admin transition of the pool's nodes, so the pair guard and the
    /// change it allows happen as one step (two concurrent drains cannot both pass).
    serial: Mutex<()>,
    /// During a rollout with `prefer_target_version`: the version new sessions prefer.
    pub prefer: ArcSwapOption<String>,
}

impl PoolControl {
    /// Holds the pool's admin transitions off until the guard drops. Never held across an
    /// await; the data path never takes it.
    pub fn serialize(&self) -> MutexGuard<'_, ()> {
        self.serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Pool {
    /// Builds a pool, reusing the runtime state of nodes that existed before under the same
    /// `pool/node` key (`previous`), so a reload keeps admin state, health and sessions.
    pub fn build(
        config: &PoolConfig,
        previous: &HashMap<String, Arc<Node>>,
        control: Arc<PoolControl>,
        keys: &Arc<affinity::Keys>,
        metrics: &Metrics,
    ) -> Pool {
        let nodes = config
            .nodes
            .iter()
            .map(|n| {
                let key = format!("{}/{}", config.name, n.name);
                match previous.get(&key) {
                    Some(old) if old.addr == n.addr && old.weight == n.weight => Arc::clone(old),
                    Some(old) => {
                        let moved = old.addr != n.addr;
                        if moved {
                            // What was learnt about the old address says nothing of the new
                            // one: it must pass its checks (and report its version) there.
                            old.state.address_changed();
                        }
                        Arc::new(Node {
                            pool: config.name.clone(),
                            name: n.name.clone(),
                            addr: n.addr,
                            weight: n.weight,
                            state: Arc::clone(&old.state),
                            token: old.token.clone(),
                            idle: if moved {
                                IdleConns::new()
                            } else {
                                old.idle.clone()
                            },
                        })
                    }
                    None => Arc::new(Node {
                        pool: config.name.clone(),
                        name: n.name.clone(),
                        addr: n.addr,
                        weight: n.weight,
                        state: Arc::new(NodeState::new(NodeMetrics::new(
                            metrics,
                            &config.name,
                            &n.name,
                        ))),
                        idle: IdleConns::new(),
                        token: keys.node_token(&config.name, &n.name),
                    }),
                }
            })
            .collect::<Vec<_>>();
        let weights: Vec<u32> = nodes.iter().map(|n| n.weight).collect();
        Pool {
            name: config.name.clone(),
            balance: config.balance,
            ring: pick::build_ring(&weights),
            total_weight: weights.iter().map(|&w| f64::from(w)).sum(),
            nodes,
            config: config.clone(),
            metrics: PoolMetrics::new(metrics, &config.name),
            next: AtomicUsize::new(0),
            control,
            keys: Arc::clone(keys),
        }
    }

    pub fn health_config(&self) -> &HealthConfig {
        &self.config.health
    }

    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Records a failed upstream connect to node `index`; returns `(from, to)` when it
    /// flipped the node's health (the caller logs it, once).
    pub fn passive_failure(&self, index: usize) -> Option<(Health, Health)> {
        self.nodes[index]
            .state
            .record_passive_failure(&self.config.health)
    }
}
