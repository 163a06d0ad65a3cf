//! Encoding handoff's responses (RFC 7541 §6.2.2, §6.2.3): the static table for names and
//! common statuses, plain literals for the rest.

/// Writes an integer with an `n`-bit prefix, the prefix's other bits `high`.
fn put_integer(out: &mut Vec<u8>, value: usize, n: u8, high: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A string literal, never Huffman-coded: coding costs more CPU than the octets it saves
/// cost to send on the connections handoff serves.
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, s.len(), 7, 0);
    out.extend_from_slice(s);
}

/// Encodes `:status` (indexed where the static table has it).
pub fn put_status(out: &mut Vec<u8>, status: u16) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index != 0 {
        out.push(0x80 | index);
    } else {
        // Literal without indexing, name :status (index 8).
        put_integer(out, 8, 4, 0);
        let mut digits = itoa::Buffer::new();
        put_string(out, digits.format(status).as_bytes());
    }
}

/// Encodes one field as a literal without indexing (never indexed for credentials), the
/// name by static index where the table has it.
pub fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let sensitive = matches!(
        name,
        b"authorization" | b"proxy-authorization" | b"set-cookie" | b"cookie"
    );
    let high = if sensitive { 0x10 } else { 0 };
    match static_name(name) {
        Some(i) => put_integer(out, i, 4, high),
        None => {
            out.push(high);
            put_string(out, name);
        }
    }
    put_string(out, value);
}

/// The static table index of a name (its first entry), for the names responses carry.
fn static_name(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"content-type" => 31,
        b"content-length" => 28,
        b"date" => 33,
        b"server" => 54,
        b"cache-control" => 24,
        b"set-cookie" => 55,
        b"etag" => 34,
        b"last-modified" => 44,
        b"location" => 46,
        b"vary" => 59,
        b"content-encoding" => 26,
        b"accept-ranges" => 18,
        b"expires" => 36,
        b"age" => 21,
        b"via" => 60,
        b"link" => 45,
        b"allow" => 22,
        b"retry-after" => 53,
        b"content-range" => 30,
        b"content-language" => 27,
        b"content-location" => 29,
        b"content-disposition" => 25,
        b"strict-transport-security" => 56,
        b"access-control-allow-origin" => 20,
        b"www-authenticate" => 61,
        b"proxy-authenticate" => 48,
        b"refresh" => 52,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::h2::server::hpack::{Decoder, STATIC};
    use bytes::Bytes;

    #[test]
    fn encoded_responses_decode_back() {
        let mut out = Vec::new();
        put_status(&mut out, 200);
        put_status(&mut out, 503);
        put_field(&mut out, b"content-type", b"text/plain");
        put_field(&mut out, b"x-custom", b"some value");
        put_field(&mut out, b"set-cookie", b"a=b");
        let mut d = Decoder::default();
        let mut got = Vec::new();
        d.decode(&Bytes::from(out), |n, v| {
            got.push((n.to_vec(), v.to_bytes().to_vec()))
        })
        .unwrap();
        let got: Vec<(&[u8], &[u8])> = got.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        assert_eq!(
            got,
            [
                (&b":status"[..], &b"200"[..]),
                (b":status", b"503"),
                (b"content-type", b"text/plain"),
                (b"x-custom", b"some value"),
                (b"set-cookie", b"a=b"),
            ]
        );
        assert_eq!(d.table_len(), 0, "the encoder never indexes");
        // Every name the encoder indexes is the static table's.
        for (i, (name, _)) in STATIC.iter().enumerate() {
            if let Some(j) = static_name(name.as_bytes()) {
                assert_eq!(STATIC[j - 1].0, *name, "index {j} for {name}");
                assert!(j <= i + 1);
            }
        }
        // Long values take multi-byte lengths.
        let long = vec![b'~'; 300];
        let mut out = Vec::new();
        put_field(&mut out, b"x-long", &long);
        let mut seen = 0;
        Decoder::default()
            .decode(&Bytes::from(out), |_, v| seen = v.as_bytes().len())
            .unwrap();
        assert_eq!(seen, 300);
    }
}
