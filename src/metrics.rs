//! Prometheus metrics. Families are built once at start; per-node and per-pool handles are
//! resolved once when a node or pool is built, so the data path only increments atomics.
//! Gauges that mirror runtime state (sessions, node state, health, version) are built afresh
//! for each scrape ([`StateGauges`]) rather than maintained on the data path, so two scrapes
//! never see each other's half-set values and removed nodes simply vanish.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::session_kind::SessionKind;

/// Every metric family handoff exports.
pub struct Metrics {
    registry: Registry,
    pub sessions_total: IntCounterVec,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub connect_duration: HistogramVec,
    pub connect_failures: IntCounterVec,
    pub retries: IntCounterVec,
    pub node_transitions: IntCounterVec,
    pub health_checks: IntCounterVec,
    pub listener_bytes: IntCounterVec,
    pub listener_connections: IntCounterVec,
    pub listener_connections_active: IntGaugeVec,
    pub listener_rejected: IntCounterVec,
    pub tls_failures: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub upstream_tls_failures: IntCounterVec,
    pub client_errors: IntCounterVec,
    pub listener_reclaimed: IntCounterVec,
    pub send_timeouts: IntCounterVec,
    pub rejected_per_client: IntCounterVec,
    pub reloads: IntCounterVec,
    pub membership_changes: IntCounterVec,
    pub discovery_errors: IntCounterVec,
    pub deadline_closes: IntCounterVec,
    pub rebalance_closes: IntCounterVec,
    pub drain_duration: HistogramVec,
    pub rollout_step_duration: HistogramVec,
    pub cluster_writes: IntCounterVec,
    pub access_log_lines: IntCounterVec,
    pub access_log_dropped: IntCounterVec,
    pub access_log_write_errors: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    let g =
        prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("static metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let m = Metrics {
            sessions_total: counter(&r, "handoff_sessions_total", "Sessions started, by node and kind.", &["pool", "node", "kind"]),
            requests_total: counter(&r, "handoff_requests_total", "HTTP responses sent, by pool, node (\"none\" when no node answered) and status class.", &["pool", "node", "class"]),
            request_duration: histogram(&r, "handoff_request_duration_seconds", "Time from request to response headers, per pool.", &["pool"]),
            connect_duration: histogram(&r, "handoff_connect_duration_seconds", "Upstream TCP connect time, per pool.", &["pool"]),
            connect_failures: counter(&r, "handoff_connect_failures_total", "Upstream connects that failed or timed out.", &["pool", "node"]),
            retries: counter(&r, "handoff_retries_total", "Requests or connections retried on another node.", &["pool"]),
            node_transitions: counter(&r, "handoff_node_transitions_total", "Node state and health changes, by the state entered.", &["pool", "node", "to"]),
            health_checks: counter(&r, "handoff_health_checks_total", "Active health checks, by result (pass or fail).", &["pool", "node", "result"]),
            listener_bytes: counter(&r, "handoff_listener_bytes_total", "Bytes proxied per listener; direction in = from clients, out = to clients.", &["listener", "direction"]),
            listener_connections: counter(&r, "handoff_listener_connections_total", "Client connections accepted.", &["listener"]),
            listener_connections_active: gauge(&r, "handoff_listener_connections_active", "Client connections open.", &["listener"]),
            listener_rejected: counter(&r, "handoff_listener_connections_rejected_total", "Client connections closed at once because the listener was at max_connections.", &["listener"]),
            tls_failures: counter(&r, "handoff_tls_handshake_failures_total", "TLS handshakes that failed or timed out.", &["listener"]),
            tls_handshakes: counter(&r, "handoff_tls_handshakes_total", "TLS handshakes completed, by kind: full, or resumed (a session ticket or cached session).", &["listener", "kind"]),
            rejected_per_client: counter(&r, "handoff_listener_connections_per_client_rejected_total", "Client connections closed at once because their address already had max_connections_per_client open.", &["listener"]),
            send_timeouts: counter(&r, "handoff_send_timeouts_total", "Client connections closed because the client accepted no bytes of its response within timeouts.send.", &["listener"]),
            listener_reclaimed: counter(&r, "handoff_listener_connections_reclaimed_total", "Client connections closed at max_connections to make room for a new one, by reason: silent since accept, or idle between requests.", &["listener", "reason"]),
            client_errors: counter(&r, "handoff_client_errors_total", "Requests handoff refused or cut because the client got something wrong, by listener and reason; never charged to a node.", &["listener", "reason"]),
            upstream_tls_failures: counter(&r, "handoff_upstream_tls_failures_total", "TLS handshakes with nodes that failed (certificate not verified, no client certificate where one is required, timeout); each is also a connect failure.", &["pool", "node"]),
            reloads: counter(&r, "handoff_config_reloads_total", "Config reloads, by result (ok or failed).", &["result"]),
            discovery_errors: counter(&r, "handoff_discovery_errors_total", "DNS discovery resolutions that changed nothing because the answer was empty or failed (fail static), by pool and reason (empty, error).", &["pool", "reason"]),
            membership_changes: counter(&r, "handoff_pool_membership_changes_total", "Nodes added, changed (address or weight) and removed at runtime, by pool, change and source (api, dns).", &["pool", "change", "source"]),
            deadline_closes: counter(&r, "handoff_drain_deadline_closes_total", "Sessions closed at a node's drain deadline, by kind.", &["pool", "node", "kind"]),
            rebalance_closes: counter(&r, "handoff_rebalance_closes_total", "Long-lived TCP sessions closed to rebalance a pool.", &["pool", "node"]),
            cluster_writes: counter(&r, "handoff_cluster_writes_total", "Drains and enables written to etcd, by result: applied (by every live instance within 2s), lagging (answered naming laggards), refused (etcd unreachable, guard or conflict; never applied), unknown (answered 504: etcd did not tell in time; settled later).", &["result"]),
            access_log_lines: counter(&r, "handoff_access_log_lines_total", "Access log lines written.", &[]),
            access_log_dropped: counter(&r, "handoff_access_log_dropped_total", "Access log lines lost, by reason: queue_full (the writer fell behind; serving never waits for it) or write_error (the file could not be opened or written: a full disk, say).", &["reason"]),
            access_log_write_errors: counter(&r, "handoff_access_log_write_errors_total", "Writes (or opens) of the access log file that failed.", &[]),
            drain_duration: {
                let opts = HistogramOpts::new("handoff_drain_duration_seconds", "Time from drain to drained, per pool.")
                    .buckets(vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]);
                let h = HistogramVec::new(opts, &["pool"]).expect("static metric definition");
                r.register(Box::new(h.clone())).expect("metric registered once");
                h
            },
            rollout_step_duration: {
                let opts = HistogramOpts::new("handoff_rollout_step_duration_seconds", "Duration of each rollout phase, per pool.")
                    .buckets(vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]);
                let h = HistogramVec::new(opts, &["pool", "phase"]).expect("static metric definition");
                r.register(Box::new(h.clone())).expect("metric registered once");
                h
            },
            registry: r,
        };
        // Both outcomes exist from the start, so a scrape can alert on "failed > 0".
        for result in ["ok", "failed"] {
            m.reloads.with_label_values(&[result]);
        }
        for reason in ["queue_full", "write_error"] {
            m.access_log_dropped.with_label_values(&[reason]);
        }
        m.access_log_lines.with_label_values(&[] as &[&str]);
        m.access_log_write_errors.with_label_values(&[] as &[&str]);
        m
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The gauges that mirror runtime state, made for one scrape: the scrape sets every series
/// from the runtime, then renders them.
pub struct StateGauges {
    registry: Registry,
    pub sessions_active: IntGaugeVec,
    pub node_state: IntGaugeVec,
    pub node_health: IntGaugeVec,
    pub node_version_info: IntGaugeVec,
    pub node_requests: IntCounterVec,
    pub node_errors: IntCounterVec,
    /// p50 and p99, as two gauges (a `quantile` label is for summaries only).
    pub node_latency: [prometheus::GaugeVec; 2],
    pub node_error_ratio: prometheus::GaugeVec,
    pub cluster_connected: IntGaugeVec,
    pub cluster_members: IntGaugeVec,
    pub cluster_driver: IntGaugeVec,
    pub cluster_revision: IntGaugeVec,
}

impl StateGauges {
    pub fn new() -> Self {
        let r = Registry::new();
        StateGauges {
            sessions_active: gauge(
                &r,
                "handoff_sessions_active",
                "Sessions in progress, by node and kind.",
                &["pool", "node", "kind"],
            ),
            node_state: gauge(
                &r,
                "handoff_node_state",
                "Admin state of each node: 1 for the current state, 0 otherwise.",
                &["pool", "node", "state"],
            ),
            node_health: gauge(
                &r,
                "handoff_node_health",
                "Health of each node: 1 for the current health, 0 otherwise.",
                &["pool", "node", "health"],
            ),
            node_version_info: gauge(
                &r,
                "handoff_node_version_info",
                "Version each node last reported (value is always 1).",
                &["pool", "node", "version"],
            ),
            node_requests: counter(
                &r,
                "handoff_node_requests_total",
                "Requests each node took part in (every attempt; a TCP node's sessions).",
                &["pool", "node"],
            ),
            node_errors: counter(
                &r,
                "handoff_node_errors_total",
                "Requests each node failed, by cause: 5xx (it answered 5xx), connect (a connect to it failed), no_answer (it closed, reset or timed out before answering).",
                &["pool", "node", "cause"],
            ),
            node_latency: [
                float_gauge(
                    &r,
                    "handoff_node_latency_p50_seconds",
                    "Each node's median latency to response headers (TCP: to connect) over the last minute; absent without an answer in that minute.",
                    &["pool", "node"],
                ),
                float_gauge(
                    &r,
                    "handoff_node_latency_p99_seconds",
                    "Each node's 99th percentile latency to response headers (TCP: to connect) over the last minute; absent without an answer in that minute.",
                    &["pool", "node"],
                ),
            ],
            node_error_ratio: float_gauge(
                &r,
                "handoff_node_error_ratio",
                "Each node's errors over requests in the last minute (0 without a request).",
                &["pool", "node"],
            ),
            cluster_connected: gauge(
                &r,
                "handoff_cluster_connected",
                "1 while this instance is connected to etcd and resynced (cluster only).",
                &["prefix"],
            ),
            cluster_members: gauge(
                &r,
                "handoff_cluster_members",
                "Live instances of the cluster, as this one last saw them.",
                &["prefix"],
            ),
            cluster_driver: gauge(
                &r,
                "handoff_cluster_driver",
                "Rollouts this instance drives (as their elected driver).",
                &["prefix"],
            ),
            cluster_revision: gauge(
                &r,
                "handoff_cluster_applied_revision",
                "The etcd revision of shared admin state this instance has applied.",
                &["prefix"],
            ),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for StateGauges {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Status classes, indexed by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A node's metric handles, resolved once.
pub struct NodeMetrics {
    sessions: [IntCounter; 4],
    requests: [IntCounter; 5],
    pub connect_failures: IntCounter,
    pub tls_failures: IntCounter,
    pub checks_pass: IntCounter,
    pub checks_fail: IntCounter,
    /// Transitions by the state entered: admin states then health values.
    transitions: [IntCounter; 7],
    deadline_closes: [IntCounter; 4],
    pub rebalance_closes: IntCounter,
}

const TRANSITION_TARGETS: [&str; 7] = [
    "active", "draining", "drained", "warming", "unknown", "up", "down",
];

impl NodeMetrics {
    pub fn new(m: &Metrics, pool: &str, node: &str) -> Self {
        NodeMetrics {
            sessions: SessionKind::ALL.map(|k| {
                m.sessions_total
                    .with_label_values(&[pool, node, k.as_str()])
            }),
            requests: CLASSES.map(|c| m.requests_total.with_label_values(&[pool, node, c])),
            connect_failures: m.connect_failures.with_label_values(&[pool, node]),
            tls_failures: m.upstream_tls_failures.with_label_values(&[pool, node]),
            checks_pass: m.health_checks.with_label_values(&[pool, node, "pass"]),
            checks_fail: m.health_checks.with_label_values(&[pool, node, "fail"]),
            transitions: TRANSITION_TARGETS
                .map(|t| m.node_transitions.with_label_values(&[pool, node, t])),
            deadline_closes: SessionKind::ALL.map(|k| {
                m.deadline_closes
                    .with_label_values(&[pool, node, k.as_str()])
            }),
            rebalance_closes: m.rebalance_closes.with_label_values(&[pool, node]),
        }
    }

    pub fn session_started(&self, kind: SessionKind) {
        self.sessions[kind as usize].inc();
    }

    /// Counts a state or health change by the name of the state entered.
    pub fn transition(&self, to: &str) {
        if let Some(i) = TRANSITION_TARGETS.iter().position(|t| *t == to) {
            self.transitions[i].inc();
        }
    }

    pub fn deadline_close(&self, kind: SessionKind) {
        self.deadline_closes[kind as usize].inc();
    }

    pub fn response(&self, status: u16) {
        self.requests[class_index(status)].inc();
    }
}

/// A pool's metric handles, resolved once per pool build.
pub struct PoolMetrics {
    pub request_duration: prometheus::Histogram,
    pub connect_duration: prometheus::Histogram,
    pub retries: IntCounter,
    /// Responses handoff produced itself because no node could answer.
    no_node: [IntCounter; 5],
}

impl PoolMetrics {
    pub fn new(m: &Metrics, pool: &str) -> Self {
        PoolMetrics {
            request_duration: m.request_duration.with_label_values(&[pool]),
            connect_duration: m.connect_duration.with_label_values(&[pool]),
            retries: m.retries.with_label_values(&[pool]),
            no_node: CLASSES.map(|c| m.requests_total.with_label_values(&[pool, "none", c])),
        }
    }

    pub fn local_response(&self, status: u16) {
        self.no_node[class_index(status)].inc();
    }
}

fn class_index(status: u16) -> usize {
    (usize::from(status / 100).clamp(1, 5)) - 1
}

/// What a client got wrong (`handoff_client_errors_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// Broken framing or Host, a malformed head: 400.
    BadRequest = 0,
    /// A head over the limit: 431.
    HeadTooLarge = 1,
    /// CONNECT, a transfer coding handoff does not do, an upgrade it cannot carry: 501.
    NotImplemented = 2,
    /// The body stopped coming: 408.
    BodyTimeout = 3,
    /// Broken chunked framing in the body: 400.
    BadBody = 4,
    /// The client closed before its body was whole.
    BodyCut = 5,
    /// No route matches its host and path: 404.
    NoRoute = 6,
}

impl ClientError {
    pub const ALL: [ClientError; 7] = [
        ClientError::BadRequest,
        ClientError::HeadTooLarge,
        ClientError::NotImplemented,
        ClientError::BodyTimeout,
        ClientError::BadBody,
        ClientError::BodyCut,
        ClientError::NoRoute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientError::BadRequest => "bad_request",
            ClientError::HeadTooLarge => "head_too_large",
            ClientError::NotImplemented => "not_implemented",
            ClientError::BodyTimeout => "body_timeout",
            ClientError::BadBody => "bad_body",
            ClientError::BodyCut => "body_cut",
            ClientError::NoRoute => "no_route",
        }
    }

    /// The reason for a status handoff answered a client with, if it is a client fault.
    pub fn of_status(status: u16) -> Option<ClientError> {
        match status {
            400 => Some(ClientError::BadRequest),
            404 => Some(ClientError::NoRoute),
            408 => Some(ClientError::BodyTimeout),
            431 => Some(ClientError::HeadTooLarge),
            501 => Some(ClientError::NotImplemented),
            _ => None,
        }
    }
}

/// A listener's metric handles, resolved once per listener.
pub struct ListenerMetrics {
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub accepted: IntCounter,
    pub rejected: IntCounter,
    pub active: prometheus::IntGauge,
    pub tls_failures: IntCounter,
    /// TLS handshakes completed in full, and resumed.
    pub tls_full: IntCounter,
    pub tls_resumed: IntCounter,
    client_errors: [IntCounter; 7],
    pub reclaimed_silent: IntCounter,
    pub reclaimed_idle: IntCounter,
    pub send_timeouts: IntCounter,
    pub rejected_per_client: IntCounter,
}

impl ListenerMetrics {
    /// Counts a completed TLS handshake by its kind.
    pub fn handshake(&self, kind: Option<rustls::HandshakeKind>) {
        match kind {
            Some(rustls::HandshakeKind::Resumed) => self.tls_resumed.inc(),
            _ => self.tls_full.inc(),
        }
    }

    pub fn new(m: &Metrics, listener: &str) -> Self {
        ListenerMetrics {
            bytes_in: m.listener_bytes.with_label_values(&[listener, "in"]),
            bytes_out: m.listener_bytes.with_label_values(&[listener, "out"]),
            accepted: m.listener_connections.with_label_values(&[listener]),
            rejected: m.listener_rejected.with_label_values(&[listener]),
            active: m.listener_connections_active.with_label_values(&[listener]),
            tls_failures: m.tls_failures.with_label_values(&[listener]),
            tls_full: m.tls_handshakes.with_label_values(&[listener, "full"]),
            tls_resumed: m.tls_handshakes.with_label_values(&[listener, "resumed"]),
            client_errors: ClientError::ALL
                .map(|e| m.client_errors.with_label_values(&[listener, e.as_str()])),
            reclaimed_silent: m
                .listener_reclaimed
                .with_label_values(&[listener, "silent"]),
            reclaimed_idle: m.listener_reclaimed.with_label_values(&[listener, "idle"]),
            send_timeouts: m.send_timeouts.with_label_values(&[listener]),
            rejected_per_client: m.rejected_per_client.with_label_values(&[listener]),
        }
    }

    /// Counts a client fault (logged at debug by the caller, never charged to a node).
    pub fn client_error(&self, e: ClientError) {
        self.client_errors[e as usize].inc();
    }
}
