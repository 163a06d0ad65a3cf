//! Configuration: the YAML file (`file`), its validation into the runtime types below
//! (`validate`), durations, defaults, and positions for error messages.
//!
//! [`load`] and [`parse`] bind nothing and start nothing, so `handoff check`, `handoff run`
//! and `POST /v1/reload` all run the very same code.

mod access_log;
pub mod defaults;
pub mod duration;
pub mod file;
pub mod header_rules;
pub mod limits;
mod position;
mod upstream_tls;
mod validate;
pub use access_log::{AccessLogConfig, LogFormat, LogTarget};
pub use validate::valid_name;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Serialize;

/// A validated configuration, ready to build the runtime from.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin: AdminConfig,
    /// Where admin states and rollouts are persisted, if anywhere.
    pub state_file: Option<PathBuf>,
    /// Environment variable holding a shared affinity secret, if any: instances with the
    /// same secret pin a client to the same node, across restarts too.
    pub affinity_key_env: Option<String>,
    /// Time in-flight work gets after SIGTERM (`shutdown_grace`).
    pub shutdown_grace: Duration,
    /// How often node addresses written as host names are resolved again.
    pub resolve_interval: Duration,
    pub listeners: Vec<ListenerConfig>,
    pub pools: Vec<PoolConfig>,
    /// Self-upgrade: where a new process asks for the sockets, and how long it may take.
    pub upgrade: UpgradeConfig,
    /// Shared admin state through etcd, when several instances form one cluster.
    pub cluster: Option<ClusterConfig>,
    /// Request IDs: kept from the client when valid, else made here; sent to the node and
    /// back to the client. `None`: no request ID is added.
    pub request_id: Option<RequestIdConfig>,
    /// One line per HTTP request, TCP session and tunnel. `None`: no access log.
    pub access_log: Option<AccessLogConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIdConfig {
    /// The header's name, as written (`X-Request-Id`).
    pub header: std::sync::Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd endpoints (`http://host:port`).
    pub etcd: Vec<String>,
    /// Key prefix: instances with the same prefix form one cluster. No trailing `/`.
    pub prefix: String,
    /// This instance's unique name (default: hostname:admin-port).
    pub instance: String,
    /// An instance that stops renewing its lease leaves the cluster after this.
    pub lease_ttl: Duration,
    /// TLS to etcd (`https://` endpoints), read when the config is loaded.
    pub tls: Option<ClusterTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// PEM of the CA that signed etcd's certificates.
    pub ca: Vec<u8>,
    /// PEM certificate chain and key presented to etcd, if any.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UpgradeConfig {
    /// The Unix socket (resolved against the config file's directory).
    pub socket: PathBuf,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Name of the environment variable holding the bearer token, if any.
    pub token_env: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub kind: ListenerKind,
    pub max_connections: usize,
    /// Open connections allowed from one client address (`None`: no limit).
    pub max_connections_per_client: Option<usize>,
    /// http: request bodies up to this many bytes are read whole before a backend
    /// connection is taken (longer ones after this many); 0 streams them at once.
    pub request_buffer: usize,
    pub timeouts: Timeouts,
    /// tcp: PROXY protocol header sent to backends, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// TLS termination, if configured (http and tcp listeners).
    pub tls: Option<TlsConfig>,
}

/// Certificates loaded and checked at validation, so a reload with a broken certificate is
/// refused like any other mistake.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// In config order; the first is the default when no SNI name matches.
    pub certificates: Vec<std::sync::Arc<rustls::sign::CertifiedKey>>,
    /// How often the session ticket keys are replaced (`session_tickets.rotate`).
    pub ticket_rotation: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ListenerKind {
    /// HTTP: first matching route picks the pool.
    Http { routes: Vec<RouteConfig> },
    /// TCP: connections go to `pool`, or with `sni_routes` by the TLS server name (passed
    /// through untouched), `pool` being the default.
    Tcp {
        pool: Option<String>,
        sni_routes: Vec<SniRouteConfig>,
    },
}

/// `listeners[].sni_routes[]`: TLS connections whose ClientHello names `sni` go to `pool`.
#[derive(Debug, Clone, PartialEq)]
pub struct SniRouteConfig {
    /// Lower case; `*.example.com` matches one label in front of `example.com`.
    pub sni: String,
    pub pool: String,
}

impl ListenerKind {
    pub fn protocol(&self) -> &'static str {
        match self {
            ListenerKind::Http { .. } => "http",
            ListenerKind::Tcp { .. } => "tcp",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Host to match, lower-case, without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix to match; `None` matches any path.
    pub path_prefix: Option<String>,
    pub pool: String,
    /// Fields removed, set and added on the way to the node (`request_headers`).
    pub request_headers: Option<std::sync::Arc<header_rules::HeaderRules>>,
    /// Fields removed, set and added on a node's answer (`response_headers`).
    pub response_headers: Option<std::sync::Arc<header_rules::HeaderRules>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub idle: Duration,
    pub header_read: Duration,
    pub response: Duration,
    /// HTTP: a client that accepts no byte of its response for this long is closed.
    pub send: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub balance: Balance,
    pub nodes: Vec<NodeConfig>,
    pub health: HealthConfig,
    pub warmup: Duration,
    pub drain: DrainConfig,
    /// Active TCP rebalance after a node returns, if configured.
    pub rebalance: Option<RebalanceConfig>,
    pub rollout: RolloutConfig,
    /// Session affinity, if configured.
    pub affinity: Option<AffinityConfig>,
    /// How handoff speaks to the nodes.
    pub upstream: UpstreamConfig,
    /// Nodes found by DNS, if configured.
    pub discovery: Option<DiscoveryConfig>,
}

/// `pools[].discovery`: the pool's nodes follow a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The name resolved (A and AAAA records, or SRV with `srv`).
    pub name: String,
    /// The nodes' port (from the SRV records with `srv`).
    pub port: Option<u16>,
    /// How often the name is resolved again (a cached answer is reused within its TTL).
    pub interval: Duration,
    /// Read SRV records: each gives a target (resolved), a port and a weight.
    pub srv: bool,
    /// The DNS server to ask; the system's (`/etc/resolv.conf`) when `None`.
    pub resolver: Option<SocketAddr>,
}

/// `pools[].upstream`: the protocol to the nodes, and TLS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamConfig {
    pub protocol: UpstreamProtocol,
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, in clear.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
}

/// `pools[].upstream.tls`: PEM read at validation, so `check` and reload see bad files.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// Roots that sign the nodes' certificates; the machine's roots when `None`.
    pub ca: Option<Vec<u8>>,
    /// The name the nodes' certificates must carry; each node's IP address when `None`.
    pub server_name: Option<String>,
    /// `(certificate chain, key)` for backends that ask for a client certificate.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AffinityConfig {
    pub mode: AffinityMode,
    /// A pinned client that sent nothing for this long is no longer a session.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AffinityMode {
    /// http: an opaque cookie with this name.
    Cookie(String),
    /// Consistent hashing of the client's address.
    SourceIp,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrainConfig {
    /// After this, remaining sessions are closed.
    pub timeout: Duration,
    /// Deadline closes are spread over this window.
    pub close_spread: Duration,
    /// Affinity sessions may continue on a draining node this long.
    pub session_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalanceConfig {
    pub max_closes_per_sec: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    pub drain_timeout: Duration,
    /// The upgraded node must be up with the target version within this.
    pub ready_timeout: Duration,
    /// Command run after the drain (argv), if any.
    pub hook: Option<Vec<String>>,
    pub prefer_target_version: bool,
    /// Judge each upgraded node on live traffic.
    pub analysis: Option<AnalysisConfig>,
    /// Upgrade each node in place, or bring its replacement up beside it first.
    pub strategy: Strategy,
    /// Requests naming the target version reach a new node before it is admitted.
    pub preview: Option<PreviewConfig>,
}

/// `rollout.strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Drain the node, upgrade it (the hook, or an operator), readmit it.
    #[default]
    InPlace,
    /// Start a new node at the target version beside the old one (the hook's `provision`),
    /// admit it, then drain and remove the old one (`retire`): never one node short.
    Replace,
}

/// `rollout.preview`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PreviewConfig {
    /// The request header whose value, equal to the target version, routes a request to a
    /// node reporting it (a cookie `handoff_preview=<version>` does too).
    pub header: String,
    /// How long a replace rollout waits in phase `preview` before admitting the new node.
    #[serde(with = "duration::text")]
    pub for_: Duration,
}

/// `rollout.analysis`: the limits an upgraded node's own traffic must stay within while it
/// warms (and in phase `analysis` after, until `window` has passed since readmission).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AnalysisConfig {
    #[serde(with = "duration::text")]
    pub window: Duration,
    /// No verdict on fewer requests.
    pub min_requests: u64,
    /// (5xx answers + failed connects + resets and timeouts) / requests, on the node.
    pub max_error_rate: f64,
    /// The node's p99 against its siblings' p99 over the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    pub on_failure: OnFailure,
}

/// What a breach of `rollout.analysis` does beyond draining the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Run the hook again with the node's previous version, and readmit the node once it
    /// reports that version.
    Rollback,
    /// Leave the node drained for the operator.
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    LeastConn,
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Where the node comes from: the file, or (at runtime) the admin API or DNS.
    pub source: NodeSource,
    /// `HOST:PORT` as the file wrote it, when the host is a name: the node follows it.
    pub host: Option<String>,
}

/// `listeners[].proxy_protocol`: the PROXY protocol header version sent to the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// Where a node comes from (`source` in the API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeSource {
    /// The config file.
    #[default]
    Config,
    /// Added through the admin API.
    Api,
    /// Found by DNS discovery.
    Dns,
}

impl NodeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeSource::Config => "config",
            NodeSource::Api => "api",
            NodeSource::Dns => "dns",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    pub check: CheckKind,
    /// `health.passive.consecutive_5xx`: that many 5xx answers in a row mark the node down.
    pub consecutive_5xx: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// Connect-only.
    Tcp,
    Http {
        path: String,
        host: Option<String>,
        expect_status: u16,
        version: Option<VersionSource>,
    },
}

/// Where a health response carries the node's version.
#[derive(Debug, Clone, PartialEq)]
pub enum VersionSource {
    Header(HeaderName),
    /// Dotted path into a JSON body, e.g. `version` or `build.version`.
    Json(String),
}

/// One mistake in a config file, with the field path and where it is written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub path: String,
    pub line: usize,
    pub col: usize,
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        };
        write!(f, "{}:{}: {}: {}", self.line, self.col, path, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} error(s) in config:\n{}", .0.len(), render(.0))]
    Invalid(Vec<FieldError>),
}

fn render(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Every field error, for the admin API's `detail`.
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            ConfigError::Read { path, source } => vec![FieldError {
                path: String::new(),
                line: 0,
                col: 0,
                reason: format!("cannot read {}: {source}", path.display()),
            }],
            ConfigError::Invalid(v) => v.clone(),
        }
    }
}

/// Reads and validates a config file. Relative certificate paths are relative to the
/// file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    validate::validate(&text, base).map_err(ConfigError::Invalid)
}

/// Validates config text; every mistake is reported, not just the first. Relative paths are
/// relative to the working directory.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    validate::validate(text, Path::new(".")).map_err(ConfigError::Invalid)
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}
