//! Request heads, and the field rules every head follows: parsed by httparse, checked, and
//! written out again for the next hop in one pass over the parsed fields (names keep the
//! case they came with). Response heads are [`super::response`].
//!
//! Dropped on the way through: hop-by-hop fields (RFC 9110 §7.6.1, with the de-facto
//! `keep-alive` and `proxy-connection`) and any field `Connection` names; Content-Length and
//! Transfer-Encoding, which are written again from the framing handoff decided, so the next
//! hop frames the message exactly as handoff did. Added to requests: `X-Forwarded-For`
//! (joined to earlier values) and `X-Forwarded-Proto`.

use std::mem::MaybeUninit;

use httparse::Header;

use super::framing::{self, Bad, BodyLen};
use super::rules::Vars;
use crate::config::header_rules::HeaderRules;

/// Largest head accepted (a request's, a response's too); a larger request head is answered
/// 431. NGINX allows 4 × 8 KiB by default, HAProxy 16 KiB; 64 KiB leaves room for big cookies.
pub const MAX_HEAD: usize = 64 * 1024;

/// Field lines accepted in one head; more is answered 431 (NGINX and HAProxy allow about
/// as many).
pub const MAX_FIELDS: usize = 128;

/// Room for a head's fields, left uninitialised: httparse fills what it parses, so a head
/// costs no 4 KiB of zeroing.
pub type Fields<'b> = [MaybeUninit<Header<'b>>; MAX_FIELDS];

pub fn fields<'b>() -> Fields<'b> {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

/// Appends `n` in decimal (no formatting machinery on the per-request path).
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Why a request is answered by handoff itself, and the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400, with what is wrong.
    Bad(&'static str),
    /// 431: the head is too large or has too many fields.
    TooLarge,
    /// 501: a method or coding handoff does not proxy.
    NotImplemented(&'static str),
}

impl From<Bad> for Refusal {
    fn from(b: Bad) -> Self {
        Refusal::Bad(match b {
            Bad::LengthAndCoding => "Transfer-Encoding together with Content-Length",
            Bad::BadLength => "an invalid or ambiguous Content-Length",
            Bad::BadCoding => "a Transfer-Encoding other than chunked",
            Bad::CodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 request",
            Bad::BareLf => "a line ending in a bare LF",
            Bad::BadChunk => "invalid chunked framing",
            Bad::Malformed => "a malformed request head",
        })
    }
}

/// A parsed request head (borrowing the read buffer).
pub struct Request<'h, 'b> {
    /// Length of the head, CRLFCRLF included.
    pub len: usize,
    pub method: &'b str,
    pub target: &'b str,
    pub minor: u8,
    pub headers: &'h [Header<'b>],
}

/// Parses a request head at the front of `buf`; `Ok(None)` while it is incomplete.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [MaybeUninit<Header<'b>>],
) -> Result<Option<Request<'h, 'b>>, Refusal> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(e) => return Err(Refusal::Bad(parse_error(e))),
    };
    if framing::has_bare_lf(&buf[..len]) {
        return Err(Bad::BareLf.into());
    }
    Ok(Some(Request {
        len,
        method: req.method.unwrap_or(""),
        target: req.path.unwrap_or(""),
        minor: req.version.unwrap_or(1),
        headers: req.headers,
    }))
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "an invalid header name (whitespace before the colon?)",
        httparse::Error::HeaderValue => "an invalid header value (obs-fold, or a control byte?)",
        httparse::Error::NewLine | httparse::Error::Token => "a malformed request line",
        httparse::Error::Version => "an unsupported HTTP version",
        _ => "a malformed request head",
    }
}

/// Whether a `name` field lists `token` (comma-separated, any case). Plain loops: it runs
/// for every request.
fn has_token(headers: &[Header<'_>], name: &str, token: &[u8]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case(name)
            && h.value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// What the `Connection` fields of a message say, read in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// It names other fields, which are then hop-by-hop too.
    pub names_fields: bool,
}

pub fn connection_tokens(headers: &[Header<'_>]) -> ConnectionTokens {
    let mut c = ConnectionTokens::default();
    // A plain loop: this runs for every request and response.
    for h in headers {
        if h.name.len() != 10 || !h.name.eq_ignore_ascii_case("connection") {
            continue;
        }
        for t in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            match t.len() {
                0 => {}
                5 if t.eq_ignore_ascii_case(b"close") => c.close = true,
                10 if t.eq_ignore_ascii_case(b"keep-alive") => c.keep_alive = true,
                7 if t.eq_ignore_ascii_case(b"upgrade") => c.upgrade = true,
                _ => c.names_fields = true,
            }
        }
    }
    c
}

/// Whether `Connection` names fields (beyond `close`, `keep-alive` and `upgrade`), which are
/// then hop-by-hop too. Asked once per message, so most fields need no second scan.
pub(crate) fn names_fields(headers: &[Header<'_>]) -> bool {
    connection_tokens(headers).names_fields
}

/// Whether a field is not passed on as it is: hop-by-hop, named by `Connection`, or
/// rewritten by handoff. `named`: what [`names_fields`] said of this message.
pub(crate) fn dropped(name: &str, headers: &[Header<'_>], request: bool, named: bool) -> bool {
    // Every fixed name starts with c, k, p, t, u or x, and has its own length: most fields
    // are ruled out by their first byte and their length before any comparison.
    let first = name.as_bytes().first().map_or(0, |b| b | 0x20);
    if !matches!(first, b'c' | b'k' | b'p' | b't' | b'u' | b'x') {
        return named && connection_names(headers, name);
    }
    let fixed = match name.len() {
        2 => name.eq_ignore_ascii_case("te"),
        7 => name.eq_ignore_ascii_case("trailer") || name.eq_ignore_ascii_case("upgrade"),
        10 => name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive"),
        14 => name.eq_ignore_ascii_case("content-length"),
        15 => request && name.eq_ignore_ascii_case("x-forwarded-for"),
        16 => name.eq_ignore_ascii_case("proxy-connection"),
        17 => {
            name.eq_ignore_ascii_case("transfer-encoding")
                || (request && name.eq_ignore_ascii_case("x-forwarded-proto"))
        }
        18 => name.eq_ignore_ascii_case("proxy-authenticate"),
        19 => name.eq_ignore_ascii_case("proxy-authorization"),
        _ => false,
    };
    fixed || (named && connection_names(headers, name))
}

/// Whether `Connection` lists `name` (beyond the usual close / keep-alive / upgrade).
fn connection_names(headers: &[Header<'_>], name: &str) -> bool {
    // `Connection: host` cannot take Host away (RFC 9112 §3.2: it is end to end).
    !name.eq_ignore_ascii_case("host") && has_token(headers, "connection", name.as_bytes())
}

/// What handoff needs to know of a request to route and forward it.
pub struct RequestInfo<'b> {
    pub body: BodyLen,
    pub keep_alive: bool,
    /// The `Upgrade` value of an upgrade request (`Connection: upgrade`, HTTP/1.1).
    pub upgrade: Option<&'b [u8]>,
    /// The host to route by: the absolute-form target's authority, or `Host`.
    pub host: Option<&'b str>,
    /// The target in origin form (or `*`), as sent to the backend.
    pub target: &'b str,
    /// The path to route by (the target without its query).
    pub path: &'b str,
    pub idempotent: bool,
    pub is_head: bool,
    /// `Expect: 100-continue`: the body comes only once the backend says so, so it is
    /// never read ahead.
    pub expects_continue: bool,
    /// `Connection` names other fields (hop-by-hop too): see [`dropped`].
    pub named: bool,
}

/// Checks a request and works out its framing, routing and keep-alive.
pub fn inspect<'b>(req: &Request<'_, 'b>) -> Result<RequestInfo<'b>, Refusal> {
    let headers = req.headers;
    let body = framing::request_body(headers, req.minor)?;
    if req.method == "CONNECT" {
        return Err(Refusal::NotImplemented("CONNECT is not proxied"));
    }
    let mut hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host_field = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::Bad("more than one Host field"));
    }
    let host_field = match host_field {
        None => None,
        // uri-host [":" port] (RFC 9112 §3.2): no space, no userinfo, nothing after.
        Some(h) => match std::str::from_utf8(h.value) {
            Ok(v) if valid_host(v) => Some(v),
            _ => return Err(Refusal::Bad("an invalid Host field")),
        },
    };
    let (authority, target) = split_target(req.target)?;
    if req.minor == 1 && host_field.is_none() {
        return Err(Refusal::Bad("an HTTP/1.1 request without Host"));
    }
    let conn = connection_tokens(headers);
    let keep_alive = if req.minor == 0 {
        conn.keep_alive
    } else {
        !conn.close
    };
    let upgrade = if req.minor == 1 && conn.upgrade {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .map(|h| h.value)
    } else {
        None
    };
    Ok(RequestInfo {
        body,
        keep_alive,
        upgrade,
        host: authority.or(host_field),
        target,
        path: target.split('?').next().unwrap_or(target),
        idempotent: matches!(
            req.method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        is_head: req.method == "HEAD",
        expects_continue: req.minor > 0 && has_token(headers, "expect", b"100-continue"),
        named: conn.names_fields,
    })
}

/// A Host value: empty (allowed by RFC 9112 when the target has no authority), or an
/// authority without userinfo.
fn valid_host(v: &str) -> bool {
    v.is_empty()
        || plain_host(v.as_bytes())
        || (!v.contains('@') && http::uri::Authority::try_from(v).is_ok())
}

/// The usual Host, checked without the `http` crate's parse (which copies the value into a
/// new allocation): a name or IPv4 address of letters, digits, dots and hyphens, and an
/// optional port. A subset of what that parse accepts; anything else goes to it.
fn plain_host(v: &[u8]) -> bool {
    let (name, port) = match v.iter().position(|&b| b == b':') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit))
}

/// Splits an absolute-form target (`http://host/path`) into its authority and origin form.
fn split_target(target: &str) -> Result<(Option<&str>, &str), Refusal> {
    if target.starts_with('/') || target == "*" {
        return Ok((None, target));
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .ok_or(Refusal::Bad(
            "a request target that is neither a path nor an absolute URI",
        ))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    Ok((Some(authority), if path.is_empty() { "/" } else { path }))
}

/// What handoff adds to a request on its way to the backend.
#[derive(Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address, for `X-Forwarded-For`.
    pub forwarded_for: &'a [u8],
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'a str,
    /// The request ID's header and value.
    pub request_id: Option<(&'a str, &'a [u8])>,
    /// The route's `request_headers`, and what their variables stand for.
    pub rules: Option<(&'a HeaderRules, &'a Vars<'a>)>,
    /// `Host` for a request that had none (HTTP/1.0): HTTP/1.1 requires one, and NGINX
    /// sends its upstream's name the same way (`$proxy_host`).
    pub default_host: &'a str,
}

/// Writes the request head for the backend into `out`.
pub fn write_request(
    out: &mut Vec<u8>,
    req: &Request<'_, '_>,
    info: &RequestInfo<'_>,
    hop: &Forwarding<'_>,
) {
    let Forwarding {
        forwarded_for,
        proto,
        request_id,
        rules,
        default_host,
    } = *hop;
    let ruled = |name: &str| rules.is_some_and(|(r, _)| r.replaces(name));
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    // A query after the path of an absolute-form target stays with it.
    let absolute = !(req.target.starts_with('/') || req.target == "*");
    let target = if absolute { info.target } else { req.target };
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let has_host = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("host"));
    // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2).
    match info.host {
        Some(host) if absolute || !has_host => field(out, "Host", host.as_bytes()),
        None if !has_host => field(out, "Host", default_host.as_bytes()),
        _ => {}
    }
    let named = info.named;
    for h in req.headers {
        let replaced = (absolute && h.name.eq_ignore_ascii_case("host"))
            || request_id.is_some_and(|(name, _)| h.name.eq_ignore_ascii_case(name));
        if !replaced && !dropped(h.name, req.headers, true, named) && !ruled(h.name) {
            field(out, h.name, h.value);
        }
    }
    // handoff's own fields, unless a rule removes or sets them.
    if !ruled("x-forwarded-for") {
        out.extend_from_slice(b"X-Forwarded-For: ");
        for prior in req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        {
            out.extend_from_slice(prior.value);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(forwarded_for);
        out.extend_from_slice(b"\r\n");
    }
    if !ruled("x-forwarded-proto") {
        field(out, "X-Forwarded-Proto", proto.as_bytes());
    }
    if let Some((name, id)) = request_id.filter(|(name, _)| !ruled(name)) {
        field(out, name, id);
    }
    if let Some((rules, vars)) = rules {
        super::rules::write_fields(out, rules, vars);
    }
    framing_field(out, info.body);
    if let Some(value) = info.upgrade {
        field(out, "Connection", b"upgrade");
        field(out, "Upgrade", value);
    }
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn framing_field(out: &mut Vec<u8>, body: BodyLen) {
    match body {
        BodyLen::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyLen::Chunked => field(out, "Transfer-Encoding", b"chunked"),
        BodyLen::Empty | BodyLen::UntilClose => {}
    }
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
