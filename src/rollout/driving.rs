//! What drives a rollout: in a cluster, the driver's term that fences its writes; and how a
//! phase ends when it does not succeed. Every part of the state machine shares these.

use std::time::Duration;

use super::Handle;
use crate::cluster::Cluster;

/// A rollout driven in a cluster: the cluster, and the driver's term that fences its writes.
#[derive(Clone, Copy)]
pub struct Driving<'a> {
    pub cluster: &'a Cluster,
    pub rollout: &'a str,
    pub term: i64,
}

impl<'a> Driving<'a> {
    /// What the rollout's node writes are conditioned on.
    pub(super) fn fence(&self) -> Option<(&'a str, i64)> {
        Some((self.rollout, self.term))
    }
}

/// How a phase ended, when not in success.
pub(super) enum Stop {
    Failed(String),
    Aborted,
    /// The node failed analysis and was drained; the reason, and the rollback to run.
    Breach(String, Option<super::Rollback>),
    /// In a cluster: this driver's term ended mid-step; the step is left for the next
    /// driver to redo.
    Deposed,
}

/// Extra time past the drain timeout for the deadline closes to finish.
pub(super) const DRAIN_SLACK: Duration = Duration::from_secs(15);

/// The rollout's id and its driver's term (0 outside a cluster), for the hook.
pub(super) fn term_of<'a>(handle: &Handle, cluster: Option<Driving<'a>>) -> (String, i64) {
    match cluster {
        Some(d) => (d.rollout.to_string(), d.term),
        None => (handle.lock().id.clone(), 0),
    }
}
