//! Admin handlers that change a pool's members at runtime: add a node, change its address or
//! weight, remove it (at once when drained with no session, or once drained). Every input is
//! checked before anything changes. On one instance the change is one snapshot rebuild
//! ([`crate::control::Control::change_members`]); in a cluster it is written through etcd
//! and answered like a drain, once every live instance applied it
//! ([`crate::cluster::Cluster::change_members`]).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::ops::{node_answer, target};
use super::{input, json_response, AdminError, AdminResponse};
use crate::app::App;
use crate::cluster::ops::{change_pool_members, Applied, MemberEffect};
use crate::cluster::Cluster;
use crate::config::{NodeConfig, NodeSource};
use crate::control::{Control, NodeRef};
use crate::lifecycle;
use crate::pool::AdminState;

/// Extra time past a removal's drain deadline for the deadline closes to finish.
const REMOVE_SLACK: Duration = Duration::from_secs(15);

pub async fn add(
    app: &Arc<App>,
    pool: &str,
    body: Result<Vec<u8>, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let new = input::add_node(&body?)?;
    if let Some(old) = &new.replaces {
        return replacement(app, pool, old, new.clone()).await;
    }
    let node = NodeConfig {
        name: new.name.clone(),
        addr: new.addr,
        weight: new.weight,
        source: NodeSource::Api,
        host: None,
    };
    let add = |m: &mut crate::members::Membership, file: &crate::config::Config| {
        m.add(file, pool, node.clone())
    };
    let what = format!("addition of {pool}/{}", new.name);
    // Held out before anyone can pick it: until it is up (then warmed), or until enabled.
    let effect = MemberEffect::Added {
        name: &new.name,
        hold: new.drained,
    };
    let applied = change_pool_members(
        &app.control,
        app.cluster().map(|c| &**c),
        None,
        (pool, what),
        add,
        effect,
    )
    .await?;
    let t = target(app, pool, &new.name)?;
    tracing::info!(node = %t.node.key(), addr = %new.addr, weight = new.weight, held = new.drained, "node added through the admin API");
    t.node.state.history.note("added through the admin API");
    Ok(json_response(
        StatusCode::CREATED,
        &node_answer(app, &t, applied),
    ))
}

/// A replacement offered to the replace rollout provisioning `old`: the rollout adds it.
async fn replacement(
    app: &Arc<App>,
    pool: &str,
    old: &str,
    new: input::NewNode,
) -> Result<AdminResponse, AdminError> {
    target(app, pool, old)?;
    let offer = crate::rollout::Replacement {
        name: new.name.clone(),
        addr: new.addr,
    };
    app.rollouts.offer(pool, old, offer).await?;
    // Added by the rollout in a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(t) = target(app, pool, &new.name) {
            return Ok(json_response(
                StatusCode::CREATED,
                &node_answer(app, &t, None),
            ));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(AdminError::Conflict(format!(
                "the replacement of {pool}/{old} was taken by the rollout but not added yet: see the rollout's timeline"
            )));
        }
        let mut changes = app.control.changes();
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
}

pub async fn patch(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    body: Result<Vec<u8>, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let (addr, weight) = input::patch_node(&body?)?;
    let t = target(app, pool, node)?;
    let moving = addr.filter(|a| *a != t.node.addr);
    if moving.is_some() {
        idle_everywhere(app, &t, "its address changes")?;
    }
    let set = |m: &mut crate::members::Membership, file: &crate::config::Config| {
        m.set(file, pool, node, addr, weight)
    };
    let what = format!("change of {}", t.node.key());
    let cluster = app.cluster().map(|c| &**c);
    let applied = change_pool_members(
        &app.control,
        cluster,
        None,
        (pool, what),
        set,
        MemberEffect::None,
    )
    .await?;
    let t = target(app, pool, node)?;
    let what = match (moving, weight) {
        (Some(a), Some(w)) => format!("address {a}, weight {w}"),
        (Some(a), None) => format!("address {a}"),
        (None, Some(w)) => format!("weight {w}"),
        (None, None) => "nothing changed".into(),
    };
    tracing::info!(node = %t.node.key(), %what, "node changed through the admin API");
    t.node.state.history.note(format!("{what} (admin API)"));
    Ok(json_response(
        StatusCode::OK,
        &node_answer(app, &t, applied),
    ))
}

pub async fn remove(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    query: &str,
) -> Result<AdminResponse, AdminError> {
    let q = input::remove_query(query)?;
    let t = target(app, pool, node)?;
    // Refused now rather than after a drain: the pool's last node.
    app.control
        .membership()
        .remove(&app.control.file(), pool, node)?;
    if idle_everywhere(app, &t, "it is removed").is_ok() {
        let view = node_answer(app, &t, None);
        let applied = take_out(&app.control, app.cluster(), &t).await?;
        let mut view = serde_json::to_value(view).unwrap_or_default();
        if let Some(a) = applied {
            view["lagging"] = serde_json::json!(a.lagging);
            view["lost"] = serde_json::json!(a.lost);
        }
        return Ok(json_response(StatusCode::OK, &view));
    }
    if !q.drain {
        return Err(idle_everywhere(
            app,
            &t,
            "it is removed (DELETE with ?drain=true drains it and removes it then)",
        )
        .err()
        .unwrap_or_else(|| AdminError::Conflict("not drained".into())));
    }
    let applied = match app.cluster() {
        Some(cluster) => Some(cluster.drain(&t, q.timeout, q.force, None).await?),
        None => {
            lifecycle::drain(&app.control, &t, q.timeout, q.force)?;
            None
        }
    };
    t.node
        .state
        .history
        .note("removal requested: removed once drained");
    let limit = q.timeout.unwrap_or(t.pool.config.drain.timeout)
        + t.pool.config.drain.close_spread
        + REMOVE_SLACK;
    tokio::spawn(remove_when_drained(
        Arc::clone(&app.control),
        app.cluster().cloned(),
        t.clone(),
        limit,
    ));
    Ok(json_response(
        StatusCode::ACCEPTED,
        &node_answer(app, &t, applied),
    ))
}

/// `Ok` when the node is drained with no session here and on every other live instance;
/// else a 409 saying where it is not, before `why`.
fn idle_everywhere(app: &App, t: &NodeRef, why: &str) -> Result<(), AdminError> {
    let state = t.node.state.admin();
    let sessions = t.node.state.active_sessions();
    let mut busy = Vec::new();
    if state != AdminState::Drained || sessions > 0 {
        busy.push(format!("{} with {sessions} sessions", state.as_str()));
    }
    if let Some(cluster) = app.cluster() {
        for other in cluster.instances(&t.node.key()) {
            if other.state != AdminState::Drained.as_str() || other.sessions.total > 0 {
                busy.push(format!(
                    "{} with {} sessions on {}",
                    other.state, other.sessions.total, other.instance
                ));
            }
        }
    }
    if busy.is_empty() {
        return Ok(());
    }
    Err(AdminError::Conflict(format!(
        "{} must be drained with no session before {why}: it is {} (drain it first)",
        t.node.key(),
        busy.join(", ")
    )))
}

/// Removes the node once it is drained with no session (on every instance); gives up
/// (saying so) if it is enabled again meanwhile, or does not get there within `limit`.
async fn remove_when_drained(
    ctl: Arc<Control>,
    cluster: Option<Arc<Cluster>>,
    t: NodeRef,
    limit: Duration,
) {
    let state = &t.node.state;
    let here = || state.admin() == AdminState::Drained && state.active_sessions() == 0;
    let settled = match &cluster {
        Some(c) => {
            let drained = AdminState::Drained.as_str();
            c.wait_all(&t, limit, here, |o| {
                o.state == drained && o.sessions.total == 0
            })
            .await
        }
        None => {
            state
                .wait_until(limit, |s| {
                    s.admin() != AdminState::Draining
                        && (s.admin() != AdminState::Drained || s.active_sessions() == 0)
                })
                .await
        }
    };
    let key = t.node.key();
    if !settled || !here() {
        tracing::warn!(node = %key, state = state.admin().as_str(), "node not removed: it did not stay drained (enabled again, or still draining at the limit)");
        state.history.note("removal given up: not drained");
        return;
    }
    // Still the node that was asked for (not removed and added again meanwhile).
    let current = ctl.node_by_key(&key);
    if !current.is_some_and(|c| Arc::ptr_eq(&c.node.state, state)) {
        return;
    }
    if let Err(e) = take_out(&ctl, cluster.as_ref(), &t).await {
        tracing::warn!(node = %key, error = %e, "node not removed");
    }
}

/// Removes the node from its pool (on every instance, with its admin state's key).
async fn take_out(
    ctl: &Arc<Control>,
    cluster: Option<&Arc<Cluster>>,
    t: &NodeRef,
) -> Result<Option<Applied>, AdminError> {
    let (pool, node) = (t.pool.name.as_str(), t.node.name.as_str());
    let remove = |m: &mut crate::members::Membership, file: &crate::config::Config| {
        m.remove(file, pool, node)
    };
    let what = format!("removal of {}", t.node.key());
    let effect = MemberEffect::Removed { name: node };
    let applied = change_pool_members(
        ctl,
        cluster.map(|c| &**c),
        None,
        (pool, what),
        remove,
        effect,
    )
    .await?;
    tracing::info!(node = %t.node.key(), addr = %t.node.addr, "node removed");
    Ok(applied)
}
