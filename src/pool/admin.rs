//! A node's admin state as data (sozu's model): the state with the times it carries, a
//! pending enable, and an epoch, with pure transition functions. The control plane applies
//! them under the pool's lock ([`super::PoolControl::serialize`]); the data path never reads
//! the record, only the state kind mirrored into an atomic.

use std::time::Duration;

use super::state::AdminState;
use crate::time::add_ms;

/// The admin state with what each state carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Active,
    /// No new sessions; at `deadline_ms` the remaining ones are closed.
    Draining {
        deadline_ms: u64,
    },
    Drained,
    /// Ramping from 10 % to full weight; active at `until_ms`.
    Warming {
        until_ms: u64,
        warmup: Duration,
    },
}

/// A node's admin record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub admin: Admin,
    /// Unix ms when `admin` was entered.
    pub since_ms: u64,
    /// `enable` came while the node was not up: it warms up over this once it is. Cleared by
    /// a drain and when warming starts.
    pub pending_warmup: Option<Duration>,
    /// Bumped on every change of `admin`; a background step (drain wait, warmup) carries the
    /// epoch it was started for and does nothing once the record has moved on.
    pub epoch: u64,
}

/// What the control plane must start after applying a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Wait for the last session or the deadline, then `drained`.
    Drain {
        epoch: u64,
        timeout: Duration,
    },
    /// Wait out the warmup, then `active`.
    Warm {
        epoch: u64,
        warmup: Duration,
    },
    /// Wait for the node to be up, then apply [`Record::up`].
    AwaitUp,
}

impl Admin {
    pub fn kind(self) -> AdminState {
        match self {
            Admin::Active => AdminState::Active,
            Admin::Draining { .. } => AdminState::Draining,
            Admin::Drained => AdminState::Drained,
            Admin::Warming { .. } => AdminState::Warming,
        }
    }
}

impl Default for Record {
    fn default() -> Self {
        Record::new(Admin::Active, 0)
    }
}

impl Record {
    pub fn new(admin: Admin, since_ms: u64) -> Record {
        Record {
            admin,
            since_ms,
            pending_warmup: None,
            epoch: 0,
        }
    }

    pub fn kind(&self) -> AdminState {
        self.admin.kind()
    }

    fn moved(self, admin: Admin, now_ms: u64) -> Record {
        Record {
            admin,
            since_ms: now_ms,
            pending_warmup: None,
            epoch: self.epoch.wrapping_add(1),
        }
    }

    /// Whether draining now would remove serving capacity, so the pair guard must agree.
    pub fn needs_guard(&self) -> bool {
        self.kind().admits_new()
    }

    /// `drain`: an active or warming node starts draining; a draining or drained node stays
    /// as it is, except that a pending enable is cancelled. `None`: nothing changes.
    pub fn drain(self, now_ms: u64, timeout: Duration) -> Option<(Record, Effect)> {
        match self.admin {
            Admin::Active | Admin::Warming { .. } => {
                let next = self.moved(
                    Admin::Draining {
                        deadline_ms: add_ms(now_ms, timeout),
                    },
                    now_ms,
                );
                let effect = Effect::Drain {
                    epoch: next.epoch,
                    timeout,
                };
                Some((next, effect))
            }
            Admin::Draining { .. } | Admin::Drained => self.pending_warmup.map(|_| {
                let next = Record {
                    pending_warmup: None,
                    ..self
                };
                (next, Effect::None)
            }),
        }
    }

    /// `enable`: a draining or drained node that is up starts warming; one that is not up
    /// keeps its state (a draining node keeps draining, its deadline intact) and warms up
    /// once it is. An active or warming node is unchanged.
    pub fn enable(self, now_ms: u64, warmup: Duration, up: bool) -> Option<(Record, Effect)> {
        match self.admin {
            Admin::Active | Admin::Warming { .. } => None,
            Admin::Draining { .. } | Admin::Drained if up => Some(self.warming(now_ms, warmup)),
            Admin::Draining { .. } | Admin::Drained => {
                if self.pending_warmup == Some(warmup) {
                    return None;
                }
                let first = self.pending_warmup.is_none();
                let next = Record {
                    pending_warmup: Some(warmup),
                    ..self
                };
                Some((next, if first { Effect::AwaitUp } else { Effect::None }))
            }
        }
    }

    fn warming(self, now_ms: u64, warmup: Duration) -> (Record, Effect) {
        let next = self.moved(
            Admin::Warming {
                until_ms: add_ms(now_ms, warmup),
                warmup,
            },
            now_ms,
        );
        (
            next,
            Effect::Warm {
                epoch: next.epoch,
                warmup,
            },
        )
    }

    /// The node came up: a pending enable starts warming.
    pub fn up(self, now_ms: u64) -> Option<(Record, Effect)> {
        match (self.admin, self.pending_warmup) {
            (Admin::Draining { .. } | Admin::Drained, Some(warmup)) => {
                Some(self.warming(now_ms, warmup))
            }
            _ => None,
        }
    }

    /// The drain started at `epoch` finished (last session gone, or deadline closes done).
    pub fn drained(self, now_ms: u64, epoch: u64) -> Option<Record> {
        match self.admin {
            Admin::Draining { .. } if self.epoch == epoch => Some(Record {
                pending_warmup: self.pending_warmup,
                ..self.moved(Admin::Drained, now_ms)
            }),
            _ => None,
        }
    }

    /// The warmup started at `epoch` is over.
    pub fn warmed(self, now_ms: u64, epoch: u64) -> Option<Record> {
        match self.admin {
            Admin::Warming { .. } if self.epoch == epoch => Some(self.moved(Admin::Active, now_ms)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn drain_then_drained() {
        let r = Record::new(Admin::Active, 0);
        assert!(r.needs_guard());
        let (d, e) = r.drain(1000, S).unwrap();
        assert_eq!(d.admin, Admin::Draining { deadline_ms: 2000 });
        assert_eq!(
            e,
            Effect::Drain {
                epoch: 1,
                timeout: S
            }
        );
        assert!(!d.needs_guard());
        assert_eq!(d.drain(1500, S), None, "draining again changes nothing");
        assert_eq!(
            d.drained(3000, 0),
            None,
            "an older drain's task does nothing"
        );
        assert_eq!(d.drained(3000, 1).unwrap().admin, Admin::Drained);
    }

    #[test]
    fn drain_cancels_a_pending_enable() {
        let drained = Record::new(Admin::Drained, 0);
        let (pending, effect) = drained.enable(10, S, false).unwrap();
        assert_eq!((pending.admin, effect), (Admin::Drained, Effect::AwaitUp));
        let (cancelled, _) = pending.drain(20, S).unwrap();
        assert_eq!(cancelled.pending_warmup, None);
        assert_eq!(cancelled.up(30), None, "coming up no longer enables it");
    }

    #[test]
    fn enable_while_down_keeps_draining_and_its_deadline() {
        let (draining, _) = Record::new(Admin::Active, 0).drain(0, S).unwrap();
        let (pending, _) = draining.enable(10, S, false).unwrap();
        assert_eq!(pending.admin, draining.admin);
        assert_eq!(
            pending.epoch, draining.epoch,
            "the drain task keeps running"
        );
        let (warming, effect) = pending.up(50).unwrap();
        assert!(matches!(
            warming.admin,
            Admin::Warming { until_ms: 1050, .. }
        ));
        assert_eq!(
            effect,
            Effect::Warm {
                epoch: 2,
                warmup: S
            }
        );
        assert_eq!(pending.drained(60, 1).unwrap().pending_warmup, Some(S));
    }

    #[test]
    fn warmup_ends_active_unless_superseded() {
        let (w, _) = Record::new(Admin::Drained, 0).enable(0, S, true).unwrap();
        assert_eq!(w.enable(1, S, true), None);
        assert_eq!(w.warmed(1000, w.epoch).unwrap().admin, Admin::Active);
        let (d, _) = w.drain(5, S).unwrap();
        assert_eq!(d.warmed(1000, w.epoch), None);
    }
}
