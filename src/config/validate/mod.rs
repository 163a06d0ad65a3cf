//! The one place raw YAML becomes a [`Config`]: every mistake is collected with its field
//! path and line:column, so an operator fixes a file in one round, not one error at a time.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

mod cluster;
mod listener;
mod pool;
mod rollout;
#[cfg(test)]
mod tests;
mod tls;
mod upstream;

use super::defaults as d;
use super::file::*;
use super::limits;
use super::position::Positions;
use super::*;

pub(super) fn validate(text: &str, base: &Path) -> Result<Config, Vec<FieldError>> {
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
        base: base.to_path_buf(),
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
    /// Directory relative file paths (certificates) are resolved against.
    base: PathBuf,
}

/// Headers a request ID cannot be carried in besides the hop-by-hop and framing ones
/// ([`super::header_rules::FORBIDDEN`]): those handoff writes or reads itself.
const RESERVED_HEADERS: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "set-cookie",
    "cookie",
];

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

    /// A duration field: parsed, and checked against its documented range.
    fn duration(
        &mut self,
        path: &str,
        text: Option<&str>,
        default: Duration,
        range: limits::Range,
    ) -> Duration {
        match text {
            None => default,
            Some(t) => range.parse(t).unwrap_or_else(|reason| {
                self.err(path, reason);
                default
            }),
        }
    }

    /// A number field checked against its documented range.
    fn number<T: PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        path: &str,
        value: T,
        range: (T, T),
    ) -> T {
        limits::number(value, range).unwrap_or_else(|reason| {
            self.err(path, reason);
            range.0
        })
    }

    fn top(&mut self, root: Value) -> Option<Config> {
        let map = match root {
            Value::Mapping(m) => m,
            Value::Null => {
                self.err(
                    "",
                    "the config is empty: expected `listeners:` and `pools:`",
                );
                return None;
            }
            _ => {
                self.err(
                    "",
                    "expected a mapping with `listeners:` and `pools:` at the top",
                );
                return None;
            }
        };
        let (mut admin, mut grace, mut listeners, mut pools_raw) = (None, None, Vec::new(), None);
        let mut state_file = None;
        let mut affinity_key_env = None;
        let mut upgrade = None;
        let mut cluster = None;
        let mut resolve_interval = None;
        let mut request_id = None;
        let mut access_log = None;
        for (key, value) in map {
            let Some(key) = key.as_str().map(str::to_string) else {
                self.err("", format!("top-level keys must be strings, found {key:?}"));
                continue;
            };
            match key.as_str() {
                "admin" => admin = self.item::<RawAdmin>("admin", value),
                "upgrade" => upgrade = self.item::<RawUpgrade>("upgrade", value),
                "cluster" => cluster = self.item::<RawCluster>("cluster", value),
                "request_id" => request_id = self.item::<RawRequestId>("request_id", value),
                "access_log" => access_log = self.item::<RawAccessLog>("access_log", value),
                "shutdown_grace" => grace = self.item::<String>("shutdown_grace", value),
                "resolve_interval" => {
                    resolve_interval = self.item::<String>("resolve_interval", value)
                }
                "listeners" => listeners = self.items("listeners", value),
                "pools" => pools_raw = Some(value),
                "state_file" => state_file = self.item::<String>("state_file", value),
                "affinity_key_env" => {
                    affinity_key_env = self.item::<String>("affinity_key_env", value)
                }
                other => self.err(
                    other,
                    format!(
                        "unknown field `{other}`, expected one of `admin`, `state_file`, \
                         `affinity_key_env`, `shutdown_grace`, `resolve_interval`, `upgrade`, `cluster`, \
                         `request_id`, `access_log`, `listeners`, `pools`"
                    ),
                ),
            }
        }
        let admin = self.admin(admin.unwrap_or_default());
        let shutdown_grace = self.duration(
            "shutdown_grace",
            grace.as_deref(),
            d::SHUTDOWN_GRACE,
            limits::SHUTDOWN_GRACE,
        );
        let resolve_interval = self.duration(
            "resolve_interval",
            resolve_interval.as_deref(),
            d::RESOLVE_INTERVAL,
            limits::DISCOVERY_INTERVAL,
        );
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
        self.unique(
            listeners.iter().map(|l| l.name.as_str()),
            "listeners",
            "listener",
        );
        // Port 0 means "any free port", so it never clashes.
        let mut seen = HashSet::new();
        seen.insert(admin.listen);
        for (i, l) in listeners.iter().enumerate() {
            if l.listen.port() != 0 && !seen.insert(l.listen) {
                self.err(
                    &format!("listeners[{i}].listen"),
                    format!(
                        "address {} is already used by another listener or the admin API",
                        l.listen
                    ),
                );
            }
        }
        if listeners.is_empty() && self.errors.is_empty() {
            self.err("listeners", "at least one listener is required");
        }
        if state_file.as_deref() == Some("") {
            self.err("state_file", "must be a file path");
        }
        let upgrade = self.upgrade(upgrade.unwrap_or_default());
        let request_id = request_id.map(|raw| self.request_id(raw));
        let access_log = access_log.and_then(|raw| self.access_log(raw));
        let cluster = cluster.map(|raw| self.cluster(raw, admin.listen));
        if affinity_key_env.as_deref() == Some("") {
            self.err("affinity_key_env", "must name an environment variable");
        }
        Some(Config {
            admin,
            // Relative to the config file's directory, like certificate paths.
            state_file: state_file
                .filter(|p| !p.is_empty())
                .map(|p| self.base.join(p)),
            affinity_key_env,
            shutdown_grace,
            resolve_interval,
            listeners,
            pools,
            upgrade,
            cluster,
            request_id,
            access_log,
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
        let dups: Vec<String> = names
            .filter(|n| !seen.insert(*n))
            .map(str::to_string)
            .collect();
        for name in dups {
            self.err(path, format!("{what} name {name:?} is used more than once"));
        }
    }

    fn upgrade(&mut self, raw: RawUpgrade) -> UpgradeConfig {
        let socket = raw.socket.as_deref().unwrap_or(d::UPGRADE_SOCKET);
        if socket.is_empty() {
            self.err("upgrade.socket", "must be a file path");
        }
        UpgradeConfig {
            socket: self.base.join(socket),
            timeout: self.duration(
                "upgrade.timeout",
                raw.timeout.as_deref(),
                d::UPGRADE_TIMEOUT,
                limits::UPGRADE_TIMEOUT,
            ),
        }
    }

    fn access_log(&mut self, raw: RawAccessLog) -> Option<AccessLogConfig> {
        let format = match raw.format.as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                self.err(
                    "access_log.format",
                    format!("unknown format {other:?}, expected `json` or `text`"),
                );
                LogFormat::Json
            }
        };
        let target = match raw.path.as_deref() {
            None | Some("") => {
                self.err("access_log.path", "must be a file path or `stdout`");
                return None;
            }
            Some("stdout") => LogTarget::Stdout,
            Some(path) => LogTarget::File(self.base.join(path)),
        };
        Some(AccessLogConfig { target, format })
    }

    fn request_id(&mut self, raw: RawRequestId) -> RequestIdConfig {
        let header = raw
            .header
            .unwrap_or_else(|| d::REQUEST_ID_HEADER.to_string());
        let token = !header.is_empty()
            && header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            self.err(
                "request_id.header",
                format!("{header:?} is not a header name (letters, digits, `-`, ...)"),
            );
        } else if super::header_rules::FORBIDDEN
            .iter()
            .chain(RESERVED_HEADERS)
            .any(|r| r.eq_ignore_ascii_case(&header))
        {
            self.err(
                "request_id.header",
                format!("{header:?} is a header handoff itself writes or the framing depends on"),
            );
        }
        RequestIdConfig {
            header: header.into(),
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
                self.err(
                    path,
                    format!("invalid address {text:?}: expected IP:PORT, e.g. \"0.0.0.0:8080\""),
                );
                None
            }
        }
    }

    fn name(&mut self, path: &str, name: &str, what: &str) {
        if !valid_name(name) {
            self.err(
                path,
                format!("invalid {what} name {name:?}: use letters, digits, '-', '_' or '.', at most 64 bytes"),
            );
        }
    }
}

/// The rule for pool, node and listener names (the admin API's added nodes too): letters,
/// digits, `-`, `_` and `.`, at most 64 bytes; they appear in URLs, metrics labels and keys.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
