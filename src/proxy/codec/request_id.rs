//! Request IDs (`request_id:`): a client's own ID is kept when it is sane (visible ASCII,
//! at most [`MAX_LEN`] bytes, as HAProxy and Envoy trust one); otherwise handoff makes one,
//! 32 hex digits like NGINX's `$request_id`. The ID goes to the node and back to the client.

use std::cell::Cell;

/// The longest client ID kept.
pub const MAX_LEN: usize = 128;

/// An ID made here: 128 random bits as 32 lowercase hex digits.
pub type Made = [u8; 32];

/// Whether a client's ID can be kept as it is.
pub fn valid(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

thread_local! {
    /// Per-thread generator state, seeded from the OS once per thread.
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    // A failed read leaves zeros: the IDs are still distinct per thread by address.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b) ^ (&b as *const _ as u64)
}

/// wyrand: one multiply per 64 bits, statistically sound for IDs (not for secrets).
fn next() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    })
}

/// A new ID.
pub fn make() -> Made {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (half, word) in [next(), next()].into_iter().enumerate() {
        for i in 0..16 {
            out[half * 16 + i] = HEX[((word >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    out
}

/// The ID of a request: the client's `sent` one when [`valid`], else a new one.
pub fn keep_or_make(sent: Option<&[u8]>) -> Box<[u8]> {
    match sent {
        Some(id) if valid(id) => id.into(),
        _ => Box::new(make()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        assert_eq!(&*keep_or_make(Some(b"abc-123")), b"abc-123");
        let long = [b'a'; MAX_LEN];
        assert_eq!(&*keep_or_make(Some(&long)), &long[..]);
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            b"\x7f",
            "é".as_bytes(),
            &[b'a'; MAX_LEN + 1],
        ] {
            let id = keep_or_make(Some(bad));
            assert_ne!(&*id, bad);
            assert_eq!(id.len(), 32);
        }
    }

    #[test]
    fn made_ids_are_hex_and_distinct() {
        let ids: std::collections::HashSet<Made> = (0..10_000).map(|_| make()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids
            .iter()
            .all(|id| id.iter().all(u8::is_ascii_hexdigit) && valid(id)));
    }
}
