//! Validation of `listeners:` entries: protocol, routes or pool, timeouts, limits.

use std::collections::HashSet;
use std::sync::Arc;

use serde_yaml::Value;

use super::Validator;
use crate::config::defaults as d;
use crate::config::file::{RawListener, RawRoute, RawSniRoute};
use crate::config::header_rules::{self, HeaderRules, RawHeaderRules, Template};
use crate::config::limits;
use crate::config::ProxyProtocol as ProxyVersion;
use crate::config::{ListenerConfig, ListenerKind, RouteConfig, SniRouteConfig, Timeouts};

impl Validator {
    pub(super) fn listener(
        &mut self,
        path: &str,
        raw: RawListener,
        pools: &HashSet<String>,
    ) -> Option<ListenerConfig> {
        self.name(&format!("{path}.name"), &raw.name, "listener");
        let listen = self.socket_addr(&format!("{path}.listen"), &raw.listen);
        let check_pool = |v: &mut Self, p: &str, pool: &str| {
            if !pools.contains(pool) {
                v.err(
                    p,
                    format!("unknown pool {pool:?}: no entry in `pools` has that name"),
                );
            }
        };
        let kind = match raw.protocol.as_str() {
            "http" => {
                if raw.pool.is_some() {
                    self.err(
                        &format!("{path}.pool"),
                        "http listeners route with `routes:`, not `pool:`",
                    );
                }
                let routes: Vec<(usize, RawRoute)> = match raw.routes {
                    Some(items) => self.items(&format!("{path}.routes"), Value::Sequence(items)),
                    None => Vec::new(),
                };
                if routes.is_empty() {
                    self.err(
                        &format!("{path}.routes"),
                        "an http listener needs at least one route",
                    );
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
                    let request_headers = r
                        .request_headers
                        .map(|raw| self.header_rules(&format!("{rp}.request_headers"), raw, true));
                    let response_headers = r.response_headers.map(|raw| {
                        self.header_rules(&format!("{rp}.response_headers"), raw, false)
                    });
                    out.push(RouteConfig {
                        host: r.host.map(|h| h.to_ascii_lowercase()),
                        path_prefix: r.path_prefix.filter(|p| p != "/"),
                        pool: r.pool,
                        request_headers: request_headers.map(Arc::new),
                        response_headers: response_headers.map(Arc::new),
                    });
                }
                ListenerKind::Http { routes: out }
            }
            "tcp" => {
                if raw.routes.is_some() {
                    self.err(
                        &format!("{path}.routes"),
                        "tcp listeners take one `pool:`, not `routes:`",
                    );
                }
                if let Some(pool) = &raw.pool {
                    check_pool(self, &format!("{path}.pool"), pool);
                }
                let sp = format!("{path}.sni_routes");
                let routes: Vec<(usize, RawSniRoute)> = match raw.sni_routes {
                    Some(items) => self.items(&sp, Value::Sequence(items)),
                    None => Vec::new(),
                };
                let mut sni_routes = Vec::new();
                for (i, r) in routes {
                    let rp = format!("{sp}[{i}]");
                    check_pool(self, &format!("{rp}.pool"), &r.pool);
                    let sni = r.sni.to_ascii_lowercase();
                    if !sni_pattern(&sni) {
                        self.err(
                            &format!("{rp}.sni"),
                            format!(
                                "invalid server name {:?}: expected a DNS name such as \"a.example.com\" or \"*.example.com\"",
                                r.sni
                            ),
                        );
                    }
                    sni_routes.push(SniRouteConfig { sni, pool: r.pool });
                }
                if raw.pool.is_none() && sni_routes.is_empty() {
                    self.err(path, "a tcp listener needs `pool:` (or `sni_routes:`)");
                    return None;
                }
                ListenerKind::Tcp {
                    pool: raw.pool,
                    sni_routes,
                }
            }
            other => {
                self.err(
                    &format!("{path}.protocol"),
                    format!("unknown protocol {other:?}: expected \"http\" or \"tcp\""),
                );
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
            connect: self.duration(
                &format!("{tp}.connect"),
                t.connect.as_deref(),
                d::CONNECT_TIMEOUT,
                limits::LISTENER_TIMEOUT,
            ),
            idle: self.duration(
                &format!("{tp}.idle"),
                t.idle.as_deref(),
                idle_default,
                limits::IDLE_TIMEOUT,
            ),
            header_read: self.duration(
                &format!("{tp}.header_read"),
                t.header_read.as_deref(),
                d::HEADER_READ_TIMEOUT,
                limits::LISTENER_TIMEOUT,
            ),
            response: self.duration(
                &format!("{tp}.response"),
                t.response.as_deref(),
                d::RESPONSE_TIMEOUT,
                limits::LISTENER_TIMEOUT,
            ),
            send: self.duration(
                &format!("{tp}.send"),
                t.send.as_deref(),
                d::SEND_TIMEOUT,
                limits::LISTENER_TIMEOUT,
            ),
        };
        let max_connections = self.number(
            &format!("{path}.max_connections"),
            raw.max_connections.unwrap_or(d::MAX_CONNECTIONS),
            limits::MAX_CONNECTIONS,
        );
        let max_connections_per_client = raw.max_connections_per_client.map(|n| {
            self.number(
                &format!("{path}.max_connections_per_client"),
                n,
                (1, max_connections),
            )
        });
        let request_buffer = self.number(
            &format!("{path}.request_buffer"),
            raw.request_buffer.unwrap_or(d::REQUEST_BUFFER),
            limits::REQUEST_BUFFER,
        );
        let proxy_protocol = match raw.proxy_protocol.as_deref() {
            None | Some("none") => None,
            Some("v1") => Some(ProxyVersion::V1),
            Some("v2") => Some(ProxyVersion::V2),
            Some(other) => {
                self.err(
                    &format!("{path}.proxy_protocol"),
                    format!(
                        "unknown proxy_protocol {other:?}: expected \"none\", \"v1\" or \"v2\""
                    ),
                );
                None
            }
        };
        let tls = match (&kind, raw.tls) {
            (ListenerKind::Tcp { sni_routes, .. }, Some(_)) if !sni_routes.is_empty() => {
                self.err(
                    &format!("{path}.tls"),
                    "choose `tls` (terminate TLS here) or `sni_routes` (pass TLS through by server name), not both",
                );
                None
            }
            (_, Some(v)) => self.tls(&format!("{path}.tls"), v),
            (_, None) => None,
        };
        if proxy_protocol.is_some() && matches!(kind, ListenerKind::Http { .. }) {
            self.err(
                &format!("{path}.proxy_protocol"),
                "proxy_protocol applies to tcp listeners only",
            );
        }
        Some(ListenerConfig {
            name: raw.name,
            listen: listen?,
            kind,
            max_connections,
            max_connections_per_client,
            request_buffer,
            timeouts,
            proxy_protocol,
            tls,
        })
    }
}

/// A DNS name, or `*.` followed by one: labels of letters, digits and `-`.
fn sni_pattern(sni: &str) -> bool {
    let name = sni.strip_prefix("*.").unwrap_or(sni);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl Validator {
    /// A route's header rules, every mistake reported with its path. `request`: the rules
    /// rewrite the request, whose node is not chosen yet when its head is written.
    fn header_rules(&mut self, path: &str, raw: RawHeaderRules, request: bool) -> HeaderRules {
        let mut rules = HeaderRules::default();
        let name_ok = |v: &mut Validator, at: &str, name: &str| {
            if !header_rules::is_token(name) {
                v.err(at, format!("{name:?} is not a header name"));
                false
            } else if header_rules::FORBIDDEN
                .iter()
                .any(|f| f.eq_ignore_ascii_case(name))
            {
                v.err(
                    at,
                    format!("{name:?} is a hop-by-hop or framing header: handoff writes it per hop, no rule may change it"),
                );
                false
            } else {
                true
            }
        };
        for (i, name) in raw.remove.iter().enumerate() {
            if name_ok(self, &format!("{path}.remove[{i}]"), name) {
                rules.remove.push(name.to_ascii_lowercase());
            }
        }
        for (kind, map) in [("set", raw.set), ("add", raw.add)] {
            for (name, value) in map {
                let at = format!("{path}.{kind}.{name}");
                if !name_ok(self, &at, &name) {
                    continue;
                }
                match Template::parse(&value) {
                    Ok(t) if request && t.vars().any(header_rules::Var::of_node) => self.err(
                        &at,
                        "${node} and ${node_version} are for response_headers: a request's head is written before its node is chosen",
                    ),
                    Ok(t) if kind == "set" => rules.set.push((name, t)),
                    Ok(t) => rules.add.push((name, t)),
                    Err(why) => self.err(&at, why),
                }
            }
        }
        rules
    }
}
