//! Active health checks: one task per node, probing at the pool's interval, feeding the
//! node's pure health transition. Tasks are restarted on reload (their streaks live in the
//! node state, so a reload does not reset progress).

mod probe;

use std::sync::Arc;

use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;

pub use probe::{probe, ProbeResult, Reach};

/// Starts a checker for every node of `pool`; all stop when `stop` is cancelled.
pub fn spawn(pool: &Arc<Pool>, stop: &CancellationToken) {
    for index in 0..pool.nodes.len() {
        let pool = Arc::clone(pool);
        let stop = stop.clone();
        tokio::spawn(async move { check_loop(pool, index, stop).await });
    }
}

async fn check_loop(pool: Arc<Pool>, index: usize, stop: CancellationToken) {
    let node = Arc::clone(&pool.nodes[index]);
    // Checks report into the address epoch this checker was started for: once a reload moves
    // the node, whatever this (old) checker still finds about the old address is ignored.
    let epoch = node.state.address_epoch();
    let cfg = pool.health_config();
    let mut tick = interval(cfg.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = probe(node.addr, cfg, reach(&pool)) => r,
        };
        if !result.ok {
            tracing::debug!(node = %node.key(), reason = %result.reason, "health check failed");
        }
        if let Some((from, to)) =
            node.state
                .record_check(epoch, result.ok, result.version.as_deref(), cfg)
        {
            node.health_flipped(from, to, &result.reason);
        }
    }
}

/// How the pool's checks reach its nodes: its protocol and TLS.
fn reach(pool: &Pool) -> Reach<'_> {
    Reach {
        protocol: pool.config.upstream.protocol,
        tls: pool.tls.as_ref().zip(pool.config.upstream.tls.as_ref()),
    }
}
