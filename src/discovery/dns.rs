//! A pool's nodes following a DNS name (`pools[].discovery`): A/AAAA records at the
//! configured port, or SRV records with their ports and weights.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;

use super::{Failures, RESOLVE_TIMEOUT};
use crate::config::{defaults, limits, DiscoveryConfig, NodeConfig, NodeSource};
use crate::control::{Control, NodeRef};
use crate::lifecycle;
use crate::pool::AdminState;

/// What one resolution found: address → weight.
type Found = BTreeMap<SocketAddr, u32>;

pub(super) async fn run(
    ctl: Arc<Control>,
    pool: String,
    cfg: DiscoveryConfig,
    stop: CancellationToken,
) {
    let resolver = match resolver(&cfg) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(pool = %pool, name = %cfg.name, error = %e, "discovery: cannot set up a resolver; the pool keeps the nodes it has");
            return;
        }
    };
    tracing::info!(pool = %pool, name = %cfg.name, srv = cfg.srv, interval = %crate::config::duration::format(cfg.interval), "discovery: following a DNS name");
    let mut failures = Failures::default();
    loop {
        let answer = tokio::time::timeout(RESOLVE_TIMEOUT, resolve(&resolver, &cfg))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {RESOLVE_TIMEOUT:?}")));
        let usable = answer.as_ref().map(|f| !f.is_empty()).map_err(Clone::clone);
        if failures.usable(&ctl, &pool, &pool, &cfg.name, usable) {
            if let Ok(found) = &answer {
                follow(&ctl, &pool, found);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}

fn resolver(cfg: &DiscoveryConfig) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let builder = match cfg.resolver {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                provider,
            )
        }
        None => TokioResolver::builder(provider).map_err(|e| e.to_string())?,
    };
    let mut builder = builder;
    // A server that does not answer is a failed resolution soon, not a stalled loop.
    builder.options_mut().timeout = RESOLVE_TIMEOUT / 2;
    builder.options_mut().attempts = 1;
    builder.build().map_err(|e| e.to_string())
}

/// Resolves the name: its A/AAAA records at `port`, or its SRV records (the lowest priority
/// only: the others are backups), each target resolved in turn.
async fn resolve(r: &TokioResolver, cfg: &DiscoveryConfig) -> Result<Found, String> {
    let mut found = Found::new();
    if !cfg.srv {
        let port = cfg.port.unwrap_or(0);
        let ips = r
            .lookup_ip(cfg.name.as_str())
            .await
            .map_err(|e| e.to_string())?;
        for ip in ips.iter() {
            found.insert(SocketAddr::new(ip, port), defaults::WEIGHT);
        }
        return Ok(found);
    }
    let srv = r
        .srv_lookup(cfg.name.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let records: Vec<_> = srv
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::SRV(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let Some(best) = records.iter().map(|s| s.priority).min() else {
        return Ok(found);
    };
    for s in records.iter().filter(|s| s.priority == best) {
        let port = cfg.port.unwrap_or(s.port);
        if port == 0 {
            continue;
        }
        // SRV weight 0 means "no preference": the default weight.
        let weight = match s.weight {
            0 => defaults::WEIGHT,
            w => u32::from(w).clamp(limits::WEIGHT.0, limits::WEIGHT.1),
        };
        let ips = r
            .lookup_ip(s.target.clone())
            .await
            .map_err(|e| format!("SRV target {}: {e}", s.target))?;
        for ip in ips.iter() {
            found.insert(SocketAddr::new(ip, port), weight);
        }
    }
    Ok(found)
}

/// Brings the pool's discovered nodes to `found`: adds, re-weighs, readmits, drains and
/// removes, one step per resolution.
fn follow(ctl: &Arc<Control>, pool: &str, found: &Found) {
    let snapshot = ctl.snapshot.load_full();
    let Some(p) = snapshot.pool(pool) else { return };
    let mine: Vec<NodeRef> = p
        .nodes
        .iter()
        .filter(|n| n.source == NodeSource::Dns)
        .map(|n| NodeRef {
            pool: Arc::clone(p),
            node: Arc::clone(n),
        })
        .collect();
    // New addresses first: the drains below wait for them under the pair guard.
    let new: Vec<(SocketAddr, u32)> = found
        .iter()
        .filter(|(addr, _)| !mine.iter().any(|t| t.node.addr == **addr))
        .map(|(a, w)| (*a, *w))
        .collect();
    if !new.is_empty() {
        let added = ctl.change_members(
            |m, file| {
                for (addr, weight) in &new {
                    let node = NodeConfig {
                        name: addr.to_string(),
                        addr: *addr,
                        weight: *weight,
                        source: NodeSource::Dns,
                        host: None,
                    };
                    m.add(file, pool, node)?;
                }
                Ok(())
            },
            |next| {
                for (addr, _) in &new {
                    if let Some(t) = NodeRef::of(next, pool, &addr.to_string()) {
                        lifecycle::added(ctl, &t, false);
                        t.node.state.history.note("added by DNS discovery");
                    }
                }
            },
        );
        match added {
            Ok(()) => {
                tracing::info!(pool = %pool, added = ?new.iter().map(|(a, _)| a).collect::<Vec<_>>(), "discovery: new addresses added")
            }
            Err(e) => {
                tracing::warn!(pool = %pool, error = %e, "discovery: new addresses not added")
            }
        }
    }
    for t in &mine {
        match found.get(&t.node.addr) {
            Some(&weight) => {
                if weight != t.node.weight {
                    let (name, addr) = (t.node.name.as_str(), None);
                    if let Err(e) = ctl.change_members(
                        |m, file| m.set(file, pool, name, addr, Some(weight)),
                        |_| {},
                    ) {
                        tracing::warn!(node = %t.node.key(), error = %e, "discovery: weight not changed");
                    }
                }
                let admin = t.node.state.admin();
                if matches!(admin, AdminState::Draining | AdminState::Drained) {
                    // Back in the answer: readmitted (warming once up).
                    lifecycle::enable(ctl, t, None);
                    t.node.state.history.note("back in DNS: enabled again");
                }
            }
            None => gone(ctl, t),
        }
    }
}

/// An address no longer in the answer: drained (never cut), then removed once drained with
/// no session.
fn gone(ctl: &Arc<Control>, t: &NodeRef) {
    let state = &t.node.state;
    match state.admin() {
        AdminState::Drained if state.active_sessions() == 0 => {
            let (pool, name) = (t.pool.name.as_str(), t.node.name.as_str());
            match ctl.change_members(|m, file| m.remove(file, pool, name), |_| {}) {
                Ok(()) => {
                    tracing::info!(node = %t.node.key(), "discovery: address gone from DNS; removed")
                }
                Err(e) => {
                    tracing::warn!(node = %t.node.key(), error = %e, "discovery: not removed")
                }
            }
        }
        AdminState::Drained | AdminState::Draining => {}
        AdminState::Active | AdminState::Warming => match lifecycle::drain(ctl, t, None, false) {
            Ok(()) => {
                tracing::info!(node = %t.node.key(), "discovery: address gone from DNS; draining");
                state
                    .history
                    .note("gone from DNS: draining, removed once drained");
            }
            // No other node serves yet (the new addresses are still proving themselves):
            // it keeps serving, and is tried again at the next resolution.
            Err(e) => {
                tracing::debug!(node = %t.node.key(), error = %e, "discovery: not drained yet")
            }
        },
    }
}
