//! Pools of interchangeable nodes: node runtime state, the admission rule, session
//! accounting and node selection.

pub mod admin;
pub mod affinity;
pub mod attempts;
pub mod h2conn;
pub mod history;
mod idle;
mod lifecycle;
mod node;
mod pick;
mod session;
pub mod state;
pub mod traffic;
pub mod upstream_io;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Acquire, Ordering::Release};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;

pub use admin::{Admin, Effect, Record};
pub use attempts::{Attempts, Strategy};
pub use lifecycle::{warmup_factor, Lifecycle};
pub use node::{unix_ms, Node, NodeState, RolloutTag};
pub use pick::Tried;
pub use session::{SessionCounts, SessionGuard, SessionKind};
pub use state::{AdminState, Health};
pub use traffic::{Cause, Sample, Traffic};

use crate::config::{Balance, HealthConfig, PoolConfig};
use crate::events::{Events, NodeEvents};
use crate::metrics::{Metrics, NodeMetrics, PoolMetrics};
pub use h2conn::H2Conn;
pub use idle::{CloseWatch, IdleConns, Upstream};
pub use upstream_io::UpstreamIo;

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
    /// TLS to the nodes (`upstream.tls`), built with each snapshot so a reload reloads it.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// What a preview request carries: `header: version`, or the cookie
/// `handoff_preview=version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// Lowercase.
    pub header: String,
    pub version: String,
}

/// The cookie that asks for a preview, like the header.
pub const PREVIEW_COOKIE: &str = "handoff_preview";

/// A pool's control-plane state, kept across reloads by pool name (one home for each piece).
#[derive(Default)]
pub struct PoolControl {
    /// Serialises every admin transition of the pool's nodes, so the pair guard and the
    /// change it allows happen as one step (two concurrent drains cannot both pass).
    serial: Mutex<()>,
    /// During a rollout with `prefer_target_version`: the version new sessions prefer.
    pub prefer: ArcSwapOption<String>,
    /// During a rollout with `preview`: requests asking for its target version go to a node
    /// reporting it, admitted or not.
    pub preview: ArcSwapOption<Preview>,
    /// Held (without waiting) while a passive ejection checks the pair guard, so two nodes
    /// failing at once cannot both be ejected.
    ejecting: AtomicBool,
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
        events: &Arc<Events>,
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
                            source: n.source,
                            state: Arc::clone(&old.state),
                            token: old.token.clone(),
                            idle: if moved {
                                IdleConns::new()
                            } else {
                                old.idle.clone()
                            },
                            h2: if moved {
                                H2Conn::default()
                            } else {
                                old.h2.clone()
                            },
                        })
                    }
                    None => Arc::new(Node {
                        pool: config.name.clone(),
                        name: n.name.clone(),
                        addr: n.addr,
                        weight: n.weight,
                        source: n.source,
                        state: Arc::new(NodeState::new(
                            NodeMetrics::new(metrics, &config.name, &n.name),
                            NodeEvents::new(events, &config.name, &n.name),
                        )),
                        idle: IdleConns::new(),
                        h2: H2Conn::default(),
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
            tls: config.upstream.tls.as_ref().and_then(|t| {
                match t.client_config(config.upstream.protocol) {
                    Ok(c) => Some(tokio_rustls::TlsConnector::from(c)),
                    Err(e) => {
                        // Checked when the config was loaded; connects fail without it.
                        tracing::error!(pool = %config.name, error = %e, "building the upstream TLS config failed");
                        None
                    }
                }
            }),
        }
    }

    pub fn health_config(&self) -> &HealthConfig {
        &self.config.health
    }

    /// Whether a node other than node `index` takes new sessions: what the pair guard,
    /// passive ejection and a second opinion on a node under analysis all ask.
    pub fn another_serves(&self, index: usize) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .any(|(i, n)| i != index && n.state.admits_new())
    }

    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Records a failed upstream connect to node `index`; returns `(from, to)` when it
    /// flipped the node's health (the caller logs it, once).
    pub fn passive_failure(&self, index: usize) -> Option<(Health, Health)> {
        let state = &self.nodes[index].state;
        let streak = state.traffic.failed(Cause::Connect);
        state
            .record_passive_failure(&self.config.health)
            .or_else(|| self.check_ejection(index, streak))
    }

    /// Node `index` answered `status`, `elapsed` after it was asked.
    #[inline]
    pub fn answered(&self, index: usize, status: u16, elapsed: Duration) {
        let state = &self.nodes[index].state;
        state.metrics.response(status);
        let streak = state.traffic.answered(status, elapsed);
        if streak > 0 {
            self.log_ejection(index, streak);
        }
    }

    /// A TCP session to node `index` connected after `elapsed`.
    pub fn connected(&self, index: usize, elapsed: Duration) {
        self.nodes[index].state.traffic.answered(0, elapsed);
    }

    /// Node `index` closed, reset or timed out before answering. `status` is what handoff
    /// answers in its place, when it does (the node's response metrics count it).
    pub fn no_answer(&self, index: usize, status: Option<u16>) {
        let state = &self.nodes[index].state;
        if let Some(status) = status {
            state.metrics.response(status);
        }
        let streak = state.traffic.failed(Cause::NoAnswer);
        self.log_ejection(index, streak);
    }

    fn log_ejection(&self, index: usize, streak: u32) {
        if let Some((from, to)) = self.check_ejection(index, streak) {
            self.nodes[index].health_flipped(from, to, "consecutive 5xx answers");
        }
    }

    /// Passive ejection (`health.passive.consecutive_5xx`): `streak` errors in a row mark the
    /// node down, unless no other node would serve (the pair guard). Never waits: when
    /// another ejection is being decided, this one is decided at the next error.
    fn check_ejection(&self, index: usize, streak: u32) -> Option<(Health, Health)> {
        let limit = self.config.health.consecutive_5xx?;
        if streak < limit || self.control.ejecting.swap(true, Acquire) {
            return None;
        }
        let flipped = if self.another_serves(index) {
            self.nodes[index].state.eject()
        } else {
            None
        };
        self.control.ejecting.store(false, Release);
        flipped
    }
}
