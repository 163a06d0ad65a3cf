//! Enable's background steps: wait for the node to be up (when it was not at enable time),
//! ramp its weight over the warmup, then make it active and, for pools that ask for it,
//! rebalance long-lived connections onto it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::Target;
use crate::app::App;
use crate::pool::{AdminState, Health, Node, Pool};

/// Waits at most this long per round for a pending-enable node to come up; the wait
/// continues round after round until a newer operation replaces it or shutdown.
const UP_WAIT_ROUND: Duration = Duration::from_secs(3600);

/// Starts warming now (the node is up).
pub fn begin(app: &Arc<App>, t: &Target, warmup: Duration, generation: u64) {
    let state = &t.node.state;
    state.lifecycle.enable_pending.store(false, Relaxed);
    state.lifecycle.start_warming(warmup);
    if let Some(from) = state.set_admin(AdminState::Warming) {
        tracing::info!(node = %t.node.key(), from = from.as_str(), warmup = %crate::config::duration::format(warmup), "node warming");
    }
    tokio::spawn(run(
        Arc::clone(app),
        Arc::clone(&t.pool),
        Arc::clone(&t.node),
        warmup,
        generation,
    ));
}

/// Pending enable: warming starts the moment the node is up.
pub async fn when_up(
    app: Arc<App>,
    pool: Arc<Pool>,
    node: Arc<Node>,
    warmup: Duration,
    generation: u64,
) {
    let stop = app.shutdown.force.clone();
    loop {
        let up = tokio::select! {
            _ = stop.cancelled() => return,
            up = node.state.wait_until(UP_WAIT_ROUND, |s| s.health() == Health::Up || !s.lifecycle.is_current(generation)) => up,
        };
        if !node.state.lifecycle.is_current(generation) {
            return;
        }
        if up && node.state.health() == Health::Up {
            begin(&app, &Target { pool, node }, warmup, generation);
            app.persist();
            return;
        }
    }
}

/// Warming: after `warmup`, active (unless a newer operation intervened).
pub async fn run(
    app: Arc<App>,
    pool: Arc<Pool>,
    node: Arc<Node>,
    warmup: Duration,
    generation: u64,
) {
    let stop = app.shutdown.force.clone();
    let current = |s: &crate::pool::NodeState| {
        s.admin() == AdminState::Warming && s.lifecycle.is_current(generation)
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = node.state.wait_until(warmup, |s| !current(s)) => {}
    }
    if current(&node.state)
        && node
            .state
            .transition(AdminState::Warming, AdminState::Active)
    {
        tracing::info!(node = %node.key(), "node active");
        app.persist();
        if let Some(cfg) = pool.config.rebalance {
            app.start_rebalance(&pool.name, cfg);
        }
    }
}
