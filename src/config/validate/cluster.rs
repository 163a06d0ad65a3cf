//! Validation of `cluster:`: etcd endpoints, the key prefix, the instance name, the lease.

use std::net::SocketAddr;

use super::Validator;
use crate::config::defaults as d;
use crate::config::file::RawCluster;
use crate::config::{limits, ClusterConfig};

impl Validator {
    pub(super) fn cluster(&mut self, raw: RawCluster, admin: SocketAddr) -> ClusterConfig {
        if raw.etcd.is_empty() {
            self.err("cluster.etcd", "at least one etcd endpoint is required");
        }
        for (i, endpoint) in raw.etcd.iter().enumerate() {
            if let Err(reason) = check_endpoint(endpoint) {
                self.err(&format!("cluster.etcd[{i}]"), reason);
            }
        }
        let prefix = raw.prefix.as_deref().unwrap_or(d::CLUSTER_PREFIX);
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            self.err(
                "cluster.prefix",
                format!("{prefix:?} must start with `/` and not end with `/` (e.g. /handoff/prod)"),
            );
        }
        let instance = raw
            .instance
            .clone()
            .unwrap_or_else(|| format!("{}:{}", hostname(), admin.port()));
        if instance.is_empty()
            || instance.len() > 128
            || !instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            self.err(
                "cluster.instance",
                format!("{instance:?} must be 1 to 128 letters, digits, `-`, `_`, `.` or `:`"),
            );
        }
        ClusterConfig {
            etcd: raw.etcd,
            prefix: prefix.to_string(),
            instance,
            lease_ttl: self.duration(
                "cluster.lease_ttl",
                raw.lease_ttl.as_deref(),
                d::LEASE_TTL,
                limits::LEASE_TTL,
            ),
        }
    }
}

/// etcd is reached over plain gRPC: `http://host:port`. TLS to etcd is not built in.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(if endpoint.starts_with("https://") {
            format!("{endpoint:?}: TLS to etcd is not supported; use http:// on a trusted network")
        } else {
            format!("{endpoint:?} must be an http://host:port URL")
        });
    };
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!("{endpoint:?} must be an http://host:port URL")),
    }
}

/// The machine's name, for the default instance name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
