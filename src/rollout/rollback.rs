//! What a failed analysis does (docs/upgrade-guide.md, "Judging the new version on live traffic"). The node is drained at once (its in-flight
//! requests finish) and the rollout fails with the figures; no further node is touched. With
//! `on_failure: rollback` and a hook, the hook runs again with `HANDOFF_ACTION=rollback` and
//! the version the node had before, and the node is readmitted once it reports that version
//! on `healthy_after` passing checks. The rollout stays `failed`; its `rollback` says how
//! the node's return went.

use std::sync::Arc;
use std::time::Duration;

use super::driving::{Driving, DRAIN_SLACK};
use super::wait::wait_node;
use super::{hook, Handle, Rollback, RollbackState};
use crate::config::{duration, OnFailure};
use crate::control::{Control, NodeRef};
use crate::lifecycle;
use crate::pool::{AdminState, Health, NodeState};
use crate::time::instant_after;

/// Drains the judged node now, the way the rollout drains (the pair guard applies: with no
/// sibling serving, the node keeps serving). Returns the reason the rollout fails with, and
/// the rollback to run, if any.
pub(super) async fn on_breach(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    target: &NodeRef,
    figures: &str,
) -> (String, Option<Rollback>) {
    let key = target.node.key();
    let (timeout, on_failure, previous) = {
        let r = handle.lock();
        (
            r.drain_timeout,
            r.analysis
                .as_ref()
                .map_or(OnFailure::Pause, |a| a.on_failure),
            r.previous_versions.get(&target.node.name).cloned(),
        )
    };
    let drained = match cluster {
        None => lifecycle::drain(app, target, Some(timeout), false).map_err(|e| e.to_string()),
        Some(d) => d
            .cluster
            .drain(target, Some(timeout), false, d.fence())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    let mut reason = format!("analysis of {key} failed: {figures}");
    if let Err(e) = drained {
        reason.push_str(&format!(
            "; {key} is still serving ({e}): drain it once a sibling serves"
        ));
        return (reason, None);
    }
    // The rollout fails once the node is drained (its in-flight requests finished, or the
    // deadline closed them), so whoever sees `failed` sees the node out.
    let state = &target.node.state;
    let deadline = instant_after(timeout + target.pool.config.drain.close_spread + DRAIN_SLACK);
    let out = |s: &NodeState| s.admin() == AdminState::Drained;
    if !wait_node(handle, state, deadline, false, out)
        .await
        .unwrap_or(false)
    {
        reason.push_str(&format!(
            "; {key} did not drain (state {})",
            state.admin().as_str()
        ));
        return (reason, None);
    }
    let hook = target.pool.config.rollout.hook.is_some();
    match (on_failure, previous, hook) {
        (OnFailure::Pause, _, _) => reason.push_str(&format!(
            "; {key} drained (on_failure: pause): roll it back or fix it, then `handoff ctl enable {key}`"
        )),
        (OnFailure::Rollback, None, _) => reason.push_str(&format!(
            "; {key} drained; the version it had before is unknown, so it cannot be rolled back: put a known version back on it, then `handoff ctl enable {key}`"
        )),
        (OnFailure::Rollback, Some(version), false) => reason.push_str(&format!(
            "; {key} drained; no rollout hook to roll back with: put version {version} back on {key}, then `handoff ctl enable {key}`"
        )),
        (OnFailure::Rollback, Some(version), true) => {
            reason.push_str(&format!("; {key} drained; rolling it back to {version}"));
            return (
                reason,
                Some(Rollback {
                    node: target.node.name.clone(),
                    version,
                    state: RollbackState::Running,
                    detail: None,
                }),
            );
        }
    }
    (reason, None)
}

/// Runs (or resumes) the record's rollback to its end, and records how it ended.
pub(super) async fn run(app: &Arc<Control>, cluster: Option<Driving<'_>>, handle: &Handle) {
    let Some(rollback) = handle.lock().rollback.clone() else {
        return;
    };
    let (pool, ready_timeout, drain_timeout, warmup) = {
        let r = handle.lock();
        (r.pool.clone(), r.ready_timeout, r.drain_timeout, r.warmup)
    };
    let result = back(
        app,
        cluster,
        handle,
        &pool,
        &rollback,
        drain_timeout,
        ready_timeout,
        warmup,
    )
    .await;
    let (state, detail) = match result {
        Ok(detail) => (RollbackState::Succeeded, detail),
        Err(detail) => (RollbackState::Failed, detail),
    };
    handle.event(
        Some(&rollback.node),
        None,
        format!(
            "rollback {}: {detail}",
            if state == RollbackState::Succeeded {
                "succeeded"
            } else {
                "failed"
            }
        ),
    );
    if let Some(b) = handle.lock().rollback.as_mut() {
        b.state = state;
        b.detail = Some(detail);
    }
    app.mark_dirty();
}

#[allow(clippy::too_many_arguments)]
async fn back(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    pool: &str,
    rollback: &Rollback,
    drain_timeout: Duration,
    ready_timeout: Duration,
    warmup: Duration,
) -> Result<String, String> {
    let target = {
        let snapshot = app.snapshot.load();
        let p = snapshot
            .pool(pool)
            .ok_or_else(|| format!("pool {pool} no longer exists"))?;
        let n = p
            .node(&rollback.node)
            .ok_or_else(|| format!("node {pool}/{} no longer exists", rollback.node))?;
        NodeRef {
            pool: Arc::clone(p),
            node: Arc::clone(n),
        }
    };
    let key = target.node.key();
    let state = &target.node.state;
    // In-flight requests finish before the node is touched.
    let deadline =
        instant_after(drain_timeout + target.pool.config.drain.close_spread + DRAIN_SLACK);
    let drained = |s: &NodeState| s.admin() == AdminState::Drained;
    if !wait_node(handle, state, deadline, false, drained)
        .await
        .unwrap_or(false)
    {
        return Err(format!(
            "{key} did not drain (state {})",
            state.admin().as_str()
        ));
    }
    let Some(argv) = &target.pool.config.rollout.hook else {
        return Err(format!("the rollout hook was removed; {key} left drained"));
    };
    let (id, term) = super::driving::term_of(handle, cluster);
    let env = hook::env(
        &target,
        &rollback.version,
        hook::Action::Rollback,
        (&id, term),
    );
    handle.event(
        Some(&rollback.node),
        None,
        format!(
            "rolling {key} back to {}: running hook {}",
            rollback.version,
            argv.join(" ")
        ),
    );
    // A rollback is not abortable: the node is drained and must come back.
    let never = tokio_util::sync::CancellationToken::new();
    hook::run(
        argv,
        &env,
        ready_timeout,
        &never,
        cluster.map(|d| &d.cluster.term),
    )
    .await
    .map_err(|e| format!("{e}; {key} left drained"))?;
    let healthy_after = target.pool.config.health.healthy_after;
    let version = rollback.version.as_str();
    let ready = |s: &NodeState| {
        s.version().is_some_and(|v| *v == version)
            && s.version_passes() >= healthy_after
            && s.health() == Health::Up
    };
    if !wait_node(handle, state, instant_after(ready_timeout), false, ready)
        .await
        .unwrap_or(false)
    {
        let reported = state
            .version()
            .map_or_else(|| "no version".to_string(), |v| format!("version {v}"));
        return Err(format!(
            "{key} did not report {version} within {}: it reports {reported}, health {}; {key} left drained",
            duration::format(ready_timeout),
            state.health().as_str()
        ));
    }
    match cluster {
        Some(d) => d
            .cluster
            .enable(&target, Some(warmup), d.fence())
            .await
            .map(|_| ())
            .map_err(|e| format!("enable of {key} not written: {e}; {key} left drained"))?,
        None => lifecycle::enable(app, &target, Some(warmup)),
    }
    Ok(format!(
        "{key} reports {version} again and is readmitted (warming)"
    ))
}
