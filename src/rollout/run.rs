//! The rollout state machine: for each node in order, each phase in order, resumable from
//! any (node, phase) after a restart. Every wait is on the node's change signal with a
//! deadline; abort interrupts the waits that change nothing (guard, waiting for the
//! upgrade or readiness) and lets draining and warming finish, so nodes end in a safe state.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::wait::{everyone_sees_ready, wait_for_sibling, wait_node, Attempt};
use super::{hook, Handle, Phase, RolloutState};
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
}

/// Extra time past the drain timeout for the deadline closes to finish.
const DRAIN_SLACK: Duration = Duration::from_secs(15);

pub async fn run(app: &Arc<Control>, cluster: Option<Driving<'_>>, handle: Arc<Handle>) {
    let app = Arc::clone(app);
    let (pool_name, order, version) = {
        let r = handle.lock();
        (r.pool.clone(), r.order.clone(), r.version.clone())
    };
    let start = handle.lock().node_index;
    for (index, node_name) in order.iter().enumerate().skip(start) {
        let resume_phase = {
            let mut r = handle.lock();
            let resume = if r.node_index == index { r.phase } else { None };
            r.node_index = index;
            r.current_node = Some(node_name.clone());
            resume
        };
        let first = resume_phase.map_or(0, |p| {
            Phase::ORDER.iter().position(|x| *x == p).unwrap_or(0)
        });
        for &phase in &Phase::ORDER[first..] {
            if handle.abort.is_cancelled() {
                // Between steps: the next step never starts, and the reason says so.
                let where_ = format!("{node_name} before {}", phase.as_str());
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
            let result = step(
                &app, cluster, &handle, &pool_name, node_name, &version, phase,
            )
            .await;
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
                Err(Stop::Aborted) => {
                    let where_ = format!("{node_name} ({})", phase.as_str());
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

async fn step(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    pool: &str,
    node: &str,
    version: &str,
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
                let env = [
                    ("HANDOFF_POOL", pool.to_string()),
                    ("HANDOFF_NODE", node.to_string()),
                    ("HANDOFF_NODE_ADDR", target.node.addr.to_string()),
                    ("HANDOFF_TARGET_VERSION", version.to_string()),
                ];
                handle.event(
                    Some(node),
                    Some(phase),
                    format!("running hook {}", argv.join(" ")),
                );
                return match hook::run(argv, &env, ready_timeout, &handle.abort).await {
                    Ok(()) => Ok(()),
                    Err(hook::HookError::Aborted) => Err(Stop::Aborted),
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
            if wait_node(handle, state, deadline, false, |s| {
                s.admin() == AdminState::Active
            })
            .await?
            {
                Ok(())
            } else {
                Err(Stop::Failed(format!(
                    "{key} did not become active (state {}, health {})",
                    state.admin().as_str(),
                    state.health().as_str()
                )))
            }
        }
        Phase::Done => Ok(()),
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
