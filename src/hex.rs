//! Lowercase hex for keys kept in files and etcd (the affinity key, TLS ticket keys).

/// `bytes` as lowercase hex digits.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `2 * N` hex digits (either case) as `N` bytes; `None` for anything else.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_the_wrong_length_or_digits() {
        assert_eq!(encode(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(decode::<3>("00AB7f"), Some([0x00, 0xab, 0x7f]));
        assert_eq!(decode::<3>("00ab7"), None);
        assert_eq!(decode::<2>("00ab7f"), None);
        assert_eq!(decode::<1>("zz"), None);
        assert_eq!(decode::<1>("+1"), None);
    }
}
