//! The routing snapshot: one immutable, consistent view of listeners, routes and pools,
//! published through a single `ArcSwap`. The data path loads it once per connection or
//! request; a reload builds a new one (carrying node state over by `pool/node`) and swaps it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::header_rules::HeaderRules;
use crate::config::{Config, ListenerConfig, ListenerKind};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::pool::affinity::Keys;
use crate::pool::{Node, Pool};
use crate::tickets::Ticketer;

pub struct Snapshot {
    pub config: Arc<Config>,
    /// Pools in config order.
    pub pools: Vec<Arc<Pool>>,
    /// Listeners by name. Looked up on every request: FNV hashes a short name in a few
    /// nanoseconds, where the default SipHash takes tens.
    pub listeners: HashMap<String, Arc<ListenerRoutes>, fnv::FnvBuildHasher>,
    /// Affinity keys, kept across reloads (changing them would re-pin every client).
    pub keys: Arc<Keys>,
    /// TLS session ticket keys, shared by every TLS listener and kept across reloads.
    pub tickets: Arc<Ticketer>,
}

/// What a listener does with a connection, resolved to pools.
pub struct ListenerRoutes {
    pub config: ListenerConfig,
    pub target: Target,
    /// TLS termination, built from this snapshot's certificates.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

pub enum Target {
    Http(Vec<Route>),
    Tcp(TcpTarget),
}

/// Where a tcp listener sends a connection.
pub struct TcpTarget {
    /// Connections that no SNI route takes (every one without `sni_routes`).
    pub default: Option<Arc<Pool>>,
    /// `(server name pattern, pool)`, in config order (exact names win over wildcards).
    pub sni: Vec<(String, Arc<Pool>)>,
}

impl TcpTarget {
    /// Whether connections are routed by their TLS server name (passed through).
    pub fn by_sni(&self) -> bool {
        !self.sni.is_empty()
    }

    /// The pool for a ClientHello naming `name` (none, or not TLS: the default).
    pub fn route(&self, name: Option<&str>) -> Option<&Arc<Pool>> {
        let Some(name) = name else {
            return self.default.as_ref();
        };
        let exact = self
            .sni
            .iter()
            .find(|(pattern, _)| pattern.eq_ignore_ascii_case(name));
        let wildcard = || {
            let (_, parent) = name.split_once('.')?;
            self.sni.iter().find(|(pattern, _)| {
                pattern
                    .strip_prefix("*.")
                    .is_some_and(|p| p.eq_ignore_ascii_case(parent))
            })
        };
        exact
            .or_else(wildcard)
            .map(|(_, pool)| pool)
            .or(self.default.as_ref())
    }
}

pub struct Route {
    /// Lower-case host without port; `None` matches any.
    pub host: Option<String>,
    /// Path prefix; `None` matches any.
    pub path_prefix: Option<String>,
    pub pool: Arc<Pool>,
    /// Header rules for the request and the node's response.
    pub request_headers: Option<Arc<HeaderRules>>,
    pub response_headers: Option<Arc<HeaderRules>>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config; nodes present in `previous` keep their state,
    /// and its affinity keys are kept (a first snapshot gets random ones).
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        events: &Arc<Events>,
    ) -> Snapshot {
        let keys = previous.map_or_else(|| Arc::new(Keys::random()), |p| Arc::clone(&p.keys));
        Snapshot::build_with_keys(config, previous, keys, metrics, events)
    }

    /// [`Snapshot::build`] with the affinity keys given (start-up: from a secret or the state
    /// file).
    pub fn build_with_keys(
        config: Config,
        previous: Option<&Snapshot>,
        keys: Arc<Keys>,
        metrics: &Metrics,
        events: &Arc<Events>,
    ) -> Snapshot {
        let tickets = previous.map_or_else(
            || Arc::new(Ticketer::new(crate::time::unix_ms())),
            |p| Arc::clone(&p.tickets),
        );
        tickets.set_rotation(ticket_rotation(&config));
        let old_nodes: HashMap<String, Arc<Node>> = previous
            .map(|s| {
                s.pools
                    .iter()
                    .flat_map(|p| p.nodes.iter())
                    .map(|n| (n.key(), Arc::clone(n)))
                    .collect()
            })
            .unwrap_or_default();
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| {
                let control = previous
                    .and_then(|s| s.pool(&p.name))
                    .map_or_else(Default::default, |old| Arc::clone(&old.control));
                Arc::new(Pool::build(p, &old_nodes, control, &keys, metrics, events))
            })
            .collect();
        let by_name: HashMap<&str, &Arc<Pool>> =
            pools.iter().map(|p| (p.name.as_str(), p)).collect();
        // Validation guarantees every referenced pool exists; a dangling one is skipped.
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let target = match &l.kind {
                    ListenerKind::Tcp { pool, sni_routes } => Target::Tcp(TcpTarget {
                        default: pool
                            .as_ref()
                            .and_then(|p| by_name.get(p.as_str()))
                            .map(|p| Arc::clone(p)),
                        sni: sni_routes
                            .iter()
                            .filter_map(|r| {
                                Some((r.sni.clone(), Arc::clone(by_name.get(r.pool.as_str())?)))
                            })
                            .collect(),
                    }),
                    ListenerKind::Http { routes } => Target::Http(
                        routes
                            .iter()
                            .filter_map(|r| {
                                Some(Route {
                                    host: r.host.clone(),
                                    path_prefix: r.path_prefix.clone(),
                                    pool: Arc::clone(by_name.get(r.pool.as_str())?),
                                    request_headers: r.request_headers.clone(),
                                    response_headers: r.response_headers.clone(),
                                })
                            })
                            .collect(),
                    ),
                };
                let alpn = matches!(l.kind, ListenerKind::Http { .. });
                let tls = l.tls.as_ref().and_then(|t| match crate::listener_tls::acceptor(t, alpn, &tickets) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        // Certificates were validated when the config was loaded.
                        tracing::error!(listener = %l.name, error = %e, "building the TLS config failed");
                        None
                    }
                });
                let routes = ListenerRoutes { config: l.clone(), target, tls };
                (l.name.clone(), Arc::new(routes))
            })
            .collect();
        Snapshot {
            config: Arc::new(config),
            pools,
            listeners,
            keys,
            tickets,
        }
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }
}

impl ListenerRoutes {
    /// First route whose host and path prefix match. `host` may carry a port; it is ignored.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Pool>> {
        self.route_to(host, path).map(|r| &r.pool)
    }

    /// The first route matching `host` and `path`, with its header rules.
    pub fn route_to(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let Target::Http(routes) = &self.target else {
            return None;
        };
        // The port is stripped only for a route that names a host (most name none).
        routes.iter().find(|r| {
            r.host.as_deref().is_none_or(|want| {
                host.map(strip_port)
                    .is_some_and(|h| h.eq_ignore_ascii_case(want))
            }) && r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
        })
    }
}

/// How often the ticket keys rotate: the shortest `session_tickets.rotate` of the TLS
/// listeners (the keys are the process's, shared by all of them).
pub fn ticket_rotation(config: &Config) -> std::time::Duration {
    config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|t| t.ticket_rotation))
        .min()
        .unwrap_or(crate::config::defaults::TICKET_ROTATION)
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let config = crate::config::parse(
            r#"
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    routes:
      - { host: "api.example.com", path_prefix: "/v2", pool: b }
      - { host: "api.example.com", pool: a }
      - { path_prefix: "/static", pool: b }
      - { pool: a }
pools:
  - { name: a, nodes: [ { name: n1, addr: "127.0.0.1:1" } ] }
  - { name: b, nodes: [ { name: n1, addr: "127.0.0.1:2" } ] }
"#,
        )
        .expect("valid config");
        Snapshot::build(config, None, &Metrics::new(), &Default::default())
    }

    #[test]
    fn first_match_wins() {
        let s = snapshot();
        let l = &s.listeners["web"];
        let pick = |host, path| l.route(host, path).map(|p| p.name.clone());
        assert_eq!(
            pick(Some("api.example.com:8080"), "/v2/x").as_deref(),
            Some("b")
        );
        assert_eq!(pick(Some("API.example.com"), "/v1"), Some("a".into()));
        assert_eq!(pick(Some("other"), "/static/app.js"), Some("b".into()));
        assert_eq!(pick(None, "/"), Some("a".into()));
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn reload_keeps_node_state_by_identity() {
        let first = snapshot();
        let a = &first.pools[0].nodes[0];
        a.state.set_admin(crate::pool::AdminState::Drained);
        let config = (*first.config).clone();
        let second = Snapshot::build(config, Some(&first), &Metrics::new(), &Default::default());
        assert!(Arc::ptr_eq(&second.pools[0].nodes[0].state, &a.state));
        assert_eq!(
            second.pools[0].nodes[0].state.admin(),
            crate::pool::AdminState::Drained
        );
    }
}
