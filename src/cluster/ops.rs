//! Drains and enables through etcd, answered once every live member has applied them; and
//! the cluster-wide `wait`.
//!
//! A write is a transaction conditioned on the mod revision of every node key of the pool
//! as this instance applied them, and (for a guarded drain) on every instance's view being
//! the one the guard read: the pair guard is checked against the same state the write lands
//! on, so two drains of a pair sent to two instances cannot both pass, and a node going down
//! on some instance meanwhile is seen. A write that loses the race waits for the winner to
//! be applied here and tries again. [`super::commit`] makes its answer true.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, TxnOp};
use serde::Serialize;
use tokio::time::Instant;

use super::commit::{Committed, Outcome, Write};
use super::store::NodeOp;
use super::{guard, lock, Cluster, ClusterError, APPLY_WAIT};
use crate::control::NodeRef;
use crate::lifecycle;
use crate::pool::{unix_ms, SessionCounts};

/// Attempts of a conditioned write before giving up (each one lost to a concurrent write).
const ATTEMPTS: usize = 5;

/// What a write's answer adds to the node JSON.
#[derive(Debug, Default, Serialize)]
pub struct Applied {
    /// Members live at the write that had not applied it when the answer was sent,
    /// including those whose lease went meanwhile.
    pub lagging: Vec<String>,
    /// Those of `lagging` whose lease expired (or who left) after the write: cut off, they
    /// may still serve with the state they knew.
    pub lost: Vec<String>,
}

/// One member's view of a node, in the cluster-wide `wait` answer.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InstanceNode {
    pub instance: String,
    pub state: String,
    /// Health by that instance's own checks, as it last published it.
    #[serde(default)]
    pub health: Option<String>,
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
            Err(ClusterError::Unknown { .. }) => "unknown",
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
        let key = t.node.key();
        let draining = matches!(op(), NodeOp::Drain { .. });
        let what = format!("{} of {key}", if draining { "drain" } else { "enable" });
        // Judged only by a resynced instance: one cut off from etcd holds views that may be
        // stale, and its answer is 503 whatever the guard would say.
        self.writable().await?;
        for _ in 0..ATTEMPTS {
            let mut applied = self.applied.subscribe();
            let mut views = self.views.subscribe();
            let compares = {
                let _serial = t.pool.control.serialize();
                let mut compares = Vec::new();
                if draining && !force && t.node.state.record().needs_guard() {
                    // Read before the views: every view the guard reads is at least this new,
                    // and one that changed after it (a node went down somewhere) fails the
                    // write, which then looks again.
                    let seen = *self.seen.borrow();
                    lifecycle::check_guard(&t.pool, &t.node)?;
                    self.check_guard_everywhere(t)?;
                    compares.push(
                        Compare::mod_revision(self.keys.views(), CompareOp::Less, seen + 1)
                            .with_prefix(),
                    );
                }
                let revs = lock(&self.node_revs);
                compares.extend(
                    t.pool
                        .nodes
                        .iter()
                        .map(|n| {
                            let k = n.key();
                            let rev = revs.get(&k).copied().unwrap_or(0);
                            Compare::mod_revision(self.keys.node(&k), CompareOp::Equal, rev)
                        })
                        .chain(fence.map(|(id, term)| self.fence(id, term))),
                );
                compares
            };
            let value =
                serde_json::to_vec(&op()).map_err(|e| ClusterError::Conflict(e.to_string()))?;
            let write = Write {
                what: what.clone(),
                node: Some(key.clone()),
                compares,
                ops: vec![TxnOp::put(self.keys.node(&key), value, None)],
            };
            match self.commit(write).await? {
                Outcome::Committed(c) => return Ok(self.await_applied(c).await),
                Outcome::Refused => {}
            }
            if fence.is_some_and(|(id, term)| self.term(id) != Some(term)) {
                return Err(ClusterError::Conflict(
                    "this instance no longer drives rollouts (its term ended)".into(),
                ));
            }
            // Another instance changed the pool, or a view changed, first: read it, then
            // decide again.
            tokio::select! {
                _ = applied.changed() => {}
                _ = views.changed() => {}
                _ = tokio::time::sleep(APPLY_WAIT) => {}
            }
            if !self.connected() {
                return Err(ClusterError::Unavailable(self.last_error()));
            }
        }
        Err(ClusterError::Conflict(format!(
            "pool {} kept changing on other instances; {key} unchanged, try again",
            t.pool.name
        )))
    }

    /// The pair guard for every other live instance, each by its own view of the nodes: the
    /// shared admin state is this instance's (the write is conditioned on it).
    fn check_guard_everywhere(&self, t: &NodeRef) -> Result<(), ClusterError> {
        let views = guard::others(
            self.views.borrow().clone(),
            &self.members.borrow(),
            &self.config.instance,
        );
        let names: Vec<&str> = t.pool.nodes.iter().map(|n| n.name.as_str()).collect();
        let admitted = |name: &str| {
            t.pool
                .node(name)
                .is_some_and(|n| n.state.admin().admits_new())
        };
        guard::check(&t.pool.name, &names, &t.node.name, admitted, &views).map_err(|reason| {
            ClusterError::Guard(lifecycle::OpError::Guard {
                pool: t.pool.name.clone(),
                node: t.node.name.clone(),
                reason,
            })
        })
    }

    /// Waits until every member live at the write (this one included) reports its revision,
    /// for at most [`APPLY_WAIT`]; names those that did not, and among them those whose lease
    /// went meanwhile (`lost`: they may still serve with what they knew).
    async fn await_applied(&self, c: Committed) -> Applied {
        let revision = c.revision;
        let deadline = Instant::now() + APPLY_WAIT;
        let mut members = self.members.subscribe();
        let mut applied = self.applied.subscribe();
        let mut seen = self.seen.subscribe();
        // Live at the write: as the transaction read them, else as known here now.
        let live: Vec<String> = c
            .live
            .unwrap_or_else(|| self.members.borrow().keys().cloned().collect())
            .into_iter()
            .filter(|m| *m != self.config.instance)
            .collect();
        loop {
            let own = *applied.borrow_and_update() >= revision;
            // A member missing once this instance has seen past the write left after it.
            let past = *seen.borrow_and_update() >= revision;
            let (mut lagging, mut lost) = (Vec::new(), Vec::new());
            {
                let all = members.borrow_and_update();
                for name in &live {
                    match all.get(name) {
                        Some(m) if m.revision >= revision => {}
                        None if past => lost.push(name.clone()),
                        _ => lagging.push(name.clone()),
                    }
                }
            }
            if own && lagging.is_empty() {
                return Applied {
                    lagging: lost.clone(),
                    lost,
                };
            }
            let woke = tokio::select! {
                r = members.changed() => r.is_ok(),
                r = applied.changed() => r.is_ok(),
                r = seen.changed() => r.is_ok(),
                _ = tokio::time::sleep_until(deadline) => false,
            };
            if !woke {
                if !own {
                    lagging.insert(0, self.config.instance.clone());
                }
                lagging.extend(lost.iter().cloned());
                tracing::warn!(revision, lagging = ?lagging, lost = ?lost, "cluster: members did not apply a write within {APPLY_WAIT:?}");
                return Applied { lagging, lost };
            }
        }
    }

    /// Every other live member's view of node `key` (`pool/node`).
    pub fn instances(&self, key: &str) -> Vec<InstanceNode> {
        let views = self.views.borrow();
        self.members
            .borrow()
            .values()
            .filter(|m| m.instance != self.config.instance)
            .filter_map(|m| {
                // The view is published at once on a flip; the report only with sessions.
                let health = views
                    .get(&m.instance)
                    .and_then(|v| v.nodes.get(key))
                    .map(|v| v.health.clone());
                m.nodes.get(key).map(|n| InstanceNode {
                    instance: m.instance.clone(),
                    state: n.state.clone(),
                    health: health.or_else(|| Some(n.health.clone())),
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

    /// Waits until `instances` live members (this one included) are in the cluster and every
    /// other one sees node `key` up, for at most `limit` (the cluster demo's readiness: a
    /// drain sent at once is judged by every instance's view). Returns whether they do.
    pub async fn wait_seen_up(&self, key: &str, instances: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (mut views, mut members) = (self.views.subscribe(), self.members.subscribe());
        loop {
            let others = self.instances(key);
            let all = self.members.borrow().len() >= instances;
            if all && others.iter().all(|i| i.health.as_deref() == Some("up")) {
                return true;
            }
            tokio::select! {
                _ = views.changed() => {}
                _ = members.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return false,
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

impl Cluster {
    /// Changes `pool`'s runtime members on every instance: `change` edits them as this
    /// instance applied them (etcd's), written as one transaction conditioned on the key's
    /// revision, with `node_ops` (`pool/node` → its operation, or `None` to delete its key)
    /// in the same transaction. Answered like a drain: once every member live at the write
    /// applied it, or naming those that did not.
    pub async fn change_members(
        &self,
        pool: &str,
        what: String,
        change: impl Fn(
            &mut crate::members::Membership,
            &crate::config::Config,
        ) -> Result<(), crate::members::MemberError>,
        node_ops: Vec<(String, Option<NodeOp>)>,
        fence: Option<(&str, i64)>,
    ) -> Result<Applied, ClusterError> {
        for _ in 0..ATTEMPTS {
            let mut applied = self.applied.subscribe();
            let rev = lock(&self.pool_revs).get(pool).copied().unwrap_or(0);
            let mut next = self.ctl.membership();
            change(&mut next, &self.ctl.file()).map_err(ClusterError::Members)?;
            let shared = next.shared(pool);
            let value =
                serde_json::to_vec(&shared).map_err(|e| ClusterError::Conflict(e.to_string()))?;
            let mut ops = vec![TxnOp::put(self.keys.pool_nodes(pool), value, None)];
            for (node, op) in &node_ops {
                ops.push(match op {
                    Some(op) => TxnOp::put(
                        self.keys.node(node),
                        serde_json::to_vec(op)
                            .map_err(|e| ClusterError::Conflict(e.to_string()))?,
                        None,
                    ),
                    None => TxnOp::delete(self.keys.node(node), None),
                });
            }
            let write = Write {
                what: what.clone(),
                node: None,
                compares: std::iter::once(Compare::mod_revision(
                    self.keys.pool_nodes(pool),
                    CompareOp::Equal,
                    rev,
                ))
                .chain(fence.map(|(id, term)| self.fence(id, term)))
                .collect(),
                ops,
            };
            match self.commit(write).await? {
                Outcome::Committed(c) => return Ok(self.await_applied(c).await),
                Outcome::Refused => {}
            }
            if fence.is_some_and(|(id, term)| self.term(id) != Some(term)) {
                return Err(ClusterError::Conflict(
                    "this instance no longer drives rollouts (its term ended)".into(),
                ));
            }
            // Another instance changed the pool's members first: read it, then decide again.
            tokio::select! {
                _ = applied.changed() => {}
                _ = tokio::time::sleep(APPLY_WAIT) => {}
            }
            if !self.connected() {
                return Err(ClusterError::Unavailable(self.last_error()));
            }
        }
        Err(ClusterError::Conflict(format!(
            "the members of pool {pool} kept changing on other instances; nothing changed, try again"
        )))
    }
}

/// What a members change does to one node's admin state.
#[derive(Debug, Clone, Copy)]
pub enum MemberEffect<'a> {
    /// Nothing beyond the members (a weight, an address).
    None,
    /// Node `name` is added: held out until it is up, then warmed; with `hold`, held out
    /// until enabled.
    Added { name: &'a str, hold: bool },
    /// Node `name` is removed, and its admin state with it.
    Removed { name: &'a str },
}

/// Changes `pool`'s members: on this instance alone, or (with `cluster`) through etcd on
/// every instance, answered like a drain. The admin API and replace rollouts both change
/// members through this one place; `fence`: a rollout driver's term.
pub async fn change_pool_members(
    ctl: &std::sync::Arc<crate::control::Control>,
    cluster: Option<&Cluster>,
    fence: Option<(&str, i64)>,
    (pool, what): (&str, String),
    change: impl Fn(
        &mut crate::members::Membership,
        &crate::config::Config,
    ) -> Result<(), crate::members::MemberError>,
    effect: MemberEffect<'_>,
) -> Result<Option<Applied>, ClusterError> {
    let Some(cluster) = cluster else {
        ctl.change_members(change, |next| {
            if let MemberEffect::Added { name, hold } = effect {
                if let Some(t) = NodeRef::of(next, pool, name) {
                    lifecycle::added(ctl, &t, hold);
                }
            }
        })
        .map_err(ClusterError::Members)?;
        return Ok(None);
    };
    let key = |name: &str| format!("{pool}/{name}");
    let node_ops = match effect {
        MemberEffect::None => Vec::new(),
        // Held out until enabled: a drain every instance applies. Otherwise whatever an
        // earlier node of that name left is cleared.
        MemberEffect::Added { name, hold: true } => {
            let now = unix_ms();
            let held = NodeOp::Drain {
                deadline_ms: now,
                at_ms: now,
                by: cluster.instance().to_string(),
            };
            vec![(key(name), Some(held))]
        }
        MemberEffect::Added { name, .. } | MemberEffect::Removed { name } => {
            vec![(key(name), None)]
        }
    };
    cluster
        .change_members(pool, what, change, node_ops, fence)
        .await
        .map(Some)
}
