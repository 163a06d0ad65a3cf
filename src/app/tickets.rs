//! The TLS session ticket keys, rotated on schedule (`session_tickets.rotate`): here, or in
//! a cluster by whichever instance's compare-and-set lands first in etcd; the others take
//! the new keys from the watch. A rotation is written to the state file, so a restart
//! resumes sessions too.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::App;
use crate::snapshot::ticket_rotation;
use crate::time::unix_ms;

/// Looks whether the keys are due at least this often (and a tenth of the period).
const LOOK_EVERY: Duration = Duration::from_secs(30);

pub(super) async fn rotate(app: Weak<App>) {
    loop {
        let Some(app) = app.upgrade() else { return };
        let period = ticket_rotation(&app.snapshot.load().config);
        let look = (period / 10).clamp(Duration::from_millis(100), LOOK_EVERY);
        let force = app.shutdown.force.clone();
        rotate_if_due(&app, period).await;
        drop(app);
        tokio::select! {
            _ = force.cancelled() => return,
            _ = tokio::time::sleep(look) => {}
        }
    }
}

async fn rotate_if_due(app: &Arc<App>, period: Duration) {
    let tickets = Arc::clone(&app.snapshot.load().tickets);
    let keys = tickets.keys();
    let now = unix_ms();
    if !keys.due(now, period) {
        return;
    }
    let next = match keys.rotated(now) {
        Ok(next) => next,
        Err(e) => {
            tracing::error!(error = %e, "no randomness for a new TLS ticket key: the keys stay");
            return;
        }
    };
    match app.cluster() {
        // A cut-off instance keeps its keys: tickets stay good for two periods, and it
        // takes the cluster's keys when it is back.
        Some(cluster) => match cluster.rotate_tickets(&keys, &next).await {
            Ok(true) => tracing::info!("TLS ticket keys rotated for the cluster"),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "TLS ticket keys not rotated: etcd unreachable"),
        },
        None => match tickets.install(next) {
            Ok(()) => {
                tracing::info!("TLS ticket keys rotated");
                app.control.mark_dirty();
            }
            Err(e) => tracing::error!(error = %e, "the new TLS ticket keys were refused"),
        },
    }
}
