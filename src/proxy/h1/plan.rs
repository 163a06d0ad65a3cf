//! A request head, checked, routed and rewritten for the backend: the plan the exchange
//! ([`super::exchange`]), the send ([`super::send`]) and the bridge to HTTP/2 backends
//! ([`super::bridge`]) all follow.

use std::sync::Arc;

use super::tunnel::Kind;
use crate::config::{Timeouts, UpstreamProtocol};
use crate::pool::Pool;
use crate::proxy::codec::buf::Out;
use crate::proxy::codec::framing::BodyLen;
use crate::proxy::codec::head;
use crate::proxy::codec::translate;
use crate::proxy::ctx::ConnCtx;
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
}

/// Checks, routes and rewrites a parsed head. An error is answered locally (the flag says
/// whether the request was a HEAD).
pub fn plan(ctx: &ConnCtx, req: &head::Request<'_, '_>) -> Result<RequestPlan, (Local, bool)> {
    let info = head::inspect(req).map_err(|r| (Local::from(r), false))?;
    let is_head = info.is_head;
    let local = |status, reason| Err((Local { status, reason }, is_head));
    let (pool, timeouts, request_buffer) = {
        let snapshot = ctx.plane.snapshot.load();
        match snapshot.listeners.get(&*ctx.listener.name) {
            None => return local(503, "this listener is being removed"),
            Some(l) => match l.route(info.host, info.path) {
                None => return local(404, "no route matches this host and path"),
                Some(pool) => (
                    Arc::clone(pool),
                    l.config.timeouts,
                    u32::try_from(l.config.request_buffer).unwrap_or(u32::MAX),
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
    let mut out = Out::take();
    // An HTTP/2 pool gets the request as HTTP/2 parts (`bridge`), others an HTTP/1.1 head.
    let h2 = if pool.config.upstream.protocol == UpstreamProtocol::Http1 {
        head::write_request(
            &mut out.0,
            req,
            &info,
            ctx.client_addr().as_bytes(),
            ctx.proto(),
        );
        None
    } else if info.upgrade.is_some() {
        return local(501, "upgrades are not carried to HTTP/2 backends");
    } else {
        match translate::h2_parts(req) {
            Ok(parts) => Some(Box::new(parts)),
            Err(reason) => return local(400, reason),
        }
    };
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
    })
}
