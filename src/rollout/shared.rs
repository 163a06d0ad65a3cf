//! Rollouts in a cluster (design.md §10): records live in etcd; every instance shows them;
//! the one elected driver runs them, and each of its writes is fenced by its term. When the
//! driver dies its lease goes, another instance wins the election and resumes every running
//! rollout at its step (each step is idempotent), saying so on the timeline.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{spawn, Handle, Registry, Rollout, RolloutError, RolloutState};
use crate::cluster::{Cluster, ClusterError};
use crate::config::limits;
use crate::control::Control;

/// Writes a new rollout to etcd; the driver picks it up from there.
pub(super) async fn start(
    cluster: &Cluster,
    rollouts: &Registry,
    record: Rollout,
) -> Result<Rollout, RolloutError> {
    let json = serde_json::to_vec(&record).map_err(|e| RolloutError::Invalid(e.to_string()))?;
    if !cluster
        .create(cluster.keys.rollout(&record.id), json)
        .await?
    {
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
/// records, drives them while this instance is elected, publishes what it drives.
pub fn follow(ctl: Arc<Control>, rollouts: Arc<Registry>, cluster: Arc<Cluster>) {
    if rollouts.cluster.set(Arc::clone(&cluster)).is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut mirror = cluster.rollouts();
        let mut driver = cluster.driver();
        let mut changes = ctl.changes();
        let mut state = Follower::default();
        loop {
            tokio::select! {
                _ = cluster.stop.cancelled() => return,
                r = mirror.changed() => if r.is_err() { return },
                r = driver.changed() => if r.is_err() { return },
                r = changes.changed() => if r.is_err() { return },
            }
            let now = driver.borrow_and_update().clone();
            let records = mirror.borrow_and_update().clone();
            changes.borrow_and_update();
            state.step(&ctl, &rollouts, &cluster, now, records).await;
        }
    });
}

#[derive(Default)]
struct Follower {
    /// The term this instance drives in, while it does.
    term: Option<i64>,
    /// Rollouts this instance runs in `term`.
    driving: HashSet<String>,
    /// What was last written for each driven rollout.
    written: HashMap<String, Vec<u8>>,
    /// Who drove last (for the timeline of a takeover).
    last_holder: Option<String>,
}

impl Follower {
    async fn step(
        &mut self,
        ctl: &Arc<Control>,
        rollouts: &Arc<Registry>,
        cluster: &Cluster,
        driver: crate::cluster::Driver,
        mirror: crate::cluster::RolloutMirror,
    ) {
        if self.term.is_some() && driver.term != self.term {
            // Deposed (or disconnected): stop at the current step; the next driver redoes it.
            tracing::warn!("cluster: no longer the rollout driver; rollouts stop here and the next driver resumes them");
            rollouts.pause();
            self.term = None;
            self.driving.clear();
            self.written.clear();
        }
        // Records: etcd's are the ones there are (a state file's older ones go), and every
        // one this instance does not run itself is shown as etcd has it.
        rollouts.retain(|id| mirror.records.contains_key(id) || self.driving.contains(id));
        for (id, bytes) in &mirror.records {
            if self.driving.contains(id) {
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
        if let Some(term) = driver.term {
            if self.term.is_none() {
                self.term = Some(term);
            }
            for handle in rollouts.running() {
                let id = handle.lock().id.clone();
                if self.driving.insert(id) {
                    let message = match &self.last_holder {
                        Some(prev) if prev != cluster.instance() => {
                            format!("driven by {} (took over from {prev})", cluster.instance())
                        }
                        _ => format!("driven by {}", cluster.instance()),
                    };
                    handle.event(None, None, message);
                    spawn(ctl, rollouts, handle);
                }
            }
            for id in &mirror.aborts {
                if let Some(handle) = rollouts.get(id).filter(|_| self.driving.contains(id)) {
                    if !handle.abort.is_cancelled() {
                        handle.lock().abort_requested = true;
                        handle.abort.cancel();
                    }
                }
            }
            self.publish(cluster, rollouts, term).await;
            self.prune(cluster, &mirror, term).await;
        }
        if driver.holder.is_some() {
            self.last_holder = driver.holder;
        }
    }

    /// Writes every driven rollout whose record changed, fenced by `term`.
    async fn publish(&mut self, cluster: &Cluster, rollouts: &Registry, term: i64) {
        for id in self.driving.clone() {
            let Some(handle) = rollouts.get(&id) else {
                continue;
            };
            let Ok(json) = serde_json::to_vec(&handle.snapshot()) else {
                continue;
            };
            if self.written.get(&id) == Some(&json) {
                continue;
            }
            match cluster
                .fenced_put(term, cluster.keys.rollout(&id), json.clone())
                .await
            {
                Ok(true) => {
                    self.written.insert(id, json);
                }
                // The term is over: the driver watch says so next and this stops driving.
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(rollout = %id, error = %e, "cluster: could not write a rollout; retried at its next change");
                    return;
                }
            }
        }
    }
}

impl Follower {
    /// Deletes the oldest finished rollouts beyond [`limits::FINISHED_ROLLOUTS_KEPT`] from
    /// etcd, so the shared state does not grow for ever (each instance's registry follows).
    async fn prune(
        &mut self,
        cluster: &Cluster,
        mirror: &crate::cluster::RolloutMirror,
        term: i64,
    ) {
        let mut finished: Vec<(String, String)> = mirror
            .records
            .iter()
            .filter_map(|(id, bytes)| {
                let r: Rollout = serde_json::from_slice(bytes).ok()?;
                (r.state != RolloutState::Running).then(|| (r.created_at.clone(), id.clone()))
            })
            .collect();
        let excess = finished
            .len()
            .saturating_sub(limits::FINISHED_ROLLOUTS_KEPT);
        finished.sort();
        for (_, id) in finished.into_iter().take(excess) {
            if !matches!(
                cluster.fenced_delete(term, cluster.keys.rollout(&id)).await,
                Ok(true)
            ) {
                return;
            }
            let _ = cluster.fenced_delete(term, cluster.keys.abort(&id)).await;
            self.driving.remove(&id);
            self.written.remove(&id);
        }
    }
}

impl Registry {
    /// Forgets the rollouts whose id `keep` refuses.
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.all().retain(|h| keep(&h.lock().id));
    }

    /// Rollouts whose record says running.
    fn running(&self) -> Vec<Arc<Handle>> {
        self.all()
            .iter()
            .filter(|h| h.lock().state == RolloutState::Running)
            .cloned()
            .collect()
    }
}
