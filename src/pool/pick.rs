//! Node selection. Order is decided by an immutable selector built once per pool build
//! (a weighted ring for round_robin, a rotating start for least_conn); eligibility is a
//! predicate checked while walking it. A pick allocates nothing and takes no lock.

use std::sync::atomic::Ordering::Relaxed;

use super::{AdminState, Pool};
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

/// A well-mixed 64-bit value from a counter (splitmix64): cheap randomness for tie breaks
/// and warmup admission, with no shared RNG state.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Pool {
    /// Picks a node for a new session, skipping `tried`; `None` when no node may take one.
    ///
    /// During a rollout with `prefer_target_version`, nodes reporting the target version are
    /// preferred; the others are used only when none of those can take the session.
    pub fn pick(&self, tried: Tried) -> Option<usize> {
        if self.nodes.is_empty() {
            return None;
        }
        let seq = self.next.fetch_add(1, Relaxed);
        let prefer = self.control.prefer.load();
        if let Some(version) = prefer.as_deref() {
            let preferred = |i: usize| {
                self.nodes[i]
                    .state
                    .version()
                    .is_some_and(|v| *v == *version)
            };
            if let Some(i) = self.pick_among(seq, tried, preferred) {
                return Some(i);
            }
        }
        self.pick_among(seq, tried, |_| true)
    }

    /// A preview request's node: while a rollout previews its target version, a request
    /// whose preview header (or `handoff_preview` cookie) names that version goes to an up
    /// node reporting it, admitted or not. `None`: not a preview request, or no such node
    /// (routing is then unchanged). Costs one `ArcSwap` load when no preview runs.
    pub fn preview_node<'h>(
        &self,
        mut headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    ) -> Option<usize> {
        let preview = self.control.preview.load();
        let pv = preview.as_deref()?;
        let version = pv.version.as_bytes();
        let asked = headers.any(|(name, value)| {
            if name.eq_ignore_ascii_case(pv.header.as_bytes()) {
                value == version
            } else if name.eq_ignore_ascii_case(b"cookie") {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|c| super::affinity::find_cookie(c, super::PREVIEW_COOKIE))
                    == Some(pv.version.as_str())
            } else {
                false
            }
        });
        if !asked {
            return None;
        }
        let n = self.nodes.len();
        let start = self.next.fetch_add(1, Relaxed);
        let found = (0..n).map(|k| (start + k) % n).find(|&i| {
            let s = &self.nodes[i].state;
            s.health() == super::Health::Up
                && s.admin() != AdminState::Draining
                && s.version().is_some_and(|v| v.as_bytes() == version)
        })?;
        self.nodes[found].state.traffic.preview();
        Some(found)
    }

    fn pick_among(
        &self,
        seq: usize,
        tried: Tried,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let eligible =
            |i: usize| !tried.contains(i) && self.nodes[i].state.admits_new() && allowed(i);
        match self.balance {
            Balance::RoundRobin => self.pick_round_robin(seq, eligible),
            Balance::LeastConn => self.pick_least_conn(seq, eligible),
        }
    }

    /// Walks the weighted ring from a rotating start. A warming node is skipped at random so
    /// that its share follows its ramped weight.
    fn pick_round_robin(&self, seq: usize, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.ring.len();
        let mut fallback = None;
        for step in 0..len {
            let i = usize::from(self.ring[(seq + step) % len]);
            if !eligible(i) {
                continue;
            }
            let node = &self.nodes[i];
            if node.state.admin() == AdminState::Warming {
                // Accept with the probability that gives the node the share its effective
                // weight would get: f·w / (f·w + W − w), against its ring share w / W.
                let (f, w, total) = (
                    node.state.lifecycle.warm_factor(),
                    f64::from(node.weight),
                    self.total_weight,
                );
                let p = (f * total / (f * w + total - w)).min(1.0);
                let permille = (p * 1000.0) as u64;
                if mix(seq as u64 ^ (step as u64) << 32) % 1000 >= permille {
                    fallback.get_or_insert(i);
                    continue;
                }
            }
            return Some(i);
        }
        fallback
    }

    /// Fewest active sessions per effective weight (nginx's rule); ties — the common case at
    /// low concurrency — are broken at random in proportion to effective weight, so weights
    /// and warmup shape the share even when every node is idle.
    fn pick_least_conn(&self, seq: usize, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        // The usual small pool zeroes a small table: this runs for every request.
        if self.nodes.len() <= 8 {
            self.least_conn_in::<8>(seq, eligible)
        } else {
            self.least_conn_in::<{ crate::config::defaults::MAX_NODES_PER_POOL }>(seq, eligible)
        }
    }

    /// [`Pool::pick_least_conn`] for a pool of at most `N` nodes.
    fn least_conn_in<const N: usize>(
        &self,
        seq: usize,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.nodes.len();
        // (sessions, effective weight) per node, read once; weight 0 marks "not eligible".
        let mut load = [(0u64, 0u64); N];
        let mut best: Option<(u64, u64)> = None;
        for (i, slot) in load.iter_mut().enumerate().take(n) {
            if !eligible(i) {
                continue;
            }
            let node = &self.nodes[i];
            let (c, w) = (
                node.state.active_sessions() as u64,
                u64::from(node.effective_weight().max(1)),
            );
            *slot = (c, w);
            if best.is_none_or(|(bc, bw)| c * bw < bc * w) {
                best = Some((c, w));
            }
        }
        let (bc, bw) = best?;
        // Weighted reservoir sampling over the ties, one pass; every tie keeps its weight.
        let mut total = 0u64;
        let mut chosen = None;
        for (i, &(c, w)) in load.iter().enumerate().take(n) {
            if w == 0 || c * bw != bc * w {
                continue;
            }
            total += w;
            if mix((seq as u64) << 8 ^ i as u64) % total < w {
                chosen = Some(i);
            }
        }
        chosen
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

#[cfg(test)]
pub(crate) mod warmup_tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use crate::config::parse;
    use crate::metrics::Metrics;
    use crate::pool::{AdminState, Pool, Tried};

    pub(crate) fn pool(balance: &str) -> Pool {
        let config = parse(&format!(
            "listeners: [ {{ name: l, listen: \"127.0.0.1:0\", protocol: tcp, pool: p }} ]\n\
             pools: [ {{ name: p, balance: {balance}, nodes: [ {{ name: a, addr: \"127.0.0.1:1\" }}, {{ name: b, addr: \"127.0.0.1:2\" }} ] }} ]\n"
        ))
        .unwrap();
        let pool = Pool::build(
            &config.pools[0],
            &HashMap::new(),
            Default::default(),
            &std::sync::Arc::new(crate::pool::affinity::Keys::random()),
            &Metrics::new(),
            &Default::default(),
        );
        for node in &pool.nodes {
            for _ in 0..2 {
                node.state.record_check(
                    node.state.address_epoch(),
                    true,
                    None,
                    &config.pools[0].health,
                );
            }
        }
        pool
    }

    fn share_of_a(pool: &Pool, picks: usize) -> f64 {
        let a = (0..picks)
            .filter(|_| pool.pick(Tried::default()) == Some(0))
            .count();
        a as f64 / picks as f64
    }

    #[tokio::test(start_paused = true)]
    async fn a_warming_nodes_share_follows_its_ramp() {
        for balance in ["least_conn", "round_robin"] {
            let pool = pool(balance);
            let a = &pool.nodes[0].state;
            a.set_admin(AdminState::Warming);
            a.lifecycle.start_warming(Duration::from_secs(10));
            let start = share_of_a(&pool, 4000);
            tokio::time::advance(Duration::from_secs(5)).await;
            let middle = share_of_a(&pool, 4000);
            tokio::time::advance(Duration::from_secs(5)).await;
            let end = share_of_a(&pool, 4000);
            // Weights 10:100, 55:100, 100:100 → shares ≈ 0.09, 0.35, 0.5.
            assert!((0.05..0.14).contains(&start), "{balance}: start {start}");
            assert!((0.28..0.42).contains(&middle), "{balance}: middle {middle}");
            assert!((0.45..0.55).contains(&end), "{balance}: end {end}");
        }
    }
}
