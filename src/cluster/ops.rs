//! Drains and enables through etcd, answered once every live member has applied them; and
//! the cluster-wide `wait`.
//!
//! A write is a transaction conditioned on the mod revision of every node key of the pool
//! as this instance applied them: the pair guard is checked against the same state the
//! write lands on, so two drains of a pair sent to two instances cannot both pass. A write
//! that loses the race waits for the winner to be applied here and tries again.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::Serialize;
use tokio::time::Instant;

use super::session::call;
use super::store::NodeOp;
use super::{lock, Cluster, ClusterError, APPLY_WAIT};
use crate::control::NodeRef;
use crate::lifecycle;
use crate::pool::{unix_ms, SessionCounts};

/// Attempts of a conditioned write before giving up (each one lost to a concurrent write).
const ATTEMPTS: usize = 5;

/// What a write's answer adds to the node JSON.
#[derive(Debug, Default, Serialize)]
pub struct Applied {
    /// Live members that had not applied the write when the answer was sent.
    pub lagging: Vec<String>,
}

/// One member's view of a node, in the cluster-wide `wait` answer.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InstanceNode {
    pub instance: String,
    pub state: String,
    pub sessions: SessionCounts,
}

impl Cluster {
    /// Drains `t` on every instance: the deadline is fixed here and shared. `fence`: a
    /// rollout and its driver's term, when a rollout drains (the write fails once the term
    /// is over).
    pub async fn drain(
        &self,
        t: &NodeRef,
        timeout: Option<Duration>,
        force: bool,
        fence: Option<(&str, i64)>,
    ) -> Result<Applied, ClusterError> {
        let timeout = timeout.unwrap_or(t.pool.config.drain.timeout);
        self.write(t, force, fence, || {
            let now = unix_ms();
            NodeOp::Drain {
                deadline_ms: crate::time::add_ms(now, timeout),
                at_ms: now,
                by: self.config.instance.clone(),
            }
        })
        .await
    }

    /// Enables `t` on every instance (each warms it once its own checks see it up).
    pub async fn enable(
        &self,
        t: &NodeRef,
        warmup: Option<Duration>,
        fence: Option<(&str, i64)>,
    ) -> Result<Applied, ClusterError> {
        let warmup = warmup.unwrap_or(t.pool.config.warmup);
        self.write(t, true, fence, || NodeOp::Enable {
            warmup,
            at_ms: unix_ms(),
            by: self.config.instance.clone(),
        })
        .await
    }

    async fn write(
        &self,
        t: &NodeRef,
        force: bool,
        fence: Option<(&str, i64)>,
        op: impl Fn() -> NodeOp,
    ) -> Result<Applied, ClusterError> {
        let result = self.write_once(t, force, fence, op).await;
        let outcome = match &result {
            Ok(a) if a.lagging.is_empty() => "applied",
            Ok(_) => "lagging",
            Err(_) => "refused",
        };
        self.ctl
            .metrics
            .cluster_writes
            .with_label_values(&[outcome])
            .inc();
        result
    }

    async fn write_once(
        &self,
        t: &NodeRef,
        force: bool,
        fence: Option<(&str, i64)>,
        op: impl Fn() -> NodeOp,
    ) -> Result<Applied, ClusterError> {
        let mut client = self.writable().await?;
        let key = t.node.key();
        for _ in 0..ATTEMPTS {
            let mut applied = self.applied.subscribe();
            let compares = {
                let _serial = t.pool.control.serialize();
                let draining = matches!(op(), NodeOp::Drain { .. });
                if draining && !force && t.node.state.record().needs_guard() {
                    lifecycle::check_guard(&t.pool, &t.node)?;
                }
                let revs = lock(&self.node_revs);
                t.pool
                    .nodes
                    .iter()
                    .map(|n| {
                        let k = n.key();
                        let rev = revs.get(&k).copied().unwrap_or(0);
                        Compare::mod_revision(self.keys.node(&k), CompareOp::Equal, rev)
                    })
                    .chain(fence.map(|(id, term)| self.fence(id, term)))
                    .collect::<Vec<_>>()
            };
            let value =
                serde_json::to_vec(&op()).map_err(|e| ClusterError::Conflict(e.to_string()))?;
            let txn =
                Txn::new()
                    .when(compares)
                    .and_then([TxnOp::put(self.keys.node(&key), value, None)]);
            let resp = call("writing the node's state", client.txn(txn))
                .await
                .map_err(ClusterError::Unavailable)?;
            let revision = resp.header().map_or(0, |h| h.revision());
            if resp.succeeded() {
                return Ok(self.await_applied(revision).await);
            }
            if fence.is_some_and(|(id, term)| self.term(id) != Some(term)) {
                return Err(ClusterError::Conflict(
                    "this instance no longer drives rollouts (its term ended)".into(),
                ));
            }
            // Another instance changed the pool first: apply its write, then decide again.
            let _ = tokio::time::timeout(APPLY_WAIT, applied.changed()).await;
            if !self.connected() {
                return Err(ClusterError::Unavailable(self.last_error()));
            }
        }
        Err(ClusterError::Conflict(format!(
            "pool {} kept changing on other instances; {key} unchanged, try again",
            t.pool.name
        )))
    }

    /// Waits until every live member (this one included) reports `revision`, for at most
    /// [`APPLY_WAIT`]; names those that did not.
    async fn await_applied(&self, revision: i64) -> Applied {
        let deadline = Instant::now() + APPLY_WAIT;
        let mut members = self.members.subscribe();
        let mut applied = self.applied.subscribe();
        loop {
            let own = *applied.borrow_and_update() >= revision;
            let lagging: Vec<String> = {
                let all = members.borrow_and_update();
                all.values()
                    .filter(|m| m.instance != self.config.instance && m.revision < revision)
                    .map(|m| m.instance.clone())
                    .collect()
            };
            if own && lagging.is_empty() {
                return Applied::default();
            }
            let woke = tokio::select! {
                r = members.changed() => r.is_ok(),
                r = applied.changed() => r.is_ok(),
                _ = tokio::time::sleep_until(deadline) => false,
            };
            if !woke {
                let mut lagging = lagging;
                if !own {
                    lagging.insert(0, self.config.instance.clone());
                }
                tracing::warn!(revision, lagging = ?lagging, "cluster: members did not apply a write within {APPLY_WAIT:?}");
                return Applied { lagging };
            }
        }
    }

    /// Every other live member's view of node `key` (`pool/node`).
    pub fn instances(&self, key: &str) -> Vec<InstanceNode> {
        self.members
            .borrow()
            .values()
            .filter(|m| m.instance != self.config.instance)
            .filter_map(|m| {
                m.nodes.get(key).map(|n| InstanceNode {
                    instance: m.instance.clone(),
                    state: n.state.clone(),
                    sessions: n.sessions,
                })
            })
            .collect()
    }

    /// Cluster-wide long poll: until `here` holds on this instance and `there` holds for
    /// every other live member's view of the node, or `limit` passes. Returns whether it
    /// holds.
    pub async fn wait_all(
        &self,
        t: &NodeRef,
        limit: Duration,
        here: impl Fn() -> bool,
        there: impl Fn(&InstanceNode) -> bool,
    ) -> bool {
        let deadline = Instant::now() + limit;
        let mut members = self.members.subscribe();
        let key = t.node.key();
        loop {
            members.borrow_and_update();
            let others_ok = self.instances(&key).iter().all(&there);
            let here_ok = here();
            if here_ok && others_ok {
                return true;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return false;
            }
            tokio::select! {
                r = members.changed() => if r.is_err() { return false },
                // Woken by this node's own change (or the limit).
                _ = t.node.state.wait_until(remaining, |_| here() != here_ok) => {}
            }
        }
    }

    /// Whether every other live member sees `key` passing `check` (rollout readiness).
    pub fn all_members(
        &self,
        key: &str,
        check: impl Fn(&super::store::MemberNode) -> bool,
    ) -> Vec<String> {
        self.members
            .borrow()
            .values()
            .filter(|m| m.instance != self.config.instance)
            .filter(|m| !m.nodes.get(key).is_some_and(&check))
            .map(|m| m.instance.clone())
            .collect()
    }
}
