//! One etcd session at a time: connect, take a lease, resync, then watch and publish until
//! something fails; then start again (with backoff) from a full resync. etcd-client does
//! not reconnect watch or keep-alive streams by itself, so this loop is what does.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};

use super::apply;
use super::etcd::{call, connect_to};
use super::store::{Member, View};
use super::term::keep_alive_every;
use super::{lock, Cluster, REQUEST_TIMEOUT};

/// How often the member report is compared with what was published. Session counts are
/// published at most every [`SESSIONS_EVERY`]; an applied revision at once.
const PUBLISH_POLL: Duration = Duration::from_millis(20);
const SESSIONS_EVERY: Duration = Duration::from_millis(100);
/// How often pinned affinity clients are recounted when nothing else changed.
const AFFINITY_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

type Result<T> = std::result::Result<T, String>;

/// Runs sessions until the cluster stops.
pub async fn run(c: Arc<Cluster>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = c.stop.cancelled() => Ok(()),
            r = session(&c) => r,
        };
        let was_connected = c.connected.send_replace(false);
        // Before anything else, and before the next session gives the lease back: the hooks
        // run under this session's terms stop here.
        c.term.end();
        *lock(&c.client) = None;
        // Terms held in this session end with it (the lease may outlive it a moment: the
        // next session revokes it, so the keys go at once).
        c.drivers.send_modify(|d| d.mine.clear());
        match outcome {
            Ok(()) => {}
            Err(e) => {
                if was_connected {
                    tracing::error!(error = %e, "cluster: lost etcd; serving with the last known state, admin writes refused until resynced");
                } else {
                    tracing::warn!(error = %e, "cluster: cannot reach etcd");
                }
                *lock(&c.last_error) = e;
            }
        }
        if c.stop.is_cancelled() {
            revoke(&c).await;
            return;
        }
        if started.elapsed() > BACKOFF_MAX * 10 {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = c.stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Gives the lease back on a clean stop, so other instances stop waiting for this one at
/// once instead of after `lease_ttl` (and a rollout driver is replaced at once).
pub(super) async fn revoke(c: &Cluster) {
    // The hooks under this lease's terms go first: a successor is elected as soon as the
    // lease is gone.
    c.term.end();
    let lease = c.lease.swap(0, SeqCst);
    if lease == 0 {
        return;
    }
    if let Ok(mut client) = connect(c).await {
        let _ = timeout(REQUEST_TIMEOUT, client.lease_revoke(lease)).await;
    }
}

async fn connect(c: &Cluster) -> Result<Client> {
    connect_to(&c.config.etcd, c.config.tls.as_ref()).await
}

/// Stores `own` as the cluster's affinity key unless etcd holds one, and returns etcd's
/// (at start, before the snapshot is built).
pub(super) async fn shared_affinity_key(
    config: &crate::config::ClusterConfig,
    own: &str,
) -> Result<String> {
    let mut client = connect_to(&config.etcd, config.tls.as_ref()).await?;
    let key = super::store::Keys::new(&config.prefix).affinity_key();
    store_affinity_key(&mut client, key, own).await
}

/// One transaction: `own` at `key` when there is none, else the value there (the affinity
/// key, the TLS ticket keys).
async fn store_affinity_key(client: &mut Client, key: String, own: &str) -> Result<String> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), own, None)])
        .or_else([TxnOp::get(key, None)]);
    let resp = call("storing a shared key", client.txn(txn)).await?;
    if resp.succeeded() {
        return Ok(own.to_string());
    }
    resp.op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(got) => got
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).to_string()),
            _ => None,
        })
        .ok_or_else(|| "the shared key vanished".to_string())
}

async fn session(c: &Arc<Cluster>) -> Result<()> {
    let mut client = connect(c).await?;
    let ttl = c.config.lease_ttl.as_secs().max(1) as i64;
    let sent = Instant::now();
    let granted = call("lease grant", client.lease_grant(ttl, None)).await?;
    let lease = granted.id();
    let old = c.lease.swap(lease, SeqCst);
    // etcd counts whole seconds; the shorter of asked and granted is the one to trust.
    let lease_ttl = Duration::from_secs(granted.ttl().clamp(1, ttl) as u64);
    c.term.renewed(sent, lease_ttl);
    let _deadline =
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(end_term_at_deadline(Arc::clone(c))));
    let (mut keeper, mut alive) = call("lease keep-alive", client.lease_keep_alive(lease)).await?;

    // Membership never lapses across a reconnect: this instance is a member under the new
    // lease, reporting the revision it still serves with, before the old lease goes and
    // before the resync read. A write that commits from here on waits for it (or names it
    // lagging); one that committed before is in what the resync reads. The view first: a
    // member is never seen without what it sees of the nodes.
    let mut view = c.own_view();
    put_view(c, &mut client, lease, &view).await?;
    put_member(c, &mut client, lease, &c.member()).await?;
    // A lease of an earlier session (a transient error) would hold this instance's driver
    // keys until it expired, with nobody driving: give it back.
    if old != 0 {
        let _ = call("revoking the previous lease", client.lease_revoke(old)).await;
    }

    // Resync: everything at one revision, applied before this instance accepts writes.
    let all = call(
        "reading the cluster state",
        client.get(c.keys.all(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = all.header().map_or(0, |h| h.revision());
    let leaderless = apply::resync(c, all.kvs(), revision);
    offer_affinity_key(c, &mut client).await?;
    offer_tickets(c, &mut client).await?;
    *lock(&c.client) = Some(client.clone());
    let now = c.own_view();
    if now != view {
        put_view(c, &mut client, lease, &now).await?;
        view = now;
    }
    let mut published = c.member();
    let mut published_pulse = c.pulse();
    put_member(c, &mut client, lease, &published).await?;
    let mut published_at = Instant::now();
    c.connected.send_replace(true);
    tracing::info!(instance = %c.config.instance, revision, members = c.members.borrow().len(), "cluster: connected and resynced");
    for id in leaderless {
        super::election::campaign(c, &mut client, lease, &id).await?;
    }

    let mut watch = call(
        "watch",
        client.watch(
            c.keys.all(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        ),
    )
    .await?;
    let mut keep_alive = interval(keep_alive_every(lease_ttl));
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Send times of the keep-alives not answered yet, in order (answers come in order).
    let mut unanswered: VecDeque<Instant> = VecDeque::new();
    let mut safe_until = c.term.safe_until();
    let mut poll = interval(PUBLISH_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let deadline = (*safe_until.borrow_and_update()).unwrap_or_else(Instant::now);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!(
                    "no lease keep-alive answered in time (lease_ttl {lease_ttl:?}): this instance stops acting under its lease before etcd could expire it"
                ));
            }
            r = safe_until.changed() => if r.is_err() { return Ok(()) },
            _ = keep_alive.tick() => {
                unanswered.push_back(Instant::now());
                keeper.keep_alive().await.map_err(|e| format!("lease keep-alive: {e}"))?;
            }
            msg = alive.message() => match msg.map_err(|e| format!("lease keep-alive: {e}"))? {
                Some(r) if r.ttl() > 0 => {
                    if let Some(sent) = unanswered.pop_front() {
                        let granted = Duration::from_secs(r.ttl().clamp(1, ttl) as u64);
                        c.term.renewed(sent, granted.min(lease_ttl));
                    }
                }
                Some(_) => return Err("the lease expired (etcd forgot this instance)".into()),
                None => return Err("the lease keep-alive stream ended".into()),
            },
            msg = watch.message() => {
                let Some(resp) = msg.map_err(|e| format!("watch: {e}"))? else {
                    return Err("the watch stream ended".into());
                };
                if resp.canceled() || resp.compact_revision() > 0 {
                    return Err(format!(
                        "the watch was cancelled ({}; compacted at {}): resyncing",
                        resp.cancel_reason(),
                        resp.compact_revision()
                    ));
                }
                let seen = apply::events(c, resp.events());
                for id in &seen.leaderless {
                    super::election::campaign(c, &mut client, lease, id).await?;
                }
                let now = c.member();
                if now.revision != published.revision || seen.own_member_gone {
                    put_member(c, &mut client, lease, &now).await?;
                    published = now;
                    published_at = Instant::now();
                }
                let now = c.own_view();
                if now != view || seen.own_view_gone {
                    put_view(c, &mut client, lease, &now).await?;
                    view = now;
                }
            }
            _ = poll.tick() => {
                // A flip of admin state or health is published at once: drains on other
                // instances are guarded by it.
                let now = c.own_view();
                if now != view {
                    put_view(c, &mut client, lease, &now).await?;
                    view = now;
                }
                // The full report counts pinned affinity clients (a scan per node): it is
                // built when the cheap pulse changed, or once a second for affinity expiry.
                let pulse = c.pulse();
                let stale = published_at.elapsed() >= SESSIONS_EVERY;
                if stale && (pulse != published_pulse || published_at.elapsed() >= AFFINITY_EVERY) {
                    let now = c.member();
                    if now != published {
                        put_member(c, &mut client, lease, &now).await?;
                        published = now;
                    }
                    published_pulse = pulse;
                    published_at = Instant::now();
                }
            }
        }
    }
}

/// Ends this session's terms at the lease's safe deadline, on time even while the session
/// loop waits for etcd: the hooks are killed and the rollouts stop being driven here.
async fn end_term_at_deadline(c: Arc<Cluster>) {
    let mut until = c.term.safe_until();
    loop {
        let Some(deadline) = *until.borrow_and_update() else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                tracing::error!(instance = %c.config.instance, "cluster: the lease was not renewed in time; this instance drives nothing from now on");
                c.term.end();
                c.drivers.send_modify(|d| d.mine.clear());
                return;
            }
            r = until.changed() => if r.is_err() { return },
        }
    }
}

async fn put_member(c: &Cluster, client: &mut Client, lease: i64, m: &Member) -> Result<()> {
    let json = serde_json::to_vec(m).map_err(|e| e.to_string())?;
    call(
        "publishing this instance",
        client.put(
            c.keys.member(&c.config.instance),
            json,
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await?;
    c.members.send_modify(|all| {
        all.insert(m.instance.clone(), m.clone());
    });
    Ok(())
}

async fn put_view(c: &Cluster, client: &mut Client, lease: i64, v: &View) -> Result<()> {
    let json = serde_json::to_vec(v).map_err(|e| e.to_string())?;
    call(
        "publishing this instance's view",
        client.put(
            c.keys.view(&c.config.instance),
            json,
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await?;
    Ok(())
}

/// Stores this instance's affinity key when etcd has none, and notes the one it has.
async fn offer_affinity_key(c: &Cluster, client: &mut Client) -> Result<()> {
    let held = store_affinity_key(client, c.keys.affinity_key(), &c.own_affinity_key).await?;
    apply::note_affinity_key(c, held.as_bytes());
    Ok(())
}

/// This instance's TLS ticket keys, when the cluster has none yet; the cluster's, else.
async fn offer_tickets(c: &Cluster, client: &mut Client) -> Result<()> {
    let own =
        serde_json::to_string(&c.ctl.snapshot.load().tickets.keys()).map_err(|e| e.to_string())?;
    let held = store_affinity_key(client, c.keys.tls_tickets(), &own).await?;
    apply::note_tickets(c, held.as_bytes());
    Ok(())
}

/// Replaces the cluster's TLS ticket keys `from` by `to`, unless another instance did
/// first (then its set comes by the watch): `Ok(true)` when this write landed.
pub(super) async fn rotate_tickets(
    c: &Cluster,
    from: &crate::tickets::KeySet,
    to: &crate::tickets::KeySet,
) -> Result<bool> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let Some(mut client) = lock(&c.client).clone() else {
        return Err("not connected to etcd".into());
    };
    let key = c.keys.tls_tickets();
    let (from, to) = (
        serde_json::to_string(from).map_err(|e| e.to_string())?,
        serde_json::to_string(to).map_err(|e| e.to_string())?,
    );
    let txn = Txn::new()
        .when([Compare::value(key.clone(), CompareOp::Equal, from)])
        .and_then([TxnOp::put(key, to, None)]);
    let resp = call("rotating the TLS ticket keys", client.txn(txn)).await?;
    Ok(resp.succeeded())
}
