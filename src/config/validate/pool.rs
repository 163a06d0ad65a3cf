//! Validation of `pools:` entries: balance, nodes (addresses resolved here), health checks.

use std::net::{SocketAddr, ToSocketAddrs};

use http::HeaderName;
use serde_yaml::Value;

use super::Validator;
use crate::config::defaults as d;
use crate::config::file::{
    RawAffinity, RawDiscovery, RawDrain, RawHealth, RawHttpCheck, RawNode, RawPool, RawRebalance,
};
use crate::config::limits;
use crate::config::{
    AffinityConfig, AffinityMode, Balance, CheckKind, DiscoveryConfig, DrainConfig, HealthConfig,
    NodeConfig, NodeSource, PoolConfig, RebalanceConfig, VersionSource,
};

impl Validator {
    pub(super) fn pool(&mut self, path: &str, raw: RawPool) -> Option<PoolConfig> {
        self.name(&format!("{path}.name"), &raw.name, "pool");
        let balance = match raw.balance.as_deref() {
            None | Some("least_conn") => Balance::LeastConn,
            Some("round_robin") => Balance::RoundRobin,
            Some(other) => {
                self.err(
                    &format!("{path}.balance"),
                    format!(
                        "unknown balance {other:?}: expected \"least_conn\" or \"round_robin\""
                    ),
                );
                Balance::LeastConn
            }
        };
        let node_count = raw.nodes.len();
        let raw_nodes: Vec<(usize, RawNode)> =
            self.items(&format!("{path}.nodes"), Value::Sequence(raw.nodes));
        let discovery = raw.discovery.and_then(|v| {
            let dp = format!("{path}.discovery");
            let d = self.item::<RawDiscovery>(&dp, v)?;
            Some(self.discovery(&dp, d))
        });
        if node_count == 0 && discovery.is_none() {
            self.err(
                &format!("{path}.nodes"),
                "a pool needs at least one node (or discovery:)",
            );
        }
        if node_count > d::MAX_NODES_PER_POOL {
            self.err(
                &format!("{path}.nodes"),
                format!("at most {} nodes per pool", d::MAX_NODES_PER_POOL),
            );
        }
        let mut nodes = Vec::new();
        for (i, n) in raw_nodes {
            let np = format!("{path}.nodes[{i}]");
            self.name(&format!("{np}.name"), &n.name, "node");
            let weight = self.number(
                &format!("{np}.weight"),
                n.weight.unwrap_or(d::WEIGHT),
                limits::WEIGHT,
            );
            if let Some(addr) = self.resolve(&format!("{np}.addr"), &n.addr) {
                let host = n
                    .addr
                    .parse::<SocketAddr>()
                    .is_err()
                    .then(|| n.addr.clone());
                nodes.push(NodeConfig {
                    name: n.name,
                    addr,
                    weight,
                    source: NodeSource::Config,
                    host,
                });
            }
        }
        self.unique(
            nodes.iter().map(|n| n.name.as_str()),
            &format!("{path}.nodes"),
            "node",
        );
        let hp = format!("{path}.health");
        let raw_health = raw
            .health
            .and_then(|v| self.item::<RawHealth>(&hp, v))
            .unwrap_or_default();
        let health = self.health(&hp, raw_health);
        let warmup = self.duration(
            &format!("{path}.warmup"),
            raw.warmup.as_deref(),
            d::WARMUP,
            limits::WARMUP,
        );
        let dp = format!("{path}.drain");
        let raw_drain = raw
            .drain
            .and_then(|v| self.item::<RawDrain>(&dp, v))
            .unwrap_or_default();
        let drain = DrainConfig {
            timeout: self.duration(
                &format!("{dp}.timeout"),
                raw_drain.timeout.as_deref(),
                d::DRAIN_TIMEOUT,
                limits::DRAIN_TIMEOUT,
            ),
            close_spread: self.duration(
                &format!("{dp}.close_spread"),
                raw_drain.close_spread.as_deref(),
                d::DRAIN_CLOSE_SPREAD,
                limits::CLOSE_SPREAD,
            ),
            session_timeout: self.duration(
                &format!("{dp}.session_timeout"),
                raw_drain.session_timeout.as_deref(),
                d::DRAIN_SESSION_TIMEOUT,
                limits::SESSION_TIMEOUT,
            ),
        };
        let rp = format!("{path}.rebalance");
        let rebalance = raw
            .rebalance
            .and_then(|v| self.item::<RawRebalance>(&rp, v))
            .map(|r| {
                let max_closes_per_sec = self.number(
                    &format!("{rp}.max_closes_per_sec"),
                    r.max_closes_per_sec.unwrap_or(d::REBALANCE_CLOSES_PER_SEC),
                    limits::CLOSES_PER_SEC,
                );
                RebalanceConfig { max_closes_per_sec }
            });
        let rollout = self.rollout(&format!("{path}.rollout"), raw.rollout, &drain);
        let ap = format!("{path}.affinity");
        let affinity = raw
            .affinity
            .and_then(|v| self.item::<RawAffinity>(&ap, v))
            .and_then(|a| {
                let idle_timeout = self.duration(
                    &format!("{ap}.idle_timeout"),
                    a.idle_timeout.as_deref(),
                    d::AFFINITY_IDLE_TIMEOUT,
                    limits::AFFINITY_IDLE,
                );
                let mode = match (a.cookie, a.source_ip.unwrap_or(false)) {
                    (Some(_), true) => {
                        self.err(&ap, "choose one of `cookie` and `source_ip`, not both");
                        return None;
                    }
                    (Some(name), false) => {
                        let token = !name.is_empty()
                            && name.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
                            });
                        if !token {
                            self.err(
                                &format!("{ap}.cookie"),
                                format!("invalid cookie name {name:?}"),
                            );
                        }
                        AffinityMode::Cookie(name)
                    }
                    (None, true) => AffinityMode::SourceIp,
                    (None, false) => {
                        self.err(&ap, "needs `cookie: NAME` or `source_ip: true`");
                        return None;
                    }
                };
                Some(AffinityConfig { mode, idle_timeout })
            });
        let upstream = self.upstream(&format!("{path}.upstream"), raw.upstream);
        Some(PoolConfig {
            upstream,
            name: raw.name,
            balance,
            nodes,
            health,
            warmup,
            drain,
            rebalance,
            rollout,
            affinity,
            discovery,
        })
    }

    fn discovery(&mut self, path: &str, raw: RawDiscovery) -> DiscoveryConfig {
        let name = raw.dns.trim().trim_end_matches('.').to_string();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            self.err(
                &format!("{path}.dns"),
                format!("invalid DNS name {:?}", raw.dns),
            );
        }
        let srv = raw.srv.unwrap_or(false);
        match (raw.port, srv) {
            (None, false) => self.err(
                &format!("{path}.port"),
                "required (the nodes' port), unless srv: true",
            ),
            (Some(0), _) => self.err(&format!("{path}.port"), "must not be 0"),
            _ => {}
        }
        let interval = self.duration(
            &format!("{path}.interval"),
            raw.interval.as_deref(),
            d::DISCOVERY_INTERVAL,
            limits::DISCOVERY_INTERVAL,
        );
        let resolver = raw.resolver.as_deref().and_then(|text| {
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            if parsed.is_none() {
                self.err(
                    &format!("{path}.resolver"),
                    format!("invalid resolver {text:?}: expected IP or IP:PORT"),
                );
            }
            parsed
        });
        DiscoveryConfig {
            name,
            port: raw.port,
            interval,
            srv,
            resolver,
        }
    }

    /// Node addresses may be host names: resolved here when the config is loaded, then
    /// followed at runtime ([`crate::discovery`]).
    fn resolve(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(a);
        }
        if !text.contains(':') {
            self.err(
                path,
                format!("invalid address {text:?}: expected HOST:PORT"),
            );
            return None;
        }
        match text.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(a)) => Some(a),
            Ok(None) => {
                self.err(path, format!("address {text:?} resolves to nothing"));
                None
            }
            Err(e) => {
                self.err(path, format!("invalid address {text:?}: {e}"));
                None
            }
        }
    }

    fn health(&mut self, path: &str, raw: RawHealth) -> HealthConfig {
        let interval = self.duration(
            &format!("{path}.interval"),
            raw.interval.as_deref(),
            d::HEALTH_INTERVAL,
            limits::HEALTH_INTERVAL,
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            raw.timeout.as_deref(),
            d::HEALTH_TIMEOUT.min(interval),
            limits::HEALTH_TIMEOUT,
        );
        if timeout > interval {
            self.err(
                &format!("{path}.timeout"),
                "must not be longer than `interval`",
            );
        }
        let healthy_after = self.number(
            &format!("{path}.healthy_after"),
            raw.healthy_after.unwrap_or(d::HEALTHY_AFTER),
            limits::CHECK_STREAK,
        );
        let unhealthy_after = self.number(
            &format!("{path}.unhealthy_after"),
            raw.unhealthy_after.unwrap_or(d::UNHEALTHY_AFTER),
            limits::CHECK_STREAK,
        );
        let check = match (raw.http, raw.tcp) {
            (Some(_), Some(_)) => {
                self.err(path, "choose one check: `http` or `tcp`, not both");
                CheckKind::Tcp
            }
            (None, _) => CheckKind::Tcp,
            (Some(h), None) => self.http_check(&format!("{path}.http"), h),
        };
        let consecutive_5xx = raw.passive.and_then(|p| match p.consecutive_5xx {
            None => {
                self.err(
                    &format!("{path}.passive"),
                    "needs `consecutive_5xx: N` (5xx answers in a row that mark a node down)",
                );
                None
            }
            Some(n) => Some(self.number(
                &format!("{path}.passive.consecutive_5xx"),
                n,
                limits::CHECK_STREAK,
            )),
        });
        HealthConfig {
            interval,
            timeout,
            healthy_after,
            unhealthy_after,
            check,
            consecutive_5xx,
        }
    }

    fn http_check(&mut self, path: &str, h: RawHttpCheck) -> CheckKind {
        let check_path = h.path.unwrap_or_else(|| d::HEALTH_PATH.to_string());
        if !check_path.starts_with('/') || check_path.parse::<http::Uri>().is_err() {
            self.err(
                &format!("{path}.path"),
                format!("invalid path {check_path:?}: must start with '/'"),
            );
        }
        let expect_status = h.expect_status.unwrap_or(d::HEALTH_STATUS);
        if !(100..=599).contains(&expect_status) {
            self.err(
                &format!("{path}.expect_status"),
                "must be an HTTP status between 100 and 599",
            );
        }
        let version = match (h.version_header, h.version_json) {
            (Some(_), Some(_)) => {
                self.err(
                    path,
                    "choose one of `version_header` and `version_json`, not both",
                );
                None
            }
            (Some(name), None) => match HeaderName::try_from(name.as_str()) {
                Ok(n) => Some(VersionSource::Header(n)),
                Err(_) => {
                    self.err(
                        &format!("{path}.version_header"),
                        format!("invalid header name {name:?}"),
                    );
                    None
                }
            },
            (None, Some(field)) => {
                if field.is_empty() || field.split('.').any(str::is_empty) {
                    self.err(
                        &format!("{path}.version_json"),
                        format!("invalid JSON field path {field:?}"),
                    );
                }
                Some(VersionSource::Json(field))
            }
            (None, None) => None,
        };
        CheckKind::Http {
            path: check_path,
            host: h.host,
            expect_status,
            version,
        }
    }
}
