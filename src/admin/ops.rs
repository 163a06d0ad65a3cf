//! Admin handlers that change things: drain, enable, wait, rollouts. Every input is parsed
//! and checked before anything changes; a refusal leaves the running state untouched.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use super::views::{NodeView, SessionsView};
use super::{input, json_response, AdminError, AdminResponse};
use crate::app::App;
use crate::cluster::ops::{Applied, InstanceNode};
use crate::control::NodeRef;
use crate::lifecycle;
use crate::pool::AdminState;
use crate::rollout;

/// A node by `pool/node` name from the current snapshot, or a 404 naming what is unknown.
pub(super) fn target(app: &App, pool: &str, node: &str) -> Result<NodeRef, AdminError> {
    let snapshot = app.snapshot.load();
    let p = snapshot
        .pool(pool)
        .ok_or_else(|| AdminError::UnknownPool { pool: pool.into() })?;
    let n = p.node(node).ok_or_else(|| AdminError::UnknownNode {
        pool: pool.into(),
        node: node.into(),
    })?;
    Ok(NodeRef {
        pool: Arc::clone(p),
        node: Arc::clone(n),
    })
}

/// The node JSON. In a cluster, `sessions` are summed over the live instances and
/// `instances` lists each one's view (this one first); `lagging` names the instances that
/// had not applied a write when it was answered.
#[derive(serde::Serialize)]
pub(super) struct NodeAnswer {
    #[serde(flatten)]
    view: NodeView,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<Vec<InstanceNode>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lagging: Option<Vec<String>>,
    /// Those of `lagging` whose lease went after the write (cut off: they may still serve
    /// with the state they knew).
    #[serde(skip_serializing_if = "Option::is_none")]
    lost: Option<Vec<String>>,
}

pub(super) fn node_answer(app: &App, t: &NodeRef, applied: Option<Applied>) -> NodeAnswer {
    let mut view = NodeView::of(&t.node, &t.pool);
    let Some(cluster) = app.cluster() else {
        return NodeAnswer {
            view,
            instances: None,
            lagging: None,
            lost: None,
        };
    };
    let mut instances = vec![InstanceNode {
        instance: cluster.instance().to_string(),
        state: view.state.clone(),
        health: Some(view.health.clone()),
        sessions: view.sessions,
    }];
    instances.extend(cluster.instances(&t.node.key()));
    let mut total = SessionsView::default();
    for i in &instances {
        total.add(&i.sessions);
    }
    view.sessions = total;
    NodeAnswer {
        view,
        instances: Some(instances),
        lost: applied.as_ref().map(|a| a.lost.clone()),
        lagging: applied.map(|a| a.lagging),
    }
}

pub async fn drain(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    body: Result<Vec<u8>, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let t = target(app, pool, node)?;
    let (timeout, force) = input::drain(&body?)?;
    let applied = match app.cluster() {
        Some(cluster) => Some(cluster.drain(&t, timeout, force, None).await?),
        None => {
            lifecycle::drain(&app.control, &t, timeout, force)?;
            None
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &node_answer(app, &t, applied),
    ))
}

pub async fn enable(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    body: Result<Vec<u8>, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let t = target(app, pool, node)?;
    let warmup = input::enable(&body?)?;
    let applied = match app.cluster() {
        Some(cluster) => Some(cluster.enable(&t, warmup, None).await?),
        None => {
            lifecycle::enable(&app.control, &t, warmup);
            None
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &node_answer(app, &t, applied),
    ))
}

/// Long poll: 200 with the node the moment it is in `state`, 504 with the node (and its
/// remaining sessions by kind) when `timeout` passes first. In a cluster an admin state
/// must hold on every live instance (health is each instance's own).
pub async fn wait(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    query: &str,
) -> Result<AdminResponse, AdminError> {
    let t = target(app, pool, node)?;
    let (state, timeout) = input::wait_query(query)?;
    let node = Arc::clone(&t.node);
    let here = || lifecycle::is_in(&node, &state) == Some(true);
    let reached = match app.cluster() {
        Some(cluster) if AdminState::ALL.iter().any(|s| s.as_str() == state) => {
            cluster
                .wait_all(&t, timeout, here, |other| other.state == state)
                .await
        }
        _ => t.node.state.wait_until(timeout, |_| here()).await,
    };
    let status = if reached {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    Ok(json_response(status, &node_answer(app, &t, None)))
}

pub async fn start_rollout(
    app: &Arc<App>,
    pool: &str,
    body: Result<Vec<u8>, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let request = input::rollout(&body?)?;
    let record = rollout::start(&app.control, &app.rollouts, pool, request).await?;
    Ok(json_response(StatusCode::CREATED, &record))
}

/// A rollout as the API shows it: in a cluster, with who drives it and in which term (a
/// hook compares that with its `HANDOFF_DRIVER_TERM` before a destructive step).
#[derive(serde::Serialize)]
struct RolloutAnswer {
    #[serde(flatten)]
    record: rollout::Rollout,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    term: Option<i64>,
}

fn rollout_answer(app: &App, record: rollout::Rollout) -> RolloutAnswer {
    let driving = app.cluster().and_then(|c| c.driver_of(&record.id));
    let (driver, term) = driving.map_or((None, None), |(d, t)| (Some(d), Some(t)));
    RolloutAnswer {
        record,
        driver,
        term,
    }
}

pub fn rollouts(app: &Arc<App>) -> AdminResponse {
    let all: Vec<RolloutAnswer> = app
        .rollouts
        .list()
        .into_iter()
        .map(|r| rollout_answer(app, r))
        .collect();
    json_response(StatusCode::OK, &json!({ "rollouts": all }))
}

pub fn rollout(app: &Arc<App>, id: &str) -> Result<AdminResponse, AdminError> {
    let handle = app
        .rollouts
        .get(id)
        .ok_or_else(|| rollout::RolloutError::Unknown(id.to_string()))?;
    Ok(json_response(
        StatusCode::OK,
        &rollout_answer(app, handle.snapshot()),
    ))
}

pub async fn abort(app: &Arc<App>, id: &str) -> Result<AdminResponse, AdminError> {
    let record = rollout::abort(&app.control, &app.rollouts, id).await?;
    Ok(json_response(StatusCode::OK, &record))
}
