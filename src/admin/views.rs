//! JSON views of the runtime, shared by the admin API and `handoff ctl` (which reads them
//! back), so the two cannot drift apart.

use serde::{Deserialize, Serialize};

use std::sync::atomic::Ordering::Relaxed;

use crate::pool::{Admin, Cause, Node, Pool, Traffic};
use crate::time::rfc3339;

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusView {
    /// handoff's own version.
    pub version: String,
    /// This process: pid, version, start time, generation (takeovers since the first start,
    /// plus one).
    pub process: crate::app::ProcessInfo,
    /// The generation this one took over from, while it drains.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub previous: Option<crate::app::carry::PreviousView>,
    pub listeners: Vec<ListenerView>,
    pub pools: Vec<PoolView>,
    pub rollouts: Vec<crate::rollout::Rollout>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerView {
    pub name: String,
    pub protocol: String,
    /// Address as bound (the real port when the config says 0).
    pub listen: String,
    pub connections: usize,
    /// The listener terminates TLS.
    #[serde(default)]
    pub tls: bool,
    /// tcp: TLS connections passed through by server name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_routes: Vec<SniRouteView>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SniRouteView {
    pub sni: String,
    pub pool: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub balance: String,
    pub warmup: String,
    /// Nodes that may take new sessions right now.
    pub serving: usize,
    /// How handoff speaks to the nodes: `http1`, `h2c` or `h2`, and whether over TLS.
    #[serde(default)]
    pub upstream: UpstreamView,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UpstreamView {
    pub protocol: String,
    pub tls: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NodeView {
    pub pool: String,
    pub name: String,
    pub addr: String,
    /// Where the node comes from: `config`, `api` or `dns`.
    #[serde(default = "config_source")]
    pub source: String,
    pub state: String,
    pub health: String,
    pub version: Option<String>,
    pub sessions: SessionsView,
    pub weight: u32,
    pub effective_weight: u32,
    /// RFC 3339 time of the last admin state change.
    pub state_since: String,
    /// RFC 3339 time of the last health change.
    pub health_since: String,
    /// RFC 3339 drain deadline, while draining.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deadline: Option<String>,
    /// Sessions closed at drain deadlines, ever.
    pub deadline_closes: u64,
    /// TCP sessions closed by rebalancing, ever.
    pub rebalance_closes: u64,
    /// `enable` was called while the node was not up: it goes warming once it is.
    pub enable_pending: bool,
    /// Idle pooled upstream HTTP connections.
    pub idle_connections: usize,
    /// What the node did with its traffic: totals, and the recent window.
    #[serde(default)]
    pub traffic: TrafficView,
    /// Recent admin state and health changes, and cluster write outcomes, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryView>,
}

fn config_source() -> String {
    "config".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryView {
    /// RFC 3339.
    pub at: String,
    pub event: String,
}

/// A node's traffic figures (docs/api.md, "A node"). Requests count every attempt the node took part
/// in (a TCP node's: its sessions); errors are 5xx answers, failed connects, and connections
/// closed, reset or timed out before an answer. The window figures and latencies cover the
/// last `window` (or less, just after a start); latencies are the time from asking the node
/// to its response head (TCP: to connect), `null` without an answer in the window.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TrafficView {
    pub requests: u64,
    pub errors: u64,
    pub errors_5xx: u64,
    pub connect_failures: u64,
    pub no_answer: u64,
    pub window: String,
    pub window_requests: u64,
    pub window_errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests routed here as previews (counted in `requests` too).
    #[serde(default)]
    pub preview_requests: u64,
}

impl TrafficView {
    pub fn of(t: &Traffic) -> Self {
        let total = t.sample();
        let (recent, span) = t.recent();
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
        TrafficView {
            requests: total.requests,
            errors: total.errors(),
            errors_5xx: total.errors[Cause::Status5xx as usize],
            connect_failures: total.errors[Cause::Connect as usize],
            no_answer: total.errors[Cause::NoAnswer as usize],
            window: crate::config::duration::format(std::time::Duration::from_secs(
                span.as_secs().max(1),
            )),
            window_requests: recent.requests,
            window_errors: recent.errors(),
            error_rate: (recent.error_rate() * 1e4).round() / 1e4,
            p50_ms: recent.quantile(0.5).map(ms),
            p99_ms: recent.quantile(0.99).map(ms),
            preview_requests: t.previews(),
        }
    }
}

/// A node's sessions by kind (shared with the cluster, which publishes them per instance).
pub use crate::pool::SessionCounts as SessionsView;

impl NodeView {
    pub fn of(node: &Node, pool: &Pool) -> Self {
        let s = &node.state;
        let sessions = SessionsView::of(node, pool);
        let rec = s.record();
        let admin = rec.kind();
        NodeView {
            pool: node.pool.clone(),
            name: node.name.clone(),
            addr: node.addr.to_string(),
            source: node.source.as_str().to_string(),
            state: admin.as_str().into(),
            health: s.health().as_str().into(),
            version: s.version().map(|v| v.to_string()),
            sessions,
            weight: node.weight,
            effective_weight: if admin.admits_new() {
                node.effective_weight()
            } else {
                0
            },
            state_since: rfc3339(rec.since_ms),
            health_since: rfc3339(s.health_since_ms()),
            deadline: match rec.admin {
                Admin::Draining { deadline_ms } => Some(rfc3339(deadline_ms)),
                _ => None,
            },
            deadline_closes: s.lifecycle.deadline_closes.load(Relaxed),
            rebalance_closes: s.lifecycle.rebalance_closes.load(Relaxed),
            enable_pending: rec.pending_warmup.is_some(),
            idle_connections: node.idle.len(),
            traffic: TrafficView::of(&s.traffic),
            history: s
                .history
                .entries()
                .into_iter()
                .map(|(at, event)| HistoryView {
                    at: rfc3339(at),
                    event,
                })
                .collect(),
        }
    }
}

impl PoolView {
    pub fn of(pool: &Pool) -> Self {
        PoolView {
            name: pool.name.clone(),
            balance: serde_json::to_value(pool.balance)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            warmup: crate::config::duration::format(pool.config.warmup),
            serving: pool.nodes.iter().filter(|n| n.state.admits_new()).count(),
            upstream: UpstreamView {
                protocol: serde_json::to_value(pool.config.upstream.protocol)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                tls: pool.config.upstream.tls.is_some(),
            },
            nodes: pool.nodes.iter().map(|n| NodeView::of(n, pool)).collect(),
        }
    }
}
