//! Defaults for every optional setting, each with its unit and the reason for its value.

use std::time::Duration;

/// Admin API address: loopback only, so an unconfigured install is not reachable from outside.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// The header that carries a request's ID (`request_id:` without `header`).
pub const REQUEST_ID_HEADER: &str = "X-Request-Id";
/// Time in-flight requests and TCP sessions get to finish after SIGTERM before they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Open client connections per listener; above it new connections are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Request bodies up to this are read whole before a backend connection is taken.
pub const REQUEST_BUFFER: usize = 64 * 1024;
/// Upstream TCP connect timeout; short, because a failed connect is retried on another node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP: a keep-alive client connection with no request in flight is closed after this.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP: a session with no byte in either direction is closed after this (long-lived by nature).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// HTTP: a client must send complete request headers within this (slowloris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP: the backend must answer with response headers within this, else 504.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP: a client that accepts no byte of its response for this long is closed (NGINX's
/// `send_timeout`), and its backend connection released.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Health check period.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Health check timeout (connect plus response headers).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive passing checks before a node counts as up.
pub const HEALTHY_AFTER: u32 = 2;
/// Consecutive failing checks (or passive connect failures) before a node counts as down.
pub const UNHEALTHY_AFTER: u32 = 3;
/// HTTP health check path.
pub const HEALTH_PATH: &str = "/healthz";
/// HTTP health check expected status.
pub const HEALTH_STATUS: u16 = 200;
/// Node weight (relative; 100 is "one node's worth").
pub const WEIGHT: u32 = 100;
/// Slow-start window after a node is enabled again.
pub const WARMUP: Duration = Duration::from_secs(10);
/// Largest pool: picks track tried nodes in a 64-bit mask, and pools are pairs or small sets.
pub const MAX_NODES_PER_POOL: usize = 64;
/// Drain deadline: in-flight work gets this long before the remaining sessions are closed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline closes are spread over this window so clients don't reconnect in one storm.
pub const DRAIN_CLOSE_SPREAD: Duration = Duration::from_secs(5);
/// Affinity sessions may continue on a draining node this long.
pub const DRAIN_SESSION_TIMEOUT: Duration = Duration::from_secs(300);
/// Rebalance rate when `rebalance:` is given without one (connections closed per second).
pub const REBALANCE_CLOSES_PER_SEC: u32 = 20;
/// Rollout: how long the upgraded node may take to report the target version and pass checks.
pub const ROLLOUT_READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Rollout analysis: how long an upgraded node is judged after readmission.
pub const ANALYSIS_WINDOW: Duration = Duration::from_secs(30);
/// Rollout analysis: no verdict on fewer requests (a third of 50 failing is a clear signal;
/// one of 5 is noise).
pub const ANALYSIS_MIN_REQUESTS: u64 = 50;
/// Rollout analysis: the largest share of the node's requests that may fail.
pub const ANALYSIS_MAX_ERROR_RATE: f64 = 0.05;
/// Affinity: a pinned client idle this long is no longer a session.
pub const AFFINITY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Self-upgrade: the Unix socket a new process asks for the listeners on, relative to the
/// config file's directory.
pub const UPGRADE_SOCKET: &str = "handoff.upgrade.sock";
/// Self-upgrade: how long the new process may take to serve before the old one gives up on
/// it and keeps everything.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// `cluster.prefix`.
pub const CLUSTER_PREFIX: &str = "/handoff";
/// `cluster.lease_ttl`.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// `pools[].discovery.interval`: how often a discovered name is resolved again.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// `resolve_interval`: how often node addresses written as host names are resolved again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// `rollout.preview.header`: the request header that asks for the target version.
pub const PREVIEW_HEADER: &str = "x-handoff-preview";
/// TLS session ticket keys are replaced this often; a ticket resumes for up to twice this.
pub const TICKET_ROTATION: Duration = Duration::from_secs(12 * 3600);
