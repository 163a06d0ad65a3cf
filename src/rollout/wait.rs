//! The waits of a rollout step: for a node to reach a state, for a sibling to serve so the
//! pair guard lets a node go, and (in a cluster) for every instance to see a node ready.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::driving::{Driving, Stop};
use super::Handle;
use crate::cluster::{Cluster, ClusterError};
use crate::config::duration;
use crate::control::{Control, NodeRef};
use crate::lifecycle;
use crate::pool::{Health, NodeState};
use crate::time::instant_after;

/// Waits until `done` holds for the node, the deadline passes (`Ok(false)`), or — when
/// `abortable` — the rollout is aborted.
pub(super) async fn wait_node(
    handle: &Handle,
    state: &NodeState,
    deadline: Instant,
    abortable: bool,
    done: impl Fn(&NodeState) -> bool,
) -> Result<bool, Stop> {
    let limit = deadline.saturating_duration_since(Instant::now());
    if abortable {
        tokio::select! {
            _ = handle.abort.cancelled() => Err(Stop::Aborted),
            ok = state.wait_until(limit, done) => Ok(ok),
        }
    } else {
        Ok(state.wait_until(limit, done).await)
    }
}

/// What [`wait_for_sibling`] tries until the pair guard lets it.
pub(super) enum Attempt<'a> {
    /// Only check the guard.
    Guard,
    /// Drain the node (through the cluster when there is one).
    Drain {
        app: &'a Arc<Control>,
        cluster: Option<Driving<'a>>,
        timeout: Duration,
    },
}

impl Attempt<'_> {
    /// `Err` with why not (the guard, or etcd away).
    async fn once(&self, t: &NodeRef) -> Result<(), String> {
        match self {
            Attempt::Guard => {
                let _serial = t.pool.control.serialize();
                lifecycle::check_guard(&t.pool, &t.node).map_err(|e| e.to_string())
            }
            Attempt::Drain {
                app,
                cluster: None,
                timeout,
            } => lifecycle::drain(app, t, Some(*timeout), false).map_err(|e| e.to_string()),
            Attempt::Drain {
                cluster: Some(cluster),
                timeout,
                ..
            } => match cluster
                .cluster
                .drain(t, Some(*timeout), false, cluster.fence())
                .await
            {
                Ok(_) => Ok(()),
                Err(ClusterError::Unavailable(e) | ClusterError::Unknown { reason: e, .. }) => {
                    // Not a refusal: wait a moment; the driver loses its term if it lasts.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Err(e)
                }
                Err(e @ ClusterError::Guard(_)) => {
                    // Another instance has no other node: wait for its view to change
                    // (this instance's own sibling may well serve, so nothing here wakes it).
                    cluster.cluster.views_changed(Duration::from_secs(1)).await;
                    Err(e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// Runs `attempt` (under the pair guard) until it passes, waiting for a sibling of the node
/// to serve between attempts, for at most `limit` (or until the rollout is aborted).
pub(super) async fn wait_for_sibling(
    handle: &Handle,
    target: &NodeRef,
    limit: Duration,
    attempt: Attempt<'_>,
) -> Result<(), Stop> {
    let deadline = instant_after(limit);
    loop {
        let refused = match attempt.once(target).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Stop::Failed(format!(
                "within {}: {refused}",
                duration::format(limit)
            )));
        }
        let key = target.node.key();
        let sibling = target
            .pool
            .nodes
            .iter()
            .find(|n| n.name != target.node.name && !n.state.admits_new())
            .or_else(|| {
                target
                    .pool
                    .nodes
                    .iter()
                    .find(|n| n.name != target.node.name)
            })
            .map(|n| Arc::clone(&n.state));
        let Some(sibling) = sibling else {
            return Err(Stop::Failed(format!(
                "{key} has no sibling to carry the load"
            )));
        };
        if sibling.admits_new() {
            // Refused for another reason (etcd away): try again.
            continue;
        }
        if !wait_node(handle, &sibling, deadline, true, |s| s.admits_new()).await? {
            return Err(Stop::Failed(format!(
                "within {}: {refused}",
                duration::format(limit)
            )));
        }
    }
}

/// In a cluster a node is ready when every live instance sees it up with the target
/// version, not only this one.
pub(super) async fn everyone_sees_ready(
    handle: &Handle,
    cluster: &Cluster,
    key: &str,
    version: &str,
    deadline: Instant,
) -> Result<(), Stop> {
    let mut members = cluster.members();
    loop {
        let behind = cluster.all_members(key, |n| {
            n.health == Health::Up.as_str() && n.version.as_deref() == Some(version)
        });
        if behind.is_empty() {
            return Ok(());
        }
        let woke = tokio::select! {
            _ = handle.abort.cancelled() => return Err(Stop::Aborted),
            r = members.changed() => r.is_ok(),
            _ = tokio::time::sleep_until(deadline) => false,
        };
        if !woke {
            return Err(Stop::Failed(format!(
                "{key} is not seen up with version {version} by {}; {key} left drained",
                behind.join(", ")
            )));
        }
    }
}
