//! Where the runtime state is shared: the cluster joined once the admin API listens, the
//! state file flushed, and the affinity keys chosen at start.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{App, StartError};
use crate::config::Config;
use crate::pool::affinity::{Keys, MIN_SECRET_LEN};
use crate::rollout;

impl App {
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
/// set variable; else the ones carried over (`stored`: the state file's, or the old
/// process's at a takeover), so cookies and address pins survive; else new random ones.
pub(super) fn affinity_keys(
    config: &Config,
    stored: Option<&str>,
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
    let stored = stored.and_then(Keys::parse_hex);
    Ok(Arc::new(stored.map_or_else(Keys::random, Keys::stored)))
}
