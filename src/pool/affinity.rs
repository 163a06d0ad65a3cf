//! Session affinity: who is pinned where, without locks.
//!
//! A client is identified by a 64-bit key (a random id carried in the cookie, or a hash of
//! its address). Each node keeps a fixed table of the clients it served recently; an
//! *affinity session* is an entry seen within the pool's `idle_timeout`. The table is
//! allocated on first use (pools without affinity pay nothing) and its slots are atomics, so
//! the request path only loads and stores. Two clients hashing to one slot share it: the
//! newer replaces the older, which at worst re-pins that client.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// Slots per node: enough for the pinned clients of one node of a pair, at 64 KiB.
const SLOTS: usize = 4096;

#[derive(Default)]
pub struct AffinityTable {
    slots: OnceLock<Box<[(AtomicU64, AtomicU64)]>>,
}

impl AffinityTable {
    fn slots(&self) -> &[(AtomicU64, AtomicU64)] {
        self.slots.get_or_init(|| {
            (0..SLOTS)
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect()
        })
    }

    /// Records that `client` was just served here (`now_ms`: unix ms).
    pub fn touch(&self, client: u64, now_ms: u64) {
        let (key, last) = &self.slots()[(client as usize) % SLOTS];
        key.store(client, Relaxed);
        last.store(now_ms, Relaxed);
    }

    /// Whether `client` has a live session here.
    pub fn has(&self, client: u64, now_ms: u64, idle_ms: u64) -> bool {
        let Some(slots) = self.slots.get() else {
            return false;
        };
        let (key, last) = &slots[(client as usize) % SLOTS];
        key.load(Relaxed) == client && now_ms.saturating_sub(last.load(Relaxed)) <= idle_ms
    }

    /// The client moved elsewhere.
    pub fn forget(&self, client: u64) {
        if let Some(slots) = self.slots.get() {
            let (key, last) = &slots[(client as usize) % SLOTS];
            if key.load(Relaxed) == client {
                last.store(0, Relaxed);
            }
        }
    }

    /// Live sessions, and when the next one expires (unix ms).
    pub fn live(&self, now_ms: u64, idle_ms: u64) -> (usize, Option<u64>) {
        let Some(slots) = self.slots.get() else {
            return (0, None);
        };
        let mut count = 0;
        let mut next: Option<u64> = None;
        for (_, last) in slots.iter() {
            let seen = last.load(Relaxed);
            if seen != 0 && now_ms.saturating_sub(seen) <= idle_ms {
                count += 1;
                let expires = seen + idle_ms;
                next = Some(next.map_or(expires, |n| n.min(expires)));
            }
        }
        (count, next)
    }
}

/// Where a pool's affinity key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// A secret from the environment variable named by `affinity_key_env`: instances that
    /// share it pin a client to the same node.
    Secret,
    /// The state file: the key of an earlier run, so cookies and address pins survive a
    /// restart.
    StateFile,
    /// Made at random for this run (and written to the state file, if there is one).
    Random,
}

/// Keys for cookie tokens and client ids. Cookie values can't be predicted or forged to
/// name a node without the key; the key itself may be durable (see [`KeySource`]), while
/// fresh client ids also mix in a salt of this process so they never repeat across runs.
pub struct Keys {
    key: [u8; 16],
    source: KeySource,
    /// Random per process: client ids made by different runs never collide.
    salt: u64,
    /// Makes every new client id distinct.
    next_client: AtomicU64,
}

/// Fewest bytes of a secret accepted as an affinity key.
pub const MIN_SECRET_LEN: usize = 16;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if getrandom::fill(&mut buf).is_err() {
        // No OS randomness (never seen on Linux): fall back to std's randomly keyed hasher.
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let mut h = RandomState::new().build_hasher();
            h.write_usize(i);
            let bytes = h.finish().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    buf
}

impl Keys {
    /// A key made at random.
    pub fn random() -> Keys {
        Keys::with(random_bytes(), KeySource::Random)
    }

    /// A key kept from an earlier run.
    pub fn stored(key: [u8; 16]) -> Keys {
        Keys::with(key, KeySource::StateFile)
    }

    /// A key derived from a shared secret (at least [`MIN_SECRET_LEN`] bytes).
    pub fn from_secret(secret: &str) -> Keys {
        let half = |domain: u64| {
            let mut h = siphasher::sip::SipHasher13::new_with_keys(domain, !domain);
            h.write(secret.as_bytes());
            h.finish().to_le_bytes()
        };
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&half(0x6861_6e64_6f66_6631));
        key[8..].copy_from_slice(&half(0x6861_6e64_6f66_6632));
        Keys::with(key, KeySource::Secret)
    }

    fn with(key: [u8; 16], source: KeySource) -> Keys {
        Keys {
            key,
            source,
            salt: u64::from_le_bytes(random_bytes()),
            next_client: AtomicU64::new(0),
        }
    }

    pub fn source(&self) -> KeySource {
        self.source
    }

    /// The key as 32 hex digits (what the state file keeps).
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.key)
    }

    /// Parses 32 hex digits.
    pub fn parse_hex(text: &str) -> Option<[u8; 16]> {
        crate::hex::decode(text)
    }

    fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_key(&self.key);
        for p in parts {
            h.write(p);
            h.write_u8(0xFF);
        }
        h.finish()
    }

    /// The opaque token that names node `pool/node` in cookies.
    pub fn node_token(&self, pool: &str, node: &str) -> String {
        format!(
            "{:016x}",
            self.hash(&[b"node", pool.as_bytes(), node.as_bytes()])
        )
    }

    /// A fresh client id (never 0), unpredictable to clients.
    pub fn new_client(&self) -> u64 {
        let n = self.next_client.fetch_add(1, Relaxed);
        self.hash(&[b"client", &self.salt.to_le_bytes(), &n.to_le_bytes()])
            .max(1)
    }

    /// The client key of an address.
    pub fn address(&self, ip: IpAddr) -> u64 {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        self.hash(&[b"ip", &bytes]).max(1)
    }

    /// Rendezvous (highest random weight) score of `client` on a node: the node with the
    /// highest score wins, so a node leaving or returning moves only its own clients.
    pub fn score(&self, client: u64, token: &str, weight: u32) -> f64 {
        let h = self.hash(&[&client.to_le_bytes(), token.as_bytes()]);
        // Weighted HRW: -w / ln(u), u uniform in (0, 1).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -f64::from(weight) / u.ln()
    }
}

/// Parses a cookie value `TOKEN.CLIENT` (both hex).
pub fn parse_cookie(value: &str) -> Option<(&str, u64)> {
    let (token, client) = value.split_once('.')?;
    let client = u64::from_str_radix(client, 16).ok().filter(|c| *c != 0)?;
    (token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit())).then_some((token, client))
}

/// Finds cookie `name` in a `Cookie` header value.
pub fn find_cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

impl super::Pool {
    /// Where an affinity client continues, if anywhere: its pinned node (cookie: `token`)
    /// when that node takes new sessions; or, on a node draining for less than
    /// `drain.session_timeout`, where it still has a live session.
    pub fn sticky(&self, client: u64, token: Option<&str>, now_ms: u64) -> Option<usize> {
        let aff = self.config.affinity.as_ref()?;
        let idle = aff.idle_timeout.as_millis() as u64;
        let window = self.config.drain.session_timeout.as_millis() as u64;
        let continues = |i: usize| {
            let s = &self.nodes[i].state;
            s.admin() == super::AdminState::Draining
                && s.health() == super::Health::Up
                && now_ms < s.lifecycle.drain_started_ms().saturating_add(window)
                && s.affinity.has(client, now_ms, idle)
        };
        match token {
            Some(token) => {
                let i = self.nodes.iter().position(|n| n.token == token)?;
                (self.nodes[i].state.admits_new() || continues(i)).then_some(i)
            }
            None => (0..self.nodes.len()).find(|&i| continues(i)),
        }
    }

    /// Source-address affinity: the rendezvous-hash owner among the nodes that take new
    /// sessions (weights ramp with warmup).
    pub fn hash_pick(&self, client: u64, tried: super::Tried) -> Option<usize> {
        let k = &self.keys;
        (0..self.nodes.len())
            .filter(|&i| !tried.contains(i) && self.nodes[i].state.admits_new())
            .map(|i| {
                (
                    i,
                    k.score(
                        client,
                        &self.nodes[i].token,
                        self.nodes[i].effective_weight().max(1),
                    ),
                )
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }

    /// Records that `client` is served by node `index` (and no longer elsewhere).
    pub fn pin(&self, client: u64, index: usize, now_ms: u64) {
        let idle = self
            .config
            .affinity
            .as_ref()
            .map_or(0, |a| a.idle_timeout.as_millis() as u64);
        for (i, n) in self.nodes.iter().enumerate() {
            if i == index {
                if !n.state.affinity.has(client, now_ms, idle) {
                    // A new affinity session on this node.
                    n.state
                        .metrics
                        .session_started(super::SessionKind::Affinity);
                }
                n.state.affinity.touch(client, now_ms);
            } else {
                n.state.affinity.forget(client);
            }
        }
    }

    /// Live affinity sessions on node `index`, and when the next expires (unix ms).
    pub fn affinity_sessions(&self, index: usize, now_ms: u64) -> (usize, Option<u64>) {
        match &self.config.affinity {
            Some(a) => self.nodes[index]
                .state
                .affinity
                .live(now_ms, a.idle_timeout.as_millis() as u64),
            None => (0, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_tracks_live_sessions() {
        let t = AffinityTable::default();
        assert_eq!(t.live(1000, 100), (0, None));
        t.touch(7, 1000);
        t.touch(9, 1050);
        assert!(t.has(7, 1100, 100) && !t.has(7, 1101, 100));
        assert_eq!(t.live(1060, 100), (2, Some(1100)));
        t.forget(9);
        assert_eq!(t.live(1060, 100), (1, Some(1100)));
        assert_eq!(t.live(1200, 100), (0, None));
    }

    #[test]
    fn cookies_parse_strictly() {
        assert_eq!(
            parse_cookie("0123456789abcdef.2a"),
            Some(("0123456789abcdef", 42))
        );
        for bad in [
            "",
            "x",
            "0123456789abcdef",
            "0123456789abcdef.0",
            "short.2a",
            "0123456789abcdeg.2a",
            "0123456789abcdef.zz",
        ] {
            assert_eq!(parse_cookie(bad), None, "{bad:?}");
        }
        assert_eq!(
            find_cookie("a=1; handoff_node=xyz; b=2", "handoff_node"),
            Some("xyz")
        );
        assert_eq!(find_cookie("a=1", "handoff_node"), None);
    }

    #[test]
    fn durable_keys_name_the_same_nodes_and_clients() {
        let a = Keys::from_secret("0123456789abcdef-shared");
        let b = Keys::from_secret("0123456789abcdef-shared");
        assert_eq!(a.node_token("web", "a"), b.node_token("web", "a"));
        let ip = "192.0.2.7".parse().unwrap();
        assert_eq!(a.address(ip), b.address(ip));
        assert_ne!(
            a.new_client(),
            b.new_client(),
            "client ids differ per process"
        );
        let other = Keys::from_secret("another secret of enough length");
        assert_ne!(a.node_token("web", "a"), other.node_token("web", "a"));
        let kept = Keys::stored(Keys::parse_hex(&a.to_hex()).unwrap());
        assert_eq!(kept.node_token("web", "b"), a.node_token("web", "b"));
        for bad in ["", "00", &"g".repeat(32), &"0".repeat(33)] {
            assert_eq!(Keys::parse_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rendezvous_moves_only_the_returning_nodes_share() {
        let keys = Keys::random();
        let tokens = ["a", "b", "c"];
        fn owner(keys: &Keys, client: u64, nodes: &[&'static str]) -> &'static str {
            nodes
                .iter()
                .copied()
                .max_by(|x, y| {
                    keys.score(client, x, 100)
                        .total_cmp(&keys.score(client, y, 100))
                })
                .unwrap()
        }
        let clients: Vec<u64> = (1..=3000).collect();
        let without_c: Vec<&str> = clients
            .iter()
            .map(|&c| owner(&keys, c, &tokens[..2]))
            .collect();
        let with_c: Vec<&str> = clients.iter().map(|&c| owner(&keys, c, &tokens)).collect();
        let moved = without_c
            .iter()
            .zip(&with_c)
            .filter(|(a, b)| a != b)
            .count();
        // Only clients that now belong to c moved: about a third.
        assert!(with_c
            .iter()
            .zip(&without_c)
            .all(|(now, before)| now == before || *now == "c"));
        assert!((800..1200).contains(&moved), "moved {moved}");
    }
}
