//! Pool members at runtime: the nodes the admin API (or DNS discovery) added, changed or
//! removed, kept as a difference from the config file. The running members are the file's
//! with that difference applied ([`Membership::effective`]), so a reload applies what the
//! file changed and keeps what the API did to nodes the file did not touch
//! ([`Membership::rebase`], sozu's desired-state diff), and the state file, a takeover and
//! the cluster carry the difference, not a copy of the file.
//!
//! Plain data and pure functions: [`crate::control`] holds the current one and rebuilds the
//! routing snapshot from it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::defaults::MAX_NODES_PER_POOL;
use crate::config::{Config, NodeConfig, NodeSource, PoolConfig};

/// What runtime changes did to every pool, relative to the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, PoolChanges>,
}

/// One pool's runtime changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolChanges {
    /// Nodes the file does not have, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added: BTreeMap<String, Added>,
    /// File nodes whose address or weight was changed, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub changed: BTreeMap<String, Changed>,
    /// File nodes that were removed.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Added {
    pub addr: SocketAddr,
    pub weight: u32,
    pub source: NodeSource,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Why a change cannot be made (nothing changed).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MemberError {
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    #[error("unknown node {node:?} in pool {pool:?}")]
    UnknownNode { pool: String, node: String },
    #[error("pool {pool:?} already has a node named {node:?}")]
    Exists { pool: String, node: String },
    #[error("pool {pool:?} would have {count} nodes: at most {MAX_NODES_PER_POOL}")]
    TooMany { pool: String, count: usize },
    #[error("node {pool}/{node} is the pool's only node: a pool needs at least one")]
    LastNode { pool: String, node: String },
    /// A reload's file adds a node whose name runtime changes already use.
    #[error("{0}")]
    Conflict(String),
}

impl Membership {
    /// Whether there is nothing to carry.
    pub fn is_empty(&self) -> bool {
        self.pools.values().all(PoolChanges::is_empty)
    }

    /// The config that runs: `file` with these changes applied. Nodes keep the file's order;
    /// added ones follow, by name.
    pub fn effective(&self, file: &Config) -> Config {
        let mut config = file.clone();
        for pool in &mut config.pools {
            if let Some(changes) = self.pools.get(&pool.name) {
                pool.nodes = changes.apply(&pool.nodes);
            }
        }
        config
    }

    /// Adds `node` to `pool` (of `file`, with these changes applied).
    pub fn add(&mut self, file: &Config, pool: &str, node: NodeConfig) -> Result<(), MemberError> {
        let (current, base) = self.current(file, pool)?;
        if current.iter().any(|n| n.name == node.name) {
            return Err(MemberError::Exists {
                pool: pool.into(),
                node: node.name,
            });
        }
        if current.len() + 1 > MAX_NODES_PER_POOL {
            return Err(MemberError::TooMany {
                pool: pool.into(),
                count: current.len() + 1,
            });
        }
        let changes = self.pools.entry(pool.to_string()).or_default();
        match base.iter().find(|n| n.name == node.name) {
            // A file node removed earlier comes back, as the API now says.
            Some(filed) => {
                changes.removed.remove(&node.name);
                let changed = Changed {
                    addr: (node.addr != filed.addr).then_some(node.addr),
                    weight: (node.weight != filed.weight).then_some(node.weight),
                };
                if changed != Changed::default() {
                    changes.changed.insert(node.name, changed);
                }
            }
            None => {
                changes.added.insert(
                    node.name,
                    Added {
                        addr: node.addr,
                        weight: node.weight,
                        source: node.source,
                    },
                );
            }
        }
        Ok(())
    }

    /// Sets the address and/or weight of `pool/node`.
    pub fn set(
        &mut self,
        file: &Config,
        pool: &str,
        node: &str,
        addr: Option<SocketAddr>,
        weight: Option<u32>,
    ) -> Result<(), MemberError> {
        let (current, base) = self.current(file, pool)?;
        if !current.iter().any(|n| n.name == node) {
            return Err(unknown(pool, node));
        }
        let changes = self.pools.entry(pool.to_string()).or_default();
        if let Some(added) = changes.added.get_mut(node) {
            added.addr = addr.unwrap_or(added.addr);
            added.weight = weight.unwrap_or(added.weight);
            return Ok(());
        }
        let filed = base
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| unknown(pool, node))?;
        let old = changes.changed.remove(node).unwrap_or_default();
        let addr = addr.or(old.addr).filter(|a| *a != filed.addr);
        let weight = weight.or(old.weight).filter(|w| *w != filed.weight);
        if addr.is_some() || weight.is_some() {
            changes
                .changed
                .insert(node.to_string(), Changed { addr, weight });
        }
        Ok(())
    }

    /// Removes `pool/node`.
    pub fn remove(&mut self, file: &Config, pool: &str, node: &str) -> Result<(), MemberError> {
        let (current, base) = self.current(file, pool)?;
        if !current.iter().any(|n| n.name == node) {
            return Err(unknown(pool, node));
        }
        if current.len() == 1 {
            return Err(MemberError::LastNode {
                pool: pool.into(),
                node: node.into(),
            });
        }
        let changes = self.pools.entry(pool.to_string()).or_default();
        if changes.added.remove(node).is_none() && base.iter().any(|n| n.name == node) {
            changes.changed.remove(node);
            changes.removed.insert(node.to_string());
        }
        Ok(())
    }

    /// These changes moved from `old` (the file they were made against) to `new` (the file
    /// a reload read): what the file changed wins, what it left alone keeps its runtime
    /// change. `Err` names every node the new file adds under a name runtime changes already
    /// use.
    pub fn rebase(&self, old: &Config, new: &Config) -> Result<Membership, MemberError> {
        let mut next = Membership::default();
        let mut conflicts = Vec::new();
        for (pool, changes) in &self.pools {
            let Some(new_pool) = find(new, pool) else {
                continue; // The pool is gone, and what was done to it.
            };
            let old_nodes = find(old, pool).map_or(&[][..], |p| &p.nodes[..]);
            let old_node = |name: &str| old_nodes.iter().find(|n| n.name == name);
            let mut kept = PoolChanges::default();
            for (name, added) in &changes.added {
                match new_pool.nodes.iter().find(|n| n.name == *name) {
                    Some(filed) => conflicts.push(format!(
                        "the file adds node {pool}/{name} ({}), a name the {} already gave to {} (remove it through the API first, or give the file's node another name)",
                        filed.addr,
                        match added.source {
                            NodeSource::Dns => "DNS discovery",
                            _ => "admin API",
                        },
                        added.addr
                    )),
                    None => {
                        kept.added.insert(name.clone(), added.clone());
                    }
                }
            }
            let untouched = |name: &str| {
                let now = new_pool.nodes.iter().find(|n| n.name == name);
                now.is_some() && now == old_node(name)
            };
            for (name, changed) in &changes.changed {
                if untouched(name) {
                    kept.changed.insert(name.clone(), changed.clone());
                }
            }
            for name in &changes.removed {
                if untouched(name) {
                    kept.removed.insert(name.clone());
                }
            }
            if !kept.is_empty() {
                next.pools.insert(pool.clone(), kept);
            }
        }
        if conflicts.is_empty() {
            Ok(next)
        } else {
            Err(MemberError::Conflict(conflicts.join("; ")))
        }
    }

    /// These changes as they can apply to `file` when the file they were made against is not
    /// known (a start from the state file): entries that no longer fit are dropped, and
    /// said. The file wins a name both use.
    pub fn fit(&self, file: &Config) -> (Membership, Vec<String>) {
        let mut next = Membership::default();
        let mut dropped = Vec::new();
        for (pool, changes) in &self.pools {
            let Some(p) = find(file, pool) else {
                dropped.push(format!("pool {pool} is no longer in the file"));
                continue;
            };
            let filed = |name: &str| p.nodes.iter().any(|n| n.name == name);
            let mut kept = PoolChanges::default();
            for (name, added) in &changes.added {
                if filed(name) {
                    dropped.push(format!(
                        "node {pool}/{name} ({}) added at runtime: the file now has a node of that name",
                        added.addr
                    ));
                } else {
                    kept.added.insert(name.clone(), added.clone());
                }
            }
            for (name, changed) in &changes.changed {
                if filed(name) {
                    kept.changed.insert(name.clone(), changed.clone());
                }
            }
            kept.removed = changes
                .removed
                .iter()
                .filter(|n| filed(n))
                .cloned()
                .collect();
            if !kept.is_empty() {
                next.pools.insert(pool.clone(), kept);
            }
        }
        (next, dropped)
    }

    /// These changes without what DNS discovery found (each instance resolves for itself):
    /// what a cluster shares.
    pub fn shared(&self, pool: &str) -> PoolChanges {
        let mut changes = self.pools.get(pool).cloned().unwrap_or_default();
        changes.added.retain(|_, a| a.source != NodeSource::Dns);
        changes
    }

    /// Takes `shared` as the shared changes of `pool` (all pools when `pool` is `None`: a
    /// cluster's resync), keeping this instance's DNS nodes, fitted to `file`. Returns what
    /// did not fit.
    pub fn take_shared(
        &mut self,
        file: &Config,
        pool: Option<&str>,
        shared: &BTreeMap<String, PoolChanges>,
    ) -> Vec<String> {
        let mut next = Membership::default();
        for (name, changes) in &self.pools {
            if pool.is_some_and(|p| p != name) {
                next.pools.insert(name.clone(), changes.clone());
                continue;
            }
            let dns: BTreeMap<String, Added> = changes
                .added
                .iter()
                .filter(|(_, a)| a.source == NodeSource::Dns)
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect();
            if !dns.is_empty() {
                next.pools.entry(name.clone()).or_default().added = dns;
            }
        }
        for (name, changes) in shared {
            if pool.is_some_and(|p| p != name) {
                continue;
            }
            let entry = next.pools.entry(name.clone()).or_default();
            for (n, a) in &changes.added {
                entry.added.entry(n.clone()).or_insert_with(|| a.clone());
            }
            entry.changed = changes.changed.clone();
            entry.removed = changes.removed.clone();
        }
        let (fitted, dropped) = next.fit(file);
        *self = fitted;
        dropped
    }

    /// The pool's nodes as they run, and as the file has them.
    fn current<'a>(
        &self,
        file: &'a Config,
        pool: &str,
    ) -> Result<(Vec<NodeConfig>, &'a [NodeConfig]), MemberError> {
        let base = find(file, pool).ok_or_else(|| MemberError::UnknownPool(pool.into()))?;
        let current = match self.pools.get(pool) {
            Some(changes) => changes.apply(&base.nodes),
            None => base.nodes.clone(),
        };
        Ok((current, &base.nodes))
    }
}

impl PoolChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    fn apply(&self, file: &[NodeConfig]) -> Vec<NodeConfig> {
        let mut nodes: Vec<NodeConfig> = file
            .iter()
            .filter(|n| !self.removed.contains(&n.name))
            .map(|n| {
                let mut n = n.clone();
                if let Some(c) = self.changed.get(&n.name) {
                    n.addr = c.addr.unwrap_or(n.addr);
                    n.weight = c.weight.unwrap_or(n.weight);
                }
                n
            })
            .collect();
        for (name, added) in &self.added {
            if !nodes.iter().any(|n| n.name == *name) {
                nodes.push(NodeConfig {
                    name: name.clone(),
                    addr: added.addr,
                    weight: added.weight,
                    source: added.source,
                    host: None,
                });
            }
        }
        nodes
    }
}

fn find<'a>(config: &'a Config, pool: &str) -> Option<&'a PoolConfig> {
    config.pools.iter().find(|p| p.name == pool)
}

fn unknown(pool: &str, node: &str) -> MemberError {
    MemberError::UnknownNode {
        pool: pool.into(),
        node: node.into(),
    }
}

#[cfg(test)]
mod tests;
