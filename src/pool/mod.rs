//! Pools of interchangeable nodes: node runtime state, the admission rule, session
//! accounting and node selection.

pub mod affinity;
mod lifecycle;
mod node;
mod pick;
mod session;
pub mod state;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

pub use lifecycle::{warmup_factor, Lifecycle};
pub use node::{unix_ms, Node, NodeState};
pub use pick::Tried;
pub use session::{SessionGuard, SessionKind};
pub use state::{AdminState, Health};

use crate::config::{Balance, HealthConfig, PoolConfig};
use crate::metrics::{Metrics, NodeMetrics, PoolMetrics};
use crate::proxy::http::upstream::IdleConns;

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
    /// During a rollout with `prefer_target_version`: the version new sessions prefer.
    pub prefer: ArcSwapOption<String>,
}

impl Pool {
    /// Builds a pool, reusing the runtime state of nodes that existed before under the same
    /// `pool/node` key (`previous`), so a reload keeps admin state, health and sessions.
    pub fn build(
        config: &PoolConfig,
        previous: &HashMap<String, Arc<Node>>,
        metrics: &Metrics,
    ) -> Pool {
        let nodes = config
            .nodes
            .iter()
            .map(|n| {
                let key = format!("{}/{}", config.name, n.name);
                match previous.get(&key) {
                    Some(old) if old.addr == n.addr && old.weight == n.weight => Arc::clone(old),
                    Some(old) => Arc::new(Node {
                        pool: config.name.clone(),
                        name: n.name.clone(),
                        addr: n.addr,
                        weight: n.weight,
                        state: Arc::clone(&old.state),
                        token: old.token.clone(),
                        idle: if old.addr == n.addr {
                            old.idle.clone()
                        } else {
                            IdleConns::new()
                        },
                    }),
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
                        token: affinity::keys().node_token(&config.name, &n.name),
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
            prefer: ArcSwapOption::empty(),
        }
    }

    pub fn health_config(&self) -> &HealthConfig {
        &self.config.health
    }

    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Records a failed upstream connect to node `index` and logs a resulting health flip.
    pub fn passive_failure(&self, index: usize) {
        let node = &self.nodes[index];
        if let Some((from, to)) = node.state.record_passive_failure(&self.config.health) {
            crate::health::log_flip(node, from, to, "passive connect failures");
        }
    }
}
