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

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers, and any header the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Rewrites a client request for the backend.
pub fn prepare_request<B>(req: &mut Request<B>, client_ip: IpAddr, proto: &'static str) {
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
    let forwarded = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client_ip}"),
        None => client_ip.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
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
        prepare_request(&mut req, "192.0.2.7".parse().unwrap(), "http");
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
}
