//! One etcd session at a time: connect, take a lease, resync, then watch and publish until
//! something fails; then start again (with backoff) from a full resync. etcd-client does
//! not reconnect watch or keep-alive streams by itself, so this loop is what does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, PutOptions,
    TlsOptions, WatchOptions,
};
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};

use super::store::{self, Key, Member, NodeOp};
use super::{lock, Cluster, REQUEST_TIMEOUT};
use crate::config::ClusterTls;
use crate::control::NodeRef;
use crate::lifecycle;

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

/// Stores `own` as the cluster's affinity key unless etcd holds one, and returns etcd's.
pub(super) async fn shared_affinity_key(
    config: &crate::config::ClusterConfig,
    own: &str,
) -> Result<String> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let mut client = connect_to(&config.etcd, config.tls.as_ref()).await?;
    let key = super::store::Keys::new(&config.prefix).affinity_key();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), own, None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let resp = call("storing the affinity key", client.txn(txn)).await?;
    if resp.succeeded() {
        return Ok(own.to_string());
    }
    let got = call("reading the affinity key", client.get(key, None)).await?;
    got.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).to_string())
        .ok_or_else(|| "the affinity key vanished".to_string())
}

/// A client on the first endpoint, in turn from the one after the last used, that answers
/// a linearizable read (so it is in touch with the quorum's leader). One endpoint per
/// session: when its member goes, the session fails and the next one tries the others
/// (tonic's balancing across endpoints keeps sending to a dead one).
async fn connect_to(etcd: &[String], tls: Option<&ClusterTls>) -> Result<Client> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let first = NEXT.fetch_add(1, SeqCst);
    let mut errors = Vec::new();
    for i in 0..etcd.len() {
        let endpoint = &etcd[(first + i) % etcd.len()];
        match connect_one(endpoint, tls).await {
            Ok(client) => {
                NEXT.store((first + i) % etcd.len(), SeqCst);
                return Ok(client);
            }
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

async fn connect_one(endpoint: &str, tls: Option<&ClusterTls>) -> Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), REQUEST_TIMEOUT)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(tls) = tls {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &tls.server_name {
            t = t.domain_name(name.clone());
        }
        options = options.with_tls(t);
    }
    let mut client = timeout(REQUEST_TIMEOUT, Client::connect([endpoint], Some(options)))
        .await
        .map_err(|_| format!("{endpoint}: no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| format!("{endpoint}: {e}"))?;
    call(
        endpoint,
        client.get("/", Some(GetOptions::new().with_count_only())),
    )
    .await?;
    Ok(client)
}

/// Bounds an etcd call and names it in the error.
pub(super) async fn call<T, F>(what: &str, f: F) -> Result<T>
where
    F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    match timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

async fn session(c: &Arc<Cluster>) -> Result<()> {
    let mut client = connect(c).await?;
    // A lease of an earlier session (a transient error) would hold this instance's driver
    // keys until it expired, with nobody driving: give it back first.
    let old = c.lease.swap(0, SeqCst);
    if old != 0 {
        let _ = call("revoking the previous lease", client.lease_revoke(old)).await;
    }
    let ttl = c.config.lease_ttl.as_secs().max(1) as i64;
    let lease = call("lease grant", client.lease_grant(ttl, None))
        .await?
        .id();
    c.lease.store(lease, SeqCst);
    let (mut keeper, mut alive) = call("lease keep-alive", client.lease_keep_alive(lease)).await?;

    // Resync: everything at one revision, applied before this instance accepts writes.
    let all = call(
        "reading the cluster state",
        client.get(c.keys.all(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = all.header().map_or(0, |h| h.revision());
    let leaderless = resync(c, all.kvs(), revision);
    offer_affinity_key(c, &mut client).await?;
    *lock(&c.client) = Some(client.clone());
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
    let every = Duration::from_millis((ttl as u64 * 1000 / 3).max(500));
    let mut keep_alive = interval(every);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_alive = Instant::now();
    let mut poll = interval(PUBLISH_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = keep_alive.tick() => {
                if last_alive.elapsed() > c.config.lease_ttl {
                    return Err(format!("no lease keep-alive answer for {:?}", c.config.lease_ttl));
                }
                keeper.keep_alive().await.map_err(|e| format!("lease keep-alive: {e}"))?;
            }
            msg = alive.message() => match msg.map_err(|e| format!("lease keep-alive: {e}"))? {
                Some(r) if r.ttl() > 0 => last_alive = Instant::now(),
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
                let seen = apply_events(c, resp.events());
                for id in &seen.leaderless {
                    super::election::campaign(c, &mut client, lease, id).await?;
                }
                let now = c.member();
                if now.revision != published.revision || seen.own_member_gone {
                    put_member(c, &mut client, lease, &now).await?;
                    published = now;
                    published_at = Instant::now();
                }
            }
            _ = poll.tick() => {
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

/// Stores this instance's affinity key when etcd has none, and reads the one it has.
async fn offer_affinity_key(c: &Cluster, client: &mut Client) -> Result<()> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let key = c.keys.affinity_key();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), c.own_affinity_key.clone(), None)]);
    call("storing the affinity key", client.txn(txn)).await?;
    let got = call("reading the affinity key", client.get(key, None)).await?;
    if let Some(kv) = got.kvs().first() {
        note_affinity_key(c, kv.value());
    }
    Ok(())
}

fn note_affinity_key(c: &Cluster, value: &[u8]) {
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

/// Applies the whole state read at `revision`. A node without a key is enabled: etcd's
/// state is the truth, and an instance that was cut off converges to it. Returns the running
/// rollouts that have no driver (to campaign for).
fn resync(c: &Arc<Cluster>, kvs: &[KeyValue], revision: i64) -> Vec<String> {
    let mut members = BTreeMap::new();
    let mut mirror = super::RolloutMirror::default();
    let mut holders = BTreeMap::new();
    let mut ops = std::collections::HashMap::new();
    for kv in kvs {
        match c.keys.parse(kv.key()) {
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
            Key::Driver(id) => {
                holders.insert(
                    id.to_string(),
                    String::from_utf8_lossy(kv.value()).to_string(),
                );
            }
            Key::AffinityKey => note_affinity_key(c, kv.value()),
            Key::Other => {}
        }
    }
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
    c.rollouts.send_replace(mirror);
    c.drivers.send_replace(super::Drivers {
        holders,
        mine: BTreeMap::new(),
    });
    c.applied.send_replace(revision);
    leaderless
}

/// What a batch of watched events asks of the session.
#[derive(Default)]
struct Seen {
    /// Running rollouts whose driver key went: campaign.
    leaderless: Vec<String>,
    /// This instance's member key went away (a previous process of the same instance
    /// revoked its lease after a takeover, say): publish again.
    own_member_gone: bool,
}

/// Applies watched events in order.
fn apply_events(c: &Arc<Cluster>, events: &[etcd_client::Event]) -> Seen {
    let mut seen = Seen::default();
    let mut applied = None;
    for ev in events {
        let Some(kv) = ev.kv() else { continue };
        let put = ev.event_type() == EventType::Put;
        match c.keys.parse(kv.key()) {
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
                    }
                    None => {
                        d.holders.remove(id);
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
            _ => {}
        }
    }
    if let Some(rev) = applied {
        c.applied.send_modify(|a| *a = (*a).max(rev));
    }
    seen
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
