//! Rollouts in a cluster (docs/cluster.md, "One rollout driver"): records live in etcd; every instance shows them;
//! each running rollout has one elected driver — first the instance that started it — which
//! alone runs it, each of its writes fenced by its term. When the driver dies its lease goes,
//! another instance wins the rollout's election and resumes it at its step (each step is
//! idempotent), saying so on the timeline.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{spawn_until, Handle, Registry, Rollout, RolloutError};
use crate::cluster::{Cluster, ClusterError, Drivers, RolloutMirror};
use crate::config::limits;
use crate::control::Control;

/// Writes a new rollout to etcd, with this instance as its driver.
pub(super) async fn start(
    cluster: &Cluster,
    rollouts: &Registry,
    record: Rollout,
) -> Result<Rollout, RolloutError> {
    let json = serde_json::to_vec(&record).map_err(|e| RolloutError::Invalid(e.to_string()))?;
    if !cluster.create_rollout(&record.id, json).await? {
        return Err(RolloutError::AlreadyRunning {
            pool: record.pool.clone(),
            running: record.id.clone(),
        });
    }
    // Shown here at once, unless the copy from etcd already arrived (and a driver here may
    // already run it: that copy must not be replaced by this older one).
    if rollouts.get(&record.id).is_none() {
        rollouts.restore(record.clone());
    }
    Ok(record)
}

/// Records the abort request in etcd, for whichever instance drives the rollout.
pub(super) async fn abort(cluster: &Cluster, handle: &Handle) -> Result<(), ClusterError> {
    let id = handle.lock().id.clone();
    cluster
        .create(
            format!("abort of rollout {id}"),
            cluster.keys.abort(&id),
            cluster.instance().as_bytes().to_vec(),
        )
        .await?;
    Ok(())
}

impl Registry {
    /// Shows `record` (from etcd): updates the handle with its id, or adds one.
    fn adopt_record(&self, record: Rollout) -> Arc<Handle> {
        match self.get(&record.id) {
            Some(handle) => {
                *handle.lock() = record;
                handle
            }
            None => self.restore(record),
        }
    }
}

/// Joins the registry to `cluster` and follows it until the process stops: mirrors the
/// records, runs those this instance is elected to drive, publishes what it runs.
pub fn follow(ctl: Arc<Control>, rollouts: Arc<Registry>, cluster: Arc<Cluster>) {
    if rollouts.cluster.set(Arc::clone(&cluster)).is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut mirror = cluster.rollouts();
        let mut drivers = cluster.drivers();
        let mut changes = ctl.changes();
        let mut state = Follower::default();
        loop {
            tokio::select! {
                _ = cluster.stop.cancelled() => return,
                r = mirror.changed() => if r.is_err() { return },
                r = drivers.changed() => if r.is_err() { return },
                r = changes.changed() => if r.is_err() { return },
            }
            let now = drivers.borrow_and_update().clone();
            let records = mirror.borrow_and_update().clone();
            changes.borrow_and_update();
            state.step(&ctl, &rollouts, &cluster, now, records).await;
        }
    });
}

#[derive(Default)]
struct Follower {
    /// Rollouts this instance runs: id → its term, and what stops the run when it ends.
    driving: HashMap<String, (i64, CancellationToken)>,
    /// What was last written (or read) for each rollout.
    written: HashMap<String, Vec<u8>>,
    /// Who drove each rollout last (for the timeline of a takeover).
    last_holder: HashMap<String, String>,
}

impl Follower {
    async fn step(
        &mut self,
        ctl: &Arc<Control>,
        rollouts: &Arc<Registry>,
        cluster: &Cluster,
        drivers: Drivers,
        mirror: RolloutMirror,
    ) {
        // Deposed (or disconnected): stop at the current step; the next driver redoes it.
        self.driving.retain(|id, (term, stop)| {
            let still = drivers.mine.get(id) == Some(term);
            if !still {
                tracing::warn!(rollout = %id, "cluster: no longer this rollout's driver; it stops here and the next driver resumes it");
                stop.cancel();
            }
            still
        });
        // Records: etcd's are the ones there are (a state file's older ones go), and every
        // one this instance does not run itself is shown as etcd has it.
        rollouts.retain(|id| mirror.records.contains_key(id) || self.driving.contains_key(id));
        for (id, bytes) in &mirror.records {
            if self.driving.contains_key(id) {
                continue;
            }
            match serde_json::from_slice::<Rollout>(bytes) {
                Ok(record) => {
                    self.written.insert(id.clone(), bytes.clone());
                    rollouts.adopt_record(record);
                }
                Err(e) => {
                    tracing::error!(key = %cluster.keys.rollout(id), error = %e, "cluster: a rollout record does not parse; ignored")
                }
            }
        }
        for (id, &term) in &drivers.mine {
            if self.driving.contains_key(id) {
                continue;
            }
            let Some(handle) = rollouts.get(id) else {
                continue;
            };
            if !handle.lock().busy() {
                let _ = cluster.release(id, term).await;
                continue;
            }
            let message = match self.last_holder.get(id) {
                Some(prev) if prev != cluster.instance() => {
                    format!("driven by {} (took over from {prev})", cluster.instance())
                }
                _ => format!("driven by {}", cluster.instance()),
            };
            handle.event(None, None, message);
            let stop = CancellationToken::new();
            spawn_until(ctl, rollouts, Arc::clone(&handle), stop.clone());
            self.driving.insert(id.clone(), (term, stop));
        }
        // Replacements offered on any instance, for the rollouts driven here.
        for (id, offers) in &mirror.offers {
            let Some(handle) = rollouts.get(id).filter(|_| self.driving.contains_key(id)) else {
                continue;
            };
            for (old, bytes) in offers {
                match serde_json::from_slice::<super::Replacement>(bytes) {
                    Ok(new) => {
                        if handle.lock().replacements.get(old) != Some(&new) {
                            let _ = super::take_offer(&handle, old, new);
                        }
                    }
                    Err(e) => {
                        tracing::error!(key = %cluster.keys.offer(id, old), error = %e, "cluster: an offered replacement does not parse; ignored")
                    }
                }
            }
        }
        for id in &mirror.aborts {
            if let Some(handle) = rollouts.get(id).filter(|_| self.driving.contains_key(id)) {
                if !handle.abort.is_cancelled() {
                    handle.lock().abort_requested = true;
                    handle.abort.cancel();
                }
            }
        }
        self.publish(cluster, rollouts, &mirror).await;
        for (id, holder) in drivers.holders {
            self.last_holder.insert(id, holder);
        }
    }

    /// Writes every driven rollout whose record changed, fenced by its term; a finished one
    /// is then released (its driver key goes) and old finished ones pruned.
    async fn publish(&mut self, cluster: &Cluster, rollouts: &Registry, mirror: &RolloutMirror) {
        let ids: Vec<(String, i64)> = self
            .driving
            .iter()
            .map(|(id, (t, _))| (id.clone(), *t))
            .collect();
        for (id, term) in ids {
            let Some(handle) = rollouts.get(&id) else {
                continue;
            };
            let record = handle.snapshot();
            let Ok(json) = serde_json::to_vec(&record) else {
                continue;
            };
            if self.written.get(&id) != Some(&json) {
                match cluster
                    .fenced_put(&id, term, cluster.keys.rollout(&id), json.clone())
                    .await
                {
                    Ok(true) => {
                        self.written.insert(id.clone(), json);
                    }
                    // The term is over: the drivers watch says so next and this stops it.
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(rollout = %id, error = %e, "cluster: could not write a rollout; retried at its next change");
                        continue;
                    }
                }
            }
            if !record.busy() {
                if let Some((_, stop)) = self.driving.remove(&id) {
                    stop.cancel();
                }
                let _ = cluster.release(&id, term).await;
                prune(cluster, mirror).await;
            }
        }
    }
}

/// Deletes the oldest finished rollouts beyond [`limits::FINISHED_ROLLOUTS_KEPT`] from etcd
/// (each only if unchanged since read), so the shared state does not grow for ever; every
/// registry follows.
async fn prune(cluster: &Cluster, mirror: &RolloutMirror) {
    let mut finished: Vec<(String, &String, &Vec<u8>)> = mirror
        .records
        .iter()
        .filter_map(|(id, bytes)| {
            let r: Rollout = serde_json::from_slice(bytes).ok()?;
            (!r.busy()).then(|| (r.created_at.clone(), id, bytes))
        })
        .collect();
    let excess = finished
        .len()
        .saturating_sub(limits::FINISHED_ROLLOUTS_KEPT);
    finished.sort();
    for (_, id, bytes) in finished.into_iter().take(excess) {
        let _ = cluster
            .delete_if_unchanged(cluster.keys.rollout(id), bytes.clone())
            .await;
        let _ = cluster.delete(cluster.keys.abort(id)).await;
        let _ = cluster
            .delete_prefix(format!("{}/", cluster.keys.offer(id, "")))
            .await;
    }
}

impl Registry {
    /// Forgets the rollouts whose id `keep` refuses.
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.all().retain(|h| keep(&h.lock().id));
    }
}
