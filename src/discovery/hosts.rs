//! File nodes given by host name (`addr: "backend.internal:8000"`): resolved again every
//! `resolve_interval` with the system's resolver, as at load; a node whose name moved is
//! moved, never cut.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Failures, RESOLVE_TIMEOUT};
use crate::control::{Control, NodeRef};
use crate::lifecycle;
use crate::pool::AdminState;

/// Follows the host names of the file's nodes (every pool), every `every`.
pub(super) async fn follow(ctl: Arc<Control>, every: Duration, stop: CancellationToken) {
    // Nodes this task drained to move them: readmitted once moved.
    let mut moving = HashSet::new();
    let mut failures = Failures::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let file = ctl.file();
        for pool in &file.pools {
            for node in pool.nodes.iter() {
                let Some(host) = &node.host else { continue };
                let key = format!("{}/{}", pool.name, node.name);
                let answer =
                    tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(host.clone()))
                        .await
                        .map_err(|_| format!("no answer within {RESOLVE_TIMEOUT:?}"))
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .map(|addrs| addrs.collect::<Vec<SocketAddr>>());
                let usable = answer.as_ref().map(|a| !a.is_empty()).map_err(Clone::clone);
                if !failures.usable(&ctl, &pool.name, &key, host, usable) {
                    continue;
                }
                if let (Ok(addrs), Some(t)) = (&answer, ctl.node(&pool.name, &node.name)) {
                    step(&ctl, &t, host, addrs, &mut moving);
                }
            }
        }
    }
}

/// One step of moving node `t` to where its host name now points.
fn step(
    ctl: &Arc<Control>,
    t: &NodeRef,
    host: &str,
    addrs: &[SocketAddr],
    moving: &mut HashSet<String>,
) {
    let key = t.node.key();
    if addrs.contains(&t.node.addr) {
        return;
    }
    let target = addrs[0];
    let state = &t.node.state;
    match state.admin() {
        AdminState::Active | AdminState::Warming => match lifecycle::drain(ctl, t, None, false) {
            Ok(()) => {
                tracing::info!(node = %key, %host, from = %t.node.addr, to = %target, "node's host name moved: draining it to move it");
                state
                    .history
                    .note(format!("{host} now resolves to {target}: draining to move"));
                moving.insert(key);
            }
            // No other node serves yet: it stays (and is tried again next time).
            Err(e) => {
                tracing::debug!(node = %key, error = %e, "node's host name moved; not drained yet")
            }
        },
        AdminState::Draining => {}
        AdminState::Drained if state.active_sessions() > 0 => {}
        AdminState::Drained => {
            let (pool, name) = (t.pool.name.as_str(), t.node.name.as_str());
            let moved = ctl.change_members(
                |m, file| m.set(file, pool, name, Some(target), None),
                |_| {},
            );
            if let Err(e) = moved {
                tracing::warn!(node = %key, error = %e, "node not moved");
                return;
            }
            tracing::info!(node = %key, %host, to = %target, "node moved to its host name's new address");
            let Some(t) = ctl.node(pool, name) else {
                return;
            };
            t.node
                .state
                .history
                .note(format!("moved to {target} ({host})"));
            if moving.remove(&key) {
                // Drained here to move: readmitted, warming once up at the new address.
                lifecycle::enable(ctl, &t, None);
            }
        }
    }
}
