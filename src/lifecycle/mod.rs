//! Operator actions on nodes (docs/design.md, "Node state"): drain with a deadline, enable with warmup, the
//! pair guard, waiting for a state, and TCP rebalancing after a node returns.
//!
//! Every admin change of a node — operator, rollout or background step — is one pure
//! transition of its [`Record`], applied under the pool's serialisation
//! lock together with the pair guard, so two concurrent drains of a pair cannot both pass.
//! The data path sees the change on its very next pick (an atomic). The slow part runs on a
//! background task that carries the record's epoch: [`drain::run`] waits for the last
//! session or the deadline, [`warmup::run`] ramps a warming node to active, and
//! [`warmup::when_up`] starts a pending enable once the node is up.

pub mod drain;
pub mod rebalance;
pub mod warmup;

use std::sync::Arc;
use std::time::Duration;

use crate::control::{Control, NodeRef};
use crate::pool::{unix_ms, Admin, AdminState, Effect, Health, Node, Pool, Record};

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("pair guard: draining {pool}/{node} would leave pool {pool} without a serving node ({reason}); use force to override")]
    Guard {
        pool: String,
        node: String,
        reason: String,
    },
}

/// Refuses a drain that would leave the pool with no node taking new sessions. A node that
/// takes none itself can always be drained: it removes no capacity. Callers hold the pool's
/// serialisation lock, so the admin states it reads cannot change under it.
pub fn check_guard(pool: &Pool, node: &Node) -> Result<(), OpError> {
    if !node.state.admits_new() {
        return Ok(());
    }
    let index = pool.nodes.iter().position(|n| n.name == node.name);
    if index.is_some_and(|i| pool.another_serves(i)) {
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

/// Applies one transition to `t` under the pool's lock: `step` gets the current record and
/// returns the next one with its effect, `Ok(None)` for no change, or an error (nothing
/// changes). Returns the previous and the new record when something changed.
fn transition<E>(
    t: &NodeRef,
    step: impl FnOnce(Record) -> Result<Option<(Record, Effect)>, E>,
) -> Result<Option<(Record, Record, Effect)>, E> {
    let _serial = t.pool.control.serialize();
    let state = &t.node.state;
    let before = state.record();
    let Some((next, effect)) = step(before)? else {
        return Ok(None);
    };
    debug_assert!(
        next.kind() == before.kind() || next.epoch != before.epoch,
        "a change of admin state starts a new epoch"
    );
    state.apply(next, t.pool.config.drain.close_spread);
    Ok(Some((before, next, effect)))
}

/// Starts what a transition asks for, after the lock is released.
fn start(ctl: &Arc<Control>, t: &NodeRef, effect: Effect) {
    match effect {
        Effect::None => {}
        Effect::Drain { epoch, timeout } => {
            // Idle keep-alive connections would only be reused by mistake: close them now.
            t.node.idle.clear();
            t.node.h2.clear();
            tokio::spawn(drain::run(Arc::clone(ctl), t.clone(), timeout, epoch));
        }
        Effect::Warm { epoch, warmup } => {
            tokio::spawn(warmup::run(Arc::clone(ctl), t.clone(), warmup, epoch));
        }
        Effect::AwaitUp => {
            tokio::spawn(warmup::when_up(Arc::clone(ctl), t.clone()));
        }
    }
}

fn log_change(t: &NodeRef, before: Record, next: Record, why: &str) {
    if before.kind() != next.kind() {
        tracing::info!(node = %t.node.key(), from = before.kind().as_str(), to = next.kind().as_str(), "{why}");
    } else if before.pending_warmup != next.pending_warmup {
        tracing::info!(node = %t.node.key(), state = next.kind().as_str(), enable_pending = next.pending_warmup.is_some(), "{why}");
    }
}

/// Drains a node: no new sessions from now on; `drained` when the last one ends, or at the
/// deadline after closing the rest. Draining a draining or drained node changes nothing but
/// cancels a pending enable. Refused by the pair guard unless `force`.
pub fn drain(
    ctl: &Arc<Control>,
    t: &NodeRef,
    timeout: Option<Duration>,
    force: bool,
) -> Result<(), OpError> {
    let timeout = timeout.unwrap_or(t.pool.config.drain.timeout);
    let changed = transition(t, |rec| {
        if rec.needs_guard() && !force {
            check_guard(&t.pool, &t.node)?;
        }
        Ok(rec.drain(unix_ms(), timeout))
    })?;
    if let Some((before, next, effect)) = changed {
        tracing::info!(node = %t.node.key(), from = before.kind().as_str(), timeout = %crate::config::duration::format(timeout), force, "node draining");
        log_change(t, before, next, "pending enable cancelled by drain");
        start(ctl, t, effect);
        ctl.mark_dirty();
    }
    Ok(())
}

/// Applies a drain decided on another cluster instance (or written by this one and read
/// back): the deadline is the same absolute time everywhere, and the origin already checked
/// the pair guard against the whole pool.
pub fn drain_until(ctl: &Arc<Control>, t: &NodeRef, deadline_ms: u64) {
    let now = unix_ms();
    let timeout = Duration::from_millis(deadline_ms.saturating_sub(now));
    let changed = transition::<std::convert::Infallible>(t, |rec| Ok(rec.drain(now, timeout)));
    if let Ok(Some((before, next, effect))) = changed {
        tracing::info!(node = %t.node.key(), from = before.kind().as_str(), deadline = %crate::time::rfc3339(deadline_ms), "node draining (cluster)");
        log_change(t, before, next, "pending enable cancelled by drain");
        start(ctl, t, effect);
        ctl.mark_dirty();
    }
}

/// Enables a drained or draining node: `warming` at once if it is up, else as soon as it is
/// (a draining node keeps draining meanwhile). Enabling an active or warming node changes
/// nothing.
pub fn enable(ctl: &Arc<Control>, t: &NodeRef, warmup: Option<Duration>) {
    let warmup = warmup.unwrap_or(t.pool.config.warmup);
    let changed = transition::<std::convert::Infallible>(t, |rec| {
        let up = t.node.state.health() == Health::Up;
        Ok(rec.enable(unix_ms(), warmup, up))
    });
    if let Ok(Some((before, next, effect))) = changed {
        log_change(t, before, next, "node enabled");
        if next.pending_warmup.is_some() {
            tracing::info!(node = %t.node.key(), health = t.node.state.health().as_str(), "node enabled: warming once it is up");
        }
        start(ctl, t, effect);
        ctl.mark_dirty();
    }
}

/// Applies a background step's transition (drain finished, warmup over, pending enable
/// met its node up), logging and persisting it. Returns whether it changed anything.
fn background(
    ctl: &Arc<Control>,
    t: &NodeRef,
    why: &str,
    step: impl FnOnce(Record) -> Option<(Record, Effect)>,
) -> bool {
    let changed = transition::<std::convert::Infallible>(t, |rec| Ok(step(rec)));
    match changed {
        Ok(Some((before, next, effect))) => {
            log_change(t, before, next, why);
            start(ctl, t, effect);
            ctl.mark_dirty();
            true
        }
        _ => false,
    }
}

/// A node just added at runtime: held out until it is up, then warmed over the pool's warmup
/// (or, with `hold`, held out until an `enable`).
pub fn added(ctl: &Arc<Control>, t: &NodeRef, hold: bool) {
    let warmup = t.pool.config.warmup;
    background(ctl, t, "node added", |rec| {
        let next = Record {
            admin: crate::pool::Admin::Drained,
            since_ms: unix_ms(),
            pending_warmup: (!hold).then_some(warmup),
            epoch: rec.epoch.wrapping_add(1),
        };
        let effect = if hold { Effect::None } else { Effect::AwaitUp };
        Some((next, effect))
    });
}

/// An admin state carried into this process: from the state file at start, or from the
/// process this one takes over from.
#[derive(Debug, Clone, Copy)]
pub struct Carried {
    pub kind: AdminState,
    pub since_ms: u64,
    pub pending: Option<Duration>,
    /// A drain deadline that still holds (takeover: the old process's sessions carry on, so
    /// the drain does too). `None` from a state file: the sessions died with that process.
    pub deadline_ms: Option<u64>,
}

/// Applies a carried admin state before anything serves: a node that was draining is
/// drained now, unless a deadline still holds (takeover), a warming one warms up again from
/// the start, and a pending enable is kept.
pub fn restore(ctl: &Arc<Control>, t: &NodeRef, carried: Carried) {
    let warmup = t.pool.config.warmup;
    let now = unix_ms();
    background(ctl, t, "admin state carried over", |rec| {
        let admin = match (carried.kind, carried.deadline_ms) {
            (AdminState::Active, _) => Admin::Active,
            (AdminState::Draining, Some(deadline_ms)) => Admin::Draining { deadline_ms },
            (AdminState::Draining | AdminState::Drained, _) => Admin::Drained,
            (AdminState::Warming, _) => Admin::Warming {
                until_ms: crate::time::add_ms(now, warmup),
                warmup,
            },
        };
        let next = Record {
            admin,
            since_ms: carried.since_ms,
            pending_warmup: carried.pending.filter(|_| !carried.kind.admits_new()),
            epoch: rec.epoch.wrapping_add(1),
        };
        let effect = match next.admin {
            Admin::Warming { warmup, .. } => Effect::Warm {
                epoch: next.epoch,
                warmup,
            },
            Admin::Draining { deadline_ms } => Effect::Drain {
                epoch: next.epoch,
                timeout: Duration::from_millis(deadline_ms.saturating_sub(now)),
            },
            _ if next.pending_warmup.is_some() => Effect::AwaitUp,
            _ => Effect::None,
        };
        Some((next, effect))
    });
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
