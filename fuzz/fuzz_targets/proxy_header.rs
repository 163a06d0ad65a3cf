//! PROXY headers for any pair of addresses fit the buffer and parse back to the same addresses.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use handoff::proxy::proxy_protocol::{encode, Version, MAX_LEN};
use libfuzzer_sys::fuzz_target;

fn addr(bytes: &[u8], v6: bool) -> SocketAddr {
    let port = u16::from_be_bytes([bytes[0], bytes[1]]);
    let ip: IpAddr = if v6 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&bytes[2..18]);
        Ipv6Addr::from(o).into()
    } else {
        Ipv4Addr::new(bytes[2], bytes[3], bytes[4], bytes[5]).into()
    };
    SocketAddr::new(ip, port)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 37 {
        return;
    }
    let flags = data[0];
    let src = addr(&data[1..19], flags & 1 != 0);
    let dst = addr(&data[19..37], flags & 2 != 0);
    let mut buf = [0u8; MAX_LEN];
    let v1 = encode(Version::V1, src, dst, &mut buf);
    let text = std::str::from_utf8(&buf[..v1]).expect("v1 is text");
    assert!(text.starts_with("PROXY ") && text.ends_with("\r\n"));
    if src.is_ipv4() == dst.is_ipv4() {
        let fields: Vec<&str> = text.trim_end().split(' ').collect();
        assert_eq!(fields.len(), 6);
        assert_eq!(fields[2].parse::<IpAddr>().unwrap(), src.ip());
        assert_eq!(fields[4].parse::<u16>().unwrap(), src.port());
    }
    let v2 = encode(Version::V2, src, dst, &mut buf);
    assert!(v2 <= MAX_LEN);
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    assert_eq!(v2, 16 + len);
    if src.is_ipv4() && dst.is_ipv4() {
        assert_eq!(&buf[24..26], &src.port().to_be_bytes());
    }
});
