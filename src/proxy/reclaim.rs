//! Reclaiming connections under pressure. When a listener is at `max_connections`, a new
//! client is not refused while some connection is doing nothing: the ones still silent
//! since accept and the keep-alive ones idle between requests are closed, oldest first, a
//! batch at a time, and the new client takes a slot they free (NGINX reuses idle keep-alive
//! connections the same way). Only a listener whose every connection is busy refuses.
//!
//! Each HTTP connection registers its [`Activity`] in the listener's [`Registry`] at accept:
//! a slot in lazily allocated chunks, found through a bitmap. Only the accept loop takes
//! slots and scans; a connection gives its slot back when it ends. Nothing here locks: the
//! slots are `ArcSwapOption`s, the bitmap and the marks atomics, and a marked connection is
//! woken through its `AtomicWaker`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;

pub use super::activity::Reason;
use super::activity::{Activity, Idleness};

/// Slots per chunk: 1,024 (8 KiB of pointers and a 128-byte bitmap), allocated the first
/// time the listener holds that many connections.
const CHUNK: usize = 1024;
const WORDS: usize = CHUNK / 64;
/// At most 4 Mi connections are tracked per listener (the chunk table is 32 KiB); beyond
/// that a connection is served but cannot be reclaimed.
const CHUNKS: usize = 4096;

struct Chunk {
    used: [AtomicU64; WORDS],
    slots: [ArcSwapOption<Activity>; CHUNK],
}

/// The connections of one listener that may be reclaimed.
pub struct Registry {
    chunks: Box<[OnceLock<Box<Chunk>>]>,
    /// Where the accept loop looks for a free slot next.
    cursor: AtomicUsize,
    /// Connections marked for closing that have not closed yet: the accept loop may go this
    /// far over `max_connections`, since they are about to give their slots back.
    pending: AtomicUsize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            cursor: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
        }
    }
}

impl Registry {
    fn chunk(&self, i: usize) -> &Chunk {
        self.chunks[i].get_or_init(|| {
            Box::new(Chunk {
                used: Default::default(),
                slots: std::array::from_fn(|_| ArcSwapOption::empty()),
            })
        })
    }

    /// Takes a free slot for `activity` (accept loop only). `None`: every slot is taken.
    pub fn register(&self, activity: &Arc<Activity>) -> Option<u32> {
        let words = CHUNKS * WORDS;
        let start = self.cursor.load(Relaxed);
        for step in 0..words {
            let w = (start + step) % words;
            let chunk = self.chunk(w / WORDS);
            let word = &chunk.used[w % WORDS];
            let bits = word.load(Relaxed);
            if bits == u64::MAX {
                continue;
            }
            let bit = (!bits).trailing_zeros() as usize;
            // Only the accept loop sets bits; a connection ending may clear one meanwhile.
            word.fetch_or(1 << bit, Relaxed);
            chunk.slots[(w % WORDS) * 64 + bit].store(Some(Arc::clone(activity)));
            self.cursor.store(w, Relaxed);
            return Some((w * 64 + bit) as u32);
        }
        None
    }

    /// Gives slot `index` back (the connection ended). A mark it had not answered is void.
    pub fn release(&self, index: u32) {
        let (w, bit) = (index as usize / 64, index as usize % 64);
        let Some(chunk) = self.chunks[w / WORDS].get() else {
            return;
        };
        let activity = chunk.slots[w % WORDS * 64 + bit].swap(None);
        chunk.used[w % WORDS].fetch_and(!(1 << bit), Relaxed);
        if activity.is_some_and(|a| a.was_marked()) {
            self.settled();
        }
    }

    /// A marked connection closed (or turned out busy): one fewer pending.
    fn settled(&self) {
        let _ = self
            .pending
            .fetch_update(Relaxed, Relaxed, |p| Some(p.saturating_sub(1)));
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    /// Marks up to `want` doing-nothing connections for closing, oldest first, and wakes
    /// them. Returns how many were marked, by reason.
    pub fn reclaim(&self, want: usize) -> (usize, usize) {
        // The oldest `want` candidates seen so far, youngest last.
        let mut oldest: Vec<(u64, Arc<Activity>, Reason)> = Vec::with_capacity(want + 1);
        for slot in self.chunks.iter() {
            let Some(chunk) = slot.get() else { break };
            for (w, word) in chunk.used.iter().enumerate() {
                let mut bits = word.load(Relaxed);
                while bits != 0 {
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let Some(activity) = chunk.slots[w * 64 + bit].load_full() else {
                        continue;
                    };
                    let Some(Idleness {
                        since_ms: since,
                        reason,
                    }) = activity.idleness()
                    else {
                        continue;
                    };
                    if oldest.len() == want && oldest.last().is_some_and(|l| l.0 <= since) {
                        continue;
                    }
                    // After its equals: at the same millisecond, the earlier slot (the
                    // connection accepted first, in a listener's first chunk) goes first.
                    let at = oldest.partition_point(|c| c.0 <= since);
                    oldest.insert(at, (since, activity, reason));
                    oldest.truncate(want);
                }
            }
        }
        let (mut silent, mut idle) = (0, 0);
        for (_, activity, reason) in oldest {
            if activity.mark_reclaimed() {
                self.pending.fetch_add(1, Relaxed);
                match reason {
                    Reason::Silent => silent += 1,
                    Reason::Idle => idle += 1,
                }
            }
        }
        (silent, idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_doing_nothing_connections_are_marked_first() {
        let registry = Registry::default();
        let mut all = Vec::new();
        for _ in 0..3000 {
            let a = Arc::new(Activity::new());
            let slot = registry.register(&a).expect("a free slot");
            all.push((a, slot));
        }
        // The oldest is busy: never marked.
        all[0].0.request_started();
        assert_eq!(registry.reclaim(10), (10, 0));
        assert_eq!(registry.pending(), 10);
        let marked: Vec<usize> = (0..all.len()).filter(|&i| all[i].0.was_marked()).collect();
        assert_eq!(marked, (1..=10).collect::<Vec<_>>());
        // A marked connection ending settles its mark; its slot is taken again.
        let (_, slot) = all.remove(1);
        registry.release(slot);
        assert_eq!(registry.pending(), 9);
        let b = Arc::new(Activity::new());
        assert!(registry.register(&b).is_some());
        // Already marked ones are not marked twice.
        assert_eq!(registry.reclaim(5), (5, 0));
        assert_eq!(registry.pending(), 14);
    }
}
