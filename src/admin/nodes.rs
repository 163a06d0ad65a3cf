//! Admin handlers that change a pool's members at runtime: add a node, change its address or
//! weight, remove it (at once when drained with no session, or once drained). Every input is
//! checked before anything changes; the change itself is one snapshot rebuild
//! ([`crate::control::Control::change_members`]).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use super::ops::{node_answer, target};
use super::{input, json_response, AdminError, AdminResponse};
use crate::app::App;
use crate::config::{NodeConfig, NodeSource};
use crate::control::{Control, NodeRef};
use crate::lifecycle;
use crate::pool::AdminState;
use crate::snapshot::Snapshot;

/// Extra time past a removal's drain deadline for the deadline closes to finish.
const REMOVE_SLACK: Duration = Duration::from_secs(15);

pub async fn add(
    app: &Arc<App>,
    pool: &str,
    body: Result<Vec<u8>, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let new = input::add_node(&body?)?;
    if app.cluster().is_some() {
        return Err(in_a_cluster());
    }
    let ctl = &app.control;
    let node = NodeConfig {
        name: new.name.clone(),
        addr: new.addr,
        weight: new.weight,
        source: NodeSource::Api,
    };
    ctl.change_members(
        |m, file| m.add(file, pool, node),
        // Held out before anyone can pick it: until it is up (then warmed), or enabled.
        |snapshot| {
            if let Some(t) = node_in(snapshot, pool, &new.name) {
                lifecycle::added(ctl, &t, new.drained);
            }
        },
    )?;
    let t = target(app, pool, &new.name)?;
    tracing::info!(node = %t.node.key(), addr = %new.addr, weight = new.weight, held = new.drained, "node added through the admin API");
    changed(ctl, &t, "added", "added through the admin API");
    t.node.state.metrics.publish(
        "node_added",
        json!({ "addr": new.addr.to_string(), "weight": new.weight, "source": "api", "state": t.node.state.admin().as_str() }),
    );
    Ok(json_response(
        StatusCode::CREATED,
        &node_answer(app, &t, None),
    ))
}

pub async fn patch(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    body: Result<Vec<u8>, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let (addr, weight) = input::patch_node(&body?)?;
    let t = target(app, pool, node)?;
    if app.cluster().is_some() {
        return Err(in_a_cluster());
    }
    let moving = addr.filter(|a| *a != t.node.addr);
    if moving.is_some() {
        let sessions = t.node.state.active_sessions();
        let state = t.node.state.admin();
        if state != AdminState::Drained || sessions > 0 {
            return Err(AdminError::Conflict(format!(
                "the address of {} changes only while it is drained with no session: it is {} with {sessions} sessions (drain it first)",
                t.node.key(),
                state.as_str()
            )));
        }
    }
    app.control
        .change_members(|m, file| m.set(file, pool, node, addr, weight), |_| {})?;
    let t = target(app, pool, node)?;
    let what = match (moving, weight) {
        (Some(a), Some(w)) => format!("address {a}, weight {w}"),
        (Some(a), None) => format!("address {a}"),
        (None, Some(w)) => format!("weight {w}"),
        (None, None) => "nothing changed".into(),
    };
    tracing::info!(node = %t.node.key(), %what, "node changed through the admin API");
    changed(&app.control, &t, "changed", &format!("{what} (admin API)"));
    Ok(json_response(StatusCode::OK, &node_answer(app, &t, None)))
}

pub async fn remove(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    query: &str,
) -> Result<AdminResponse, AdminError> {
    let q = input::remove_query(query)?;
    let t = target(app, pool, node)?;
    if app.cluster().is_some() {
        return Err(in_a_cluster());
    }
    // Refused now rather than after a drain: the pool's last node.
    app.control
        .membership()
        .remove(&app.control.file(), pool, node)?;
    let sessions = t.node.state.active_sessions();
    let state = t.node.state.admin();
    if state == AdminState::Drained && sessions == 0 {
        let view = node_answer(app, &t, None);
        take_out(&app.control, &t)?;
        return Ok(json_response(StatusCode::OK, &view));
    }
    if !q.drain {
        return Err(AdminError::Conflict(format!(
            "{} is {} with {sessions} sessions: a node is removed once drained with no session (DELETE with ?drain=true drains it and removes it then)",
            t.node.key(),
            state.as_str()
        )));
    }
    lifecycle::drain(&app.control, &t, q.timeout, q.force)?;
    t.node
        .state
        .history
        .note("removal requested: removed once drained");
    let limit = q.timeout.unwrap_or(t.pool.config.drain.timeout)
        + t.pool.config.drain.close_spread
        + REMOVE_SLACK;
    tokio::spawn(remove_when_drained(
        Arc::clone(&app.control),
        t.clone(),
        limit,
    ));
    Ok(json_response(
        StatusCode::ACCEPTED,
        &node_answer(app, &t, None),
    ))
}

/// Removes the node once it is drained with no session; gives up (saying so) if it is
/// enabled again meanwhile, or does not get there within `limit`.
async fn remove_when_drained(ctl: Arc<Control>, t: NodeRef, limit: Duration) {
    let state = &t.node.state;
    let settled = state
        .wait_until(limit, |s| {
            s.admin() != AdminState::Draining
                && (s.admin() != AdminState::Drained || s.active_sessions() == 0)
        })
        .await;
    let key = t.node.key();
    if !settled || state.admin() != AdminState::Drained {
        tracing::warn!(node = %key, state = state.admin().as_str(), "node not removed: it did not stay drained (enabled again, or still draining at the limit)");
        state.history.note("removal given up: not drained");
        return;
    }
    // Still the node that was asked for (not removed and added again meanwhile).
    let current = ctl.node_by_key(&key);
    if !current.is_some_and(|c| Arc::ptr_eq(&c.node.state, state)) {
        return;
    }
    match take_out(&ctl, &t) {
        Ok(()) => {}
        Err(e) => tracing::warn!(node = %key, error = %e, "node not removed"),
    }
}

/// Removes the node from its pool, and says so.
fn take_out(ctl: &Control, t: &NodeRef) -> Result<(), AdminError> {
    let (pool, node) = (t.pool.name.as_str(), t.node.name.as_str());
    ctl.change_members(|m, file| m.remove(file, pool, node), |_| {})?;
    tracing::info!(node = %t.node.key(), addr = %t.node.addr, "node removed");
    ctl.metrics
        .membership_changes
        .with_label_values(&[pool, "removed", t.node.source.as_str()])
        .inc();
    t.node.state.metrics.publish(
        "node_removed",
        json!({ "addr": t.node.addr.to_string(), "source": t.node.source.as_str() }),
    );
    Ok(())
}

fn changed(ctl: &Control, t: &NodeRef, change: &str, note: &str) {
    ctl.metrics
        .membership_changes
        .with_label_values(&[&t.pool.name, change, t.node.source.as_str()])
        .inc();
    t.node.state.history.note(note);
}

fn node_in(snapshot: &Snapshot, pool: &str, node: &str) -> Option<NodeRef> {
    let p = snapshot.pool(pool)?;
    Some(NodeRef {
        pool: Arc::clone(p),
        node: Arc::clone(p.node(node)?),
    })
}

fn in_a_cluster() -> AdminError {
    AdminError::Conflict(
        "nodes cannot yet be added, changed or removed at runtime on a cluster instance".into(),
    )
}
