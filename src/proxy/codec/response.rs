//! Response heads: parsed by httparse and checked (framing, keep-alive), and written for
//! the client in one pass over the parsed fields; interim (1xx) answers; and the answers
//! handoff makes itself. The field rules they share are [`super::head`]'s.

use std::io::Write as _;
use std::mem::MaybeUninit;

use httparse::Header;

use super::framing::{self, Bad, BodyLen};
use super::head::{connection_tokens, dropped, field, framing_field, names_fields, push_decimal};
use super::rules::Vars;
use crate::config::header_rules::HeaderRules;

/// A parsed response head (borrowing the upstream read buffer).
pub struct Response<'h, 'b> {
    pub len: usize,
    pub status: u16,
    pub reason: &'b str,
    pub minor: u8,
    pub headers: &'h [Header<'b>],
}

/// Parses a response head at the front of `buf`; `Ok(None)` while it is incomplete.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [MaybeUninit<Header<'b>>],
) -> Result<Option<Response<'h, 'b>>, Bad> {
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, fields)
    {
        Ok(httparse::Status::Complete(len)) => Ok(Some(Response {
            len,
            status: resp.code.unwrap_or(0),
            reason: resp.reason.unwrap_or(""),
            minor: resp.version.unwrap_or(1),
            headers: resp.headers,
        })),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(Bad::Malformed),
    }
}

/// What handoff needs to know of a response to relay it.
pub struct ResponseInfo {
    pub body: BodyLen,
    /// The backend connection cannot carry another request after this response.
    pub upstream_closes: bool,
    /// `Connection` names other fields (hop-by-hop too): see [`dropped`].
    pub named: bool,
}

pub fn inspect_response(resp: &Response<'_, '_>, to_head: bool) -> Result<ResponseInfo, Bad> {
    let (body, suspect) = framing::response_body(resp.headers, resp.status, to_head)?;
    let conn = connection_tokens(resp.headers);
    let keep_alive = if resp.minor == 0 {
        conn.keep_alive
    } else {
        !conn.close
    };
    Ok(ResponseInfo {
        body,
        upstream_closes: suspect || !keep_alive,
        named: conn.names_fields,
    })
}

/// How the client side of a response is framed and closed.
pub struct ClientSide<'a> {
    /// The client's HTTP/1.x minor version.
    pub minor: u8,
    /// The client connection stays open after this response.
    pub keep_alive: bool,
    /// A `Set-Cookie` value to add (affinity).
    pub set_cookie: Option<&'a [u8]>,
    /// The `Upgrade` value of a 101 that starts a tunnel.
    pub upgrade: Option<&'a [u8]>,
    /// The request ID header and value, in place of the backend's own.
    pub request_id: Option<(&'a str, &'a [u8])>,
    /// The route's `response_headers`, and what their variables stand for.
    pub rules: Option<(&'a HeaderRules, Vars<'a>)>,
}

/// Writes the response head for the client into `out`. A chunked body goes to HTTP/1.0
/// clients without its coding (they cannot parse it), ended by closing.
pub fn write_response(
    out: &mut Vec<u8>,
    resp: &Response<'_, '_>,
    info: &ResponseInfo,
    client: &ClientSide<'_>,
) {
    let body = info.body;
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, resp.status.into());
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let named = info.named;
    let ruled = |name: &str| client.rules.as_ref().is_some_and(|(r, _)| r.replaces(name));
    for h in resp.headers {
        // A bodiless response's Content-Length describes the GET (HEAD) or the cached
        // representation (304): passed on as it is.
        let keep_length = body == BodyLen::Empty && h.name.eq_ignore_ascii_case("content-length");
        let replaced = client
            .request_id
            .is_some_and(|(name, _)| h.name.eq_ignore_ascii_case(name));
        if keep_length
            || (!replaced && !dropped(h.name, resp.headers, false, named) && !ruled(h.name))
        {
            field(out, h.name, h.value);
        }
    }
    if let Some((rules, vars)) = &client.rules {
        super::rules::write_fields(out, rules, vars);
    }
    if let Some((name, id)) = client.request_id {
        field(out, name, id);
    }
    if let Some(cookie) = client.set_cookie {
        field(out, "Set-Cookie", cookie);
    }
    match body {
        BodyLen::Chunked if client.minor == 0 => {}
        other => framing_field(out, other),
    }
    if let Some(value) = client.upgrade {
        field(out, "Connection", b"upgrade");
        field(out, "Upgrade", value);
    } else if !client.keep_alive {
        field(out, "Connection", b"close");
    } else if client.minor == 0 {
        field(out, "Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes an interim (1xx) response for the client, hop-by-hop fields dropped.
pub fn write_interim(out: &mut Vec<u8>, resp: &Response<'_, '_>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, resp.status.into());
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let named = names_fields(resp.headers);
    for h in resp.headers {
        if !dropped(h.name, resp.headers, false, named) {
            field(out, h.name, h.value);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A response handoff makes itself: a status and a one-line plain-text reason.
/// Writes a response handoff makes itself. `connection`: the `Connection` field to send, if
/// any (`close`; `keep-alive` to an HTTP/1.0 client whose connection stays open, which
/// would otherwise wait for the close that ends an HTTP/1.0 exchange).
pub fn write_local(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    to_head: bool,
    connection: Option<&str>,
    request_id: Option<(&str, &[u8])>,
) {
    let phrase = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    // "NNN phrase: reason\n"
    let len = 3 + 1 + phrase.len() + 2 + reason.len() + 1;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len}\r\n"
    );
    if let Some(value) = connection {
        let _ = write!(out, "Connection: {value}\r\n");
    }
    if let Some((name, id)) = request_id {
        field(out, name, id);
    }
    out.extend_from_slice(b"\r\n");
    if !to_head {
        let _ = writeln!(out, "{status} {phrase}: {reason}");
    }
}
