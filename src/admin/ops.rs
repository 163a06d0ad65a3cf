//! Admin handlers that change things: drain, enable, wait, rollouts. Every input is parsed
//! and checked before anything changes; a refusal leaves the running state untouched.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use super::views::NodeView;
use super::{input, json_response, AdminError, AdminResponse};
use crate::app::App;
use crate::control::NodeRef;
use crate::lifecycle;
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

pub async fn drain(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    body: Result<Vec<u8>, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let t = target(app, pool, node)?;
    let (timeout, force) = input::drain(&body?)?;
    lifecycle::drain(&app.control, &t, timeout, force)?;
    Ok(json_response(
        StatusCode::OK,
        &NodeView::of(&t.node, &t.pool),
    ))
}

pub fn enable(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    body: Result<Vec<u8>, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let t = target(app, pool, node)?;
    let warmup = input::enable(&body?)?;
    lifecycle::enable(&app.control, &t, warmup);
    Ok(json_response(
        StatusCode::OK,
        &NodeView::of(&t.node, &t.pool),
    ))
}

/// Long poll: 200 with the node the moment it is in `state`, 504 with the node (and its
/// remaining sessions by kind) when `timeout` passes first.
pub async fn wait(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    query: &str,
) -> Result<AdminResponse, AdminError> {
    let t = target(app, pool, node)?;
    let (state, timeout) = input::wait_query(query)?;
    let node = Arc::clone(&t.node);
    let reached = t
        .node
        .state
        .wait_until(timeout, |_| lifecycle::is_in(&node, &state) == Some(true))
        .await;
    let status = if reached {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    Ok(json_response(status, &NodeView::of(&t.node, &t.pool)))
}

pub fn start_rollout(
    app: &Arc<App>,
    pool: &str,
    body: Result<Vec<u8>, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let request = input::rollout(&body?)?;
    let record = rollout::start(&app.control, &app.rollouts, pool, request)?;
    Ok(json_response(StatusCode::CREATED, &record))
}

pub fn rollouts(app: &Arc<App>) -> AdminResponse {
    json_response(StatusCode::OK, &json!({ "rollouts": app.rollouts.list() }))
}

pub fn rollout(app: &Arc<App>, id: &str) -> Result<AdminResponse, AdminError> {
    let handle = app
        .rollouts
        .get(id)
        .ok_or_else(|| rollout::RolloutError::Unknown(id.to_string()))?;
    Ok(json_response(StatusCode::OK, &handle.snapshot()))
}

pub fn abort(app: &Arc<App>, id: &str) -> Result<AdminResponse, AdminError> {
    let record = rollout::abort(&app.control, &app.rollouts, id)?;
    Ok(json_response(StatusCode::OK, &record))
}
