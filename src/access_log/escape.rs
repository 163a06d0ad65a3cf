//! Escaping values for a line: JSON strings that always parse (NGINX's `escape=json`, made
//! strict), and text fields that never split the line, both with a fast path for the
//! printable ASCII most values are.

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A JSON string's contents: `"`, `\` and control characters escaped; bytes that are not
/// UTF-8 escaped one by one as `\u00XX` (the line stays valid JSON whatever the client sent).
pub fn escape_json(out: &mut Vec<u8>, v: &[u8]) {
    // Most values are printable ASCII with nothing to escape: found 8 bytes at a time.
    if plain_ascii(v) {
        out.extend_from_slice(v);
        return;
    }
    let utf8 = v.is_ascii() || std::str::from_utf8(v).is_ok();
    let mut start = 0;
    for (i, &b) in v.iter().enumerate() {
        let plain = match b {
            b'"' | b'\\' => false,
            0..=0x1f | 0x7f => false,
            0x80.. => utf8,
            _ => true,
        };
        if plain {
            continue;
        }
        out.extend_from_slice(&v[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&v[start..]);
}

/// Whether `v` is printable ASCII without `"` or `\` (nothing to escape, in JSON or text).
fn plain_ascii(v: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero: its high bit set in the result (exact when no byte of `x`
    // has its own high bit set, which `special` checks first).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let special = |x: u64| {
        // >= 0x7f (DEL and non-ASCII), < 0x20 (controls), '"' and '\\'.
        (x.wrapping_add(ONES) | x) & HIGH != 0
            || x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0
            || zero(x ^ (ONES * u64::from(b'"'))) != 0
            || zero(x ^ (ONES * u64::from(b'\\'))) != 0
    };
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        if special(u64::from_le_bytes(word)) {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// A text field's contents: printable ASCII as is, `"` and `\` escaped with `\`, any other
/// byte as `\xXX` (NGINX's default escaping), so a field never breaks the line apart.
pub fn escape_text(out: &mut Vec<u8>, v: &[u8]) {
    if plain_ascii(v) {
        out.extend_from_slice(v);
        return;
    }
    for &b in v {
        match b {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            0x20..=0x7e => out.push(b),
            _ => {
                out.extend_from_slice(b"\\x");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: &[u8]) -> String {
        let mut out = Vec::new();
        escape_json(&mut out, v);
        String::from_utf8(out).expect("escaped JSON is UTF-8")
    }

    #[test]
    fn json_strings_parse_back_whatever_the_bytes() {
        for v in [
            &b"plain"[..],
            b"quote \" and \\ backslash",
            b"\x00\x01\n\r\t\x7f",
            "caf\u{e9} \u{1F600}".as_bytes(),
            b"\xff\xfe not utf-8 \xc3",
        ] {
            let text = format!("\"{}\"", json(v));
            let back: String = serde_json::from_str(&text).expect("parses");
            if let Ok(s) = std::str::from_utf8(v) {
                assert_eq!(back, s);
            } else {
                // Each byte became the character of the same number.
                let latin: String = v.iter().map(|&b| char::from(b)).collect();
                assert_eq!(back, latin);
            }
        }
    }

    #[test]
    fn the_fast_check_agrees_with_the_byte_by_byte_one() {
        let slow = |v: &[u8]| {
            v.iter()
                .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        };
        let mut v: Vec<u8> = b"GET /a/b?c=d&e=f HTTP/1.1 curl/8.5 0123456789".to_vec();
        assert!(plain_ascii(&v));
        for at in 0..v.len() {
            for b in 0..=255u8 {
                let keep = v[at];
                v[at] = b;
                assert_eq!(plain_ascii(&v), slow(&v), "byte {b:#x} at {at}");
                v[at] = keep;
            }
        }
    }

    #[test]
    fn text_fields_never_split_the_line() {
        let mut out = Vec::new();
        escape_text(&mut out, b"a b\"c\\d\ne\xff");
        assert_eq!(out, b"a b\\\"c\\\\d\\x0ae\\xff");
    }
}
