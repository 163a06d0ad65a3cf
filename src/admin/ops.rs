//! Admin handlers that change things: drain, enable, wait, rollouts. Every input is parsed
//! and checked before anything changes; a refusal leaves the running state untouched.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::views::NodeView;
use super::{json_response, AdminError, AdminResponse};
use crate::app::App;
use crate::config::duration;
use crate::lifecycle::{self, Target};
use crate::rollout::{self, StartRequest};

/// `wait` without `timeout=` waits this long.
const WAIT_DEFAULT: Duration = Duration::from_secs(30);
/// Longest `wait` accepted.
const WAIT_MAX: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    timeout: Option<String>,
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableBody {
    warmup: Option<String>,
}

fn target(app: &App, pool: &str, node: &str) -> Result<Target, AdminError> {
    let snapshot = app.snapshot.load();
    let p = snapshot
        .pool(pool)
        .ok_or_else(|| AdminError::UnknownPool { pool: pool.into() })?;
    let n = p.node(node).ok_or_else(|| AdminError::UnknownNode {
        pool: pool.into(),
        node: node.into(),
    })?;
    Ok(Target {
        pool: Arc::clone(p),
        node: Arc::clone(n),
    })
}

fn parse_duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, AdminError> {
    text.map(|t| duration::parse(t).map_err(|e| AdminError::BadRequest(format!("{field}: {e}"))))
        .transpose()
}

pub async fn drain(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    body: Result<DrainBody, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let t = target(app, pool, node)?;
    let body = body?;
    let timeout = parse_duration("timeout", body.timeout.as_deref())?;
    lifecycle::drain(app, &t, timeout, body.force)?;
    Ok(json_response(
        StatusCode::OK,
        &NodeView::of(&t.node, &t.pool),
    ))
}

pub fn enable(
    app: &Arc<App>,
    pool: &str,
    node: &str,
    body: Result<EnableBody, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let t = target(app, pool, node)?;
    let body = body?;
    let warmup = parse_duration("warmup", body.warmup.as_deref())?;
    lifecycle::enable(app, &t, warmup);
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
    let (mut state, mut timeout) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("state", v)) => state = Some(v.to_string()),
            Some(("timeout", v)) => timeout = parse_duration("timeout", Some(v))?,
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter {pair:?}: expected state= and timeout="
                )))
            }
        }
    }
    let state = state.ok_or_else(|| {
        AdminError::BadRequest(
            "missing ?state= (active, draining, drained, warming, up, down, unknown)".into(),
        )
    })?;
    if lifecycle::is_in(&t.node, &state).is_none() {
        return Err(AdminError::BadRequest(format!(
            "unknown state {state:?}: expected active, draining, drained, warming, up, down or unknown"
        )));
    }
    let timeout = timeout.unwrap_or(WAIT_DEFAULT).min(WAIT_MAX);
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
    body: Result<StartRequest, AdminError>,
) -> Result<AdminResponse, AdminError> {
    let record = rollout::start(app, pool, body?)?;
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
    let record = rollout::abort(app, id)?;
    Ok(json_response(StatusCode::OK, &record))
}
