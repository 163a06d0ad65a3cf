//! What happened, as a stream (`GET /v1/events`, `handoff ctl watch`): node state, health
//! and version changes, rollout timeline entries, drains completed and deadline closes.
//! Each event has an id (rising from 1 in this process) and a time; the last
//! [`KEPT`] are kept so a client reconnecting with `Last-Event-ID` gets what it missed.
//!
//! Publishing never waits: a tokio broadcast channel (bounded per subscriber) and a short
//! lock on the replay ring, taken only on changes (rare), never per request. A subscriber
//! that falls [`LAG`] events behind is dropped rather than slowing anyone down.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::time::rfc3339;
use crate::time::unix_ms;

/// Events kept for replay.
pub const KEPT: usize = 1024;
/// Events a subscriber may fall behind before it is dropped.
pub const LAG: usize = 256;

/// One event, as the stream sends it (`data:` is this as JSON, `event:` its kind).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    /// RFC 3339.
    pub at: String,
    /// `node_state`, `node_health`, `node_version`, `rollout`, `drain_done`,
    /// `deadline_closes`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The state, health or version entered; the rollout's message; the count closed.
    pub value: serde_json::Value,
}

pub struct Events {
    next: AtomicU64,
    ring: Mutex<VecDeque<Arc<Event>>>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            next: AtomicU64::new(1),
            ring: Mutex::new(VecDeque::with_capacity(KEPT)),
            tx: broadcast::channel(LAG).0,
        }
    }
}

impl Events {
    pub fn publish(
        &self,
        kind: &'static str,
        pool: Option<&str>,
        node: Option<&str>,
        value: impl Into<serde_json::Value>,
    ) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // Ids are taken under the lock, so the ring and the channel see them in order.
        let event = Arc::new(Event {
            id: self.next.fetch_add(1, Relaxed),
            at: rfc3339(unix_ms()),
            kind,
            pool: pool.map(str::to_string),
            node: node.map(str::to_string),
            value: value.into(),
        });
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(Arc::clone(&event));
        // No subscriber is not an error.
        let _ = self.tx.send(event);
    }

    /// A subscription, and the kept events after `last` (all kept ones for `None`) that it
    /// will not see: subscribe first, then replay, so nothing falls in between.
    pub fn subscribe(
        &self,
        last: Option<u64>,
    ) -> (broadcast::Receiver<Arc<Event>>, Vec<Arc<Event>>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let missed = match last {
            None => Vec::new(),
            Some(last) => ring.iter().filter(|e| e.id > last).cloned().collect(),
        };
        (rx, missed)
    }

    /// The id the next event will have.
    pub fn next_id(&self) -> u64 {
        self.next.load(Relaxed)
    }
}

/// Where one node's changes are published, with the names they carry.
pub struct NodeEvents {
    bus: Arc<Events>,
    pool: String,
    node: String,
}

impl NodeEvents {
    pub fn new(bus: &Arc<Events>, pool: &str, node: &str) -> Self {
        NodeEvents {
            bus: Arc::clone(bus),
            pool: pool.to_string(),
            node: node.to_string(),
        }
    }

    /// Publishes an event about this node.
    pub fn publish(&self, kind: &'static str, value: impl Into<serde_json::Value>) {
        self.bus
            .publish(kind, Some(&self.pool), Some(&self.node), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnecting_client_gets_what_it_missed_in_order() {
        let events = Events::default();
        for i in 0..5 {
            events.publish("node_state", Some("web"), Some("a"), i);
        }
        let (mut rx, missed) = events.subscribe(Some(2));
        assert_eq!(missed.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4, 5]);
        events.publish("node_health", Some("web"), Some("a"), "down");
        assert_eq!(rx.try_recv().unwrap().id, 6);
        let (_, none) = events.subscribe(None);
        assert!(none.is_empty());
    }

    #[test]
    fn the_replay_ring_is_bounded() {
        let events = Events::default();
        for i in 0..(KEPT + 10) {
            events.publish("rollout", Some("web"), None, i);
        }
        let (_, missed) = events.subscribe(Some(0));
        assert_eq!(missed.len(), KEPT);
        assert_eq!(missed[0].id, 11);
    }
}
