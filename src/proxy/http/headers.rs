//! Header rewriting between client and backend: hop-by-hop headers removed (RFC 9110 §7.6.1,
//! including those a `Connection` header names), `X-Forwarded-For` and `X-Forwarded-Proto`
//! added, and the request put in origin form for an HTTP/1.1 backend.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Response, Uri, Version};

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the de-facto `keep-alive` and
/// `proxy-connection`), as parsed names so removal does no parsing.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Whether a name this long could be hop-by-hop: most names (host, date, server,
/// content-type, content-length...) are ruled out by their length alone.
fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 2 | 7 | 10 | 16..=19)
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers, and any header the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which are present: most messages carry none or one,
    // and comparing names is cheaper than nine hashed lookups.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut any = false;
    for name in headers.keys() {
        if !hop_by_hop_length(name.as_str().len()) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    // Names listed in Connection (beyond the usual keep-alive/close) are extra hop-by-hop
    // headers; the common values need no copy.
    let plain = headers.get(CONNECTION).is_none_or(|v| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    });
    if !plain {
        let listed = headers
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        for name in listed
            .iter()
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(name);
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// The `X-Forwarded-For` value for a client address, made once per client connection.
pub fn forwarded_for(client_ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client_ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Rewrites a client request for the backend. `client` is the client's address as made by
/// [`forwarded_for`].
pub fn prepare_request<B>(req: &mut Request<B>, client: &HeaderValue, proto: &'static str) {
    // HTTP/2 clients carry the host in :authority; HTTP/1.1 backends need a Host header.
    if !req.headers().contains_key(HOST) {
        if let Some(value) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(HOST, value);
        }
    }
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    // Appended to what earlier proxies wrote (several lines are joined, RFC 9110 §5.3).
    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    let value = if prior.peek().is_none() {
        client.clone()
    } else {
        let mut joined = Vec::with_capacity(64);
        for v in prior {
            joined.extend_from_slice(v.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(client.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.clone())
    };
    headers.insert(X_FORWARDED_FOR.clone(), value);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let origin = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = origin.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Rewrites a backend response for the client.
pub fn prepare_response<B>(resp: &mut Response<B>) {
    strip_hop_by_hop(resp.headers_mut());
}

/// The request's host: the Host header, or the URI authority (HTTP/2).
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_adds_forwarding() {
        let mut req = Request::get("http://example.com/a?b=1")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-kept", "yes")
            .body(())
            .unwrap();
        prepare_request(
            &mut req,
            &forwarded_for("192.0.2.7".parse().unwrap()),
            "http",
        );
        let h = req.headers();
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["host"], "example.com");
        assert_eq!(req.uri(), "/a?b=1");
    }

    #[test]
    fn joins_every_prior_forwarded_for_line() {
        let mut req = Request::get("/")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2")
            .body(())
            .unwrap();
        prepare_request(
            &mut req,
            &forwarded_for("2001:db8::1".parse().unwrap()),
            "https",
        );
        let all: Vec<_> = req.headers().get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["10.0.0.1, 10.0.0.2, 2001:db8::1"]);
    }

    #[test]
    fn the_length_filter_lets_every_hop_by_hop_name_through() {
        for name in &HOP_BY_HOP {
            assert!(hop_by_hop_length(name.as_str().len()), "{name}");
        }
    }

    #[test]
    fn leaves_messages_without_hop_by_hop_headers_alone() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("x-a"));
    }
}
