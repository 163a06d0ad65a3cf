//! What a config asks of the listening sockets, given the ones there are: a plan computed
//! from the old and the new config first, then applied, so that nothing changes unless
//! every new socket could be bound. Start, reload and takeover all follow one:
//!
//! - start: no socket yet, so every listener is bound;
//! - reload: a listener of the same name on the same address keeps its socket (and its
//!   connections); a new or moved one is bound; one gone or moved stops accepting (its
//!   connections go on);
//! - takeover: the old process hands over the sockets the new config keeps (same name,
//!   same address), and the new process binds the rest.
//!
//! Node state is not part of it: the snapshot carries it over by `pool/node`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::{bind_one, StartError};
use crate::config::Config;

/// The listeners' part of a start, reload or takeover.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Listeners whose socket carries on (same name, same address).
    pub keep: Vec<String>,
    /// Listeners to bind: new, or moved to another address.
    pub bind: Vec<(String, SocketAddr)>,
    /// Listeners that stop accepting: gone from the config, or moved.
    pub stop: Vec<String>,
    /// Settings that changed but take effect at the next restart.
    pub later: Vec<&'static str>,
}

impl Plan {
    /// The plan from the sockets there are (`have`: listener name → its configured address)
    /// and the config running now (`old`, none at start) to `new`.
    pub fn new(have: &BTreeMap<String, SocketAddr>, old: Option<&Config>, new: &Config) -> Plan {
        let wanted: Vec<(String, SocketAddr)> = new
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.listen))
            .collect();
        let mut plan = Plan::for_listeners(have, &wanted);
        if let Some(old) = old {
            if old.affinity_key_env != new.affinity_key_env {
                plan.later.push("affinity_key_env");
            }
            if old.state_file != new.state_file {
                plan.later.push("state_file");
            }
            if old.admin.listen != new.admin.listen {
                plan.later.push("admin.listen");
            }
        }
        plan
    }

    /// The listeners' plan alone, from `have` to `wanted` (name → address): what the old
    /// process of a takeover reads off the new one's hello.
    pub fn for_listeners(
        have: &BTreeMap<String, SocketAddr>,
        wanted: &[(String, SocketAddr)],
    ) -> Plan {
        let mut plan = Plan::default();
        for (name, addr) in wanted {
            match have.get(name) {
                Some(had) if had == addr => plan.keep.push(name.clone()),
                _ => plan.bind.push((name.clone(), *addr)),
            }
        }
        plan.stop = have
            .keys()
            .filter(|name| !plan.keep.contains(name))
            .cloned()
            .collect();
        plan
    }

    /// Binds every socket the plan needs, all or none: the first failure is the error.
    pub async fn bind(&self) -> Result<HashMap<String, TcpListener>, StartError> {
        let mut bound = HashMap::new();
        for (name, addr) in &self.bind {
            bound.insert(name.clone(), bind_one(name, *addr).await?);
        }
        Ok(bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listeners: &[(&str, u16)], state_file: Option<&str>) -> Config {
        let mut yaml = String::from(
            "pools:\n- name: p\n  nodes:\n  - {name: a, addr: \"127.0.0.1:9\"}\n  health: {tcp: {}}\nlisteners:\n",
        );
        for (name, port) in listeners {
            yaml.push_str(&format!(
                "- {{name: {name}, listen: \"127.0.0.1:{port}\", protocol: tcp, pool: p}}\n"
            ));
        }
        if let Some(path) = state_file {
            yaml.push_str(&format!("state_file: {path}\n"));
        }
        crate::config::parse(&yaml).expect("a valid test config")
    }

    fn have(c: &Config) -> BTreeMap<String, SocketAddr> {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.listen))
            .collect()
    }

    #[test]
    fn a_start_binds_every_listener() {
        let new = config(&[("x", 1001), ("y", 1002)], None);
        let plan = Plan::new(&BTreeMap::new(), None, &new);
        assert!(plan.keep.is_empty() && plan.stop.is_empty() && plan.later.is_empty());
        assert_eq!(plan.bind.len(), 2);
    }

    #[test]
    fn a_reload_keeps_same_addresses_binds_new_and_moved_and_stops_gone_and_moved() {
        let old = config(&[("same", 1001), ("moved", 1002), ("gone", 1003)], None);
        let new = config(
            &[("same", 1001), ("moved", 2002), ("new", 1004)],
            Some("/tmp/s"),
        );
        let plan = Plan::new(&have(&old), Some(&old), &new);
        assert_eq!(plan.keep, ["same"]);
        let bind: Vec<&str> = plan.bind.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(bind, ["moved", "new"]);
        assert_eq!(plan.stop, ["gone", "moved"]);
        assert_eq!(plan.later, ["state_file"]);
    }

    #[test]
    fn an_unchanged_config_changes_nothing() {
        let c = config(&[("x", 1001)], None);
        let plan = Plan::new(&have(&c), Some(&c), &c);
        assert_eq!(plan.keep, ["x"]);
        assert!(plan.bind.is_empty() && plan.stop.is_empty() && plan.later.is_empty());
    }
}
