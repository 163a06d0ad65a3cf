//! The rollout state machine: for each node in order, each phase in order, resumable from
//! any (node, phase) after a restart. Every wait is on the node's change signal with a
//! deadline; abort interrupts the waits that change nothing (guard, waiting for the
//! upgrade or readiness) and lets draining and warming finish, so nodes end in a safe state.

use std::sync::Arc;

use tokio::time::Instant;

use super::driving::{Driving, Stop};
use super::in_place::step;
use super::{rollback, Handle, Phase, RolloutState, Strategy};
use crate::control::Control;
use crate::pool::unix_ms;

pub async fn run(app: &Arc<Control>, cluster: Option<Driving<'_>>, handle: Arc<Handle>) {
    let app = Arc::clone(app);
    let (pool_name, order, version, analysed, state, strategy) = {
        let r = handle.lock();
        let analysed = r.analysis.is_some();
        (
            r.pool.clone(),
            r.order.clone(),
            r.version.clone(),
            analysed,
            r.state,
            r.strategy,
        )
    };
    let phases = Phase::order(strategy);
    // Requests asking for the target version reach a node reporting it from now on.
    if let Some(p) = app.snapshot.load().pool(&pool_name) {
        if let Some(cfg) = &p.config.rollout.preview {
            p.control.preview.store(Some(Arc::new(crate::pool::Preview {
                header: cfg.header.clone(),
                version: version.clone(),
            })));
        }
    }
    if state != RolloutState::Running {
        // Resumed after a restart with a rollback under way.
        return rollback::run(&app, cluster, &handle).await;
    }
    let mut judged = None;
    let start = handle.lock().node_index;
    for (index, node_name) in order.iter().enumerate().skip(start) {
        let resume_phase = {
            let mut r = handle.lock();
            let resume = if r.node_index == index { r.phase } else { None };
            r.node_index = index;
            r.current_node = Some(node_name.clone());
            resume
        };
        let first = resume_phase.map_or(0, |p| phases.iter().position(|x| *x == p).unwrap_or(0));
        for &phase in &phases[first..] {
            if phase == Phase::Analysis && !analysed {
                continue;
            }
            if handle.abort.is_cancelled() {
                // Between steps: the next step never starts, and the reason says so.
                let where_ = format!("{node_name} before {}", phase.as_str());
                if strategy == Strategy::Replace {
                    super::replace::aborted(&app, cluster, &handle, &pool_name, node_name, phase)
                        .await;
                }
                return finish(
                    &app,
                    &handle,
                    &pool_name,
                    RolloutState::Aborted,
                    Some(aborted_reason(&app, &pool_name, &where_)),
                );
            }
            let id = {
                let mut r = handle.lock();
                r.phase = Some(phase);
                r.id.clone()
            };
            tag(&app, &pool_name, node_name, Some((id, phase)));
            handle.event(
                Some(node_name),
                Some(phase),
                format!("{node_name}: {}", phase.as_str()),
            );
            app.mark_dirty();
            let started = Instant::now();
            let at = (pool_name.as_str(), node_name.as_str(), version.as_str());
            let result = match strategy {
                Strategy::InPlace => step(&app, cluster, &handle, &mut judged, at, phase).await,
                Strategy::Replace => {
                    super::replace::step(&app, cluster, &handle, &mut judged, at, phase).await
                }
            };
            app.metrics
                .rollout_step_duration
                .with_label_values(&[&pool_name, phase.as_str()])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {}
                Err(Stop::Failed(reason)) => {
                    handle.event(Some(node_name), Some(phase), format!("failed: {reason}"));
                    return finish(
                        &app,
                        &handle,
                        &pool_name,
                        RolloutState::Failed,
                        Some(reason),
                    );
                }
                Err(Stop::Breach(reason, back)) => {
                    handle.event(Some(node_name), Some(phase), format!("failed: {reason}"));
                    // The node is drained: no longer judged.
                    drop(judged.take());
                    let rolling_back = back.is_some();
                    handle.lock().rollback = back;
                    finish(
                        &app,
                        &handle,
                        &pool_name,
                        RolloutState::Failed,
                        Some(reason),
                    );
                    if rolling_back {
                        rollback::run(&app, cluster, &handle).await;
                    }
                    return;
                }
                Err(Stop::Deposed) => {
                    handle.event(
                        Some(node_name),
                        Some(phase),
                        "this driver's term ended; the next driver redoes this step",
                    );
                    return;
                }
                Err(Stop::Aborted) => {
                    let where_ = format!("{node_name} ({})", phase.as_str());
                    if strategy == Strategy::Replace {
                        super::replace::aborted(
                            &app, cluster, &handle, &pool_name, node_name, phase,
                        )
                        .await;
                    }
                    let reason = aborted_reason(&app, &pool_name, &where_);
                    return finish(
                        &app,
                        &handle,
                        &pool_name,
                        RolloutState::Aborted,
                        Some(reason),
                    );
                }
            }
        }
        tag(&app, &pool_name, node_name, None);
    }
    handle.event(
        None,
        None,
        format!("every node of pool {pool_name} runs version {version}"),
    );
    finish(&app, &handle, &pool_name, RolloutState::Succeeded, None);
}

fn finish(
    app: &Arc<Control>,
    handle: &Handle,
    pool: &str,
    state: RolloutState,
    reason: Option<String>,
) {
    if let Some(p) = app.snapshot.load().pool(pool) {
        p.control.prefer.store(None);
        p.control.preview.store(None);
        for n in &p.nodes {
            n.state.set_rollout(None);
        }
    }
    {
        let mut r = handle.lock();
        r.state = state;
        r.reason = reason.clone();
        r.finished_at = Some(crate::time::rfc3339(unix_ms()));
    }
    let word = match state {
        RolloutState::Succeeded => "succeeded",
        RolloutState::Failed => "failed",
        RolloutState::Aborted => "aborted",
        RolloutState::Running => "running",
    };
    handle.event(
        None,
        None,
        match reason {
            Some(r) => format!("rollout {word}: {r}"),
            None => format!("rollout {word}"),
        },
    );
    app.mark_dirty();
}

/// Marks `node` as in the rollout at `phase` (or in none): its access log lines say so.
fn tag(app: &Control, pool: &str, node: &str, at: Option<(String, Phase)>) {
    if let Some(n) = app.snapshot.load().pool(pool).and_then(|p| p.node(node)) {
        n.state
            .set_rollout(at.map(|(id, phase)| crate::pool::RolloutTag {
                id: id.into(),
                phase: phase.as_str(),
            }));
    }
}

/// Says where an abort left things, node by node.
fn aborted_reason(app: &Control, pool: &str, at: &str) -> String {
    let states = app
        .snapshot
        .load()
        .pool(pool)
        .map_or_else(String::new, |p| {
            p.nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}={}/{}",
                        n.name,
                        n.state.admin().as_str(),
                        n.state.health().as_str()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
    format!("aborted at {at}; nodes left: {states}")
}
