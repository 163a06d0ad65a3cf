//! Open connections per client address, for `listeners[].max_connections_per_client`.
//!
//! Counted in a count-min sketch: four rows of counters, each indexed by its own keyed hash
//! of the address (keys drawn at random per listener, so a client cannot aim at another's
//! counters). A count is the smallest of the address's four counters: never below the
//! truth, and above it only when each of the four is shared with other addresses'
//! connections. A row has four counters per connection the listener allows (at least
//! 16,384), so at `max_connections` a counter holds a quarter of a connection on average,
//! and a client below a limit of 2 is refused early less than once in 10^7 connections (a
//! limit of 1 is exact only on a lightly loaded listener). Nothing locks: the counters are
//! atomics, and the table (16 bytes per allowed connection) is allocated the first time a
//! listener with the limit accepts.

use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

const ROWS: usize = 4;

pub struct PerClient {
    keys: [RandomState; ROWS],
    width: usize,
    counts: Box<[AtomicU32]>,
}

impl PerClient {
    /// For a listener allowing `max_connections`.
    pub fn new(max_connections: usize) -> Self {
        let width = (max_connections.saturating_mul(4))
            .next_power_of_two()
            .clamp(16 * 1024, 4 << 20);
        PerClient {
            keys: std::array::from_fn(|_| RandomState::new()),
            width,
            counts: (0..ROWS * width).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn cells(&self, ip: IpAddr) -> [usize; ROWS] {
        // An IPv4 client may also arrive as an IPv4-mapped IPv6 address: one client.
        let ip = ip.to_canonical();
        std::array::from_fn(|row| {
            let mut h = self.keys[row].build_hasher();
            ip.hash(&mut h);
            row * self.width + (std::hash::Hasher::finish(&h) as usize % self.width)
        })
    }

    /// Counts a new connection from `ip` unless it already has `limit`; `false`: refused.
    pub fn admit(&self, ip: IpAddr, limit: usize) -> bool {
        let cells = self.cells(ip);
        let mut count = u32::MAX;
        for &c in &cells {
            count = count.min(self.counts[c].fetch_add(1, Relaxed) + 1);
        }
        if count as usize <= limit {
            return true;
        }
        self.release(ip);
        false
    }

    /// A connection from `ip` ended.
    pub fn release(&self, ip: IpAddr) {
        for c in self.cells(ip) {
            // Never below zero, even if a count was somehow lost.
            let _ = self.counts[c].fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_is_held_to_its_limit_and_gets_its_places_back() {
        let per = PerClient::new(10_000);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(per.admit(a, 4));
        }
        assert!(per.admit(mapped, 4), "the same client, mapped");
        assert!(!per.admit(a, 4) && !per.admit(mapped, 4));
        // Thousands of other clients are not held by a's count, nor by each other's.
        for i in 0..9000u32 {
            let other = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            assert!(per.admit(other, 2), "{other}");
        }
        per.release(a);
        assert!(per.admit(a, 4));
        assert!(!per.admit(a, 4));
    }
}
