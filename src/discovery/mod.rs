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

mod dns;
mod hosts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, DiscoveryConfig};
use crate::control::Control;

/// How long one resolution may take (every record of it) before it counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(4);

/// The discovery tasks, one per pool with `discovery:`.
#[derive(Default)]
pub struct Discovery {
    tasks: Mutex<HashMap<String, (DiscoveryConfig, CancellationToken)>>,
    /// The task that follows the host names of file nodes, with its interval.
    hosts: Mutex<Option<(Duration, CancellationToken)>>,
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
            tokio::spawn(dns::run(
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
                tokio::spawn(hosts::follow(
                    Arc::clone(ctl),
                    config.resolve_interval,
                    stop.clone(),
                ));
                *hosts = Some((config.resolve_interval, stop));
            }
        }
    }
}

/// Resolution failures: every one counted; each change of condition logged once (per
/// key: a pool, or a node), and the return to a usable answer said once.
#[derive(Default)]
struct Failures(HashMap<String, String>);

impl Failures {
    /// Whether `answer` (usable: non-empty) can be acted on; if not, counts and logs why.
    fn usable(
        &mut self,
        ctl: &Control,
        pool: &str,
        key: &str,
        name: &str,
        answer: Result<bool, String>,
    ) -> bool {
        let (reason, detail) = match answer {
            Ok(true) => {
                if self.0.remove(key).is_some() {
                    tracing::info!(%key, %name, "discovery: the name resolves again");
                }
                return true;
            }
            Ok(false) => ("empty", "no address in the answer".to_string()),
            Err(e) => ("error", e),
        };
        ctl.metrics
            .discovery_errors
            .with_label_values(&[pool, reason])
            .inc();
        if self.0.get(key) != Some(&detail) {
            tracing::warn!(%key, %name, error = %detail, "discovery: no usable answer; nothing changes");
            self.0.insert(key.to_string(), detail);
        }
        false
    }
}
