//! DNS discovery: a pool's nodes follow a DNS name (`pools[].discovery`).
//!
//! Each pool with `discovery:` has one task that resolves the name every `interval`
//! (hickory-resolver, whose cache keeps an answer for its TTL, so a name is never asked
//! more often than its records allow). Each address is a node named by it (`10.0.0.7:8000`),
//! `source: dns`:
//!
//! - a new address is added like a node added through the API: `unknown`, then warming once
//!   it is up;
//! - an address that is gone is drained (under the pair guard: it keeps serving until
//!   another node can take its sessions, so a record set that moves from two addresses to
//!   two others is never a node short), and removed once drained with no session; it is
//!   never cut;
//! - an address that comes back while draining is enabled again;
//! - an empty answer, NXDOMAIN or a resolver error changes nothing (fail static): it is
//!   counted, and logged once per change of condition.
//!
//! Discovered nodes are this instance's own (each instance of a cluster resolves for
//! itself): they are kept in the state file and carried by a self-upgrade, not shared.
//!
//! A node the file gives by host name (`addr: "backend.internal:8000"`) is resolved when the
//! config is loaded, and then again every `resolve_interval` (the system's resolver, as at
//! load). While the name still resolves to the node's address nothing happens; once it no
//! longer does, the node moves, never cut: it is drained (under the pair guard), given the
//! new address once drained with no session, and readmitted (health `unknown`, then
//! warming once up). A node an operator drained keeps its state; only its address follows.
//! An empty or failed answer changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;

use crate::config::{defaults, limits, Config, DiscoveryConfig, NodeConfig, NodeSource};
use crate::control::{Control, NodeRef};
use crate::lifecycle;
use crate::pool::AdminState;

/// How long one resolution may take (every record of it) before it counts as failed.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// The discovery tasks, one per pool with `discovery:`.
#[derive(Default)]
pub struct Discovery {
    tasks: Mutex<HashMap<String, (DiscoveryConfig, CancellationToken)>>,
    /// The task that follows the host names of file nodes, with its interval.
    hosts: Mutex<Option<(std::time::Duration, CancellationToken)>>,
}

impl Discovery {
    /// Starts, restarts or stops the pools' tasks to match `config` (at start and at each
    /// reload); a pool whose discovery did not change keeps its task.
    pub fn sync(&self, ctl: &Arc<Control>, config: &Config) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: HashMap<&str, &DiscoveryConfig> = config
            .pools
            .iter()
            .filter_map(|p| Some((p.name.as_str(), p.discovery.as_ref()?)))
            .collect();
        tasks.retain(|pool, (cfg, stop)| {
            let keep = wanted.get(pool.as_str()) == Some(&&*cfg);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (pool, cfg) in wanted {
            if tasks.contains_key(pool) {
                continue;
            }
            let stop = ctl.stop.child_token();
            tokio::spawn(run(
                Arc::clone(ctl),
                pool.to_string(),
                cfg.clone(),
                stop.clone(),
            ));
            tasks.insert(pool.to_string(), (cfg.clone(), stop));
        }
        drop(tasks);
        let named = config
            .pools
            .iter()
            .any(|p| p.nodes.iter().any(|n| n.host.is_some()));
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let same = hosts
            .as_ref()
            .is_some_and(|(every, _)| named && *every == config.resolve_interval);
        if !same {
            if let Some((_, stop)) = hosts.take() {
                stop.cancel();
            }
            if named {
                let stop = ctl.stop.child_token();
                tokio::spawn(follow_hosts(
                    Arc::clone(ctl),
                    config.resolve_interval,
                    stop.clone(),
                ));
                *hosts = Some((config.resolve_interval, stop));
            }
        }
    }
}

/// Follows the host names of the file's nodes (every pool), every `every`.
async fn follow_hosts(ctl: Arc<Control>, every: std::time::Duration, stop: CancellationToken) {
    // Nodes this task drained to move them: readmitted once moved.
    let mut moving = std::collections::HashSet::new();
    // The failure last logged per node, so each change of condition is logged once.
    let mut failing: HashMap<String, String> = HashMap::new();
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
                match answer {
                    Ok(addrs) if !addrs.is_empty() => {
                        if failing.remove(&key).is_some() {
                            tracing::info!(node = %key, %host, "node's host name resolves again");
                        }
                        if let Some(t) = ctl.node(&pool.name, &node.name) {
                            follow_host(&ctl, &t, host, &addrs, &mut moving);
                        }
                    }
                    answer => {
                        let (reason, detail) = match answer {
                            Ok(_) => ("empty", "no address in the answer".to_string()),
                            Err(e) => ("error", e),
                        };
                        ctl.metrics
                            .discovery_errors
                            .with_label_values(&[&pool.name, reason])
                            .inc();
                        if failing.get(&key) != Some(&detail) {
                            tracing::warn!(node = %key, %host, error = %detail, "node's host name gives no usable answer; the node keeps its address");
                            failing.insert(key, detail);
                        }
                    }
                }
            }
        }
    }
}

/// One step of moving node `t` to where its host name now points.
fn follow_host(
    ctl: &Arc<Control>,
    t: &NodeRef,
    host: &str,
    addrs: &[SocketAddr],
    moving: &mut std::collections::HashSet<String>,
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

/// What one resolution found: address → weight.
type Found = BTreeMap<SocketAddr, u32>;

async fn run(ctl: Arc<Control>, pool: String, cfg: DiscoveryConfig, stop: CancellationToken) {
    let resolver = match resolver(&cfg) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(pool = %pool, name = %cfg.name, error = %e, "discovery: cannot set up a resolver; the pool keeps the nodes it has");
            return;
        }
    };
    tracing::info!(pool = %pool, name = %cfg.name, srv = cfg.srv, interval = %crate::config::duration::format(cfg.interval), "discovery: following a DNS name");
    // The failure last logged, so each change of condition is logged once.
    let mut failing: Option<String> = None;
    loop {
        let answer = tokio::time::timeout(RESOLVE_TIMEOUT, resolve(&resolver, &cfg))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {RESOLVE_TIMEOUT:?}")));
        match answer {
            Ok(found) if !found.is_empty() => {
                if failing.take().is_some() {
                    tracing::info!(pool = %pool, name = %cfg.name, addresses = found.len(), "discovery: the name resolves again");
                }
                follow(&ctl, &pool, &found);
            }
            answer => {
                let (reason, detail) = match answer {
                    Ok(_) => ("empty", "no address in the answer".to_string()),
                    Err(e) => ("error", e),
                };
                ctl.metrics
                    .discovery_errors
                    .with_label_values(&[&pool, reason])
                    .inc();
                if failing.as_deref() != Some(detail.as_str()) {
                    tracing::warn!(pool = %pool, name = %cfg.name, error = %detail, "discovery: no usable answer; the pool keeps the nodes it has");
                    failing = Some(detail);
                }
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
                    if let Some(t) = node_ref(next, pool, &addr.to_string()) {
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

fn node_ref(snapshot: &crate::snapshot::Snapshot, pool: &str, node: &str) -> Option<NodeRef> {
    let p = snapshot.pool(pool)?;
    Some(NodeRef {
        pool: Arc::clone(p),
        node: Arc::clone(p.node(node)?),
    })
}
