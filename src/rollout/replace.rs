//! Replace rollouts: each node's replacement comes up beside it before it leaves, so the pool
//! never serves with fewer nodes than before the rollout began.
//!
//! Per node, in order: `provisioning` (the hook's `provision` starts the new node and prints
//! its address; without a hook, an operator adds it with `"replaces"`) → `waiting_ready`
//! (the new node, held out, up with the target version) → `preview` (only with
//! `preview.for`) → `warming` and `analysis` (the new node takes live traffic beside the old
//! one, judged as an upgraded node is) → `draining` the old node → `retiring` (removed, then
//! the hook's `retire`). The phases on the new node are the in-place ones, run on it; a
//! replacement that fails them is drained and removed, and the old node was never touched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::analysis::Judged;
use super::driving::{Driving, Stop, DRAIN_SLACK};
use super::in_place::step as in_place;
use super::wait::wait_node;
use super::{hook, Handle, Phase, Replacement};
use crate::cluster::ops::{change_pool_members, MemberEffect};
use crate::config::{NodeConfig, NodeSource};
use crate::control::{Control, NodeRef};
use crate::lifecycle;
use crate::pool::AdminState;
use crate::time::instant_after;

pub(super) async fn step(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    judged: &mut Option<Judged>,
    (pool, old, version): (&str, &str, &str),
    phase: Phase,
) -> Result<(), Stop> {
    match phase {
        Phase::Provisioning => provision(app, cluster, handle, pool, old, version).await,
        Phase::WaitingReady | Phase::Warming | Phase::Analysis => {
            let new = replacement(handle, old)?.name;
            let result = in_place(app, cluster, handle, judged, (pool, &new, version), phase).await;
            match result {
                Err(Stop::Failed(why)) | Err(Stop::Breach(why, _)) => {
                    drop(judged.take());
                    Err(Stop::Failed(
                        discard(app, cluster, handle, pool, old, &new, why).await,
                    ))
                }
                other => other,
            }
        }
        Phase::Preview => {
            let wait = app
                .snapshot
                .load()
                .pool(pool)
                .and_then(|p| p.config.rollout.preview.as_ref().map(|p| p.for_))
                .unwrap_or_default();
            if wait.is_zero() {
                return Ok(());
            }
            tokio::select! {
                _ = handle.abort.cancelled() => Err(Stop::Aborted),
                _ = tokio::time::sleep(wait) => Ok(()),
            }
        }
        Phase::Draining => {
            in_place(app, cluster, handle, judged, (pool, old, version), phase).await
        }
        Phase::Retiring => retire(app, cluster, handle, pool, old, version).await,
        _ => Ok(()),
    }
}

/// An abort before the old node was touched (`draining`) takes the replacement out again,
/// so the pool is as it was; from `draining` on, the old node is on its way out and its
/// replacement stays.
pub(super) async fn aborted(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    pool: &str,
    old: &str,
    phase: Phase,
) {
    let before_draining = Phase::REPLACE_ORDER
        .iter()
        .position(|p| *p == phase)
        .is_some_and(|i| i < 5);
    if !before_draining {
        return;
    }
    if let Ok(new) = replacement(handle, old) {
        let reason = discard(app, cluster, handle, pool, old, &new.name, "aborted".into()).await;
        handle.event(Some(old), Some(phase), reason);
    }
}

/// The replacement of `old`, once provisioned.
fn replacement(handle: &Handle, old: &str) -> Result<Replacement, Stop> {
    handle
        .lock()
        .replacements
        .get(old)
        .cloned()
        .ok_or_else(|| Stop::Failed(format!("no replacement of {old} was provisioned")))
}

async fn provision(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    pool: &str,
    old: &str,
    version: &str,
) -> Result<(), Stop> {
    let t = node(app, pool, old)?;
    let ready_timeout = handle.lock().ready_timeout;
    let recorded = handle.lock().replacements.get(old).cloned();
    let new = match recorded {
        // Resumed: it was provisioned (and maybe added) before.
        Some(r) => r,
        None => match &t.pool.config.rollout.hook {
            Some(argv) => {
                let (id, term) = super::driving::term_of(handle, cluster);
                let env = hook::env(&t, version, hook::Action::Provision, (&id, term));
                handle.event(
                    Some(old),
                    Some(Phase::Provisioning),
                    format!("running hook {} (provision)", argv.join(" ")),
                );
                let term = cluster.map(|d| &d.cluster.term);
                let out = match hook::run(argv, &env, ready_timeout, &handle.abort, term).await {
                    Ok(out) => out,
                    Err(hook::HookError::Aborted) => return Err(Stop::Aborted),
                    Err(hook::HookError::TermEnded) => return Err(Stop::Deposed),
                    Err(e) => return Err(Stop::Failed(format!("{e}; {} untouched", t.node.key()))),
                };
                let r = parse_provisioned(&out, old, version).map_err(|why| {
                    Stop::Failed(format!(
                        "the provision hook's output: {why}; {} untouched",
                        t.node.key()
                    ))
                })?;
                handle
                    .lock()
                    .replacements
                    .insert(old.to_string(), r.clone());
                r
            }
            None => wait_offer(handle, old, ready_timeout).await?,
        },
    };
    if app.node(pool, &new.name).is_some() {
        return Ok(());
    }
    add(app, cluster, pool, &new).await.map_err(|why| {
        Stop::Failed(format!(
            "replacement {pool}/{} not added: {why}; {} untouched",
            new.name,
            t.node.key()
        ))
    })?;
    handle.event(
        Some(old),
        Some(Phase::Provisioning),
        format!("{pool}/{} at {} replaces {old}", new.name, new.addr),
    );
    Ok(())
}

/// Without a hook: waits for an operator's `POST .../nodes` with `"replaces": old`.
async fn wait_offer(handle: &Handle, old: &str, limit: Duration) -> Result<Replacement, Stop> {
    let deadline = instant_after(limit);
    loop {
        let offered = handle.offered.notified();
        if let Some(r) = handle.lock().replacements.get(old).cloned() {
            return Ok(r);
        }
        tokio::select! {
            _ = handle.abort.cancelled() => return Err(Stop::Aborted),
            _ = offered => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Stop::Failed(format!(
                    "no replacement of {old} within {}: add one with POST /v1/pools/POOL/nodes and \"replaces\": \"{old}\", or give the pool a rollout hook",
                    crate::config::duration::format(limit)
                )))
            }
        }
    }
}

/// `ADDR` or `NAME ADDR` on the last non-empty line of the hook's stdout.
fn parse_provisioned(out: &str, old: &str, version: &str) -> Result<Replacement, String> {
    let line = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or("nothing printed (expected ADDR or NAME ADDR on its last line)")?;
    let mut words = line.split_whitespace();
    let (name, addr) = match (words.next(), words.next(), words.next()) {
        (Some(addr), None, None) => (default_name(old, version), addr),
        (Some(name), Some(addr), None) => (name.to_string(), addr),
        _ => return Err(format!("{line:?} is not ADDR or NAME ADDR")),
    };
    if !crate::config::valid_name(&name) {
        return Err(format!("{name:?} is not a valid node name"));
    }
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address and port"))?;
    Ok(Replacement { name, addr })
}

/// `a` at `2.0.0` → `a-2.0.0` (what a name may not hold becomes `-`).
fn default_name(old: &str, version: &str) -> String {
    let raw = format!("{old}-{version}");
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    name
}

/// Adds the replacement, held out (drained) until the rollout admits it.
async fn add(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    pool: &str,
    new: &Replacement,
) -> Result<(), String> {
    let node = NodeConfig {
        name: new.name.clone(),
        addr: new.addr,
        weight: crate::config::defaults::WEIGHT,
        source: NodeSource::Api,
        host: None,
    };
    let add = |m: &mut crate::members::Membership, file: &crate::config::Config| {
        m.add(file, pool, node.clone())
    };
    let what = format!("addition of {pool}/{}", new.name);
    let effect = MemberEffect::Added {
        name: &new.name,
        hold: true,
    };
    members(app, cluster, (pool, what), add, effect).await
}

/// Removes `pool/name` (drained with no session) from the pool.
async fn remove(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    pool: &str,
    name: &str,
) -> Result<(), String> {
    let remove = |m: &mut crate::members::Membership, file: &crate::config::Config| {
        m.remove(file, pool, name)
    };
    let what = format!("removal of {pool}/{name}");
    members(
        app,
        cluster,
        (pool, what),
        remove,
        MemberEffect::Removed { name },
    )
    .await
}

/// A members change by the rollout: through etcd under the driver's term in a cluster.
async fn members(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    at: (&str, String),
    change: impl Fn(
        &mut crate::members::Membership,
        &crate::config::Config,
    ) -> Result<(), crate::members::MemberError>,
    effect: MemberEffect<'_>,
) -> Result<(), String> {
    let (c, fence) = match cluster {
        Some(d) => (Some(d.cluster), d.fence()),
        None => (None, None),
    };
    change_pool_members(app, c, fence, at, change, effect)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A replacement that failed: drained (forced: the old node serves) and removed. Returns
/// the rollout's reason.
async fn discard(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    pool: &str,
    old: &str,
    new: &str,
    why: String,
) -> String {
    let mut reason = why;
    if let Some(t) = app.node(pool, new) {
        let timeout = handle.lock().drain_timeout;
        let drained = match cluster {
            Some(d) => d
                .cluster
                .drain(&t, Some(timeout), true, d.fence())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            None => lifecycle::drain(app, &t, Some(timeout), true).map_err(|e| e.to_string()),
        };
        let deadline = instant_after(timeout + t.pool.config.drain.close_spread + DRAIN_SLACK);
        let out = |s: &crate::pool::NodeState| {
            s.admin() == AdminState::Drained && s.active_sessions() == 0
        };
        let gone = match drained {
            Ok(())
                if wait_node(handle, &t.node.state, deadline, false, out)
                    .await
                    .unwrap_or(false) =>
            {
                remove(app, cluster, pool, new).await
            }
            Ok(()) => Err("it did not drain in time".into()),
            Err(e) => Err(e),
        };
        match gone {
            Ok(()) => reason.push_str(&format!("; replacement {pool}/{new} drained and removed")),
            Err(e) => reason.push_str(&format!("; replacement {pool}/{new} not removed ({e})")),
        }
    }
    handle.lock().replacements.remove(old);
    reason.push_str(&format!("; {pool}/{old} kept serving, untouched"));
    reason
}

/// The old node, drained everywhere: removed from the pool, then the hook's `retire`.
async fn retire(
    app: &Arc<Control>,
    cluster: Option<Driving<'_>>,
    handle: &Handle,
    pool: &str,
    old: &str,
    version: &str,
) -> Result<(), Stop> {
    let Some(t) = app.node(pool, old) else {
        // Resumed after the removal: the hook's retire runs again (hooks are idempotent).
        return Ok(());
    };
    remove(app, cluster, pool, old)
        .await
        .map_err(|why| Stop::Failed(format!("{} not removed: {why}", t.node.key())))?;
    handle.event(
        Some(old),
        Some(Phase::Retiring),
        format!("{} removed", t.node.key()),
    );
    let Some(argv) = &t.pool.config.rollout.hook else {
        return Ok(());
    };
    let (id, term) = super::driving::term_of(handle, cluster);
    let env = hook::env(&t, version, hook::Action::Retire, (&id, term));
    let ready_timeout = handle.lock().ready_timeout;
    let never = tokio_util::sync::CancellationToken::new();
    match hook::run(
        argv,
        &env,
        ready_timeout,
        &never,
        cluster.map(|d| &d.cluster.term),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(hook::HookError::TermEnded) => Err(Stop::Deposed),
        Err(e) => Err(Stop::Failed(format!(
            "the retire hook for {} failed: {e} (it was removed from the pool)",
            t.node.key()
        ))),
    }
}

fn node(app: &Control, pool: &str, name: &str) -> Result<NodeRef, Stop> {
    app.node(pool, name)
        .ok_or_else(|| Stop::Failed(format!("node {pool}/{name} no longer exists")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provision_hook_prints_an_address_or_a_name_and_one() {
        let r = parse_provisioned("starting\n127.0.0.1:9000\n\n", "a", "2.0.0").unwrap();
        assert_eq!(
            (r.name.as_str(), r.addr.to_string().as_str()),
            ("a-2.0.0", "127.0.0.1:9000")
        );
        let r = parse_provisioned("web-7 10.0.0.7:80", "a", "2.0").unwrap();
        assert_eq!(r.name, "web-7");
        assert!(parse_provisioned("", "a", "2").is_err());
        assert!(parse_provisioned("host.internal:80", "a", "2").is_err());
        assert!(parse_provisioned("a b c", "a", "2").is_err());
        assert!(parse_provisioned("bad/name 127.0.0.1:1", "a", "2").is_err());
        assert_eq!(default_name("a", "2.0.0+build 7"), "a-2.0.0-build-7");
    }
}
