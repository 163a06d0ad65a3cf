//! The rollout state machine: for each node in order, each phase in order, resumable from
//! any (node, phase) after a restart. Every wait is on the node's change signal with a
//! deadline; abort interrupts the waits that change nothing (guard, waiting for the
//! upgrade or readiness) and lets draining and warming finish, so nodes end in a safe state.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::analysis::{self, Baseline, Judged, Probation};
use super::wait::{everyone_sees_ready, wait_for_sibling, wait_node, Attempt};
use super::{hook, rollback, Handle, Phase, RolloutState, Strategy};
use crate::cluster::Cluster;
use crate::config::duration;
use crate::control::{Control, NodeRef};
use crate::lifecycle;
use crate::pool::{unix_ms, AdminState, Health, NodeState};
use crate::time::instant_after;

/// A rollout driven in a cluster: the cluster, and the driver's term that fences its writes.
#[derive(Clone, Copy)]
pub struct Driving<'a> {
    pub cluster: &'a Cluster,
    pub rollout: &'a str,
    pub term: i64,
}

impl<'a> Driving<'a> {
    /// What the rollout's node writes are conditioned on.
    pub(super) fn fence(&self) -> Option<(&'a str, i64)> {
        Some((self.rollout, self.term))
    }
}

/// How a phase ended, when not in success.
pub(super) enum Stop {
    Failed(String),
    Aborted,
    /// The node failed analysis and was drained; the reason, and the rollback to run.
    Breach(String, Option<super::Rollback>),
    /// In a cluster: this driver's term ended mid-step; the step is left for the next
    /// driver to redo.
    Deposed,
}

/// Extra time past the drain timeout for the deadline closes to finish.
pub(super) const DRAIN_SLACK: Duration = Duration::from_secs(15);

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
            handle.lock().phase = Some(phase);
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

pub(super) async fn step(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    judged: &mut Option<Judged>,
    (pool, node, version): (&str, &str, &str),
    phase: Phase,
) -> Result<(), Stop> {
    let target = {
        let snapshot = app.snapshot.load();
        let p = snapshot
            .pool(pool)
            .ok_or_else(|| Stop::Failed(format!("pool {pool} no longer exists")))?;
        let n = p
            .node(node)
            .ok_or_else(|| Stop::Failed(format!("node {pool}/{node} no longer exists")))?;
        NodeRef {
            pool: Arc::clone(p),
            node: Arc::clone(n),
        }
    };
    let (drain_timeout, ready_timeout, warmup) = {
        let r = handle.lock();
        (r.drain_timeout, r.ready_timeout, r.warmup)
    };
    let state = &target.node.state;
    let key = target.node.key();
    let healthy_after = target.pool.config.health.healthy_after;
    match phase {
        Phase::Guard => {
            // What a rollback would go back to (kept from the first look, across resumes).
            if let Some(v) = state.version() {
                handle
                    .lock()
                    .previous_versions
                    .entry(node.to_string())
                    .or_insert_with(|| v.to_string());
            }
            // A sibling must carry the load before this node leaves: wait for one.
            wait_for_sibling(handle, &target, ready_timeout, Attempt::Guard).await
        }
        Phase::Draining => {
            // The same guarded drain an operator gets, never forced: if a sibling stopped
            // serving since the guard phase, wait for one again (within ready_timeout).
            let drain = Attempt::Drain {
                app,
                cluster,
                timeout: drain_timeout,
            };
            wait_for_sibling(handle, &target, ready_timeout, drain).await?;
            let deadline =
                instant_after(drain_timeout + target.pool.config.drain.close_spread + DRAIN_SLACK);
            if !wait_node(handle, state, deadline, false, |s| {
                s.admin() == AdminState::Drained
            })
            .await?
            {
                return Err(Stop::Failed(format!(
                    "{key} did not drain (state {})",
                    state.admin().as_str()
                )));
            }
            // The node is about to be restarted: the sessions other instances hold on it
            // must be over too.
            if let Some(Driving { cluster, .. }) = cluster {
                let limit = deadline.saturating_duration_since(Instant::now());
                let drained = AdminState::Drained.as_str();
                let here = || state.admin() == AdminState::Drained;
                if !cluster
                    .wait_all(&target, limit, here, |o| o.state == drained)
                    .await
                {
                    let behind: Vec<String> = cluster
                        .instances(&key)
                        .into_iter()
                        .filter(|o| o.state != drained)
                        .map(|o| {
                            format!(
                                "{} ({}, {} sessions)",
                                o.instance, o.state, o.sessions.total
                            )
                        })
                        .collect();
                    return Err(Stop::Failed(format!(
                        "{key} did not drain on {}",
                        behind.join(", ")
                    )));
                }
            }
            Ok(())
        }
        Phase::WaitingUpgrade => {
            handle.lock().reason = None;
            if let Some(argv) = &target.pool.config.rollout.hook {
                let (id, term) = term_of(handle, cluster);
                let env = hook::env(&target, version, hook::Action::Upgrade, (&id, term));
                handle.event(
                    Some(node),
                    Some(phase),
                    format!("running hook {}", argv.join(" ")),
                );
                let term = cluster.map(|d| &d.cluster.term);
                return match hook::run(argv, &env, ready_timeout, &handle.abort, term).await {
                    Ok(_) => Ok(()),
                    Err(hook::HookError::Aborted) => Err(Stop::Aborted),
                    Err(hook::HookError::TermEnded) => Err(Stop::Deposed),
                    Err(e) => Err(Stop::Failed(format!("{e}; {key} left drained"))),
                };
            }
            let deadline = instant_after(ready_timeout);
            let reports = |s: &NodeState| s.version().is_some_and(|v| *v == version);
            if wait_node(handle, state, deadline, true, reports).await? {
                Ok(())
            } else {
                Err(Stop::Failed(not_ready(&key, state, version, ready_timeout)))
            }
        }
        Phase::WaitingReady => {
            let deadline = instant_after(ready_timeout);
            let ready = |s: &NodeState| {
                s.version().is_some_and(|v| *v == version)
                    && s.version_passes() >= healthy_after
                    && s.health() == Health::Up
            };
            if !wait_node(handle, state, deadline, true, ready).await? {
                return Err(Stop::Failed(not_ready(&key, state, version, ready_timeout)));
            }
            match cluster {
                Some(d) => everyone_sees_ready(handle, d.cluster, &key, version, deadline).await,
                None => Ok(()),
            }
        }
        Phase::Warming => {
            let analysis = handle.lock().analysis.clone();
            if let Some(cfg) = &analysis {
                // Judged from its readmission: on probation and with its baseline taken before
                // its first request.
                *judged = Some(Judged {
                    baseline: Baseline::take(&target),
                    _probation: Probation::start(state),
                });
                handle.event(
                    Some(node),
                    Some(phase),
                    format!(
                        "analysis started: error rate {} at most over at least {} requests, for {}",
                        cfg.max_error_rate,
                        cfg.min_requests,
                        duration::format(cfg.window)
                    ),
                );
            }
            if target.pool.config.rollout.prefer_target_version {
                // From now on a target-version node serves: new sessions prefer such nodes.
                target
                    .pool
                    .control
                    .prefer
                    .store(Some(Arc::new(version.to_string())));
            }
            match cluster {
                Some(d) => {
                    // Retried while etcd is away; the driver loses its term if that lasts
                    // (and is then stopped by the follower).
                    while let Err(e) = d.cluster.enable(&target, Some(warmup), d.fence()).await {
                        handle.event(
                            Some(node),
                            Some(phase),
                            format!("enable not written yet: {e}"),
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                None => lifecycle::enable(app, &target, Some(warmup)),
            }
            let deadline = instant_after(warmup + ready_timeout);
            let active = wait_node(handle, state, deadline, false, |s| {
                s.admin() == AdminState::Active
            });
            let warmed = match (&analysis, judged.as_ref()) {
                (Some(cfg), Some(j)) => tokio::select! {
                    done = active => done?,
                    verdict = analysis::watch(cfg, &j.baseline, true) => {
                        return Err(analysis::breach(app, cluster, handle, &target, verdict).await);
                    }
                },
                _ => active.await?,
            };
            if warmed {
                Ok(())
            } else {
                Err(Stop::Failed(format!(
                    "{key} did not become active (state {}, health {})",
                    state.admin().as_str(),
                    state.health().as_str()
                )))
            }
        }
        Phase::Analysis => {
            let judged = judged.take();
            analysis::phase(app, cluster, handle, judged, &target, ready_timeout).await
        }
        // Replace phases: the replace flow's own (see `replace`).
        Phase::Done | Phase::Provisioning | Phase::Preview | Phase::Retiring => Ok(()),
    }
}

/// The rollout's id and its driver's term (0 outside a cluster), for the hook.
pub(super) fn term_of<'a>(handle: &Handle, cluster: Option<Driving<'a>>) -> (String, i64) {
    match cluster {
        Some(d) => (d.rollout.to_string(), d.term),
        None => (handle.lock().id.clone(), 0),
    }
}

fn not_ready(key: &str, state: &NodeState, version: &str, limit: Duration) -> String {
    let reported = state
        .version()
        .map_or_else(|| "no version".to_string(), |v| format!("version {v}"));
    format!(
        "{key} not ready within {}: it reports {reported} (expected {version}), health {}; {key} left drained",
        duration::format(limit),
        state.health().as_str()
    )
}
