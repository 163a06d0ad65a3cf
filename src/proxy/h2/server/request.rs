//! A request's header block, decoded field by field, into an `http::Request` head, with
//! the checks RFC 9113 §8.2 and §8.3 make: a request that fails one is malformed, and is
//! never forwarded.

use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri, Version};

use super::hpack::Value;
use crate::proxy::codec::framing::decimal;

/// Decoded field octets accepted in one head (names, values and 32 per field, as RFC 9113
/// counts them); the HTTP/1 path's limit. A larger head is answered 431.
pub const MAX_HEAD: usize = crate::proxy::codec::head::MAX_HEAD;

/// A request head being built from its fields.
#[derive(Default)]
pub struct Head {
    method: Option<Method>,
    scheme: Option<Scheme>,
    authority: Option<Authority>,
    path: Option<PathAndQuery>,
    headers: HeaderMap,
    content_length: Option<u64>,
    size: usize,
    regular_seen: bool,
    malformed: Option<&'static str>,
}

/// What a header block made (returned by value once per request: boxing the request would
/// cost an allocation to save a move).
#[allow(clippy::large_enum_variant)]
pub enum Built {
    Request(Request<()>, Option<u64>),
    Malformed(&'static str),
    TooLarge,
}

impl Head {
    fn bad(&mut self, why: &'static str) {
        self.malformed.get_or_insert(why);
    }

    /// One decoded field of a request's HEADERS, or of its trailers (`trailer`).
    pub fn field(&mut self, name: &[u8], value: Value<'_>, trailer: bool) {
        self.size += name.len() + value.as_bytes().len() + 32;
        if self.malformed.is_some() || self.size > MAX_HEAD {
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen || trailer {
                return self.bad("a pseudo-header field after a regular one");
            }
            self.pseudo(pseudo, value);
            return;
        }
        self.regular_seen = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return self.bad("an uppercase field name");
        }
        let Ok(name) = HeaderName::from_bytes(name) else {
            return self.bad("a field name with characters a token does not allow");
        };
        let Ok(value) = HeaderValue::from_maybe_shared(value.to_bytes()) else {
            return self.bad("a field value with a control character");
        };
        use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
        if name == CONNECTION
            || name == TRANSFER_ENCODING
            || name == UPGRADE
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
        {
            return self.bad("a connection-specific field");
        }
        if name == TE && value.as_bytes() != b"trailers" {
            return self.bad("a te field other than \"trailers\"");
        }
        if name == CONTENT_LENGTH && !trailer {
            match (decimal(value.as_bytes()), self.content_length) {
                (None, _) => return self.bad("a content-length that is not a number"),
                (Some(n), Some(m)) if n != m => {
                    return self.bad("content-length fields that disagree")
                }
                (Some(n), _) => self.content_length = Some(n),
            }
        }
        self.headers.append(name, value);
    }

    fn pseudo(&mut self, name: &[u8], v: Value<'_>) {
        let value = v.as_bytes();
        match name {
            b"method" if self.method.is_none() => match Method::from_bytes(value) {
                Ok(m) => self.method = Some(m),
                Err(_) => self.bad("a :method that is not a token"),
            },
            b"scheme" if self.scheme.is_none() => match Scheme::try_from(value) {
                Ok(s) => self.scheme = Some(s),
                Err(_) => self.bad("a :scheme that is not a scheme"),
            },
            // Shared with the block or the table, not copied.
            b"authority" if self.authority.is_none() => {
                match Authority::from_maybe_shared(v.to_bytes()) {
                    Ok(a) => self.authority = Some(a),
                    Err(_) => self.bad("an :authority that is not host[:port]"),
                }
            }
            b"path" if self.path.is_none() => match PathAndQuery::from_maybe_shared(v.to_bytes()) {
                Ok(p) if !value.is_empty() => self.path = Some(p),
                _ => self.bad("a :path that is empty or not a path"),
            },
            b"method" | b"scheme" | b"authority" | b"path" => {
                self.bad("a pseudo-header field twice")
            }
            _ => self.bad("an unknown pseudo-header field"),
        }
    }

    /// The request head, once the block has ended.
    pub fn build(self) -> Built {
        if self.size > MAX_HEAD {
            return Built::TooLarge;
        }
        if let Some(why) = self.malformed {
            return Built::Malformed(why);
        }
        let Some(method) = self.method else {
            return Built::Malformed("no :method");
        };
        let mut parts = http::uri::Parts::default();
        if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() || self.authority.is_none() {
                return Built::Malformed("a CONNECT with :scheme or :path, or no :authority");
            }
        } else {
            let (Some(scheme), Some(path)) = (self.scheme, self.path) else {
                return Built::Malformed("no :scheme or no :path");
            };
            parts.scheme = Some(scheme);
            parts.path_and_query = Some(path);
        }
        parts.authority = self.authority;
        let Ok(uri) = Uri::from_parts(parts) else {
            return Built::Malformed("a request target that is not a URI");
        };
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers;
        Built::Request(req, self.content_length)
    }

    /// Trailers, once their block has ended.
    pub fn trailers(self) -> Result<HeaderMap, &'static str> {
        match self.malformed {
            Some(why) => Err(why),
            None if self.size > MAX_HEAD => Err("trailers larger than the head limit"),
            None => Ok(self.headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(fields: &[(&str, &str)]) -> Built {
        let mut h = Head::default();
        for (n, v) in fields {
            h.field(n.as_bytes(), Value::Scratch(v.as_bytes()), false);
        }
        h.build()
    }

    const BASE: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "app.test"),
        (":path", "/a?b=1"),
    ];

    fn with(extra: &[(&str, &str)]) -> Built {
        let fields: Vec<_> = BASE.iter().chain(extra).copied().collect();
        build(&fields)
    }

    fn malformed(b: Built) -> &'static str {
        match b {
            Built::Malformed(why) => why,
            Built::Request(..) => panic!("accepted"),
            Built::TooLarge => panic!("too large"),
        }
    }

    #[test]
    fn a_well_formed_request_becomes_a_request() {
        let Built::Request(req, len) = with(&[("content-length", "5"), ("x-a", "1")]) else {
            panic!("refused");
        };
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().to_string(), "https://app.test/a?b=1");
        assert_eq!(req.headers()["x-a"], "1");
        assert_eq!(len, Some(5));
        assert_eq!(req.version(), Version::HTTP_2);
    }

    #[test]
    fn rfc_9113_malformed_requests_are_refused() {
        assert!(malformed(with(&[("X-Upper", "1")])).contains("uppercase"));
        for c in [
            "connection",
            "transfer-encoding",
            "upgrade",
            "keep-alive",
            "proxy-connection",
        ] {
            assert!(
                malformed(with(&[(c, "x")])).contains("connection-specific"),
                "{c}"
            );
        }
        assert!(malformed(with(&[("te", "gzip")])).contains("te"));
        assert!(matches!(with(&[("te", "trailers")]), Built::Request(..)));
        assert!(malformed(with(&[("x-a", "1"), (":path", "/")])).contains("after a regular"));
        assert!(malformed(with(&[(":path", "/again")])).contains("twice"));
        assert!(malformed(with(&[(":status", "200")])).contains("unknown pseudo"));
        assert!(malformed(with(&[("x-a", "a\r\nb")])).contains("control"));
        assert!(
            malformed(with(&[("content-length", "1"), ("content-length", "2")]))
                .contains("disagree")
        );
        assert!(malformed(with(&[("content-length", "-1")])).contains("not a number"));
        assert!(malformed(build(&[(":method", "GET"), (":path", "/")])).contains(":scheme"));
        assert!(malformed(build(&[(":scheme", "http"), (":path", "/")])).contains(":method"));
        let empty_path = [(":method", "GET"), (":scheme", "http"), (":path", "")];
        assert!(malformed(build(&empty_path)).contains(":path"));
        let connect = [
            (":method", "CONNECT"),
            (":authority", "a:443"),
            (":path", "/"),
        ];
        assert!(malformed(build(&connect)).contains("CONNECT"));
        assert!(matches!(
            build(&[(":method", "CONNECT"), (":authority", "a:443")]),
            Built::Request(..)
        ));
    }

    #[test]
    fn a_head_over_the_limit_is_too_large() {
        let big = "x".repeat(MAX_HEAD);
        assert!(matches!(with(&[("x-big", &big)]), Built::TooLarge));
    }
}
