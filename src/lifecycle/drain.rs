//! The drain task: waits (on the node's signal, never by polling) for the last session to
//! end or the deadline to pass; at the deadline it fires the node's close token, so the
//! remaining sessions close gracefully, spread over `close_spread`, and counts them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::app::App;
use crate::pool::{AdminState, Node, Pool, SessionKind};

/// After the close spread, how long closing sessions get before the node is declared
/// drained anyway (a peer that never acknowledges a FIN must not hold a rollout).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub async fn run(
    app: Arc<App>,
    pool: Arc<Pool>,
    node: Arc<Node>,
    timeout: Duration,
    generation: u64,
) {
    let started = Instant::now();
    let state = &node.state;
    let life = &state.lifecycle;
    let still_draining = |s: &crate::pool::NodeState| {
        s.admin() == AdminState::Draining && s.lifecycle.is_current(generation)
    };
    let idle = state
        .wait_until(timeout, |s| !still_draining(s) || s.active_sessions() == 0)
        .await;
    if !still_draining(state) {
        return;
    }
    if !idle {
        let http = state.sessions(SessionKind::HttpInflight);
        let tcp = state.sessions(SessionKind::Tcp);
        let spread = pool.config.drain.close_spread;
        tracing::warn!(
            node = %node.key(),
            http_inflight = http,
            tcp,
            spread = %crate::config::duration::format(spread),
            "drain deadline reached: closing the remaining sessions"
        );
        // TCP sessions count themselves as they close; in-flight requests end with their
        // upstream connection, counted here.
        life.deadline_closes.fetch_add(http as u64, Relaxed);
        for _ in 0..http {
            state.metrics.deadline_close(SessionKind::HttpInflight);
        }
        life.fire_close();
        state
            .wait_until(spread + CLOSE_GRACE, |s| {
                !still_draining(s) || s.active_sessions() == 0
            })
            .await;
        if !still_draining(state) {
            return;
        }
    }
    if state.transition(AdminState::Draining, AdminState::Drained) {
        life.clear_drain_deadline();
        let took = started.elapsed();
        app.metrics
            .drain_duration
            .with_label_values(&[&pool.name])
            .observe(took.as_secs_f64());
        tracing::info!(node = %node.key(), took_ms = took.as_millis() as u64, at_deadline = !idle, "node drained");
        app.persist();
    }
}
