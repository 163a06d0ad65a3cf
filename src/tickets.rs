//! TLS session tickets (stateless resumption, TLS 1.3 and 1.2) with keys handoff holds
//! itself, so that they outlive the process and reach every instance: carried by a
//! self-upgrade, kept (owner-only) in the state file, shared through etcd in a cluster.
//!
//! A ticket is `key id (8) | nonce (12) | AES-256-GCM(session state) | tag (16)`. The current
//! key seals; it and the previous one open, so a ticket issued just before a rotation still
//! resumes after it. Rotation replaces the previous key by the current one and makes a new
//! current one: a ticket lives at most two rotation periods. The keys are never logged
//! (their `Debug` shows only the id) and never in the admin API.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};

const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// TLS 1.3 allows a ticket lifetime of at most seven days (RFC 8446 §4.6.1).
const MAX_LIFETIME: u32 = 7 * 24 * 3600;

/// One ticket key: an id tickets name it by, and its AES-256 secret (both hex).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketKey {
    id: String,
    secret: String,
}

impl std::fmt::Debug for TicketKey {
    /// The secret stays out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKey({})", self.id)
    }
}

/// The keys in use: the current one and the one before it, and when the current one was
/// made (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    pub current: TicketKey,
    pub previous: Option<TicketKey>,
    pub since_ms: u64,
}

impl KeySet {
    /// A new set with a fresh current key made at `now_ms`.
    pub fn fresh(now_ms: u64) -> Result<KeySet, String> {
        Ok(KeySet {
            current: TicketKey::random()?,
            previous: None,
            since_ms: now_ms,
        })
    }

    /// The set after a rotation at `now_ms`: a new current key, this one's current as the
    /// previous.
    pub fn rotated(&self, now_ms: u64) -> Result<KeySet, String> {
        Ok(KeySet {
            current: TicketKey::random()?,
            previous: Some(self.current.clone()),
            since_ms: now_ms,
        })
    }

    /// Whether the current key is due for rotation at `now_ms`.
    pub fn due(&self, now_ms: u64, rotate: Duration) -> bool {
        now_ms.saturating_sub(self.since_ms)
            >= u64::try_from(rotate.as_millis()).unwrap_or(u64::MAX)
    }

    /// Checks a set read from outside (a state file, a peer): the error names the field.
    pub fn check(&self) -> Result<(), String> {
        self.current.sealer().map_err(|e| format!("current: {e}"))?;
        if let Some(p) = &self.previous {
            p.sealer().map_err(|e| format!("previous: {e}"))?;
        }
        Ok(())
    }
}

impl TicketKey {
    fn random() -> Result<TicketKey, String> {
        let mut id = [0u8; ID_LEN];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| e.to_string())?;
        getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
        Ok(TicketKey {
            id: crate::hex::encode(&id),
            secret: crate::hex::encode(&secret),
        })
    }

    fn sealer(&self) -> Result<Sealer, String> {
        let id: [u8; ID_LEN] = crate::hex::decode(&self.id).ok_or("the id is not 16 hex digits")?;
        let secret: [u8; 32] =
            crate::hex::decode(&self.secret).ok_or("the secret is not 64 hex digits")?;
        let key = UnboundKey::new(&AES_256_GCM, &secret).map_err(|_| "not an AES-256 key")?;
        Ok(Sealer {
            id,
            key: LessSafeKey::new(key),
        })
    }
}

struct Sealer {
    id: [u8; ID_LEN],
    key: LessSafeKey,
}

/// The keys ready to seal and open.
struct Ready {
    set: KeySet,
    current: Sealer,
    previous: Option<Sealer>,
}

/// The process's ticket keys, behind one swap: every listener's TLS config shares it, so a
/// reload keeps resumption working, and a new key set (rotated here, or by another
/// instance, or carried from the previous process) applies to every listener at once.
pub struct Ticketer {
    ready: ArcSwap<Ready>,
    lifetime: AtomicU32,
    /// Nonces are this process's random prefix and a counter: unique under a key without a
    /// system call per ticket (instances sharing a key differ by their 64-bit prefixes).
    nonce_prefix: [u8; 8],
    nonces: AtomicU64,
    /// False only when the system could give no randomness for a key (never seen on
    /// Linux): then no ticket is issued, and full handshakes go on.
    enabled: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticketer({:?})", self.ready.load().set.current)
    }
}

impl Ticketer {
    /// Keys of this process's own, made now.
    pub fn new(now_ms: u64) -> Ticketer {
        let made = KeySet::fresh(now_ms).and_then(Ticketer::ready);
        let enabled = made.is_ok();
        let ready = made.unwrap_or_else(|e| {
            tracing::error!(error = %e, "no randomness for a TLS ticket key: session tickets are off");
            let key = TicketKey {
                id: "0".repeat(2 * ID_LEN),
                secret: "0".repeat(64),
            };
            let set = KeySet {
                current: key,
                previous: None,
                since_ms: now_ms,
            };
            Ticketer::ready(set).unwrap_or_else(|_| unreachable!("a well-formed key"))
        });
        let mut nonce_prefix = [0u8; 8];
        let random = getrandom::fill(&mut nonce_prefix).is_ok();
        Ticketer {
            ready: ArcSwap::from_pointee(ready),
            lifetime: AtomicU32::new(2 * 12 * 3600),
            nonce_prefix,
            nonces: AtomicU64::new(0),
            enabled: std::sync::atomic::AtomicBool::new(enabled && random),
        }
    }

    fn ready(set: KeySet) -> Result<Ready, String> {
        Ok(Ready {
            current: set.current.sealer()?,
            previous: set.previous.as_ref().map(TicketKey::sealer).transpose()?,
            set,
        })
    }

    /// The keys in use (to carry, persist or share).
    pub fn keys(&self) -> KeySet {
        self.ready.load().set.clone()
    }

    /// Uses `set` from now on; a set that does not check is refused and nothing changes.
    pub fn install(&self, set: KeySet) -> Result<(), String> {
        if self.ready.load().set == set {
            return Ok(());
        }
        let ready = Ticketer::ready(set)?;
        self.ready.store(Arc::new(ready));
        self.enabled.store(true, Relaxed);
        Ok(())
    }

    /// Tickets are good for two rotation periods (at most seven days): what clients are
    /// told to keep them for.
    pub fn set_rotation(&self, rotate: Duration) {
        let secs = rotate.as_secs().saturating_mul(2);
        self.lifetime.store(
            u32::try_from(secs)
                .unwrap_or(u32::MAX)
                .clamp(1, MAX_LIFETIME),
            Relaxed,
        );
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    fn lifetime(&self) -> u32 {
        self.lifetime.load(Relaxed)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let ready = self.ready.load();
        let key = &ready.current;
        // The counter's high half folds into the prefix, its low half follows it: a
        // process's nonces never repeat.
        let n = self.nonces.fetch_add(1, Relaxed);
        let mut nonce = [0u8; NONCE_LEN];
        let high = ((n >> 32) as u32).to_be_bytes();
        for (i, b) in self.nonce_prefix.iter().enumerate() {
            nonce[i] = b ^ high.get(i).copied().unwrap_or(0);
        }
        nonce[8..].copy_from_slice(&(n as u32).to_be_bytes());
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.id),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = cipher.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let ready = self.ready.load();
        let key = [Some(&ready.current), ready.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(&key.id), &mut buf)
            .ok()?;
        let n = plain.len();
        buf.truncate(n);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn tickets_open_under_the_current_and_the_previous_key_only() {
        let t = Ticketer::new(0);
        let old = t.encrypt(b"session state").unwrap();
        let again = t.encrypt(b"session state").unwrap();
        assert_ne!(
            old[ID_LEN..ID_LEN + NONCE_LEN],
            again[ID_LEN..ID_LEN + NONCE_LEN],
            "a nonce repeated"
        );
        assert_eq!(t.decrypt(&old).unwrap(), b"session state");
        t.install(t.keys().rotated(1).unwrap()).unwrap();
        let new = t.encrypt(b"after").unwrap();
        assert_eq!(t.decrypt(&old).unwrap(), b"session state", "previous key");
        assert_eq!(t.decrypt(&new).unwrap(), b"after");
        t.install(t.keys().rotated(2).unwrap()).unwrap();
        assert!(t.decrypt(&old).is_none(), "two rotations later");
        assert!(t.decrypt(&new).is_some());
        // Tampered, truncated or foreign tickets open to nothing.
        let mut bad = new.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(t.decrypt(&bad).is_none());
        assert!(t.decrypt(&new[..20]).is_none());
        assert!(Ticketer::new(0).decrypt(&new).is_none());
    }

    #[test]
    fn key_sets_from_outside_are_checked_and_secrets_never_shown() {
        let set = KeySet::fresh(5).unwrap();
        let text = serde_json::to_string(&set).unwrap();
        let back: KeySet = serde_json::from_str(&text).unwrap();
        assert_eq!(back, set);
        assert!(back.check().is_ok());
        assert!(!format!("{set:?}").contains(&set.current.secret));
        let mut bad = set.clone();
        bad.current.secret = "zz".into();
        assert!(bad.check().unwrap_err().contains("current: the secret"));
        let t = Ticketer::new(0);
        let before = t.keys();
        assert!(t.install(bad).is_err());
        assert_eq!(t.keys(), before, "a bad set changes nothing");
        assert!(set.due(5 + 1000, Duration::from_secs(1)));
        assert!(!set.due(5 + 999, Duration::from_secs(1)));
    }
}
