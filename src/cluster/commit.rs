//! Admin writes whose answer says only what is known.
//!
//! A transaction that times out may still commit later: the request can sit in a frozen
//! member's socket, or in a leader's log, and be applied once the quorum is back (etcd's own
//! words: "the request may or may not have been applied"). So every admin write of this
//! instance also moves the instance's *fence* key (`{prefix}/fences/{instance}`) to a new
//! write id, conditioned on the fence's revision as last known. When the outcome of a write
//! is unknown, one transaction through any member that answers settles it:
//!
//! - the fence still has that revision: the write has not landed. Moving the fence now makes
//!   sure it never will (its condition can no longer hold), so the answer "not applied" is
//!   true for ever;
//! - the fence holds the write's id: it landed, at the fence's mod revision.
//!
//! Writes of one instance go one at a time (a control-plane mutex), so its fence moves only
//! for the write in flight. When no member answers within [`RESOLVE_WAIT`], the write is
//! answered 504 "outcome unknown" and settled in the background: the next write of this
//! instance waits for that, and the outcome is published on `/v1/events`
//! (`write_outcome`) and in the node's history once known.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::etcd::{call, connect_one};
use super::{Cluster, ClusterError, RECONNECT_WAIT};

/// How long a write whose outcome is unknown may spend finding out before it is answered
/// 504.
pub const RESOLVE_WAIT: Duration = Duration::from_secs(3);
/// How long an unknown outcome is looked for in the background before it is given up (it is
/// logged then, and the instance's next write settles the fence anyway).
const SETTLE_FOR: Duration = Duration::from_secs(600);

/// One admin write.
pub(super) struct Write {
    /// What it is, for logs and the outcome event (`drain of web/a`).
    pub what: String,
    /// The node it changes (`pool/node`), for its history; `None` for rollout writes.
    pub node: Option<String>,
    /// Conditions beyond the fence (node revisions, views, a driver's term).
    pub compares: Vec<Compare>,
    pub ops: Vec<TxnOp>,
}

/// A write that committed.
#[derive(Debug)]
pub(super) struct Committed {
    pub revision: i64,
    /// The instances whose member keys existed when it committed (live at the write), when
    /// the transaction said so; `None` when the outcome was settled afterwards.
    pub live: Option<Vec<String>>,
}

/// How a write ended, when etcd answered.
#[derive(Debug)]
pub(super) enum Outcome {
    Committed(Committed),
    /// A condition of the caller's failed: nothing was written.
    Refused,
}

/// What settling a write found.
enum Settled {
    Applied(i64),
    NotApplied,
}

impl Cluster {
    /// Writes `w` under this instance's fence. `Err(Unavailable)`: not applied (never will
    /// be); `Err(Unknown)`: nobody could tell in time.
    pub(super) async fn commit(&self, w: Write) -> Result<Outcome, ClusterError> {
        let serial = tokio::time::timeout(RECONNECT_WAIT, Arc::clone(&self.writes).lock_owned())
            .await
            .map_err(|_| {
                ClusterError::Unavailable(
                    "an earlier admin write of this instance is still unsettled (etcd did not answer it); nothing was written".into(),
                )
            })?;
        let mut client = self.writable().await?;
        let fence_key = self.keys.fence(&self.config.instance);
        // The fence moved under us (a takeover's other process, say): read, then try again.
        for _ in 0..3 {
            let id = write_id(&self.config.instance);
            let fence_rev = self.fence_rev.load(SeqCst);
            let mut compares = w.compares.clone();
            compares.push(Compare::mod_revision(
                fence_key.clone(),
                CompareOp::Equal,
                fence_rev,
            ));
            let mut ops = w.ops.clone();
            ops.push(TxnOp::put(fence_key.clone(), id.clone(), None));
            ops.push(TxnOp::get(
                self.keys.members(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ));
            let txn = Txn::new()
                .when(compares)
                .and_then(ops)
                .or_else([TxnOp::get(fence_key.clone(), None)]);
            let resp = match call(&w.what, client.txn(txn)).await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::warn!(write = %w.what, error = %e, "cluster: a write's outcome is unknown; settling it");
                    return self.settle(&w, &id, fence_rev, e, serial).await;
                }
            };
            let revision = resp.header().map_or(0, |h| h.revision());
            if resp.succeeded() {
                self.fence_rev.store(revision, SeqCst);
                let live = member_names(self, &resp);
                return Ok(Outcome::Committed(Committed {
                    revision,
                    live: Some(live),
                }));
            }
            let actual = fence_of(&resp);
            if actual == fence_rev {
                return Ok(Outcome::Refused);
            }
            self.fence_rev.store(actual, SeqCst);
        }
        Err(ClusterError::Conflict(format!(
            "{}: this instance's write fence kept moving (another process with instance name {:?}?); nothing was written",
            w.what, self.config.instance
        )))
    }

    /// Finds out whether the write `id` landed, through whichever member answers first,
    /// within [`RESOLVE_WAIT`]; else answers 504 and keeps looking in the background.
    async fn settle(
        &self,
        w: &Write,
        id: &str,
        fence_rev: i64,
        error: String,
        serial: OwnedMutexGuard<()>,
    ) -> Result<Outcome, ClusterError> {
        match settle_once(self, id, fence_rev, RESOLVE_WAIT).await {
            Some(Settled::Applied(revision)) => {
                self.note(w, "applied (its answer from etcd was lost and read back)");
                Ok(Outcome::Committed(Committed {
                    revision,
                    live: None,
                }))
            }
            Some(Settled::NotApplied) => Err(ClusterError::Unavailable(format!(
                "{error}; the write was cancelled before it reached etcd's quorum and changed nothing"
            ))),
            None => {
                self.settle_later(w, id.to_string(), fence_rev, serial);
                Err(ClusterError::Unknown {
                    write: id.to_string(),
                    what: w.what.clone(),
                    reason: format!(
                        "{error}; no etcd member answered within {RESOLVE_WAIT:?} to tell whether it was applied. It is settled as soon as one does: watch /v1/events for write_outcome (write {id}) or the node's history"
                    ),
                })
            }
        }
    }

    /// Keeps settling write `id` until etcd answers (holding this instance's write lock, so
    /// its fence stays where the write left it), then publishes the outcome.
    fn settle_later(&self, w: &Write, id: String, fence_rev: i64, serial: OwnedMutexGuard<()>) {
        let Some(me) = self.me.upgrade() else { return };
        let (what, node) = (w.what.clone(), w.node.clone());
        tokio::spawn(async move {
            let _serial = serial;
            let until = Instant::now() + SETTLE_FOR;
            let outcome = loop {
                if me.stop.is_cancelled() || Instant::now() > until {
                    tracing::error!(write = %id, %what, "cluster: gave up settling a write whose outcome is unknown");
                    return;
                }
                if let Some(s) = settle_once(&me, &id, fence_rev, RESOLVE_WAIT).await {
                    break s;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            let word = match outcome {
                Settled::Applied(_) => "applied",
                Settled::NotApplied => "not_applied",
            };
            tracing::warn!(write = %id, %what, outcome = word, "cluster: a write answered 504 is settled");
            me.note(
                &Write {
                    what: what.clone(),
                    node: node.clone(),
                    compares: Vec::new(),
                    ops: Vec::new(),
                },
                &format!("{word} (answered 504 outcome unknown, write {id})"),
            );
            let (pool, node_name) = match node.as_deref().and_then(|k| k.split_once('/')) {
                Some((p, n)) => (Some(p), Some(n)),
                None => (None, None),
            };
            me.ctl.events.publish(
                "write_outcome",
                pool,
                node_name,
                serde_json::json!({ "write": id, "what": what, "outcome": word }),
            );
        });
    }

    /// Adds `outcome` of `w` to its node's history.
    fn note(&self, w: &Write, outcome: &str) {
        if let Some(t) = w.node.as_deref().and_then(|k| self.ctl.node_by_key(k)) {
            t.node.state.history.note(format!("{}: {outcome}", w.what));
        }
    }
}

/// One attempt at settling write `id` through every endpoint at once: `None` when none
/// answered within `limit`.
async fn settle_once(c: &Cluster, id: &str, fence_rev: i64, limit: Duration) -> Option<Settled> {
    let fence_key = c.keys.fence(&c.config.instance);
    let tls = c.config.tls.clone();
    let mut tries = JoinSet::new();
    for endpoint in c.config.etcd.clone() {
        let (fence_key, tls, void) = (fence_key.clone(), tls.clone(), format!("void:{id}"));
        tries.spawn(async move {
            let mut client: Client = connect_one(&endpoint, tls.as_ref()).await.ok()?;
            // Moves the fence unless the write did: either way the write is settled.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    fence_key.clone(),
                    CompareOp::Equal,
                    fence_rev,
                )])
                .and_then([TxnOp::put(fence_key.clone(), void, None)])
                .or_else([TxnOp::get(fence_key, None)]);
            call("settling a write", client.txn(txn)).await.ok()
        });
    }
    let deadline = Instant::now() + limit;
    loop {
        let joined = tokio::time::timeout_at(deadline, tries.join_next()).await;
        let resp = match joined {
            Err(_) | Ok(None) => return None,
            Ok(Some(Ok(Some(resp)))) => resp,
            Ok(Some(_)) => continue,
        };
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            c.fence_rev.fetch_max(revision, SeqCst);
            return Some(Settled::NotApplied);
        }
        let (value, revision) = fence_value(&resp);
        c.fence_rev.fetch_max(revision, SeqCst);
        return Some(if value.as_deref() == Some(id.as_bytes()) {
            Settled::Applied(revision)
        } else {
            // Moved by something else after the write's condition was read: the write's
            // condition can no longer hold.
            Settled::NotApplied
        });
    }
}

/// A write id: the instance and 64 random bits, so a read-back cannot mistake another
/// write for this one.
fn write_id(instance: &str) -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    format!("{instance}:{:016x}", u64::from_le_bytes(bytes))
}

/// The fence's mod revision in a refused write's reads (0: no fence key yet).
fn fence_of(resp: &TxnResponse) -> i64 {
    fence_value(resp).1
}

fn fence_value(resp: &TxnResponse) -> (Option<Vec<u8>>, i64) {
    resp.op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(got) => Some(got.kvs().first().map_or((None, 0), |kv| {
                (Some(kv.value().to_vec()), kv.mod_revision())
            })),
            _ => None,
        })
        .unwrap_or((None, 0))
}

/// The member names a committed write read (its last operation).
fn member_names(c: &Cluster, resp: &TxnResponse) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(TxnOpResponse::Get(got)) = resp.op_responses().into_iter().last() {
        for kv in got.kvs() {
            if let super::store::Key::Member(name) = c.keys.parse(kv.key()) {
                names.push(name.to_string());
            }
        }
    }
    names
}
