//! A request head, checked, routed and rewritten for the backend: the plan the exchange
//! ([`super::exchange`]), the send ([`super::send`]) and the bridge to HTTP/2 backends
//! ([`super::bridge`]) all follow.

use std::sync::Arc;

use tokio::time::Instant;

use super::tunnel::Kind;
use crate::access_log;
use crate::config::header_rules::HeaderRules;
use crate::config::{Timeouts, UpstreamProtocol};
use crate::pool::Pool;
use crate::proxy::codec::buf::Out;
use crate::proxy::codec::framing::BodyLen;
use crate::proxy::codec::head;
use crate::proxy::codec::request_id;
use crate::proxy::codec::rules::{self, Vars};
use crate::proxy::codec::translate;
use crate::proxy::codec::translate::ClientAddr;
use crate::proxy::ctx::ConnCtx;
use crate::proxy::logged::Logged;
use crate::proxy::sticky::Client;
use crate::proxy::walk::Local;

/// A request, checked and rewritten for the backend.
pub struct RequestPlan {
    pub body: BodyLen,
    pub keep_alive: bool,
    pub upgrade: Option<Kind>,
    pub idempotent: bool,
    pub is_head: bool,
    pub minor: u8,
    pub pool: Arc<Pool>,
    pub timeouts: Timeouts,
    /// Body bytes read before a backend connection is taken (the listener's
    /// `request_buffer`).
    pub request_buffer: u32,
    /// `Expect: 100-continue`: no body byte is read ahead.
    pub expects_continue: bool,
    pub client: Option<Client>,
    /// A preview request's node (it asked for the version a rollout previews).
    pub preview: Option<usize>,
    /// The head for the backend, and the whole body when it is held.
    pub out: Out,
    /// For an HTTP/2 pool: the request as HTTP/2 parts (`out` stays empty).
    pub h2: Option<Box<http::request::Parts>>,
    /// The request ID (`request_id:`): its header's name and the value sent to the node
    /// and back to the client.
    pub request_id: Option<(Arc<str>, Box<[u8]>)>,
    /// The request's access log line, when the log is on.
    pub log: Logged,
    /// The route's `response_headers`, and the client's address for `${client_ip}`.
    pub response_rules: Option<Box<(Arc<HeaderRules>, ClientAddr)>>,
}

impl RequestPlan {
    /// The response rules, with what their variables stand for once `node` answered.
    pub fn response_rules<'a>(
        &'a self,
        node: Option<&'a crate::pool::Node>,
        version: Option<&'a str>,
    ) -> Option<(&'a HeaderRules, Vars<'a>)> {
        let (rules, client) = self.response_rules.as_deref()?;
        let vars = Vars {
            request_id: self.id().map(|(_, v)| v),
            node: node.map(|n| n.name.as_str()),
            node_version: version,
            client_ip: client.as_bytes(),
        };
        Some((rules, vars))
    }

    /// The request ID's header and value, if IDs are on.
    pub fn id(&self) -> Option<(&str, &[u8])> {
        self.request_id.as_ref().map(|(n, v)| (&**n, &**v))
    }
}

/// The access log record of a request whose head was read at `started` (`held`: the bytes
/// read so far from its head on), with the ID it goes on with.
pub fn log_request(
    ctx: &ConnCtx,
    req: &head::Request<'_, '_>,
    id: Option<&[u8]>,
    started: Instant,
    held: usize,
) -> Logged {
    if !ctx.plane.access_log.is_on() {
        return Logged::OFF;
    }
    let mut fields = access_log::Request {
        request_id: id,
        method: Some(req.method.as_bytes()),
        path: Some(req.target.as_bytes()),
        ..Default::default()
    };
    // One pass over the fields, the first of each name kept.
    for h in req.headers {
        let slot = match h.name.len() {
            4 if h.name.eq_ignore_ascii_case("host") => &mut fields.host,
            10 if h.name.eq_ignore_ascii_case("user-agent") => &mut fields.user_agent,
            10 if h.name.eq_ignore_ascii_case("tracestate") => &mut fields.tracestate,
            11 if h.name.eq_ignore_ascii_case("traceparent") => &mut fields.traceparent,
            _ => continue,
        };
        slot.get_or_insert(h.value);
    }
    let proto = if req.minor == 0 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    Logged::start(ctx, proto, fields, started, held)
}

/// Checks, routes and rewrites a parsed head, read at `started` (`held`: the bytes read so
/// far from its head on). An error is answered locally (the flag says whether the request was a HEAD).
pub fn plan(
    ctx: &ConnCtx,
    req: &head::Request<'_, '_>,
    held: usize,
    started: Instant,
) -> Result<RequestPlan, (Local, bool)> {
    let info = head::inspect(req).map_err(|r| (Local::from(r), false))?;
    let is_head = info.is_head;
    let local = |status, reason| Err((Local { status, reason }, is_head));
    let (pool, timeouts, request_buffer, id_header, rules) = {
        let snapshot = ctx.plane.snapshot.load();
        let id_header = snapshot
            .config
            .request_id
            .as_ref()
            .map(|r| Arc::clone(&r.header));
        match snapshot.listeners.get(&*ctx.listener.name) {
            None => return local(503, "this listener is being removed"),
            Some(l) => match l.route_to(info.host, info.path) {
                None => return local(404, "no route matches this host and path"),
                Some(route) => (
                    Arc::clone(&route.pool),
                    l.config.timeouts,
                    u32::try_from(l.config.request_buffer).unwrap_or(u32::MAX),
                    id_header,
                    (
                        route.request_headers.clone(),
                        route.response_headers.clone(),
                    ),
                ),
            },
        }
    };
    let cookies = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .map(|h| h.value);
    let client = Client::identify(&pool, cookies, ctx.peer.ip());
    let preview = pool.preview_node(req.headers.iter().map(|h| (h.name.as_bytes(), h.value)));
    // The client's ID when it is sane, else a new one (the first of the client's fields).
    let request_id = id_header.map(|name| {
        let sent = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(&name))
            .map(|h| h.value);
        (name, request_id::keep_or_make(sent))
    });
    let id = request_id.as_ref().map(|(n, v)| (&**n, &**v));
    let client_addr = ctx.client_addr();
    let vars = Vars {
        request_id: id.map(|(_, v)| v),
        client_ip: client_addr.as_bytes(),
        ..Vars::default()
    };
    let request_rules = rules.0.as_deref().map(|r| (r, &vars));
    let mut out = Out::take();
    // An HTTP/2 pool gets the request as HTTP/2 parts (`bridge`), others an HTTP/1.1 head.
    let h2 = if pool.config.upstream.protocol == UpstreamProtocol::Http1 {
        let hop = head::Forwarding {
            forwarded_for: client_addr.as_bytes(),
            proto: ctx.proto(),
            request_id: id,
            rules: request_rules,
            default_host: &pool.name,
        };
        head::write_request(&mut out.0, req, &info, &hop);
        None
    } else if info.upgrade.is_some() {
        return local(501, "upgrades are not carried to HTTP/2 backends");
    } else {
        match translate::h2_parts(req, id) {
            Ok(mut parts) => {
                if let Some((r, vars)) = request_rules {
                    rules::apply(&mut parts.headers, r, vars);
                }
                Some(Box::new(parts))
            }
            Err(reason) => return local(400, reason),
        }
    };
    // Made last: a request refused above gets its line from the caller, once.
    let id = request_id.as_ref().map(|(_, v)| &**v);
    let mut log = log_request(ctx, req, id, started, held);
    log.pool(&pool);
    Ok(RequestPlan {
        body: info.body,
        keep_alive: info.keep_alive,
        upgrade: info.upgrade.map(|v| {
            if v.eq_ignore_ascii_case(b"websocket") {
                Kind::WebSocket
            } else {
                Kind::Other
            }
        }),
        idempotent: info.idempotent,
        is_head,
        minor: req.minor,
        pool,
        timeouts,
        request_buffer,
        expects_continue: info.expects_continue,
        client,
        preview,
        out,
        h2,
        request_id,
        log,
        response_rules: rules.1.map(|r| Box::new((r, client_addr))),
    })
}
