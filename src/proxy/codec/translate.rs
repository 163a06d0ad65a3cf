//! Heads from one HTTP version to the other. An HTTP/2 client's request parts written as an
//! HTTP/1.1 head (hop-by-hop fields dropped, `Host` from `:authority`, `X-Forwarded-For`
//! and `X-Forwarded-Proto` added, framing written from the body handoff sends), a backend's
//! response fields turned into a header map for the HTTP/2 answer, and an HTTP/1.x request
//! head turned into HTTP/2 parts for an HTTP/2 backend.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use http::request::Parts;
use http::Request;

use super::framing::{decimal, BodyLen};
use super::head::{self, dropped, field, framing_field, names_fields};

/// A client's address as text, for `X-Forwarded-For`: formatted once per connection and
/// held inline, so a connection costs no allocation for it.
#[derive(Clone, Copy)]
pub struct ClientAddr {
    text: [u8; 45],
    len: u8,
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        let mut text = [0u8; 45];
        let len = match ip {
            // The common case, written by hand: it runs once per request.
            IpAddr::V4(v4) => {
                let mut at = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[at] = b'.';
                        at += 1;
                    }
                    if octet >= 100 {
                        text[at] = b'0' + octet / 100;
                        at += 1;
                    }
                    if octet >= 10 {
                        text[at] = b'0' + octet / 10 % 10;
                        at += 1;
                    }
                    text[at] = b'0' + octet % 10;
                    at += 1;
                }
                at
            }
            IpAddr::V6(_) => {
                use std::io::Write;
                // 45 bytes hold the longest IPv6 text (with an embedded IPv4 address).
                let mut rest = &mut text[..];
                let _ = write!(rest, "{ip}");
                45 - rest.len()
            }
        };
        ClientAddr {
            text,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }
}

/// The request's host: the URI authority (`:authority` in HTTP/2), else the Host header.
pub fn request_host(parts: &Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(HOST).and_then(|v| v.to_str().ok()))
}

/// Whether an HTTP/2 request field is passed on (HTTP/2 has no `Connection`, so only the
/// fixed names are dropped).
fn passes(name: &HeaderName) -> bool {
    !dropped(name.as_str(), &[], true, false)
}

/// Writes an HTTP/2 request's head for an HTTP/1.1 backend. `client` is the client's
/// address (see [`ClientAddr`]).
pub fn write_request_head(
    out: &mut Vec<u8>,
    parts: &Parts,
    body: BodyLen,
    client: &[u8],
    proto: &str,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // `:authority` is the request's host (RFC 9113 §8.3.1); a `host` field is used only
    // without one.
    let authority = parts.uri.authority();
    if let Some(authority) = authority {
        field(out, "host", authority.as_str().as_bytes());
    }
    for (name, value) in &parts.headers {
        if passes(name) && !(authority.is_some() && name == HOST) {
            field(out, name.as_str(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for prior in parts.headers.get_all("x-forwarded-for") {
        out.extend_from_slice(prior.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client);
    out.extend_from_slice(b"\r\n");
    field(out, "x-forwarded-proto", proto.as_bytes());
    framing_field(out, body);
    out.extend_from_slice(b"\r\n");
}

/// A backend's response fields for an HTTP/2 answer: hop-by-hop ones and the framing
/// dropped (HTTP/2 frames bodies itself), a known length kept as `content-length`. `head`
/// is the head the fields were parsed from.
pub fn response_headers(head: &[u8], fields: &[httparse::Header<'_>], body: BodyLen) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields.len());
    let named = names_fields(fields);
    // The values share one copy of the head: one allocation rather than one per field.
    let shared = bytes::Bytes::copy_from_slice(head);
    let base = head.as_ptr() as usize;
    // A known length keeps the backend's own field when it says the same (no new value).
    let mut length_kept = false;
    for h in fields {
        let is_length = h.name.len() == 14 && h.name.eq_ignore_ascii_case("content-length");
        let keep_length = is_length
            && match body {
                BodyLen::Empty => true,
                BodyLen::Length(n) => !length_kept && decimal(h.value) == Some(n),
                _ => false,
            };
        if !keep_length && dropped(h.name, fields, false, named) {
            continue;
        }
        length_kept |= is_length;
        let at = (h.value.as_ptr() as usize).wrapping_sub(base);
        let value = match shared.get(at..at + h.value.len()) {
            Some(v) if v == h.value => {
                HeaderValue::from_maybe_shared(shared.slice(at..at + v.len()))
            }
            _ => HeaderValue::from_bytes(h.value),
        };
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), value) {
            map.append(name, value);
        }
    }
    if let BodyLen::Length(n) = body {
        if !length_kept {
            map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    map
}

/// An HTTP/1.x request head as the parts of an HTTP/2 request (for an HTTP/2 backend):
/// hop-by-hop fields dropped, the request ID (`request_id`: its header and value) in place
/// of the client's.
pub fn h2_parts(
    req: &head::Request<'_, '_>,
    request_id: Option<(&str, &[u8])>,
) -> Result<Parts, &'static str> {
    let mut builder = Request::builder()
        .method(req.method)
        .uri(req.target)
        .version(http::Version::HTTP_2);
    // `x-forwarded-*` stay for the HTTP/2 upstream (`proxy::h2up`), which appends to them; `te:
    // trailers` is the one `te` HTTP/2 allows.
    for h in req.headers {
        let te_trailers =
            h.name.eq_ignore_ascii_case("te") && h.value.eq_ignore_ascii_case(b"trailers");
        let replaced = request_id.is_some_and(|(name, _)| h.name.eq_ignore_ascii_case(name));
        if te_trailers || !(replaced || head::dropped(h.name, req.headers, false, true)) {
            builder = builder.header(h.name, h.value);
        }
    }
    if let Some((name, id)) = request_id {
        builder = builder.header(name, id);
    }
    builder
        .body(())
        .map(|r| r.into_parts().0)
        .map_err(|_| "the request cannot be sent over HTTP/2")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_request_becomes_an_http11_head() {
        let req = http::Request::post("https://example.test/a?b=1")
            .header("te", "trailers")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-proto", "http")
            .header("content-length", "3")
            .header("x-kept", "yes")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        write_request_head(&mut out, &parts, BodyLen::Length(3), b"192.0.2.7", "https");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: example.test\r\nx-kept: yes\r\n\
             x-forwarded-for: 10.0.0.1, 192.0.2.7\r\nx-forwarded-proto: https\r\n\
             Content-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn client_addresses_are_written_whole() {
        for ip in [
            "192.0.2.7",
            "2001:db8::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let addr = ClientAddr::new(ip.parse().unwrap());
            assert_eq!(
                addr.as_bytes(),
                ip.parse::<IpAddr>().unwrap().to_string().as_bytes()
            );
        }
    }

    #[test]
    fn response_fields_lose_hop_by_hop_and_framing() {
        let fields = [
            httparse::Header {
                name: "Connection",
                value: b"x-private",
            },
            httparse::Header {
                name: "X-Private",
                value: b"1",
            },
            httparse::Header {
                name: "Transfer-Encoding",
                value: b"chunked",
            },
            httparse::Header {
                name: "Server",
                value: b"b",
            },
        ];
        let map = response_headers(b"", &fields, BodyLen::Chunked);
        assert_eq!(map.len(), 1);
        assert_eq!(map["server"], "b");
        let map = response_headers(b"", &fields[3..], BodyLen::Length(7));
        assert_eq!(map["content-length"], "7");
        // The backend's own length is kept when it agrees, once; replaced when not.
        let head = b"Content-Length: 7\r\nContent-Length: 7\r\n";
        let lengths = [
            httparse::Header {
                name: "Content-Length",
                value: &head[16..17],
            },
            httparse::Header {
                name: "Content-Length",
                value: &head[35..36],
            },
        ];
        let map = response_headers(head, &lengths, BodyLen::Length(7));
        assert_eq!(map.get_all("content-length").iter().count(), 1);
        assert_eq!(map["content-length"], "7");
        let map = response_headers(head, &lengths, BodyLen::Length(9));
        assert_eq!(
            map.get_all("content-length").iter().collect::<Vec<_>>(),
            ["9"]
        );
    }
}
