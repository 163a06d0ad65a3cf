//! Raw configuration: plain serde structs that mirror the YAML file one to one.
//!
//! Everything an operator can mistype (durations, addresses, names that refer to each other)
//! stays a string here; `validate` turns it into runtime types and reports every mistake at
//! once. Unknown fields are rejected so a typo never silently does nothing.

use serde::Deserialize;

/// `admin:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
}

/// `upgrade:` section (self-upgrade).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpgrade {
    pub socket: Option<String>,
    pub timeout: Option<String>,
}

/// `request_id:` section: the header that carries each request's ID.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequestId {
    pub header: Option<String>,
}

/// `access_log:` section: where each request's line goes, and in which format.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub path: Option<String>,
    pub format: Option<String>,
}

/// `cluster:` section: instances sharing admin state through etcd.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub etcd: Vec<String>,
    pub prefix: Option<String>,
    pub instance: Option<String>,
    pub lease_ttl: Option<String>,
    pub tls: Option<RawClusterTls>,
}

/// `cluster.tls:` TLS to etcd (https endpoints).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusterTls {
    /// CA that signed etcd's certificates (PEM).
    pub ca: String,
    /// Client certificate and key, when etcd checks clients (`--client-cert-auth`).
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Name to verify etcd's certificate against (default: the endpoint's host).
    pub server_name: Option<String>,
}

/// One entry of `listeners:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub protocol: String,
    /// Items are deserialized one by one (see `RawRoute`), so each bad route is reported.
    #[serde(default)]
    pub routes: Option<Vec<serde_yaml::Value>>,
    #[serde(default)]
    pub pool: Option<String>,
    /// tcp: route TLS connections by SNI without terminating them (see `RawSniRoute`).
    #[serde(default)]
    pub sni_routes: Option<Vec<serde_yaml::Value>>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub request_buffer: Option<usize>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// tcp: `none`, `v1` or `v2`.
    pub proxy_protocol: Option<String>,
    /// http: TLS termination; deserialized on its own (see `RawTls`).
    pub tls: Option<serde_yaml::Value>,
}

/// `listeners[].timeouts:` (handoff extension; see README).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub idle: Option<String>,
    pub header_read: Option<String>,
    pub response: Option<String>,
    pub send: Option<String>,
}

/// One entry of `listeners[].routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub pool: String,
    pub request_headers: Option<super::header_rules::RawHeaderRules>,
    pub response_headers: Option<super::header_rules::RawHeaderRules>,
}

/// One entry of `listeners[].sni_routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniRoute {
    pub sni: String,
    pub pool: String,
}

/// One entry of `pools:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: String,
    pub balance: Option<String>,
    /// Items are deserialized one by one (see `RawNode`), so each bad node is reported.
    pub nodes: Vec<serde_yaml::Value>,
    /// Deserialized on its own (see `RawHealth`), so its errors don't hide the pool's others.
    pub health: Option<serde_yaml::Value>,
    pub warmup: Option<String>,
    pub drain: Option<serde_yaml::Value>,
    pub rebalance: Option<serde_yaml::Value>,
    pub rollout: Option<serde_yaml::Value>,
    pub affinity: Option<serde_yaml::Value>,
    pub upstream: Option<serde_yaml::Value>,
    pub discovery: Option<serde_yaml::Value>,
}

/// `pools[].discovery:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub dns: String,
    pub port: Option<u16>,
    pub interval: Option<String>,
    pub srv: Option<bool>,
    pub resolver: Option<String>,
}

/// `pools[].upstream:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub protocol: Option<String>,
    pub tls: Option<RawUpstreamTls>,
}

/// `pools[].upstream.tls:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub client_cert: Option<RawCertificate>,
}

/// `pools[].affinity:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAffinity {
    pub cookie: Option<String>,
    pub source_ip: Option<bool>,
    pub idle_timeout: Option<String>,
}

/// `pools[].drain:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrain {
    pub timeout: Option<String>,
    pub close_spread: Option<String>,
    pub session_timeout: Option<String>,
}

/// `pools[].rebalance:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRebalance {
    pub max_closes_per_sec: Option<u32>,
}

/// `pools[].rollout:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub drain_timeout: Option<String>,
    pub ready_timeout: Option<String>,
    pub hook: Option<RawHook>,
    pub prefer_target_version: Option<bool>,
    /// Deserialized on its own (see `RawAnalysis`).
    pub analysis: Option<serde_yaml::Value>,
    pub strategy: Option<String>,
    pub preview: Option<RawPreview>,
}

/// `pools[].rollout.preview:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreview {
    pub header: Option<String>,
    #[serde(rename = "for")]
    pub for_: Option<String>,
}

/// `pools[].rollout.analysis:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    pub window: Option<String>,
    pub min_requests: Option<u64>,
    pub max_error_rate: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub on_failure: Option<String>,
}

/// `pools[].health.passive:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_5xx: Option<u32>,
}

/// `pools[].rollout.hook:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    pub exec: Vec<String>,
}

/// One entry of `pools[].nodes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: String,
    pub addr: String,
    pub weight: Option<u32>,
}

/// `pools[].health:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_after: Option<u32>,
    pub unhealthy_after: Option<u32>,
    pub http: Option<RawHttpCheck>,
    pub tcp: Option<RawTcpCheck>,
    pub passive: Option<RawPassive>,
}

/// `pools[].health.http:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpCheck {
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub version_header: Option<String>,
    pub version_json: Option<String>,
    pub host: Option<String>,
}

/// `pools[].health.tcp:` (connect-only; no settings yet).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcpCheck {}

/// `listeners[].tls:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificates: Vec<RawCertificate>,
    pub session_tickets: Option<RawSessionTickets>,
}

/// `listeners[].tls.session_tickets:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessionTickets {
    pub rotate: Option<String>,
}

/// One entry of `listeners[].tls.certificates:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}
