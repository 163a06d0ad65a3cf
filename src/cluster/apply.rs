//! Applying what etcd holds to this instance: the whole state at a resync, then watched
//! events in order. Node operations go through the same guarded transitions an operator's
//! local drain uses; values that do not parse are logged with their key and ignored.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use etcd_client::{EventType, KeyValue};

use super::store::{self, Key, Member, NodeOp, View};
use super::{lock, Cluster};
use crate::control::NodeRef;
use crate::lifecycle;
use crate::members::PoolChanges;

pub(super) fn note_affinity_key(c: &Cluster, value: &[u8]) {
    let text = String::from_utf8_lossy(value).to_string();
    if crate::pool::affinity::Keys::parse_hex(&text).is_none() {
        tracing::error!(key = %c.keys.affinity_key(), "cluster: the shared affinity key is not 32 hex digits; ignored");
        return;
    }
    if text != c.own_affinity_key && lock(&c.affinity_key).as_deref() != Some(text.as_str()) {
        tracing::warn!("cluster: etcd holds another affinity key than this instance uses (it started without etcd): cookies of other instances map to other nodes here until this instance restarts");
    }
    *lock(&c.affinity_key) = Some(text);
}

/// The cluster's TLS ticket keys (a first instance's, or a rotation's): used from now on,
/// so a session made on any instance resumes here. A value that does not parse or check is
/// logged (never its content) and ignored.
pub(super) fn note_tickets(c: &Cluster, value: &[u8]) {
    let keys = serde_json::from_slice::<crate::tickets::KeySet>(value)
        .map_err(|e| e.to_string())
        .and_then(|k| k.check().map(|()| k));
    let installed = keys.and_then(|k| c.ctl.snapshot.load().tickets.install(k));
    match installed {
        Ok(()) => c.ctl.mark_dirty(),
        Err(e) => {
            tracing::error!(key = %c.keys.tls_tickets(), error = %e, "cluster: the TLS ticket keys in etcd are not usable; ignored")
        }
    }
}

/// Applies the whole state read at `revision`. A node without a key is enabled: etcd's
/// state is the truth, and an instance that was cut off converges to it. Returns the running
/// rollouts that have no driver (to campaign for).
pub(super) fn resync(c: &Arc<Cluster>, kvs: &[KeyValue], revision: i64) -> Vec<String> {
    let mut members = BTreeMap::new();
    let mut mirror = super::RolloutMirror::default();
    let mut holders = BTreeMap::new();
    let mut terms = BTreeMap::new();
    let mut views = BTreeMap::new();
    let mut pools = BTreeMap::new();
    let mut ops = std::collections::HashMap::new();
    lock(&c.pool_revs).clear();
    for kv in kvs {
        match c.keys.parse(kv.key()) {
            Key::PoolNodes(pool) => {
                if let Some(changes) = parse_pool_nodes(c, pool, kv.value()) {
                    pools.insert(pool.to_string(), changes);
                }
                lock(&c.pool_revs).insert(pool.to_string(), kv.mod_revision());
            }
            Key::View(name) => {
                if let Some(v) = parse_view(c, name, kv.value()) {
                    views.insert(name.to_string(), v);
                }
            }
            Key::Fence(name) if name == c.config.instance => {
                c.fence_rev.store(kv.mod_revision(), SeqCst);
            }
            Key::Node(node) => {
                ops.insert(node.to_string(), (kv.mod_revision(), kv.value().to_vec()));
            }
            Key::Member(name) => {
                if let Some(m) = parse_member(c, name, kv.value()) {
                    members.insert(name.to_string(), m);
                }
            }
            Key::Rollout(id) => {
                mirror.records.insert(id.to_string(), kv.value().to_vec());
            }
            Key::Abort(id) => {
                mirror.aborts.insert(id.to_string());
            }
            Key::Offer(id, old) => {
                mirror
                    .offers
                    .entry(id.to_string())
                    .or_default()
                    .insert(old.to_string(), kv.value().to_vec());
            }
            Key::Driver(id) => {
                holders.insert(
                    id.to_string(),
                    String::from_utf8_lossy(kv.value()).to_string(),
                );
                terms.insert(id.to_string(), kv.create_revision());
            }
            Key::AffinityKey => note_affinity_key(c, kv.value()),
            Key::TlsTickets => note_tickets(c, kv.value()),
            Key::Fence(_) | Key::Other => {}
        }
    }
    // Members first: the node operations below may name nodes added at runtime.
    take_pool_nodes(c, None, &pools);
    let snapshot = c.ctl.snapshot.load();
    lock(&c.node_revs).clear();
    for pool in &snapshot.pools {
        for node in &pool.nodes {
            let key = node.key();
            let t = NodeRef {
                pool: Arc::clone(pool),
                node: Arc::clone(node),
            };
            match ops.remove(&key) {
                Some((rev, value)) => apply_node(c, &t, rev, &value),
                None => lifecycle::enable(&c.ctl, &t, None),
            }
        }
    }
    let leaderless = mirror
        .records
        .iter()
        .filter(|(id, record)| store::running(record) && !holders.contains_key(*id))
        .map(|(id, _)| id.clone())
        .collect();
    c.members.send_replace(members);
    c.views.send_replace(views);
    c.rollouts.send_replace(mirror);
    c.drivers.send_replace(super::Drivers {
        holders,
        terms,
        mine: BTreeMap::new(),
    });
    c.applied.send_replace(revision);
    c.seen.send_replace(revision);
    leaderless
}

/// What a batch of watched events asks of the session.
#[derive(Default)]
pub(super) struct Seen {
    /// Running rollouts whose driver key went: campaign.
    pub leaderless: Vec<String>,
    /// This instance's member key went away (a previous process of the same instance
    /// revoked its lease after a takeover, say): publish again.
    pub own_member_gone: bool,
    /// The same for this instance's view.
    pub own_view_gone: bool,
}

/// Applies watched events in order.
pub(super) fn events(c: &Arc<Cluster>, events: &[etcd_client::Event]) -> Seen {
    let mut seen = Seen::default();
    let mut applied = None;
    let mut last = 0;
    for ev in events {
        let Some(kv) = ev.kv() else { continue };
        let put = ev.event_type() == EventType::Put;
        last = last.max(kv.mod_revision());
        match c.keys.parse(kv.key()) {
            Key::PoolNodes(pool) => {
                let changes = if put {
                    parse_pool_nodes(c, pool, kv.value())
                } else {
                    Some(Default::default())
                };
                if let Some(changes) = changes {
                    let shared = BTreeMap::from([(pool.to_string(), changes)]);
                    take_pool_nodes(c, Some(pool), &shared);
                }
                lock(&c.pool_revs).insert(pool.to_string(), kv.mod_revision());
                applied = Some(kv.mod_revision());
            }
            Key::View(name) => {
                seen.own_view_gone |= !put && name == c.config.instance;
                let v = if put {
                    parse_view(c, name, kv.value())
                } else {
                    None
                };
                c.views.send_modify(|all| match v {
                    Some(v) => {
                        all.insert(name.to_string(), v);
                    }
                    None => {
                        all.remove(name);
                    }
                });
            }
            Key::Fence(name) if name == c.config.instance && put => {
                c.fence_rev.fetch_max(kv.mod_revision(), SeqCst);
            }
            Key::Node(node) => {
                if let Some(t) = c.ctl.node_by_key(node) {
                    if put {
                        apply_node(c, &t, kv.mod_revision(), kv.value());
                    } else {
                        lifecycle::enable(&c.ctl, &t, None);
                        lock(&c.node_revs).remove(node);
                    }
                }
                applied = Some(kv.mod_revision());
            }
            Key::Member(name) => {
                seen.own_member_gone |= !put && name == c.config.instance;
                let m = if put {
                    parse_member(c, name, kv.value())
                } else {
                    None
                };
                c.members.send_modify(|all| match m {
                    Some(m) => {
                        all.insert(name.to_string(), m);
                    }
                    None => {
                        all.remove(name);
                    }
                });
            }
            Key::Rollout(id) => c.rollouts.send_modify(|r| {
                if put {
                    r.records.insert(id.to_string(), kv.value().to_vec());
                } else {
                    r.records.remove(id);
                }
            }),
            Key::Offer(id, old) => c.rollouts.send_modify(|r| {
                let offers = r.offers.entry(id.to_string()).or_default();
                if put {
                    offers.insert(old.to_string(), kv.value().to_vec());
                } else {
                    offers.remove(old);
                }
            }),
            Key::Abort(id) => c.rollouts.send_modify(|r| {
                if put {
                    r.aborts.insert(id.to_string());
                } else {
                    r.aborts.remove(id);
                }
            }),
            Key::Driver(id) => {
                let holder = put.then(|| String::from_utf8_lossy(kv.value()).to_string());
                c.drivers.send_modify(|d| match &holder {
                    Some(h) => {
                        d.holders.insert(id.to_string(), h.clone());
                        d.terms.insert(id.to_string(), kv.create_revision());
                    }
                    None => {
                        d.holders.remove(id);
                        d.terms.remove(id);
                        d.mine.remove(id);
                    }
                });
                let running = c
                    .rollouts
                    .borrow()
                    .records
                    .get(id)
                    .is_some_and(|r| store::running(r));
                if holder.is_none() && running {
                    seen.leaderless.push(id.to_string());
                }
            }
            Key::AffinityKey if put => note_affinity_key(c, kv.value()),
            Key::TlsTickets if put => note_tickets(c, kv.value()),
            _ => {}
        }
    }
    if let Some(rev) = applied {
        c.applied.send_modify(|a| *a = (*a).max(rev));
    }
    // Events come in revision order: every change up to the last one is now known here.
    c.seen.send_if_modified(|s| {
        let moved = last > *s;
        *s = (*s).max(last);
        moved
    });
    seen
}

fn parse_pool_nodes(c: &Cluster, pool: &str, value: &[u8]) -> Option<PoolChanges> {
    serde_json::from_slice::<PoolChanges>(value)
        .map_err(|e| {
            tracing::error!(key = %c.keys.pool_nodes(pool), error = %e, "cluster: a pool's runtime members do not parse; ignored");
        })
        .ok()
        .filter(|changes| {
            let bad = changes
                .added
                .iter()
                .find(|(name, a)| !crate::config::valid_name(name) || crate::config::limits::number(a.weight, crate::config::limits::WEIGHT).is_err());
            if let Some((name, _)) = bad {
                tracing::error!(key = %c.keys.pool_nodes(pool), node = %name, "cluster: a pool's runtime members name an invalid node; ignored");
            }
            bad.is_none()
        })
}

/// Takes etcd's runtime members of `pool` (every pool at a resync), rebuilding the snapshot
/// when they change what runs here. A node new here is held out until it is up, then warmed
/// (its shared admin state, if any, is applied after).
fn take_pool_nodes(c: &Cluster, pool: Option<&str>, shared: &BTreeMap<String, PoolChanges>) {
    let ctl = &c.ctl;
    let before = ctl.snapshot.load_full();
    let mut unchanged = true;
    let result = ctl.change_members(
        |m, file| {
            let old = m.clone();
            for why in m.take_shared(file, pool, shared) {
                tracing::warn!("cluster: runtime member change not applied here: {why}");
            }
            unchanged = *m == old;
            if unchanged {
                // Nothing to rebuild.
                return Err(crate::members::MemberError::Conflict(String::new()));
            }
            Ok(())
        },
        |next| {
            for p in &next.pools {
                for n in &p.nodes {
                    if before.pool(&p.name).and_then(|o| o.node(&n.name)).is_none() {
                        let t = NodeRef {
                            pool: Arc::clone(p),
                            node: Arc::clone(n),
                        };
                        lifecycle::added(ctl, &t, false);
                    }
                }
            }
        },
    );
    if let (Err(e), false) = (result, unchanged) {
        tracing::error!(error = %e, "cluster: runtime members not applied");
    }
}

fn parse_view(c: &Cluster, name: &str, value: &[u8]) -> Option<View> {
    serde_json::from_slice::<View>(value)
        .map_err(|e| {
            tracing::error!(key = %c.keys.view(name), error = %e, "cluster: an instance's view does not parse; ignored");
        })
        .ok()
}

fn parse_member(c: &Cluster, name: &str, value: &[u8]) -> Option<Member> {
    match serde_json::from_slice::<Member>(value) {
        Ok(m) if m.instance == name => Some(m),
        Ok(m) => {
            tracing::error!(key = %c.keys.member(name), instance = %m.instance, "cluster: a member record names another instance; ignored");
            None
        }
        Err(e) => {
            tracing::error!(key = %c.keys.member(name), error = %e, "cluster: a member record does not parse; ignored");
            None
        }
    }
}

/// Applies one node's operation as etcd has it. The origin checked the pair guard against
/// the whole pool's keys, so it is applied here without one.
fn apply_node(c: &Cluster, t: &NodeRef, revision: i64, value: &[u8]) {
    let key = t.node.key();
    match serde_json::from_slice::<NodeOp>(value)
        .map_err(|e| e.to_string())
        .and_then(|op| op.check().map(|()| op))
    {
        Ok(NodeOp::Drain { deadline_ms, .. }) => lifecycle::drain_until(&c.ctl, t, deadline_ms),
        Ok(NodeOp::Enable { warmup, .. }) => lifecycle::enable(&c.ctl, t, Some(warmup)),
        Err(e) => {
            tracing::error!(key = %c.keys.node(&key), error = %e, "cluster: a node operation does not parse or is out of range; ignored");
        }
    }
    // Only now: a write that reads this revision must also see the state it brought (the
    // pair guard is checked against the state, the write conditioned on the revision).
    lock(&c.node_revs).insert(key, revision);
}
