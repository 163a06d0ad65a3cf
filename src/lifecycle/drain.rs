//! The drain task: waits (on the node's signal, never by polling) for the last session to
//! end or the deadline to pass; at the deadline it fires the node's close token, so the
//! remaining sessions close gracefully, spread over `close_spread`, and counts them.
//! Affinity sessions (pinned clients) count too, until they go idle or
//! `drain.session_timeout` passes; the task wakes at their expiry times.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::control::{Control, NodeRef};
use crate::pool::{unix_ms, Admin, Effect, Node, NodeState, Pool, SessionKind};
use crate::time::instant_after;

/// After the close spread, how long closing sessions get before the node is declared
/// drained anyway (a peer that never acknowledges a FIN must not hold a rollout).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Waits for drain `epoch` of `t`'s node to finish, then moves it to `drained`.
pub async fn run(ctl: Arc<Control>, t: NodeRef, timeout: Duration, epoch: u64) {
    let NodeRef { pool, node } = &t;
    let started = Instant::now();
    let state = &node.state;
    let index = pool.nodes.iter().position(|n| n.name == node.name);
    let still_draining = |s: &NodeState| {
        let rec = s.record();
        matches!(rec.admin, Admin::Draining { .. }) && rec.epoch == epoch
    };
    // Affinity sessions count until they expire or `session_timeout` passes.
    let session_window = started
        .checked_add(pool.config.drain.session_timeout)
        .unwrap_or_else(|| instant_after(pool.config.drain.session_timeout));
    let affinity = || -> (usize, Option<Instant>) {
        let now_ms = unix_ms();
        if Instant::now() >= session_window {
            return (0, None);
        }
        let (live, next_expiry) = index.map_or((0, None), |i| pool.affinity_sessions(i, now_ms));
        let wake = next_expiry
            .map(|at| instant_after(Duration::from_millis(at.saturating_sub(now_ms) + 1)));
        (live, wake.map(|w| w.min(session_window)))
    };
    let deadline = started
        .checked_add(timeout)
        .unwrap_or_else(|| instant_after(timeout));
    let mut fired_at: Option<Instant> = None;
    loop {
        if ctl.stop.is_cancelled() || !still_draining(state) {
            return;
        }
        let (pinned, affinity_wake) = affinity();
        // The previous generation's sessions on this node (after a takeover) count too.
        let active = state.active_sessions() + state.previous_sessions();
        if active == 0 && pinned == 0 {
            break;
        }
        let now = Instant::now();
        if fired_at.is_none() && now >= deadline && active > 0 {
            fire(pool, node);
            fired_at = Some(now);
        }
        if let Some(at) = fired_at {
            // Sessions that ignore their close are not waited for forever.
            if now >= at + pool.config.drain.close_spread + CLOSE_GRACE
                && state.active_sessions() > 0
            {
                tracing::warn!(node = %node.key(), remaining = state.active_sessions(), "sessions still open after the close window");
                break;
            }
        }
        let mut wake = match fired_at {
            None => deadline,
            Some(at) => at + pool.config.drain.close_spread + CLOSE_GRACE,
        };
        if let Some(a) = affinity_wake {
            wake = wake.min(a);
        }
        let limit = wake
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        // With only pinned clients left (no active session), "no active session" is already
        // true: waiting for it would return at once and spin, starving the worker's other
        // tasks. Then only the affinity expiry (the limit) or a state change wakes us.
        let wait_for_last = active > 0;
        let woken = |s: &NodeState| {
            !still_draining(s)
                || (wait_for_last && s.active_sessions() + s.previous_sessions() == 0)
        };
        tokio::select! {
            _ = ctl.stop.cancelled() => return,
            _ = state.wait_until(limit, woken) => {}
        }
    }
    let done = super::background(&ctl, &t, "node drained", |rec| {
        rec.drained(unix_ms(), epoch).map(|r| (r, Effect::None))
    });
    if done {
        let took = started.elapsed();
        ctl.metrics
            .drain_duration
            .with_label_values(&[&pool.name])
            .observe(took.as_secs_f64());
        tracing::info!(node = %node.key(), took_ms = took.as_millis() as u64, at_deadline = fired_at.is_some(), "drain finished");
        node.state.events.publish(
            "drain_done",
            serde_json::json!({"took_ms": took.as_millis() as u64, "at_deadline": fired_at.is_some()}),
        );
    }
}

/// The deadline: sessions still open are closed gracefully, spread, and counted.
fn fire(pool: &Pool, node: &Node) {
    let state = &node.state;
    let http = state.sessions(SessionKind::HttpInflight);
    tracing::warn!(
        node = %node.key(),
        http_inflight = http,
        tunnels = state.sessions(SessionKind::Tunnel),
        tcp = state.sessions(SessionKind::Tcp),
        spread = %crate::config::duration::format(pool.config.drain.close_spread),
        "drain deadline reached: closing the remaining sessions"
    );
    // TCP sessions and tunnels count themselves as they close; in-flight requests end with
    // their upstream connection, counted here.
    state
        .lifecycle
        .deadline_closes
        .fetch_add(http as u64, Relaxed);
    for _ in 0..http {
        state.metrics.deadline_close(SessionKind::HttpInflight);
    }
    state.events.publish(
        "deadline_closes",
        serde_json::json!({
            "http_inflight": http,
            "tunnels": state.sessions(SessionKind::Tunnel),
            "tcp": state.sessions(SessionKind::Tcp),
        }),
    );
    state.lifecycle.fire_close();
}
