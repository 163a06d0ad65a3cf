//! One step of an in-place rollout: a node through one phase (guard, drain, wait for the
//! upgrade, wait until ready, warm up, analysis). A replace rollout uses the same steps for
//! the phases the two share.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::analysis::{self, Baseline, Judged, Probation};
use super::driving::{term_of, Driving, Stop, DRAIN_SLACK};
use super::wait::{everyone_sees_ready, wait_for_sibling, wait_node, Attempt};
use super::{hook, Handle, Phase};
use crate::config::duration;
use crate::control::{Control, NodeRef};
use crate::lifecycle;
use crate::pool::{AdminState, Health, NodeState};
use crate::time::instant_after;

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
