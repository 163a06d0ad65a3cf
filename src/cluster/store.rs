//! What the cluster keeps in etcd, under `cluster.prefix`, and the JSON of each value:
//!
//! | key | value | lease |
//! |---|---|---|
//! | `{prefix}/nodes/{pool}/{node}` | [`NodeOp`]: the last drain or enable of the node | — |
//! | `{prefix}/rollouts/{id}` | a rollout record (as the API shows it) | — |
//! | `{prefix}/aborts/{id}` | who asked to abort rollout `id` | — |
//! | `{prefix}/offers/{id}/{node}` | a replacement `{name, addr}` an operator offered for `node` | — |
//! | `{prefix}/affinity_key` | the shared affinity key, hex | — |
//! | `{prefix}/tls_tickets` | [`crate::tickets::KeySet`]: the TLS session ticket keys | — |
//! | `{prefix}/members/{instance}` | [`Member`]: revision applied, sessions, health | the instance's |
//! | `{prefix}/drivers/{id}` | the instance that drives rollout `id` (its election) | the driver's |
//! | `{prefix}/views/{instance}` | [`View`]: admin state and health of every node, as it sees them | the instance's |
//! | `{prefix}/pool_nodes/{pool}` | [`crate::members::PoolChanges`]: nodes added, changed and removed at runtime | — |
//! | `{prefix}/fences/{instance}` | the id of the instance's last admin write (see [`super::commit`]) | — |
//!
//! Values from etcd are peers' messages: they are parsed strictly, and one that does not
//! parse is logged with its key and ignored, never applied in part.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{duration, limits};
use crate::pool::SessionCounts;

/// The keys of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// `pool/node`.
    Node(&'a str),
    Rollout(&'a str),
    Abort(&'a str),
    /// An operator's replacement for node `old` of rollout `id` (`POST .../nodes` with
    /// `"replaces"` on any instance), for its driver.
    Offer(&'a str, &'a str),
    AffinityKey,
    /// The TLS session ticket keys every instance uses.
    TlsTickets,
    Member(&'a str),
    /// The driver of rollout `id`.
    Driver(&'a str),
    View(&'a str),
    Fence(&'a str),
    /// A pool's runtime member changes.
    PoolNodes(&'a str),
    Other,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// Everything of this cluster (with a trailing `/`, so `/a` never matches `/ab/...`).
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// `pool/node`'s admin operation.
    pub fn node(&self, node_key: &str) -> String {
        format!("{}/nodes/{node_key}", self.prefix)
    }

    pub fn rollout(&self, id: &str) -> String {
        format!("{}/rollouts/{id}", self.prefix)
    }

    pub fn abort(&self, id: &str) -> String {
        format!("{}/aborts/{id}", self.prefix)
    }

    /// The replacement offered for node `old` of rollout `id`.
    pub fn offer(&self, id: &str, old: &str) -> String {
        format!("{}/offers/{id}/{old}", self.prefix)
    }

    pub fn tls_tickets(&self) -> String {
        format!("{}/tls_tickets", self.prefix)
    }

    pub fn affinity_key(&self) -> String {
        format!("{}/affinity_key", self.prefix)
    }

    pub fn member(&self, instance: &str) -> String {
        format!("{}/members/{instance}", self.prefix)
    }

    /// Rollout `id`'s driver election key.
    pub fn driver(&self, id: &str) -> String {
        format!("{}/drivers/{id}", self.prefix)
    }

    /// What `instance` sees of the nodes (the cluster-wide pair guard reads every one).
    pub fn view(&self, instance: &str) -> String {
        format!("{}/views/{instance}", self.prefix)
    }

    /// Every instance's view (a prefix).
    pub fn views(&self) -> String {
        format!("{}/views/", self.prefix)
    }

    /// Every live member (a prefix).
    pub fn members(&self) -> String {
        format!("{}/members/", self.prefix)
    }

    /// `pool`'s runtime member changes.
    pub fn pool_nodes(&self, pool: &str) -> String {
        format!("{}/pool_nodes/{pool}", self.prefix)
    }

    /// `instance`'s write fence: every admin write of the instance moves it, so a write
    /// whose outcome is unknown can be told apart, and cancelled, later.
    pub fn fence(&self, instance: &str) -> String {
        format!("{}/fences/{instance}", self.prefix)
    }

    /// Classifies a key read from etcd.
    pub fn parse<'a>(&self, key: &'a [u8]) -> Key<'a> {
        let Ok(key) = std::str::from_utf8(key) else {
            return Key::Other;
        };
        let Some(rest) = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Key::Other;
        };
        if let Some(node) = rest.strip_prefix("nodes/") {
            return if node.split('/').count() == 2 {
                Key::Node(node)
            } else {
                Key::Other
            };
        }
        if let Some(id) = rest.strip_prefix("rollouts/") {
            return Key::Rollout(id);
        }
        if let Some(id) = rest.strip_prefix("aborts/") {
            return Key::Abort(id);
        }
        if let Some((id, old)) = rest.strip_prefix("offers/").and_then(|r| r.split_once('/')) {
            return Key::Offer(id, old);
        }
        if let Some(name) = rest.strip_prefix("members/") {
            return Key::Member(name);
        }
        if let Some(id) = rest.strip_prefix("drivers/") {
            return Key::Driver(id);
        }
        if let Some(name) = rest.strip_prefix("views/") {
            return Key::View(name);
        }
        if let Some(name) = rest.strip_prefix("fences/") {
            return Key::Fence(name);
        }
        if let Some(pool) = rest.strip_prefix("pool_nodes/") {
            return Key::PoolNodes(pool);
        }
        match rest {
            "affinity_key" => Key::AffinityKey,
            "tls_tickets" => Key::TlsTickets,
            _ => Key::Other,
        }
    }
}

/// The last operator (or rollout) action on a node, which every instance applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeOp {
    /// No new sessions; the rest are closed at `deadline_ms` (unix ms, the same on every
    /// instance).
    Drain {
        deadline_ms: u64,
        at_ms: u64,
        by: String,
    },
    /// Readmit with this warmup once the node is up (on each instance, by its own checks).
    Enable {
        #[serde(with = "duration::text")]
        warmup: Duration,
        at_ms: u64,
        by: String,
    },
}

impl NodeOp {
    /// Checks the values against the ranges the admin API enforces: a peer's message is
    /// input like any other.
    pub fn check(&self) -> Result<(), String> {
        match self {
            NodeOp::Drain {
                deadline_ms, at_ms, ..
            } => {
                let timeout = Duration::from_millis(deadline_ms.saturating_sub(*at_ms));
                limits::DRAIN_TIMEOUT.check(timeout).map(drop)
            }
            NodeOp::Enable { warmup, .. } => limits::WARMUP.check(*warmup).map(drop),
        }
    }
}

/// Whether a rollout record says it is running: all the cluster reads of a rollout (whether
/// it needs a driver); the rest is the rollout module's.
pub fn running(record: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct State<'a> {
        state: &'a str,
    }
    serde_json::from_slice::<State>(record).is_ok_and(|r| r.state == "running")
}

/// One instance's report, under its lease: what it has applied and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub instance: String,
    /// The admin API's address.
    pub admin: String,
    /// RFC 3339: when the instance joined.
    pub since: String,
    /// The etcd revision of the shared state it has applied (like an xDS ACK).
    pub revision: i64,
    /// `pool/node` → what this instance sees of the node.
    pub nodes: BTreeMap<String, MemberNode>,
}

/// One node as one instance sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberNode {
    /// Admin state on this instance (`drained` is per instance: its own sessions ended).
    pub state: String,
    /// Health by this instance's own checks.
    pub health: String,
    pub version: Option<String>,
    pub sessions: SessionCounts,
}

/// What one instance sees of every node, under its lease: admin state and health only, so
/// it changes when one of them flips (rarely), never with session counts. A drain's
/// transaction is conditioned on every view being the one its pair guard read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// `pool/node` → what this instance sees of it.
    pub nodes: BTreeMap<String, ViewNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewNode {
    /// Admin state on that instance (`active`, `warming`, `draining`, `drained`).
    pub state: String,
    /// Health by that instance's own checks (`up`, `down`, `unknown`).
    pub health: String,
}

impl ViewNode {
    /// Whether the instance sends new sessions to the node.
    pub fn serving(&self) -> bool {
        matches!(self.state.as_str(), "active" | "warming") && self.health == "up"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        let k = Keys::new("/handoff/prod");
        assert_eq!(k.parse(k.node("web/a").as_bytes()), Key::Node("web/a"));
        assert_eq!(
            k.parse(k.rollout("web-1").as_bytes()),
            Key::Rollout("web-1")
        );
        assert_eq!(k.parse(k.member("lb-1").as_bytes()), Key::Member("lb-1"));
        assert_eq!(k.parse(k.driver("web-1").as_bytes()), Key::Driver("web-1"));
        assert_eq!(k.parse(k.affinity_key().as_bytes()), Key::AffinityKey);
        assert_eq!(k.parse(k.tls_tickets().as_bytes()), Key::TlsTickets);
        assert_eq!(k.parse(k.view("lb-1").as_bytes()), Key::View("lb-1"));
        assert_eq!(k.parse(k.fence("lb-1").as_bytes()), Key::Fence("lb-1"));
        assert_eq!(
            k.parse(k.pool_nodes("web").as_bytes()),
            Key::PoolNodes("web")
        );
        assert!(k.view("lb-1").starts_with(&k.views()));
        assert!(k.member("lb-1").starts_with(&k.members()));
        assert_eq!(k.parse(b"/handoff/prodx/drivers/web-1"), Key::Other);
        assert!(running(
            br#"{"id":"web-1","state":"running","timeline":[]}"#
        ));
        assert!(!running(br#"{"id":"web-1","state":"succeeded"}"#));
        assert!(!running(b"not json"));
        assert_eq!(k.parse(b"/handoff/prod/nodes/a/b/c"), Key::Other);
        assert_eq!(k.parse(&[0xff, 0xfe]), Key::Other);
    }

    #[test]
    fn node_ops_are_strict() {
        let op: NodeOp =
            serde_json::from_str(r#"{"op":"enable","warmup":"10s","at_ms":1,"by":"lb-1"}"#)
                .unwrap();
        assert!(matches!(op, NodeOp::Enable { warmup, .. } if warmup == Duration::from_secs(10)));
        assert!(op.check().is_ok());
        let long: NodeOp =
            serde_json::from_str(r#"{"op":"enable","warmup":"1000h","at_ms":1,"by":"lb-1"}"#)
                .unwrap();
        assert_eq!(
            long.check().unwrap_err(),
            "1000h is out of range: at most 24h"
        );
        let drain: NodeOp = serde_json::from_str(
            r#"{"op":"drain","deadline_ms":18446744073709551615,"at_ms":0,"by":"x"}"#,
        )
        .unwrap();
        assert!(drain.check().is_err());
        assert!(serde_json::from_str::<NodeOp>(r#"{"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<NodeOp>(
            r#"{"op":"drain","deadline_ms":1,"at_ms":1,"by":"x","extra":1}"#
        )
        .is_err());
    }
}
