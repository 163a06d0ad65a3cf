//! Rollouts (docs/design.md, "Rollout phases"): the orchestrated upgrade of every node of one pool, one node at a
//! time, through the phases `guard → draining → waiting_upgrade → waiting_ready → warming →
//! done`. [`run`] is the state machine; this module holds the record (what the API shows and
//! the state file keeps), the registry, and the start/abort entry points.

mod analysis;
mod driving;
mod hook;
mod in_place;
mod record;
mod replace;
mod rollback;
mod run;
pub mod shared;
mod wait;

pub use hook::use_hook_guard;
pub use record::{
    Phase, Replacement, Rollback, RollbackState, Rollout, RolloutState, Strategy, TimelineEntry,
};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::limits;
use crate::control::Control;
use crate::events::Events;
use crate::pool::unix_ms;
use crate::time::rfc3339;

/// What a client asks for (`POST /v1/pools/{pool}/rollouts`), parsed and range-checked by
/// `admin::input`; `None` takes the pool's setting.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StartRequest {
    pub version: String,
    pub order: Option<Vec<String>>,
    pub drain_timeout: Option<Duration>,
    pub ready_timeout: Option<Duration>,
    pub warmup: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    #[error("rollout {running} is already running on pool {pool:?}")]
    AlreadyRunning { pool: String, running: String },
    #[error("invalid rollout request: {0}")]
    Invalid(String),
    #[error("unknown rollout {0:?}")]
    Unknown(String),
    /// `order` names a node the pool does not have.
    #[error("order names node {node:?}, which pool {pool:?} does not have")]
    UnknownNode { pool: String, node: String },
    /// A replacement offered where no replace rollout waits for one.
    #[error("{0}")]
    NotWaiting(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A live rollout: its record, and the token that asks it to stop.
pub struct Handle {
    record: Mutex<Rollout>,
    pub abort: CancellationToken,
    /// Woken when an operator offers a replacement (`"replaces"`) to a replace rollout.
    pub offered: tokio::sync::Notify,
    /// Where timeline entries are published too (`/v1/events`).
    events: Arc<Events>,
}

impl Handle {
    pub fn new(record: Rollout, events: &Arc<Events>) -> Arc<Self> {
        Arc::new(Handle {
            record: Mutex::new(record),
            abort: CancellationToken::new(),
            offered: tokio::sync::Notify::new(),
            events: Arc::clone(events),
        })
    }

    /// The record (control plane only; never held across an await).
    pub fn lock(&self) -> MutexGuard<'_, Rollout> {
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self) -> Rollout {
        self.lock().clone()
    }

    /// Appends to the timeline (and logs).
    pub fn event(&self, node: Option<&str>, phase: Option<Phase>, message: impl Into<String>) {
        let message = message.into();
        let mut r = self.lock();
        tracing::info!(rollout = %r.id, node = node.unwrap_or(""), phase = phase.map_or("", Phase::as_str), "{message}");
        self.events.publish(
            "rollout",
            Some(&r.pool),
            node,
            serde_json::json!({
                "rollout": r.id,
                "phase": phase.map(Phase::as_str),
                "message": message,
            }),
        );
        r.timeline.push(TimelineEntry {
            at: rfc3339(unix_ms()),
            node: node.map(str::to_string),
            phase,
            message,
        });
    }
}

/// Every rollout this instance knows, newest last.
#[derive(Default)]
pub struct Registry {
    all: Mutex<Vec<Arc<Handle>>>,
    next: AtomicU64,
    /// Cancelled to stop driving every rollout (a takeover hands them to a new process);
    /// their records stay as they are, at their step.
    drivers: arc_swap::ArcSwap<CancellationToken>,
    /// In a cluster, rollouts live in etcd and only the elected driver runs them
    /// ([`shared`]); set once this instance has joined.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Set from the start when the config has `cluster:`: records restored from the state
    /// file are then shown, not driven, until etcd says who drives.
    clustered: std::sync::atomic::AtomicBool,
    /// The event stream rollouts publish their timelines to.
    events: Arc<Events>,
}

impl Registry {
    /// A registry for an instance that is (`clustered`) or is not part of a cluster.
    pub fn new(clustered: bool, events: &Arc<Events>) -> Registry {
        Registry {
            clustered: std::sync::atomic::AtomicBool::new(clustered),
            events: Arc::clone(events),
            ..Registry::default()
        }
    }

    fn clustered(&self) -> bool {
        self.clustered.load(Relaxed)
    }

    fn all(&self) -> MutexGuard<'_, Vec<Arc<Handle>>> {
        self.all
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn list(&self) -> Vec<Rollout> {
        self.all().iter().map(|h| h.snapshot()).collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Handle>> {
        self.all().iter().find(|h| h.lock().id == id).cloned()
    }

    /// Forgets the oldest finished rollouts beyond [`limits::FINISHED_ROLLOUTS_KEPT`], so
    /// neither the API nor the state file grows for ever.
    pub fn prune(&self) {
        let mut all = self.all();
        let finished = all.iter().filter(|h| !h.lock().busy()).count();
        let mut excess = finished.saturating_sub(limits::FINISHED_ROLLOUTS_KEPT);
        all.retain(|h| {
            if excess > 0 && !h.lock().busy() {
                excess -= 1;
                return false;
            }
            true
        });
    }

    /// Adds a restored record (state file), keeping ids unique afterwards.
    pub fn restore(&self, record: Rollout) -> Arc<Handle> {
        if let Some(n) = record
            .id
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        {
            self.next.fetch_max(n, Relaxed);
        }
        let handle = Handle::new(record, &self.events);
        self.all().push(Arc::clone(&handle));
        handle
    }
}

/// Starts a rollout on `pool`: 201 material, or why not.
pub async fn start(
    ctl: &Arc<Control>,
    rollouts: &Arc<Registry>,
    pool: &str,
    req: StartRequest,
) -> Result<Rollout, RolloutError> {
    if let Some(cluster) = rollouts.cluster.get() {
        return shared::start(cluster, rollouts, new_record(ctl, rollouts, pool, req)?).await;
    }
    if rollouts.clustered() {
        return Err(crate::cluster::ClusterError::Unavailable("not joined yet".into()).into());
    }
    let record = new_record(ctl, rollouts, pool, req)?;
    let mut all = rollouts.all();
    if let Some(running) = running_on(&all, pool) {
        return Err(RolloutError::AlreadyRunning {
            pool: pool.to_string(),
            running,
        });
    }
    let handle = Handle::new(record, &rollouts.events);
    all.push(Arc::clone(&handle));
    drop(all);
    let snapshot = handle.snapshot();
    spawn(ctl, rollouts, handle);
    ctl.mark_dirty();
    Ok(snapshot)
}

/// The id of the rollout running on `pool`, if one is.
fn running_on(all: &[Arc<Handle>], pool: &str) -> Option<String> {
    all.iter().find_map(|h| {
        let r = h.lock();
        (r.pool == pool && r.busy()).then(|| r.id.clone())
    })
}

/// A new rollout's record, with the request checked against the pool (and no rollout
/// running on it, as far as this instance knows).
fn new_record(
    ctl: &Arc<Control>,
    rollouts: &Registry,
    pool: &str,
    req: StartRequest,
) -> Result<Rollout, RolloutError> {
    let snapshot = ctl.snapshot.load();
    let p = snapshot
        .pool(pool)
        .ok_or_else(|| RolloutError::UnknownPool(pool.to_string()))?;
    let version = req.version.trim().to_string();
    if version.is_empty() {
        return Err(RolloutError::Invalid("`version` must not be empty".into()));
    }
    let drain_timeout = req.drain_timeout.unwrap_or(p.config.rollout.drain_timeout);
    let ready_timeout = req.ready_timeout.unwrap_or(p.config.rollout.ready_timeout);
    let warmup = req.warmup.unwrap_or(p.config.warmup);
    let order = match req.order {
        None => p.nodes.iter().map(|n| n.name.clone()).collect(),
        Some(order) if order.is_empty() => {
            return Err(RolloutError::Invalid(
                "`order` must name at least one node (leave it out for every node)".into(),
            ))
        }
        Some(order) => {
            for name in &order {
                if p.node(name).is_none() {
                    return Err(RolloutError::UnknownNode {
                        pool: pool.to_string(),
                        node: name.clone(),
                    });
                }
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = order.iter().find(|n| !seen.insert(n.as_str())) {
                return Err(RolloutError::Invalid(format!(
                    "order names node {dup:?} twice"
                )));
            }
            order
        }
    };
    if let Some(running) = running_on(&rollouts.all(), pool) {
        return Err(RolloutError::AlreadyRunning {
            pool: pool.to_string(),
            running,
        });
    }
    let id = format!("{pool}-{}", rollouts.next.fetch_add(1, Relaxed) + 1);
    let created = unix_ms();
    Ok(Rollout {
        id,
        pool: pool.to_string(),
        version: version.clone(),
        order,
        drain_timeout,
        ready_timeout,
        warmup,
        state: RolloutState::Running,
        node_index: 0,
        current_node: None,
        phase: None,
        reason: None,
        abort_requested: false,
        created_at: rfc3339(created),
        finished_at: None,
        timeline: vec![TimelineEntry {
            at: rfc3339(created),
            node: None,
            phase: None,
            message: format!("rollout of pool {pool} to version {version} started"),
        }],
        analysis: p.config.rollout.analysis.clone(),
        previous_versions: BTreeMap::new(),
        rollback: None,
        strategy: p.config.rollout.strategy,
        replacements: BTreeMap::new(),
    })
}

/// Runs (or resumes) a rollout's state machine; finished rollouts beyond the kept number are
/// then forgotten.
pub fn spawn(ctl: &Arc<Control>, rollouts: &Arc<Registry>, handle: Arc<Handle>) {
    spawn_until(ctl, rollouts, handle, CancellationToken::new());
}

/// [`spawn`], stopping at the current step when `stop` is cancelled (in a cluster: this
/// instance's term as the rollout's driver ended).
pub fn spawn_until(
    ctl: &Arc<Control>,
    rollouts: &Arc<Registry>,
    handle: Arc<Handle>,
    stop: CancellationToken,
) {
    let (ctl, rollouts) = (Arc::clone(ctl), Arc::clone(rollouts));
    let paused = CancellationToken::clone(&rollouts.drivers.load());
    let cluster = rollouts.cluster.get().cloned();
    tokio::spawn(async move {
        let id = handle.lock().id.clone();
        // In a cluster only the rollout's driver runs it, and its writes carry its term.
        let driving = match cluster.as_deref() {
            Some(cluster) => match cluster.term(&id) {
                Some(term) => Some(driving::Driving {
                    cluster,
                    rollout: &id,
                    term,
                }),
                None => return,
            },
            None => None,
        };
        tokio::select! {
            // The step in progress is left where it is; whoever resumes redoes it (every
            // step is idempotent: a drain of a draining node changes nothing).
            _ = paused.cancelled() => {}
            _ = stop.cancelled() => {}
            _ = run::run(&ctl, driving, Arc::clone(&handle)) => {
                rollouts.prune();
                ctl.mark_dirty();
            }
        }
    });
}

impl Registry {
    /// Stops driving every rollout (a takeover is handing them to another process).
    pub fn pause(&self) {
        self.drivers
            .swap(Arc::new(CancellationToken::new()))
            .cancel();
    }

    /// Drives every running rollout again, at its step (a takeover failed). In a cluster
    /// the elected driver does that.
    pub fn resume(ctl: &Arc<Control>, rollouts: &Arc<Registry>) {
        if rollouts.clustered() {
            return;
        }
        let running: Vec<Arc<Handle>> = rollouts
            .all()
            .iter()
            .filter(|h| h.lock().busy())
            .cloned()
            .collect();
        for handle in running {
            spawn(ctl, rollouts, handle);
        }
    }
}

impl Registry {
    /// An operator's replacement for node `old` of `pool` (`POST .../nodes` with
    /// `"replaces"`), for the replace rollout waiting for one there. In a cluster it is
    /// written to etcd for the rollout's driver, wherever that runs. `Err`: why it is not
    /// wanted (nothing changed).
    pub async fn offer(&self, pool: &str, old: &str, new: Replacement) -> Result<(), RolloutError> {
        let handle = self
            .all()
            .iter()
            .find(|h| {
                let r = h.lock();
                r.pool == pool && r.busy()
            })
            .cloned()
            .ok_or_else(|| RolloutError::NotWaiting(format!("no rollout runs on pool {pool}: \"replaces\" names the node a replace rollout is provisioning")))?;
        waiting_for(&handle.lock(), old).map_err(RolloutError::NotWaiting)?;
        match self.cluster.get() {
            Some(cluster) => {
                let id = handle.lock().id.clone();
                let json =
                    serde_json::to_vec(&new).map_err(|e| RolloutError::Invalid(e.to_string()))?;
                let what = format!("replacement of {pool}/{old} for rollout {id}");
                match cluster
                    .create(what, cluster.keys.offer(&id, old), json)
                    .await?
                {
                    true => Ok(()),
                    false => Err(RolloutError::NotWaiting(format!(
                        "a replacement of {old} was offered already"
                    ))),
                }
            }
            None => take_offer(&handle, old, new).map_err(RolloutError::NotWaiting),
        }
    }
}

/// `Ok` when `r` is a replace rollout waiting in `provisioning` for a replacement of `old`.
fn waiting_for(r: &Rollout, old: &str) -> Result<(), String> {
    let waiting = r.strategy == Strategy::Replace
        && r.current_node.as_deref() == Some(old)
        && r.phase == Some(Phase::Provisioning)
        && !r.replacements.contains_key(old);
    if waiting {
        return Ok(());
    }
    Err(format!(
        "rollout {} is not waiting for a replacement of {old} (strategy {:?}, node {:?}, phase {:?})",
        r.id,
        r.strategy,
        r.current_node,
        r.phase.map(Phase::as_str)
    ))
}

/// Gives the rollout of `handle` the replacement of `old`, if it still waits for one.
fn take_offer(handle: &Handle, old: &str, new: Replacement) -> Result<(), String> {
    {
        let mut r = handle.lock();
        waiting_for(&r, old)?;
        r.replacements.insert(old.to_string(), new);
    }
    handle.offered.notify_waiters();
    Ok(())
}

/// Takes over rollout records kept elsewhere (the state file, a takeover): each running one
/// continues at its step, with `why` in its timeline.
pub fn adopt(ctl: &Arc<Control>, rollouts: &Arc<Registry>, records: Vec<Rollout>, why: &str) {
    for record in records {
        let running = record.busy();
        let handle = rollouts.restore(record);
        if running && !rollouts.clustered() {
            handle.event(None, None, why);
            spawn(ctl, rollouts, handle);
        }
    }
    rollouts.prune();
}

/// Asks a rollout to stop after its current step.
pub async fn abort(ctl: &Control, rollouts: &Registry, id: &str) -> Result<Rollout, RolloutError> {
    let handle = rollouts
        .get(id)
        .ok_or_else(|| RolloutError::Unknown(id.to_string()))?;
    if let Some(cluster) = rollouts.cluster.get() {
        shared::abort(cluster, &handle).await?;
    }
    {
        let mut r = handle.lock();
        if r.state == RolloutState::Running {
            r.abort_requested = true;
        }
    }
    handle.abort.cancel();
    ctl.mark_dirty();
    Ok(handle.snapshot())
}
