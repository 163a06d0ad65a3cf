//! Enable's background steps: wait for the node to be up (when it was not at enable time),
//! ramp its weight over the warmup, then make it active and, for pools that ask for it,
//! rebalance long-lived connections onto it. Each step is a guarded transition of the
//! node's record, so an operator action in between wins.

use std::sync::Arc;
use std::time::Duration;

use crate::control::{Control, NodeRef};
use crate::pool::{unix_ms, Effect, Health};

/// Waits at most this long per round for a pending-enable node to come up; the wait
/// continues round after round until the enable is cancelled or shutdown.
const UP_WAIT_ROUND: Duration = Duration::from_secs(3600);

/// Pending enable: warming starts the moment the node is up (unless a drain cancelled it).
pub async fn when_up(ctl: Arc<Control>, t: NodeRef) {
    let state = &t.node.state;
    loop {
        let pending = |s: &crate::pool::NodeState| s.record().pending_warmup.is_some();
        tokio::select! {
            _ = ctl.stop.cancelled() => return,
            _ = state.wait_until(UP_WAIT_ROUND, |s| s.health() == Health::Up || !pending(s)) => {}
        }
        if !pending(state) {
            return;
        }
        if state.health() == Health::Up
            && super::background(&ctl, &t, "node up: warming", |rec| rec.up(unix_ms()))
        {
            return;
        }
    }
}

/// Warming: after `warmup`, active (unless the record moved on meanwhile).
pub async fn run(ctl: Arc<Control>, t: NodeRef, warmup: Duration, epoch: u64) {
    let current = |s: &crate::pool::NodeState| s.record().epoch == epoch;
    tokio::select! {
        _ = ctl.stop.cancelled() => return,
        _ = t.node.state.wait_until(warmup, |s| !current(s)) => {}
    }
    let active = super::background(&ctl, &t, "node active", |rec| {
        rec.warmed(unix_ms(), epoch).map(|r| (r, Effect::None))
    });
    if active {
        if let Some(cfg) = t.pool.config.rebalance {
            super::rebalance::start(&ctl, &t.pool.name, cfg);
        }
    }
}
