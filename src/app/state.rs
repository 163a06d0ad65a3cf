//! Where the runtime state comes from and where it is shared: the state file restored at
//! start, the cluster joined once the admin API listens, and the affinity keys.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{App, StartError};
use crate::config::Config;
use crate::lifecycle;
use crate::persist;
use crate::pool::affinity::{Keys, MIN_SECRET_LEN};
use crate::rollout;

impl App {
    /// Applies a state file read at start: admin states by `pool/node`, and rollouts, of
    /// which a running one resumes at its current step.
    pub(super) fn restore(&self, state: persist::StateFile) {
        for (key, record) in state.nodes {
            let Some(t) = self.control.node_by_key(&key) else {
                tracing::info!(node = %key, "state file names a node the config no longer has");
                continue;
            };
            let carried = lifecycle::Carried {
                kind: record.state,
                since_ms: record.since_ms,
                pending: record.enable_pending,
                deadline_ms: None,
            };
            lifecycle::restore(&self.control, &t, carried);
        }
        let why = "resumed after a restart of handoff";
        rollout::adopt(&self.control, &self.rollouts, state.rollouts, why);
    }

    /// Joins the cluster of the config's `cluster:` (a no-op without one), advertising the
    /// admin API at `admin`. From then on admin writes go through etcd.
    pub fn join_cluster(&self, admin: SocketAddr) {
        let Some(config) = self.snapshot.load().config.cluster.clone() else {
            return;
        };
        let key = self.snapshot.load().keys.to_hex();
        let cluster = crate::cluster::Cluster::start(
            config,
            admin.to_string(),
            Arc::clone(&self.control),
            key,
        );
        if self.cluster.set(Arc::clone(&cluster)).is_ok() {
            rollout::shared::follow(
                Arc::clone(&self.control),
                Arc::clone(&self.rollouts),
                cluster,
            );
        }
    }

    /// Leaves the cluster at once (its lease is revoked), if in one.
    pub async fn leave_cluster(&self) {
        if let Some(cluster) = self.cluster.get() {
            cluster.leave().await;
        }
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Waits until the state file holds the state as it is now (shutdown, tests).
    pub async fn flush_state(&self) {
        self.control.flush().await;
    }
}

/// The affinity keys for this run: from the shared secret when `affinity_key_env` names a
/// set variable; else those of the state file, so cookies and address pins survive a
/// restart; else new random ones.
pub(super) fn affinity_keys(
    config: &Config,
    restored: Option<&persist::StateFile>,
) -> Result<Arc<Keys>, StartError> {
    let secret = config
        .affinity_key_env
        .as_deref()
        .and_then(|var| std::env::var(var).ok().map(|v| (var, v)))
        .filter(|(_, v)| !v.is_empty());
    if let Some((var, secret)) = secret {
        if secret.len() < MIN_SECRET_LEN {
            return Err(StartError::AffinitySecret {
                var: var.to_string(),
                len: secret.len(),
                min: MIN_SECRET_LEN,
            });
        }
        return Ok(Arc::new(Keys::from_secret(&secret)));
    }
    if let Some(var) = &config.affinity_key_env {
        tracing::warn!(var = %var, "affinity_key_env names a variable that is not set: affinity keys are this instance's own");
    }
    let stored = restored
        .and_then(|s| s.affinity_key.as_deref())
        .and_then(Keys::parse_hex);
    Ok(Arc::new(stored.map_or_else(Keys::random, Keys::stored)))
}
