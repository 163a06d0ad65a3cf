//! One HTTP/1.x request, from its head to the end of its response: route it, pick a node,
//! send it over a pooled (or new) connection, and relay the response, all on the client
//! connection's own task.
//!
//! Failures before a response are retried on another node: always when the request never
//! left (connect failed); for idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE, TRACE)
//! on a pooled connection the backend had just closed, and once more on another node when
//! the connection died after sending (a backend crash or restart racing the request). Their
//! bodies, up to 64 KiB, are read whole first so the same bytes can be sent again; other
//! methods are never sent twice.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;

use tokio::time::Instant;

use super::local::{respond_local, Then};
use super::plan::{log_request, plan, RequestPlan};
use super::relay::Relayed;
use super::send::{self, RelayHead, ReplyTerms};
use super::tunnel::{self, Kind};
use super::{bridge, relay, ClientIo, Done, Next};
use crate::access_log::Termination;
use crate::metrics::ClientError;
use crate::pool::{AdminState, SessionGuard, SessionKind, Upstream};
use crate::proxy::activity::InflightGuard;
use crate::proxy::codec::buf::Buf;
use crate::proxy::codec::framing::BodyLen;
use crate::proxy::codec::head::{self, Refusal, MAX_HEAD};
use crate::proxy::connect::connect_upstream;
use crate::proxy::ctx::ConnCtx;
use crate::proxy::logged::Logged;
use crate::proxy::walk::{self, Failure, Local, Outcome, Step, Walk};

/// Bodies of idempotent requests up to this size are read whole so the request can be sent
/// again after a failure; larger ones stream and are not retried once sent.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Serves requests while the client sends them: pipelined ones in turn, the first of the
/// connection (`first`) after a look for the HTTP/2 preface. The buffer lives here, so it
/// exists only while the connection is busy (`buf` holds what was read already).
/// It owns the client connection meanwhile and hands it back with the outcome.
pub async fn busy<I: ClientIo>(
    ctx: Arc<ConnCtx>,
    mut io: I,
    first: bool,
    mut buf: Buf,
) -> (I, Done) {
    let mut first = first;
    let closing = &ctx.closing;
    loop {
        let done = match one(&ctx, &mut io, &mut buf, closing, std::mem::take(&mut first)).await {
            Next::KeepAlive if buf.is_empty() => Done::Idle,
            Next::KeepAlive => {
                // A pipelined head (or part of one) is held: the header-read clock runs for
                // it, and the connection is not idle.
                ctx.activity.head_arriving();
                continue;
            }
            Next::Close => Done::Close,
            Next::Tunnel(start) => Done::Tunnel(start, buf),
            Next::H2 => Done::H2(buf),
        };
        return (io, done);
    }
}

/// Serves the request at the front of `buf` (reading until its head is complete). `first`:
/// the connection's first bytes, which may be the HTTP/2 preface instead.
pub async fn one<I: ClientIo>(
    ctx: &ConnCtx,
    io: &mut I,
    buf: &mut Buf,
    closing: &AtomicBool,
    first: bool,
) -> Next {
    if first {
        match super::preface(io, buf).await {
            Ok(false) => {}
            Ok(true) => return Next::H2,
            Err(_) => return Next::Close,
        }
    }
    let (mut plan, head_len, started) = loop {
        let planned = {
            let mut fields = head::fields();
            let held = buf.len();
            match head::parse_request(buf.data(), &mut fields) {
                Ok(Some(req)) => {
                    let started = Instant::now();
                    Some(match plan(ctx, &req, held, started) {
                        Ok(p) => Ok((p, req.len, started)),
                        Err((local, to_head)) => {
                            let log = log_request(ctx, &req, None, started, held);
                            Err((local, to_head, log))
                        }
                    })
                }
                Ok(None) => None,
                Err(r) => Some(Err((Local::from(r), false, unparsed(ctx, held)))),
            }
        };
        match planned {
            Some(Ok(p)) => break p,
            Some(Err((local, to_head, mut log))) => {
                if let Some(e) = ClientError::of_status(local.status) {
                    ctx.listener.metrics.client_error(e);
                    tracing::debug!(peer = %ctx.peer, status = local.status, reason = local.reason, "client error");
                }
                log.end(local.termination(), Some(local.status));
                return respond_local(io, &local, to_head, Then::Close, None).await;
            }
            None => {}
        }
        if buf.len() >= MAX_HEAD {
            ctx.listener.metrics.client_error(ClientError::HeadTooLarge);
            let local = Local::from(Refusal::TooLarge);
            let mut log = unparsed(ctx, buf.len());
            log.end(local.termination(), Some(local.status));
            return respond_local(io, &local, false, Then::Close, None).await;
        }
        match buf.read_from(io, MAX_HEAD).await {
            Ok(0) | Err(_) => return Next::Close,
            Ok(_) => {}
        }
    };
    let _inflight = InflightGuard::new(&ctx.activity);
    buf.consume(head_len);
    let next = if let Some(parts) = plan.h2.take() {
        // Boxed: its state (hyper's stream, the body pump) would otherwise widen every
        // HTTP/1 request's future, HTTP/2 pool or not.
        let bridged = bridge::forward(ctx, io, buf, closing, &mut plan, *parts, started);
        Box::pin(bridged).await
    } else {
        forward(ctx, io, buf, closing, &mut plan, started).await
    };
    // What is left in the buffer is the next request's.
    plan.log.read_ahead(buf.len());
    next
}

/// The line of a request refused before its head could be read.
fn unparsed(ctx: &ConnCtx, held: usize) -> Logged {
    let proto = "HTTP/1.1";
    Logged::start(ctx, proto, Default::default(), Instant::now(), held)
}

/// Sends the request to a node and relays its answer, or answers itself. `started`: when
/// the head was read; the pool's request duration runs from it to the response head.
async fn forward<I: ClientIo>(
    ctx: &ConnCtx,
    io: &mut I,
    buf: &mut Buf,
    closing: &AtomicBool,
    p: &mut RequestPlan,
    started: Instant,
) -> Next {
    let pool = Arc::clone(&p.pool);
    let observe = |at: Instant| {
        pool.metrics
            .request_duration
            .observe(at.duration_since(started).as_secs_f64())
    };
    let multi = pool.nodes.len() > 1;
    // Whether the whole request goes out in one write (and can go out again). A body is
    // read first, whole or its first `request_buffer` bytes: to send it again (idempotent,
    // up to 64 KiB), and so that a slow uploader holds no backend connection meanwhile.
    let whole = match p.body {
        BodyLen::Empty => true,
        BodyLen::Length(n) => {
            let replay = n <= MAX_REPLAY_BODY && p.idempotent && multi;
            let hold = if p.expects_continue {
                // The body comes once the backend's 100 Continue has gone to the client.
                0
            } else if replay {
                n
            } else {
                n.min(u64::from(p.request_buffer))
            };
            if hold as usize > buf.len() && !send::read_body(ctx, io, buf, hold as usize, p).await {
                return Next::Close;
            }
            n as usize <= buf.len()
        }
        _ => false,
    };
    if let (true, BodyLen::Length(n)) = (whole, p.body) {
        p.out.0.extend_from_slice(&buf.data()[..n as usize]);
        buf.consume(n as usize);
    }
    let mut walk = Walk::new(whole && p.idempotent, pool.nodes.len(), started);
    let mut attempts = crate::proxy::sticky::attempts(&pool, &p.client, p.preview);
    let mut ub = Buf::take();
    'nodes: while let Some(i) = attempts.next_node() {
        let node = &pool.nodes[i];
        let session = SessionGuard::new(&node.state, SessionKind::HttpInflight);
        p.log.attempt(i);
        loop {
            let pooled = if p.upgrade.is_none() {
                node.idle.take()
            } else {
                None
            };
            // Timed for the access log only: a clock read costs more than the rest of this.
            let connecting = p.log.is_on().then(Instant::now);
            let (mut up, reused) = match pooled {
                Some(up) => (up, true),
                // Boxed: a connect (TLS handshake included) is a large future and a rare one
                // (connections are pooled); inline, every request's future would carry its size.
                None => match Box::pin(connect_upstream(&pool, i, p.timeouts.connect)).await {
                    Ok(s) => (Upstream::new(s, &node.state.lifecycle), false),
                    Err(_) => {
                        walk.decide(Outcome::NotSent, Instant::now());
                        continue 'nodes;
                    }
                },
            };
            let sending = connecting.map(|c| {
                let now = Instant::now();
                p.log.connected(now.duration_since(c));
                now
            });
            let decide = |_status, body, body_read| ReplyTerms {
                keep_alive: p.keep_alive
                    && body_read
                    && !closing.load(Relaxed)
                    && !ctx.plane.shutdown.is_retired()
                    && !ctx.plane.shutdown.is_draining()
                    // A client still served by a draining node (an affinity continuation)
                    // reconnects for its next request and picks anew.
                    && node.state.admin() != AdminState::Draining
                    && body != BodyLen::UntilClose
                    && !(body == BodyLen::Chunked && p.minor == 0),
                set_cookie: p.client.as_ref().and_then(|c| c.served(&pool, i)),
                node: p.response_rules.as_ref().map(|_| Arc::clone(node)),
            };
            // A request still waiting at the node's drain deadline loses its connection
            // (and is sent again elsewhere if it can be). The response timeout is the
            // connection watchdog's (`timed_out`), so a request starts no timer.
            ctx.timed_out.store(false, Relaxed);
            ctx.waiting_head.store(true, Relaxed);
            let sent = {
                let exchange = async {
                    tokio::select! {
                        biased;
                        r = send::request(io, buf, &mut up.stream, &mut ub, p, whole, &ctx.uploading, decide) => r,
                        _ = &mut up.close => Err(Failure::Upstream { answered: false }),
                    }
                };
                tokio::pin!(exchange);
                std::future::poll_fn(|cx| {
                    if ctx.timed_out.load(Relaxed) {
                        return Poll::Ready(Err(()));
                    }
                    exchange.as_mut().poll(cx).map(Ok)
                })
                .await
            };
            ctx.waiting_head.store(false, Relaxed);
            if ctx.uploading.swap(false, Relaxed) && sent.is_err() {
                // The client stopped sending its body: its fault, not the node's. The
                // upstream connection, which got part of the request, is dropped.
                ctx.listener.metrics.client_error(ClientError::BodyTimeout);
                let local = Local {
                    status: 408,
                    reason: "the request body did not arrive in time",
                };
                p.log.end(Termination::ClientTimeout, Some(408));
                return respond_local(io, &local, false, Then::Close, p.id()).await;
            }
            let now = Instant::now();
            let outcome = match sent {
                Err(_) => Outcome::TimedOut,
                Ok(Ok(head)) => {
                    pool.answered(i, head.status, now.duration_since(walk.asked()));
                    if let Some(sent) = sending {
                        p.log.answered(now.duration_since(sent), head.status);
                    }
                    let answered = Outcome::Answered {
                        status: head.status,
                        second_opinion: head.status >= 500 && walk::second_opinion(&pool, i),
                    };
                    if walk.decide(answered, now).step == Step::Relay {
                        observe(now);
                        p.log.read_ahead(buf.len());
                        return respond(ctx, io, p, i, up, ub, head, session).await;
                    }
                    // A node under analysis failed a request that can be sent again: a
                    // sibling answers it (this connection, its answer unread, closes).
                    tracing::info!(node = %node.key(), status = head.status, "node under analysis answered 5xx; sending the request to a sibling");
                    ub.consume(usize::MAX);
                    continue 'nodes;
                }
                Ok(Err(Failure::Client { bad: false })) => {
                    ctx.listener.metrics.client_error(ClientError::BodyCut);
                    p.log.end(Termination::ClientClosed, None);
                    return Next::Close;
                }
                Ok(Err(Failure::Client { bad: true })) => {
                    ctx.listener.metrics.client_error(ClientError::BadBody);
                    p.log
                        .end(Termination::ClientFault(ClientError::BadBody), Some(400));
                    let local = Local {
                        status: 400,
                        reason: "invalid chunked framing",
                    };
                    return respond_local(io, &local, false, Then::Close, p.id()).await;
                }
                Ok(Err(Failure::Upstream { answered })) => Outcome::Failed { reused, answered },
            };
            let decision = walk.decide(outcome, now);
            if let Some(status) = decision.charge {
                pool.no_answer(i, status);
            }
            match decision.step {
                Step::Again => ub.consume(usize::MAX),
                Step::Next | Step::Relay => {
                    tracing::info!(node = %node.key(), "backend failed before answering");
                    ub.consume(usize::MAX);
                    continue 'nodes;
                }
                Step::Answer { local, keep } => {
                    walk::log_failure(node, outcome);
                    observe(now);
                    p.log.end(local.termination(), Some(local.status));
                    let keep = keep && whole && p.keep_alive;
                    return respond_local(
                        io,
                        &local,
                        p.is_head,
                        Then::keep_if(keep, p.minor),
                        p.id(),
                    )
                    .await;
                }
            }
        }
    }
    let local = walk.exhausted(p.upgrade.is_some());
    pool.metrics.local_response(local.status);
    observe(Instant::now());
    p.log.end(local.termination(), Some(local.status));
    respond_local(
        io,
        &local,
        p.is_head,
        Then::keep_if(whole && p.keep_alive, p.minor),
        p.id(),
    )
    .await
}

/// Relays a final response; on 101 to an upgrade request, hands both connections on to
/// become a tunnel.
#[allow(clippy::too_many_arguments)]
async fn respond<I: ClientIo>(
    ctx: &ConnCtx,
    io: &mut I,
    p: &mut RequestPlan,
    index: usize,
    mut up: Upstream,
    mut ub: Buf,
    head: RelayHead,
    session: SessionGuard,
) -> Next {
    let node = &p.pool.nodes[index];
    ctx.served(&node.state);
    ub.consume(head.len);
    if head.tunnel {
        let kind = p.upgrade.unwrap_or(Kind::Other);
        return Next::Tunnel(Box::new(tunnel::Start {
            node: Arc::clone(node),
            kind,
            backend: up.stream,
            head: head.out,
            early: ub,
            session,
            log: std::mem::replace(&mut p.log, Logged::OFF),
        }));
    }
    let relayed = relay::response(io, &mut up, &mut ub, head.out, head.body, p.minor).await;
    p.log.end(relayed.termination(), None);
    let clean = relayed == Relayed::Whole;
    if clean && !head.upstream_closes && ub.is_empty() {
        node.idle.put(up);
    }
    drop(session);
    if clean && head.keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}
