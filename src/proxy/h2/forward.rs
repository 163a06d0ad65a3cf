//! One HTTP/2 request: route it, pick a node, send it over a pooled (or new) HTTP/1.1
//! upstream connection, and stream the response back.
//!
//! Retries follow the HTTP/1.1 path's rules (`proxy::h1::exchange`): another node when the
//! request never left; for idempotent requests whose body (up to 64 KiB) is held, a fresh
//! connection when a pooled one turns out closed, and once another node when the
//! connection died after sending; other requests are never sent twice.

use std::sync::Arc;

use http::header::HeaderName;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::time::Instant;

use super::body::{local, local_answer, LoggedBody, ProxyBody};
use super::h1_upstream::{self, UpstreamBody};
use super::server::{RequestBody, Waiter};
use crate::access_log::{self, Termination};
use crate::config::{Timeouts, UpstreamProtocol};
use crate::metrics::ClientError;
use crate::pool::h2conn::UpBody;
use crate::pool::{Node, Pool, SessionGuard, SessionKind, Upstream};
use crate::proxy::activity::InflightGuard;
use crate::proxy::codec::buf::{Buf, Out};
use crate::proxy::codec::framing::BodyLen;
use crate::proxy::codec::request_id;
use crate::proxy::codec::rules::{self, Vars};
use crate::proxy::codec::translate::{request_host, write_request_head};
use crate::proxy::connect::connect_upstream;
use crate::proxy::ctx::ConnCtx;
use crate::proxy::h2up::{self, H2Body};
use crate::proxy::logged::Logged;
use crate::proxy::sticky::Client;
use crate::proxy::walk::{self, Failure, Outcome, Step, Walk};

/// Bodies of idempotent requests up to this size are read whole so the request can be sent
/// again after a failure; larger ones stream and are not retried once sent.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

pub async fn handle(ctx: Arc<ConnCtx>, req: Request<RequestBody>) -> Response<LoggedBody> {
    let started = Instant::now();
    let mut log = Logged::OFF;
    let resp = answer(&ctx, req, &mut log, started).await;
    let relay = !matches!(resp.body(), ProxyBody::Local(_));
    resp.map(|body| LoggedBody::new(body, log, relay))
}

/// A request head the server answered 431 itself: counted and logged as on HTTP/1.1 (the
/// head was not kept, so the line has no method or path).
pub fn too_large(ctx: &ConnCtx) {
    ctx.listener.metrics.client_error(ClientError::HeadTooLarge);
    tracing::debug!(peer = %ctx.peer, status = 431, "client error: an HTTP/2 request head over the limit");
    let mut log = Logged::start(ctx, "HTTP/2", Default::default(), Instant::now(), 0);
    log.end(
        Termination::ClientFault(ClientError::HeadTooLarge),
        Some(431),
    );
}

/// The request's access log line (when the log is on).
fn log_h2(ctx: &ConnCtx, parts: &Parts, id: Option<&[u8]>, started: Instant) -> Logged {
    if !ctx.plane.access_log.is_on() {
        return Logged::OFF;
    }
    let field = |name| parts.headers.get(name).map(HeaderValue::as_bytes);
    let fields = access_log::Request {
        request_id: id,
        traceparent: field("traceparent"),
        tracestate: field("tracestate"),
        method: Some(parts.method.as_str().as_bytes()),
        host: request_host(parts).map(str::as_bytes),
        path: parts.uri.path_and_query().map(|p| p.as_str().as_bytes()),
        user_agent: field("user-agent"),
    };
    Logged::start(ctx, "HTTP/2", fields, started, 0).own_bytes()
}

/// Answers one request: a node's response, or handoff's own.
async fn answer(
    ctx: &Arc<ConnCtx>,
    req: Request<RequestBody>,
    log: &mut Logged,
    started: Instant,
) -> Response<ProxyBody> {
    let inflight = InflightGuard::new(&ctx.activity);
    let (mut parts, body) = req.into_parts();
    // RFC 9113 §8.2.1: a field value with leading or trailing whitespace makes the request
    // malformed, and a malformed request is never forwarded.
    let padded = parts.headers.values().any(|v| {
        let b = v.as_bytes();
        matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
    });
    if padded {
        ctx.listener.metrics.client_error(ClientError::BadRequest);
        *log = log_h2(ctx, &parts, None, started);
        log.end(Termination::ClientFault(ClientError::BadRequest), Some(400));
        return local(
            StatusCode::BAD_REQUEST,
            "a field value starts or ends with whitespace",
        );
    }
    let routed = {
        let snapshot = ctx.plane.snapshot.load();
        let id_header = snapshot
            .config
            .request_id
            .as_ref()
            .map(|r| Arc::clone(&r.header));
        snapshot.listeners.get(&*ctx.listener.name).map(|l| {
            let route = l.route_to(request_host(&parts), parts.uri.path()).map(|r| {
                let rules = (r.request_headers.clone(), r.response_headers.clone());
                (Arc::clone(&r.pool), rules)
            });
            let buffer = u64::try_from(l.config.request_buffer).unwrap_or(u64::MAX);
            (route, (l.config.timeouts, buffer, id_header))
        })
    };
    let ((pool, rules), (timeouts, request_buffer, id_header)) = match routed {
        Some((Some(route), timeouts)) => (route, timeouts),
        Some((None, _)) => {
            ctx.listener.metrics.client_error(ClientError::NoRoute);
            *log = log_h2(ctx, &parts, None, started);
            log.end(Termination::ClientFault(ClientError::NoRoute), Some(404));
            return local(StatusCode::NOT_FOUND, "no route matches this host and path");
        }
        None => {
            *log = log_h2(ctx, &parts, None, started);
            log.end(Termination::Shutdown, Some(503));
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                "this listener is being removed",
            );
        }
    };
    // The client's ID when it is sane, else a new one: to the node, and back.
    let id = id_header.and_then(|name| {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let sent = parts.headers.get(&name).map(HeaderValue::as_bytes);
        let value = HeaderValue::from_bytes(&request_id::keep_or_make(sent)).ok()?;
        parts.headers.insert(name.clone(), value.clone());
        Some((name, value))
    });
    *log = log_h2(ctx, &parts, id.as_ref().map(|(_, v)| v.as_bytes()), started);
    log.pool(&pool);
    let client_addr = ctx.client_addr();
    let vars = Vars {
        request_id: id.as_ref().map(|(_, v)| v.as_bytes()),
        client_ip: client_addr.as_bytes(),
        ..Vars::default()
    };
    if let Some(r) = &rules.0 {
        rules::apply(&mut parts.headers, r, &vars);
    }
    // Who answered, for the response rules' `${node}` and `${node_version}`.
    let mut served = None;
    let mut resp = forward(
        ctx,
        &pool,
        (parts, body),
        (timeouts, request_buffer),
        (inflight, log, rules.1.as_ref().map(|_| &mut served)),
        started,
    )
    .await;
    if let (Some(r), Some(node)) = (&rules.1, &served) {
        let version = node.state.version();
        let vars = Vars {
            node: Some(node.name.as_str()),
            node_version: version.as_deref().map(String::as_str),
            ..vars
        };
        rules::apply(resp.headers_mut(), r, &vars);
    }
    if let Some((name, value)) = id {
        resp.headers_mut().insert(name, value);
    }
    resp
}

/// Where the node that answered is noted (only when response rules need it).
type Served<'a> = Option<&'a mut Option<Arc<Node>>>;

/// Idempotent methods: sending one twice has the effect of sending it once.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

async fn forward(
    ctx: &ConnCtx,
    pool: &Arc<Pool>,
    (parts, body): (Parts, RequestBody),
    (timeouts, request_buffer): (Timeouts, u64),
    (inflight, log, served): (InflightGuard, &mut Logged, Served<'_>),
    started: Instant,
) -> Response<ProxyBody> {
    let waiter = body.waiter();
    if pool.config.upstream.protocol != UpstreamProtocol::Http1 {
        if let Some(n) = body.size_hint().exact() {
            log.add_bytes(n, 0);
        }
        let exchange = (inflight, log, served);
        let to_h2 = to_h2(ctx, pool, parts, body, timeouts, exchange, started);
        return Box::pin(to_h2).await;
    }
    let multi = pool.nodes.len() > 1;
    let replayable = idempotent(&parts.method)
        && (body.is_end_stream()
            || (multi
                && body
                    .size_hint()
                    .upper()
                    .is_some_and(|n| n <= MAX_REPLAY_BODY)));
    // A body that fits the listener's `request_buffer` is read before a node is asked, as
    // on HTTP/1: a malformed stream (more DATA than its content-length said) is refused
    // with nothing forwarded.
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= request_buffer.max(MAX_REPLAY_BODY * u64::from(replayable)));
    // The body goes with the head when it is empty or held; otherwise it streams.
    let (framing, held, stream) = if body.is_end_stream() {
        let length = parts.headers.contains_key(http::header::CONTENT_LENGTH);
        let framing = if length {
            BodyLen::Length(0)
        } else {
            BodyLen::Empty
        };
        (framing, None, None)
    } else if replayable || small {
        let limit = request_buffer.max(MAX_REPLAY_BODY) as usize;
        let limited = http_body_util::Limited::new(body, limit);
        match waiter.wait(limited.collect()).await {
            Some(Ok(all)) => {
                let bytes = all.to_bytes();
                (BodyLen::Length(bytes.len() as u64), Some(bytes), None)
            }
            Some(Err(_)) => {
                ctx.listener.metrics.client_error(ClientError::BodyCut);
                log.end(Termination::ClientClosed, Some(400));
                return local(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                );
            }
            None => {
                ctx.listener.metrics.client_error(ClientError::BodyTimeout);
                log.end(Termination::ClientTimeout, Some(408));
                return local(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                );
            }
        }
    } else {
        let framing = match body.size_hint().exact() {
            Some(n) => BodyLen::Length(n),
            None => BodyLen::Chunked,
        };
        (framing, None, Some(body))
    };
    // A streamed body is counted as it goes out (below).
    if let Some(bytes) = &held {
        log.add_bytes(bytes.len() as u64, 0);
    }
    let mut out = Out::take();
    write_request_head(
        &mut out.0,
        &parts,
        framing,
        ctx.client_addr().as_bytes(),
        ctx.proto(),
    );
    if let Some(bytes) = held {
        out.0.extend_from_slice(&bytes);
    }
    let whole = stream.is_none();
    send_all(
        ctx,
        pool,
        &parts,
        out,
        stream,
        framing,
        replayable && whole,
        (timeouts, &waiter),
        (inflight, log, served),
        started,
    )
    .await
}

/// Walks the pool's nodes until one answers (see the module's retry rules).
#[allow(clippy::too_many_arguments)]
async fn send_all(
    ctx: &ConnCtx,
    pool: &Arc<Pool>,
    parts: &Parts,
    out: Out,
    mut stream: Option<RequestBody>,
    framing: BodyLen,
    replayable: bool,
    (timeouts, waiter): (Timeouts, &Waiter),
    (inflight, log, served): (InflightGuard, &mut Logged, Served<'_>),
    started: Instant,
) -> Response<ProxyBody> {
    let observe = |at: Instant| {
        pool.metrics
            .request_duration
            .observe(at.duration_since(started).as_secs_f64())
    };
    let client = client_of(ctx, pool, parts);
    let is_head = parts.method == Method::HEAD;
    let mut walk = Walk::new(replayable, pool.nodes.len(), started);
    let preview = pool.preview_node(
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
    );
    let mut attempts = crate::proxy::sticky::attempts(pool, &client, preview);
    'nodes: while let Some(i) = attempts.next_node() {
        let node = &pool.nodes[i];
        let session = SessionGuard::new(&node.state, SessionKind::HttpInflight);
        log.attempt(i);
        loop {
            let connecting = log.is_on().then(Instant::now);
            let (mut up, reused) = match node.idle.take() {
                Some(up) => (up, true),
                // Boxed: a connect (TLS handshake included) is a large future and a rare one
                // (connections are pooled); inline, every request's future would carry its size.
                None => match Box::pin(connect_upstream(pool, i, timeouts.connect)).await {
                    Ok(s) => (Upstream::new(s, &node.state.lifecycle), false),
                    Err(_) => {
                        walk.decide(Outcome::NotSent, Instant::now());
                        continue 'nodes;
                    }
                },
            };
            let sending = connecting.map(|c| {
                let now = Instant::now();
                log.connected(now.duration_since(c));
                now
            });
            let mut ub = Buf::take();
            let mut streamed = 0u64;
            let exchange = async {
                let Upstream { stream: s, close } = &mut up;
                tokio::select! {
                    r = async {
                        h1_upstream::send(s, &out.0, stream.as_mut(), framing, &mut streamed).await?;
                        h1_upstream::read_head(s, &mut ub, is_head).await
                    } => r,
                    _ = close => Err(Failure::Upstream { answered: false }),
                }
            };
            // The response timeout, kept by the connection's watchdog (see `Waiter`).
            let sent = waiter.wait(exchange).await;
            log.add_bytes(streamed, 0);
            let now = Instant::now();
            let outcome = match sent {
                None => Outcome::TimedOut,
                Some(Ok(head)) => {
                    let status = head.response.status().as_u16();
                    pool.answered(i, status, now.duration_since(walk.asked()));
                    if let Some(sent) = sending {
                        log.answered(now.duration_since(sent), status);
                    }
                    let answered = Outcome::Answered {
                        status,
                        second_opinion: status >= 500 && walk::second_opinion(pool, i),
                    };
                    if walk.decide(answered, now).step != Step::Relay {
                        tracing::info!(node = %node.key(), status, "node under analysis answered 5xx; sending the request to a sibling");
                        continue 'nodes;
                    }
                    observe(now);
                    ctx.served(&node.state);
                    if let Some(served) = served {
                        *served = Some(Arc::clone(node));
                    }
                    let cookie = client.as_ref().and_then(|c| c.served(pool, i));
                    let body =
                        UpstreamBody::new(up, ub, &head, Arc::clone(node), session, inflight);
                    let mut resp = head.response.map(|()| ProxyBody::Upstream(body));
                    if let Some(v) = cookie.and_then(|c| HeaderValue::try_from(c).ok()) {
                        resp.headers_mut().append(http::header::SET_COOKIE, v);
                    }
                    return resp;
                }
                Some(Err(Failure::Client { .. })) => {
                    ctx.listener.metrics.client_error(ClientError::BodyCut);
                    log.end(Termination::ClientClosed, Some(400));
                    return local(
                        StatusCode::BAD_REQUEST,
                        "the request body could not be read",
                    );
                }
                Some(Err(Failure::Upstream { answered })) => Outcome::Failed { reused, answered },
            };
            let decision = walk.decide(outcome, now);
            if let Some(status) = decision.charge {
                pool.no_answer(i, status);
            }
            match decision.step {
                Step::Again => {}
                Step::Next | Step::Relay => {
                    tracing::info!(node = %node.key(), "backend failed before answering");
                    continue 'nodes;
                }
                Step::Answer { local: l, .. } => {
                    walk::log_failure(node, outcome);
                    observe(now);
                    log.end(l.termination(), Some(l.status));
                    return local_answer(l);
                }
            }
        }
    }
    let l = walk.exhausted(false);
    pool.metrics.local_response(l.status);
    observe(Instant::now());
    log.end(l.termination(), Some(l.status));
    local_answer(l)
}

/// An HTTP/2 request to an h2c or h2 pool: one stream on the node's connection, the body
/// and the answer streamed through (see `proxy::h2up`).
async fn to_h2(
    ctx: &ConnCtx,
    pool: &Arc<Pool>,
    parts: Parts,
    body: RequestBody,
    timeouts: Timeouts,
    (inflight, log, served): (InflightGuard, &mut Logged, Served<'_>),
    started: Instant,
) -> Response<ProxyBody> {
    let client = client_of(ctx, pool, &parts);
    let grpc = h2up::is_grpc(&parts.headers);
    let body = UpBody::new(body.map_err(|e| -> h2up::BoxError { Box::new(e) }));
    let req = h2up::upstream_request(ctx, pool, parts, body);
    match h2up::send(pool, req, &client, timeouts, started, log).await {
        Err(f) => local_answer(f),
        Ok(a) => {
            let node = &pool.nodes[a.index];
            ctx.served(&node.state);
            if let Some(served) = served {
                *served = Some(Arc::clone(node));
            }
            let cookie = client.as_ref().and_then(|c| c.served(pool, a.index));
            let (mut head, incoming) = a.resp.into_parts();
            h2up::strip(&mut head.headers);
            if let Some(v) = cookie.and_then(|c| HeaderValue::try_from(c).ok()) {
                head.headers.append(http::header::SET_COOKIE, v);
            }
            let body = H2Body::new(incoming, Arc::clone(node), grpc, a.session, inflight);
            Response::from_parts(head, ProxyBody::H2(Box::new(body)))
        }
    }
}

/// The client as the pool's affinity knows it (its cookie, or its address).
fn client_of(ctx: &ConnCtx, pool: &Pool, parts: &Parts) -> Option<Client> {
    let cookies = parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(|v| v.as_bytes());
    Client::identify(pool, cookies, ctx.peer.ip())
}
