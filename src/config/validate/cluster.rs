//! Validation of `cluster:`: etcd endpoints, TLS to them, the key prefix, the instance name,
//! the lease.

use std::net::SocketAddr;

use super::Validator;
use crate::config::defaults as d;
use crate::config::file::{RawCluster, RawClusterTls};
use crate::config::{limits, ClusterConfig, ClusterTls};

impl Validator {
    pub(super) fn cluster(&mut self, raw: RawCluster, admin: SocketAddr) -> ClusterConfig {
        if raw.etcd.is_empty() {
            self.err("cluster.etcd", "at least one etcd endpoint is required");
        }
        let tls = raw.tls.as_ref().and_then(|t| self.cluster_tls(t));
        let secure = raw.tls.is_some();
        for (i, endpoint) in raw.etcd.iter().enumerate() {
            if let Err(reason) = check_endpoint(endpoint, secure) {
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
            tls,
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

/// `http://host:port`, or `https://host:port` with `cluster.tls`.
fn check_endpoint(endpoint: &str, secure: bool) -> Result<(), String> {
    let (scheme, other) = if secure {
        ("https://", "http://")
    } else {
        ("http://", "https://")
    };
    let Some(rest) = endpoint.strip_prefix(scheme) else {
        return Err(if endpoint.starts_with(other) && secure {
            format!("{endpoint:?}: with `cluster.tls` every endpoint is https://")
        } else if endpoint.starts_with(other) {
            format!("{endpoint:?}: https:// endpoints need `cluster.tls` (at least its `ca`)")
        } else {
            format!("{endpoint:?} must be an {scheme}host:port URL")
        });
    };
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!("{endpoint:?} must be an {scheme}host:port URL")),
    }
}

impl Validator {
    /// Reads `cluster.tls`'s files now, so `check` reports a missing or bad one.
    fn cluster_tls(&mut self, raw: &RawClusterTls) -> Option<ClusterTls> {
        let ca = self.pem("cluster.tls.ca", &raw.ca, "CERTIFICATE")?;
        let identity = match (&raw.cert, &raw.key) {
            (Some(cert), Some(key)) => Some((
                self.pem("cluster.tls.cert", cert, "CERTIFICATE")?,
                self.pem("cluster.tls.key", key, "PRIVATE KEY")?,
            )),
            (None, None) => None,
            _ => {
                self.err("cluster.tls", "`cert` and `key` go together");
                return None;
            }
        };
        Some(ClusterTls {
            ca,
            identity,
            server_name: raw.server_name.clone(),
        })
    }

    /// A PEM file (relative to the config file) that holds a `what` block.
    pub(super) fn pem(&mut self, path: &str, file: &str, what: &str) -> Option<Vec<u8>> {
        let full = self.base.join(file);
        match std::fs::read(&full) {
            Ok(bytes) if String::from_utf8_lossy(&bytes).contains(&format!("{what}-----")) => {
                Some(bytes)
            }
            Ok(_) => {
                self.err(path, format!("{} holds no PEM {what}", full.display()));
                None
            }
            Err(e) => {
                self.err(path, format!("cannot read {}: {e}", full.display()));
                None
            }
        }
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
