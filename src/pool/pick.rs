//! Node selection. Order is decided by an immutable selector built once per pool build
//! (a weighted ring for round_robin, a rotating start for least_conn); eligibility is a
//! predicate checked while walking it. A pick allocates nothing and takes no lock.

use std::sync::atomic::Ordering::Relaxed;

use super::Pool;
use crate::config::Balance;

/// A set of node indexes already tried for one request or connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, index: usize) {
        self.0 |= 1 << index;
    }

    pub fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl Pool {
    /// Picks a node for a new session, skipping `tried`; `None` when no node may take one.
    pub fn pick(&self, tried: Tried) -> Option<usize> {
        let n = self.nodes.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        match self.balance {
            Balance::RoundRobin => {
                let len = self.ring.len();
                (0..len)
                    .map(|step| usize::from(self.ring[(start + step) % len]))
                    .find(|&i| !tried.contains(i) && self.nodes[i].state.admits_new())
            }
            Balance::LeastConn => {
                // Minimise (sessions + 1) / weight; rotating the start spreads ties evenly.
                let mut best: Option<(usize, u64, u64)> = None;
                for step in 0..n {
                    let i = (start + step) % n;
                    let node = &self.nodes[i];
                    if tried.contains(i) || !node.state.admits_new() {
                        continue;
                    }
                    let load = node.state.active_sessions() as u64 + 1;
                    let weight = u64::from(node.effective_weight().max(1));
                    let better = match best {
                        None => true,
                        Some((_, bl, bw)) => load * bw < bl * weight,
                    };
                    if better {
                        best = Some((i, load, weight));
                    }
                }
                best.map(|(i, _, _)| i)
            }
        }
    }
}

/// Builds the round-robin order: a smooth weighted sequence (nginx's algorithm, run once
/// here instead of per pick) with weights reduced by their common divisor.
pub fn build_ring(weights: &[u32]) -> Vec<u8> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<i64> = weights.iter().map(|w| i64::from(w / g)).collect();
    // Keep the ring short: scale down (keeping every node at least once) past 1024 slots.
    let total: i64 = reduced.iter().sum();
    if total > 1024 {
        for w in &mut reduced {
            *w = (*w * 1024 / total).max(1);
        }
    }
    let total: i64 = reduced.iter().sum();
    let mut current = vec![0i64; reduced.len()];
    let mut ring = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reduced.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        ring.push(best as u8);
    }
    ring
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_smooth_and_weighted() {
        assert_eq!(build_ring(&[100, 100]), vec![0, 1]);
        let ring = build_ring(&[300, 100]);
        assert_eq!(ring.len(), 4);
        assert_eq!(ring.iter().filter(|&&i| i == 0).count(), 3);
        // Smooth: the heavy node is never picked for the whole ring in a row.
        assert_eq!(build_ring(&[2, 1]), vec![0, 1, 0]);
    }

    #[test]
    fn huge_rings_are_bounded() {
        let ring = build_ring(&[10_000, 1, 9_999]);
        assert!(ring.len() <= 1100 && ring.contains(&1));
    }

    #[test]
    fn tried_set() {
        let mut t = Tried::default();
        assert!(t.is_empty());
        t.add(3);
        assert!(t.contains(3) && !t.contains(2));
    }
}
