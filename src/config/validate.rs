//! The one place raw YAML becomes a [`Config`]: every mistake is collected with its field
//! path and line:column, so an operator fixes a file in one round, not one error at a time.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::defaults as d;
use super::file::*;
use super::position::Positions;
use super::*;

pub(super) fn validate(text: &str) -> Result<Config, Vec<FieldError>> {
    let root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let (line, col) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            return Err(vec![FieldError {
                path: String::new(),
                line,
                col,
                reason: format!("YAML syntax error: {e}"),
            }]);
        }
    };
    let mut v = Validator {
        positions: Positions::of(text),
        errors: Vec::new(),
    };
    let config = v.top(root);
    if v.errors.is_empty() {
        if let Some(config) = config {
            return Ok(config);
        }
    }
    v.errors.sort_by_key(|e| (e.line, e.col));
    Err(v.errors)
}

struct Validator {
    positions: Positions,
    errors: Vec<FieldError>,
}

/// Which later issue brings a field that is recognised but not implemented yet.
const LATER: &str = "is not supported yet in this version of handoff";

impl Validator {
    fn err(&mut self, path: &str, reason: impl Into<String>) {
        let (line, col) = self.positions.find(path);
        self.errors.push(FieldError {
            path: path.to_string(),
            line,
            col,
            reason: reason.into(),
        });
    }

    /// Deserializes one subtree; a structural error is recorded with its full path.
    fn item<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let mut full = if inner == "." {
                    path.to_string()
                } else if path.is_empty() {
                    inner
                } else if inner.starts_with('[') {
                    format!("{path}{inner}")
                } else {
                    format!("{path}.{inner}")
                };
                let reason = e.into_inner().to_string();
                // Point at the offending key itself for unknown fields.
                if let Some(name) = reason
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    if !full.ends_with(name) {
                        full = if full.is_empty() {
                        name.to_string()
                    } else {
                        format!("{full}.{name}")
                        };
                    }
                }
                self.err(&full, reason);
                None
            }
        }
    }

    fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        match text {
            None => default,
            Some(t) => duration::parse(t).unwrap_or_else(|reason| {
                self.err(path, reason);
                default
            }),
        }
    }

    fn positive(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        let value = self.duration(path, text, default);
        if value.is_zero() {
            self.err(path, "must be greater than 0");
        }
        value
    }

    fn top(&mut self, root: Value) -> Option<Config> {
        let map = match root {
            Value::Mapping(m) => m,
            Value::Null => {
                self.err("", "the config is empty: expected `listeners:` and `pools:`");
                return None;
            }
            _ => {
                self.err("", "expected a mapping with `listeners:` and `pools:` at the top");
                return None;
            }
        };
        let (mut admin, mut grace, mut listeners, mut pools_raw) = (None, None, Vec::new(), None);
        for (key, value) in map {
            let Some(key) = key.as_str().map(str::to_string) else {
                self.err("", format!("top-level keys must be strings, found {key:?}"));
                continue;
            };
            match key.as_str() {
                "admin" => admin = self.item::<RawAdmin>("admin", value),
                "shutdown_grace" => grace = self.item::<String>("shutdown_grace", value),
                "listeners" => listeners = self.items("listeners", value),
                "pools" => pools_raw = Some(value),
                "state_file" => self.err("state_file", format!("`state_file` {LATER}")),
                other => self.err(
                    other,
                    format!(
                        "unknown field `{other}`, expected one of `admin`, `state_file`, \
                         `shutdown_grace`, `listeners`, `pools`"
                    ),
                ),
            }
        }
        let admin = self.admin(admin.unwrap_or_default());
        let shutdown_grace = self.duration("shutdown_grace", grace.as_deref(), d::SHUTDOWN_GRACE);
        // Names of pools are known even when a pool has other mistakes, so routes to it don't
        // report a second, misleading "unknown pool".
        let mut pool_names: HashSet<String> = match &pools_raw {
            Some(Value::Sequence(seq)) => seq
                .iter()
                .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
                .collect(),
            _ => HashSet::new(),
        };
        let pools: Vec<(usize, RawPool)> = match pools_raw {
            Some(v) => self.items("pools", v),
            None => Vec::new(),
        };
        let pools: Vec<PoolConfig> = pools
            .into_iter()
            .filter_map(|(i, raw)| self.pool(&format!("pools[{i}]"), raw))
            .collect();
        self.unique(pools.iter().map(|p| p.name.as_str()), "pools", "pool");
        pool_names.extend(pools.iter().map(|p| p.name.clone()));
        let listeners: Vec<ListenerConfig> = listeners
            .into_iter()
            .filter_map(|(i, raw)| self.listener(&format!("listeners[{i}]"), raw, &pool_names))
            .collect();
        self.unique(listeners.iter().map(|l| l.name.as_str()), "listeners", "listener");
        // Port 0 means "any free port", so it never clashes.
        let mut seen = HashSet::new();
        seen.insert(admin.listen);
        for (i, l) in listeners.iter().enumerate() {
            if l.listen.port() != 0 && !seen.insert(l.listen) {
                self.err(
                    &format!("listeners[{i}].listen"),
                    format!("address {} is already used by another listener or the admin API", l.listen),
                );
            }
        }
        if listeners.is_empty() && self.errors.is_empty() {
            self.err("listeners", "at least one listener is required");
        }
        Some(Config {
            admin,
            shutdown_grace,
            listeners,
            pools,
        })
    }

    /// A sequence whose items are deserialized one by one, so each bad item is reported.
    fn items<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Vec<(usize, T)> {
        let Value::Sequence(seq) = value else {
            self.err(path, "expected a list");
            return Vec::new();
        };
        seq.into_iter()
            .enumerate()
            .filter_map(|(i, v)| self.item(&format!("{path}[{i}]"), v).map(|t| (i, t)))
            .collect()
    }

    fn unique<'a>(&mut self, names: impl Iterator<Item = &'a str>, path: &str, what: &str) {
        let mut seen = HashSet::new();
        let dups: Vec<String> = names.filter(|n| !seen.insert(*n)).map(str::to_string).collect();
        for name in dups {
            self.err(path, format!("{what} name {name:?} is used more than once"));
        }
    }

    fn admin(&mut self, raw: RawAdmin) -> AdminConfig {
        let text = raw.listen.as_deref().unwrap_or(d::ADMIN_LISTEN);
        let listen = self.socket_addr("admin.listen", text);
        if let Some(var) = &raw.token_env {
            if var.is_empty() {
                self.err("admin.token_env", "must name an environment variable");
            }
        }
        AdminConfig {
            listen: listen.unwrap_or_else(|| ([127, 0, 0, 1], 9901).into()),
            token_env: raw.token_env,
        }
    }

    fn socket_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(path, format!("invalid address {text:?}: expected IP:PORT, e.g. \"0.0.0.0:8080\""));
                None
            }
        }
    }

    fn name(&mut self, path: &str, name: &str, what: &str) {
        let ok = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            self.err(path, format!("invalid {what} name {name:?}: use letters, digits, '-', '_' or '.'"));
        }
    }

    fn listener(&mut self, path: &str, raw: RawListener, pools: &HashSet<String>) -> Option<ListenerConfig> {
        self.name(&format!("{path}.name"), &raw.name, "listener");
        let listen = self.socket_addr(&format!("{path}.listen"), &raw.listen);
        if raw.tls.is_some() {
            self.err(&format!("{path}.tls"), format!("`tls` {LATER}"));
        }
        if raw.proxy_protocol.is_some() {
            self.err(&format!("{path}.proxy_protocol"), format!("`proxy_protocol` {LATER}"));
        }
        let check_pool = |v: &mut Self, p: &str, pool: &str| {
            if !pools.contains(pool) {
                v.err(p, format!("unknown pool {pool:?}: no entry in `pools` has that name"));
            }
        };
        let kind = match raw.protocol.as_str() {
            "http" => {
                if raw.pool.is_some() {
                    self.err(&format!("{path}.pool"), "http listeners route with `routes:`, not `pool:`");
                }
                let routes: Vec<(usize, RawRoute)> = match raw.routes {
                    Some(items) => self.items(&format!("{path}.routes"), Value::Sequence(items)),
                    None => Vec::new(),
                };
                if routes.is_empty() {
                    self.err(&format!("{path}.routes"), "an http listener needs at least one route");
                }
                let mut out = Vec::new();
                for (i, r) in routes {
                    let rp = format!("{path}.routes[{i}]");
                    check_pool(self, &format!("{rp}.pool"), &r.pool);
                    if let Some(prefix) = &r.path_prefix {
                        if !prefix.starts_with('/') {
                            self.err(&format!("{rp}.path_prefix"), "must start with '/'");
                        }
                    }
                    if let Some(host) = &r.host {
                        if host.is_empty() || host.contains(['/', ' ']) {
                            self.err(&format!("{rp}.host"), format!("invalid host {host:?}"));
                        }
                    }
                    out.push(RouteConfig {
                        host: r.host.map(|h| h.to_ascii_lowercase()),
                        path_prefix: r.path_prefix.filter(|p| p != "/"),
                        pool: r.pool,
                    });
                }
                ListenerKind::Http { routes: out }
            }
            "tcp" => {
                if raw.routes.is_some() {
                    self.err(&format!("{path}.routes"), "tcp listeners take one `pool:`, not `routes:`");
                }
                match raw.pool {
                    Some(pool) => {
                        check_pool(self, &format!("{path}.pool"), &pool);
                        ListenerKind::Tcp { pool }
                    }
                    None => {
                        self.err(path, "a tcp listener needs `pool:`");
                        return None;
                    }
                }
            }
            other => {
                self.err(&format!("{path}.protocol"), format!("unknown protocol {other:?}: expected \"http\" or \"tcp\""));
                return None;
            }
        };
        let t = &raw.timeouts;
        let tp = format!("{path}.timeouts");
        let idle_default = match kind {
            ListenerKind::Http { .. } => d::HTTP_IDLE_TIMEOUT,
            ListenerKind::Tcp { .. } => d::TCP_IDLE_TIMEOUT,
        };
        let timeouts = Timeouts {
            connect: self.positive(&format!("{tp}.connect"), t.connect.as_deref(), d::CONNECT_TIMEOUT),
            idle: self.positive(&format!("{tp}.idle"), t.idle.as_deref(), idle_default),
            header_read: self.positive(&format!("{tp}.header_read"), t.header_read.as_deref(), d::HEADER_READ_TIMEOUT),
            response: self.positive(&format!("{tp}.response"), t.response.as_deref(), d::RESPONSE_TIMEOUT),
        };
        let max_connections = raw.max_connections.unwrap_or(d::MAX_CONNECTIONS);
        if max_connections == 0 {
            self.err(&format!("{path}.max_connections"), "must be at least 1");
        }
        Some(ListenerConfig {
            name: raw.name,
            listen: listen?,
            kind,
            max_connections,
            timeouts,
        })
    }

    fn pool(&mut self, path: &str, raw: RawPool) -> Option<PoolConfig> {
        self.name(&format!("{path}.name"), &raw.name, "pool");
        for (field, present) in [
            ("affinity", raw.affinity.is_some()),
            ("drain", raw.drain.is_some()),
            ("rebalance", raw.rebalance.is_some()),
            ("rollout", raw.rollout.is_some()),
        ] {
            if present {
                self.err(&format!("{path}.{field}"), format!("`{field}` {LATER}"));
            }
        }
        let balance = match raw.balance.as_deref() {
            None | Some("least_conn") => Balance::LeastConn,
            Some("round_robin") => Balance::RoundRobin,
            Some(other) => {
                self.err(&format!("{path}.balance"), format!("unknown balance {other:?}: expected \"least_conn\" or \"round_robin\""));
                Balance::LeastConn
            }
        };
        let node_count = raw.nodes.len();
        let raw_nodes: Vec<(usize, RawNode)> = self.items(&format!("{path}.nodes"), Value::Sequence(raw.nodes));
        if node_count == 0 {
            self.err(&format!("{path}.nodes"), "a pool needs at least one node");
        }
        if node_count > d::MAX_NODES_PER_POOL {
            self.err(&format!("{path}.nodes"), format!("at most {} nodes per pool", d::MAX_NODES_PER_POOL));
        }
        let mut nodes = Vec::new();
        for (i, n) in raw_nodes {
            let np = format!("{path}.nodes[{i}]");
            self.name(&format!("{np}.name"), &n.name, "node");
            let weight = n.weight.unwrap_or(d::WEIGHT);
            if !(1..=10_000).contains(&weight) {
                self.err(&format!("{np}.weight"), "must be between 1 and 10000");
            }
            if let Some(addr) = self.resolve(&format!("{np}.addr"), &n.addr) {
                nodes.push(NodeConfig { name: n.name, addr, weight });
            }
        }
        self.unique(nodes.iter().map(|n| n.name.as_str()), &format!("{path}.nodes"), "node");
        let hp = format!("{path}.health");
        let raw_health = raw.health.and_then(|v| self.item::<RawHealth>(&hp, v)).unwrap_or_default();
        let health = self.health(&hp, raw_health);
        let warmup = self.duration(&format!("{path}.warmup"), raw.warmup.as_deref(), d::WARMUP);
        Some(PoolConfig {
            name: raw.name,
            balance,
            nodes,
            health,
            warmup,
        })
    }

    /// Node addresses may be host names; they are resolved once, when the config is loaded.
    fn resolve(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(a);
        }
        if !text.contains(':') {
            self.err(path, format!("invalid address {text:?}: expected HOST:PORT"));
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
        let interval = self.positive(&format!("{path}.interval"), raw.interval.as_deref(), d::HEALTH_INTERVAL);
        let timeout = self.positive(
            &format!("{path}.timeout"),
            raw.timeout.as_deref(),
            d::HEALTH_TIMEOUT.min(interval),
        );
        if timeout > interval {
            self.err(&format!("{path}.timeout"), "must not be longer than `interval`");
        }
        let healthy_after = raw.healthy_after.unwrap_or(d::HEALTHY_AFTER);
        let unhealthy_after = raw.unhealthy_after.unwrap_or(d::UNHEALTHY_AFTER);
        for (field, value) in [("healthy_after", healthy_after), ("unhealthy_after", unhealthy_after)] {
            if value == 0 {
                self.err(&format!("{path}.{field}"), "must be at least 1");
            }
        }
        let check = match (raw.http, raw.tcp) {
            (Some(_), Some(_)) => {
                self.err(path, "choose one check: `http` or `tcp`, not both");
                CheckKind::Tcp
            }
            (None, _) => CheckKind::Tcp,
            (Some(h), None) => self.http_check(&format!("{path}.http"), h),
        };
        HealthConfig {
            interval,
            timeout,
            healthy_after,
            unhealthy_after,
            check,
        }
    }

    fn http_check(&mut self, path: &str, h: RawHttpCheck) -> CheckKind {
        let check_path = h.path.unwrap_or_else(|| d::HEALTH_PATH.to_string());
        if !check_path.starts_with('/') || check_path.parse::<http::Uri>().is_err() {
            self.err(&format!("{path}.path"), format!("invalid path {check_path:?}: must start with '/'"));
        }
        let expect_status = h.expect_status.unwrap_or(d::HEALTH_STATUS);
        if !(100..=599).contains(&expect_status) {
            self.err(&format!("{path}.expect_status"), "must be an HTTP status between 100 and 599");
        }
        let version = match (h.version_header, h.version_json) {
            (Some(_), Some(_)) => {
                self.err(path, "choose one of `version_header` and `version_json`, not both");
                None
            }
            (Some(name), None) => match HeaderName::try_from(name.as_str()) {
                Ok(n) => Some(VersionSource::Header(n)),
                Err(_) => {
                    self.err(&format!("{path}.version_header"), format!("invalid header name {name:?}"));
                    None
                }
            },
            (None, Some(field)) => {
                if field.is_empty() || field.split('.').any(str::is_empty) {
                    self.err(&format!("{path}.version_json"), format!("invalid JSON field path {field:?}"));
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listeners:
  - name: web
    listen: "127.0.0.1:8080"
    protocol: http
    routes:
      - { host: "API.example.com", path_prefix: "/v1", pool: api }
      - { pool: api }
pools:
  - name: api
    nodes:
      - { name: a, addr: "127.0.0.1:9001" }
      - { name: b, addr: "127.0.0.1:9002", weight: 50 }
    health:
      interval: 500ms
      http: { path: "/healthz", version_header: "X-Version" }
"#;

    #[test]
    fn accepts_a_good_file_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
        let pool = c.pool("api").unwrap();
        assert_eq!(pool.balance, Balance::LeastConn);
        assert_eq!(pool.nodes[1].weight, 50);
        assert_eq!(pool.health.timeout, Duration::from_millis(500));
        let ListenerKind::Http { routes } = &c.listeners[0].kind else { panic!() };
        assert_eq!(routes[0].host.as_deref(), Some("api.example.com"));
    }

    #[test]
    fn reports_every_mistake_with_position() {
        let bad = GOOD
            .replace("interval: 500ms", "interval: 5x")
            .replace("{ pool: api }", "{ pool: nope }")
            .replace("weight: 50", "weight: 50, colour: red");
        let errors = match parse(&bad) {
            Err(ConfigError::Invalid(e)) => e,
            other => panic!("expected errors, got {other:?}"),
        };
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"listeners[0].routes[1].pool"), "{errors:?}");
        assert!(paths.contains(&"pools[0].health.interval"), "{errors:?}");
        assert!(paths.contains(&"pools[0].nodes[1].colour"), "{errors:?}");
        let interval = errors.iter().find(|e| e.path.ends_with("interval")).unwrap();
        assert_eq!((interval.line, interval.col), (15, 7));
    }

    #[test]
    fn later_capabilities_are_refused_not_ignored() {
        let bad = GOOD.replace("    health:", "    affinity: { source_ip: true }\n    health:");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.contains("`affinity` is not supported yet"), "{err}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("listeners: [\n").unwrap_err();
        let e = &err.field_errors()[0];
        assert!(e.line >= 1 && e.reason.contains("YAML"), "{e:?}");
    }
}
