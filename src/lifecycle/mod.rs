//! Operator actions on nodes (design.md §3): drain with a deadline, enable with warmup, the
//! pair guard, waiting for a state, and TCP rebalancing after a node returns.
//!
//! Each action flips the node's atomics at once (so the very next pick sees it) and leaves
//! the slow part to a background task: [`drain::run`] waits for the last session or the
//! deadline, [`warmup::run`] ramps a warming node to active. Every action bumps the node's
//! operation generation, so a task started by an older action stops instead of racing.

pub mod drain;
pub mod rebalance;
pub mod warmup;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::pool::{unix_ms, AdminState, Health, Node, Pool};

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("pair guard: draining {pool}/{node} would leave pool {pool} without a serving node ({reason}); use force to override")]
    Guard {
        pool: String,
        node: String,
        reason: String,
    },
}

/// A node by pool and index, resolved from one snapshot.
pub struct Target {
    pub pool: Arc<Pool>,
    pub node: Arc<Node>,
}

/// Refuses a drain that would leave the pool with no node taking new sessions. A node that
/// takes none itself can always be drained: it removes no capacity.
pub fn check_guard(pool: &Pool, node: &Node) -> Result<(), OpError> {
    if !node.state.admits_new() {
        return Ok(());
    }
    if pool
        .nodes
        .iter()
        .any(|n| n.name != node.name && n.state.admits_new())
    {
        return Ok(());
    }
    let others: Vec<String> = pool
        .nodes
        .iter()
        .filter(|n| n.name != node.name)
        .map(|n| {
            format!(
                "{} is {}/{}",
                n.name,
                n.state.admin().as_str(),
                n.state.health().as_str()
            )
        })
        .collect();
    Err(OpError::Guard {
        pool: pool.name.clone(),
        node: node.name.clone(),
        reason: if others.is_empty() {
            "it is the only node".into()
        } else {
            others.join(", ")
        },
    })
}

/// Drains a node: no new sessions from now on; `drained` when the last one ends, or at the
/// deadline after closing the rest. Draining a draining or drained node changes nothing.
pub fn drain(
    app: &Arc<App>,
    t: &Target,
    timeout: Option<Duration>,
    force: bool,
) -> Result<(), OpError> {
    let state = &t.node.state;
    if matches!(state.admin(), AdminState::Draining | AdminState::Drained) {
        return Ok(());
    }
    if !force {
        check_guard(&t.pool, &t.node)?;
    }
    let cfg = t.pool.config.drain;
    let timeout = timeout.unwrap_or(cfg.timeout);
    let generation = state.lifecycle.next_generation();
    state.lifecycle.enable_pending.store(false, Relaxed);
    state
        .lifecycle
        .set_drain_deadline(unix_ms() + timeout.as_millis() as u64, cfg.close_spread);
    if let Some(from) = state.set_admin(AdminState::Draining) {
        tracing::info!(node = %t.node.key(), from = from.as_str(), timeout = %crate::config::duration::format(timeout), force, "node draining");
    }
    // Idle keep-alive connections would only be reused by mistake: close them now.
    t.node.idle.clear();
    tokio::spawn(drain::run(
        Arc::clone(app),
        Arc::clone(&t.pool),
        Arc::clone(&t.node),
        timeout,
        generation,
    ));
    app.persist();
    Ok(())
}

/// Enables a drained or draining node: it goes `warming` once its health is up, then
/// `active` after the warmup. Enabling an active or warming node changes nothing.
pub fn enable(app: &Arc<App>, t: &Target, warmup: Option<Duration>) {
    let state = &t.node.state;
    if matches!(state.admin(), AdminState::Active | AdminState::Warming) {
        return;
    }
    let warmup = warmup.unwrap_or(t.pool.config.warmup);
    let generation = state.lifecycle.next_generation();
    state.lifecycle.clear_drain_deadline();
    state.lifecycle.clear_deadline_passed();
    if state.health() == Health::Up {
        warmup::begin(app, t, warmup, generation);
    } else {
        state.lifecycle.enable_pending.store(true, Relaxed);
        // A draining node stops draining (its sessions may finish); it takes nothing new
        // until it is up.
        state.transition(AdminState::Draining, AdminState::Drained);
        tracing::info!(node = %t.node.key(), health = state.health().as_str(), "node enabled: warming once it is up");
        tokio::spawn(warmup::when_up(
            Arc::clone(app),
            Arc::clone(&t.pool),
            Arc::clone(&t.node),
            warmup,
            generation,
        ));
    }
    app.persist();
}

/// Whether `state` names an admin state or a health the node is in now.
pub fn is_in(node: &Node, state: &str) -> Option<bool> {
    let admin = node.state.admin();
    let health = node.state.health();
    let known_admin = AdminState::ALL.iter().find(|s| s.as_str() == state);
    let known_health = Health::ALL.iter().find(|h| h.as_str() == state);
    match (known_admin, known_health) {
        (Some(s), _) => Some(*s == admin),
        (_, Some(h)) => Some(*h == health),
        _ => None,
    }
}
