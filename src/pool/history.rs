//! A node's recent history, newest last: admin state and health changes, and the outcome of
//! cluster writes on it (one answered 504 "outcome unknown" is settled here once etcd
//! answers). Control plane only: written on changes, never per request.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::time::unix_ms;

/// Entries kept per node.
pub const KEPT: usize = 16;

#[derive(Default)]
pub struct History {
    ring: Mutex<VecDeque<(u64, String)>>,
}

impl History {
    pub fn note(&self, what: impl Into<String>) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back((unix_ms(), what.into()));
    }

    /// `(unix ms, what)`, oldest first.
    pub fn entries(&self) -> Vec<(u64, String)> {
        self.ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest() {
        let h = History::default();
        for i in 0..KEPT + 3 {
            h.note(format!("e{i}"));
        }
        let e = h.entries();
        assert_eq!(e.len(), KEPT);
        assert_eq!(e[0].1, "e3");
        assert_eq!(e[KEPT - 1].1, format!("e{}", KEPT + 2));
    }
}
