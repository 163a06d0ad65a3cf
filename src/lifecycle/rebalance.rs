//! TCP rebalance: after a node returns, long-lived connections stay where they are. This
//! task closes the busier nodes' oldest sessions above their fair share, at most
//! `max_closes_per_sec`, so reconnecting clients land on the returned node; it stops as soon
//! as no node holds a whole session more than its share.

use std::sync::Arc;
use std::time::Duration;

use crate::config::RebalanceConfig;
use crate::control::Control;
use crate::pool::{Pool, SessionKind};

/// A rebalance gives up after this many rounds in a row without a session to close (say,
/// sessions invisible to the registry), rather than spin.
const MAX_IDLE_ROUNDS: u32 = 50;

/// The node most above its weighted fair share of TCP sessions, if by at least one session.
pub fn most_above_share(pool: &Pool) -> Option<usize> {
    let serving: Vec<usize> = (0..pool.nodes.len())
        .filter(|&i| pool.nodes[i].state.admits_new())
        .collect();
    if serving.len() < 2 {
        return None;
    }
    let total: f64 = serving
        .iter()
        .map(|&i| pool.nodes[i].state.sessions(SessionKind::Tcp) as f64)
        .sum();
    let weights: f64 = serving
        .iter()
        .map(|&i| f64::from(pool.nodes[i].weight))
        .sum();
    serving
        .iter()
        .map(|&i| {
            let n = &pool.nodes[i];
            let fair = total * f64::from(n.weight) / weights;
            (i, n.state.sessions(SessionKind::Tcp) as f64 - fair)
        })
        .filter(|&(_, excess)| excess >= 1.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// Starts rebalancing `pool` unless it already is.
pub fn start(ctl: &Arc<Control>, pool: &str, cfg: RebalanceConfig) {
    let fresh = ctl
        .rebalancing
        .lock()
        .map(|mut set| set.insert(pool.to_string()))
        .unwrap_or(false);
    if fresh {
        tracing::info!(
            pool,
            rate = cfg.max_closes_per_sec,
            "rebalancing long-lived connections"
        );
        tokio::spawn(run(Arc::clone(ctl), pool.to_string(), cfg));
    }
}

async fn run(ctl: Arc<Control>, pool_name: String, cfg: RebalanceConfig) {
    let period = Duration::from_secs_f64(1.0 / f64::from(cfg.max_closes_per_sec.max(1)));
    let mut tick = tokio::time::interval(period);
    let stop = ctl.stop.clone();
    let mut idle_rounds = 0;
    let mut closed = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        // The current snapshot's pool: rebalancing follows reloads.
        let Some(pool) = ctl.snapshot.load().pool(&pool_name).cloned() else {
            break;
        };
        let Some(i) = most_above_share(&pool) else {
            break;
        };
        let node = &pool.nodes[i];
        match node.state.lifecycle.oldest_live() {
            Some(id) => {
                node.state.lifecycle.ask_to_close(id);
                closed += 1;
                idle_rounds = 0;
            }
            None => {
                idle_rounds += 1;
                if idle_rounds >= MAX_IDLE_ROUNDS {
                    break;
                }
            }
        }
    }
    tracing::info!(pool = %pool_name, closed, "rebalance finished");
    if let Ok(mut set) = ctl.rebalancing.lock() {
        set.remove(&pool_name);
    }
}
