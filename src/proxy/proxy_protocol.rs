//! PROXY protocol headers (v1 text, v2 binary) sent to backends before the client's bytes,
//! so they see the client's address and port instead of handoff's
//! (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>).

use std::io::Write;
use std::net::SocketAddr;

pub use crate::config::ProxyProtocol as Version;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The largest header either version produces (v1 with two IPv6 addresses: 104 bytes).
pub const MAX_LEN: usize = 108;

/// Encodes the header for a TCP connection from `src` (the client) to `dst` (the address it
/// connected to) into `buf`; returns the length.
pub fn encode(
    version: Version,
    src: SocketAddr,
    dst: SocketAddr,
    buf: &mut [u8; MAX_LEN],
) -> usize {
    match version {
        Version::V1 => encode_v1(src, dst, buf),
        Version::V2 => encode_v2(src, dst, buf),
    }
}

fn encode_v1(src: SocketAddr, dst: SocketAddr, buf: &mut [u8; MAX_LEN]) -> usize {
    let mut out = &mut buf[..];
    let room = out.len();
    let written = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            write!(
                out,
                "PROXY TCP4 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            write!(
                out,
                "PROXY TCP6 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
        }
        // Mixed families cannot be expressed; the spec's answer is UNKNOWN.
        _ => write!(out, "PROXY UNKNOWN\r\n"),
    };
    debug_assert!(written.is_ok(), "v1 header fits in MAX_LEN");
    room - out.len()
}

fn encode_v2(src: SocketAddr, dst: SocketAddr, buf: &mut [u8; MAX_LEN]) -> usize {
    buf[..12].copy_from_slice(&V2_SIGNATURE);
    buf[12] = 0x21; // version 2, command PROXY
    let body = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            buf[13] = 0x11; // TCP over IPv4
            buf[16..20].copy_from_slice(&s.ip().octets());
            buf[20..24].copy_from_slice(&d.ip().octets());
            buf[24..26].copy_from_slice(&s.port().to_be_bytes());
            buf[26..28].copy_from_slice(&d.port().to_be_bytes());
            12
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            buf[13] = 0x21; // TCP over IPv6
            buf[16..32].copy_from_slice(&s.ip().octets());
            buf[32..48].copy_from_slice(&d.ip().octets());
            buf[48..50].copy_from_slice(&s.port().to_be_bytes());
            buf[50..52].copy_from_slice(&d.port().to_be_bytes());
            36
        }
        _ => {
            buf[13] = 0x00; // UNSPEC: the receiver uses the connection's own addresses
            0
        }
    };
    buf[14..16].copy_from_slice(&(body as u16).to_be_bytes());
    16 + body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: Version, src: &str, dst: &str) -> Vec<u8> {
        let mut buf = [0u8; MAX_LEN];
        let n = encode(v, src.parse().unwrap(), dst.parse().unwrap(), &mut buf);
        buf[..n].to_vec()
    }

    #[test]
    fn v1_text() {
        assert_eq!(
            header(Version::V1, "192.0.2.1:5000", "198.51.100.2:80"),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 80\r\n"
        );
        assert_eq!(
            header(Version::V1, "[2001:db8::1]:5000", "[::1]:443"),
            b"PROXY TCP6 2001:db8::1 ::1 5000 443\r\n"
        );
        assert_eq!(
            header(Version::V1, "192.0.2.1:5000", "[::1]:443"),
            b"PROXY UNKNOWN\r\n"
        );
        let longest = header(
            Version::V1,
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        );
        assert_eq!(longest.len(), 104);
    }

    #[test]
    fn v2_binary() {
        let h = header(Version::V2, "192.0.2.1:5000", "198.51.100.2:80");
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[20..24], &[198, 51, 100, 2]);
        assert_eq!(&h[24..28], &[0x13, 0x88, 0, 80]);
        let h6 = header(Version::V2, "[2001:db8::1]:1", "[::1]:2");
        assert_eq!(h6.len(), 52);
        assert_eq!(&h6[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(
            header(Version::V2, "192.0.2.1:1", "[::1]:2")[12..16],
            [0x21, 0x00, 0, 0]
        );
    }
}
