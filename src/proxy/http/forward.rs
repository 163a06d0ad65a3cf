//! One HTTP/2 request: route it, pick a node, send it over a new HTTP/1.1 upstream
//! connection, and stream the response back.
//!
//! Failures before a response are retried on another node: always when the request never
//! left (connect failed); and once for
//! idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) when the connection died
//! after sending (a backend crash or restart racing the request). Their bodies, up to
//! 64 KiB, are buffered so they can be sent again verbatim; other methods are never sent
//! twice.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONNECTION;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::time::{timeout, Instant};

use super::body::{local, ProxyBody, Upstream};
use super::headers::{prepare_request, prepare_response, request_host};
use super::upstream::{handshake, UpBody};
use super::ConnCtx;
use crate::config::Timeouts;
use crate::pool::{AdminState, Attempts, NodeState, Pool, SessionGuard, SessionKind, Strategy};
use crate::proxy::activity::InflightGuard;
use crate::proxy::connect::connect_node;
use crate::proxy::sticky::Client;
use arc_swap::ArcSwapOption;

pub async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let inflight = InflightGuard::new(&ctx.activity);
    if req.version() == Version::HTTP_2 {
        ctx.activity.set_h2();
    }
    let routed = {
        let snapshot = ctx.plane.snapshot.load();
        snapshot.listeners.get(&*ctx.listener.name).map(|l| {
            let pool = l.route(request_host(&req), req.uri().path()).cloned();
            (pool, l.config.timeouts)
        })
    };
    let (pool, timeouts) = match routed {
        Some((Some(pool), timeouts)) => (pool, timeouts),
        Some((None, _)) => {
            return Ok(local(
                StatusCode::NOT_FOUND,
                "no route matches this host and path",
            ))
        }
        None => {
            return Ok(local(
                StatusCode::SERVICE_UNAVAILABLE,
                "this listener is being removed",
            ))
        }
    };
    let started = Instant::now();
    let resp = match buffer_for_replay(req, timeouts.response).await {
        Ok(mut req) => {
            let keep_alive_h1 = req.version() < Version::HTTP_2;
            prepare_request(&mut req, &ctx.forwarded_for, ctx.proto);
            let cookies = req
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .map(|v| v.as_bytes());
            let client = Client::identify(&pool, cookies, ctx.peer.ip());
            let mut resp = forward(
                &pool,
                req,
                timeouts,
                inflight,
                client,
                keep_alive_h1,
                &ctx.served_by,
            )
            .await;
            if keep_alive_h1 && ctx.plane.shutdown.is_retired() {
                // A new process took over: the client reconnects, and reaches it.
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
        Err(refused) => refused,
    };
    pool.metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(resp)
}

/// Idempotent methods: sending one twice has the effect of sending it once.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Bodies of idempotent requests up to this size are buffered so the request can be sent
/// again after a failure; larger ones stream and are not retried once sent.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Buffers the body of a small idempotent request (see [`MAX_REPLAY_BODY`]).
async fn buffer_for_replay(
    req: Request<Incoming>,
    limit: std::time::Duration,
) -> Result<Request<UpBody>, Response<ProxyBody>> {
    let small = req
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MAX_REPLAY_BODY);
    if !idempotent(req.method()) || req.body().is_end_stream() || !small {
        let (parts, body) = req.into_parts();
        let body = if body.is_end_stream() {
            UpBody::Buffered(None)
        } else {
            UpBody::Client(body)
        };
        return Ok(Request::from_parts(parts, body));
    }
    let (parts, body) = req.into_parts();
    match timeout(
        limit,
        http_body_util::Limited::new(body, MAX_REPLAY_BODY as usize).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => Ok(Request::from_parts(
            parts,
            UpBody::Buffered(Some(collected.to_bytes())),
        )),
        Ok(Err(_)) => Err(local(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )),
        Err(_) => Err(local(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )),
    }
}

/// What it takes to send a request again: its head and its buffered body. Only idempotent
/// requests whose body (if any) is buffered qualify.
fn replayable(req: &Request<UpBody>) -> Option<(Parts, Option<Bytes>)> {
    let UpBody::Buffered(body) = req.body() else {
        return None;
    };
    if !idempotent(req.method()) {
        return None;
    }
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    Some((head.into_parts().0, body.clone()))
}

async fn forward(
    pool: &Arc<Pool>,
    mut req: Request<UpBody>,
    timeouts: Timeouts,
    inflight: InflightGuard,
    client: Option<Client>,
    keep_alive_h1: bool,
    served_by: &ArcSwapOption<NodeState>,
) -> Response<ProxyBody> {
    // A request lost after sending is only ever resent to another node: with one node,
    // keeping a copy would be wasted work.
    let mut replay = if pool.nodes.len() > 1 {
        replayable(&req)
    } else {
        None
    };
    let mut unreachable = false;
    let mut lost = false;
    let mut attempts = match &client {
        Some(c) => c.attempts(pool),
        None => Attempts::new(pool, Strategy::Balance, None),
    };
    while let Some(i) = attempts.next_node() {
        let node = &pool.nodes[i];
        let session = SessionGuard::new(&node.state, SessionKind::HttpInflight);
        let mut sender = match connect_node(pool, i, timeouts.connect).await {
            Ok(stream) => match handshake(stream, node).await {
                Ok(sender) => sender,
                Err(_) => {
                    unreachable = true;
                    continue;
                }
            },
            Err(_) => {
                unreachable = true;
                continue;
            }
        };
        match timeout(timeouts.response, sender.try_send_request(req)).await {
            Err(_) => {
                node.state.metrics.response(504);
                tracing::info!(node = %node.key(), "backend did not answer within the response timeout");
                return local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the backend did not answer in time",
                );
            }
            Ok(Ok(mut resp)) => {
                node.state.metrics.response(resp.status().as_u16());
                prepare_response(&mut resp);
                if let Some(cookie) = client
                    .as_ref()
                    .and_then(|c| c.served(pool, i))
                    .and_then(|c| HeaderValue::try_from(c).ok())
                {
                    resp.headers_mut().append(http::header::SET_COOKIE, cookie);
                }
                // Refcount traffic only when the node changes.
                if !served_by
                    .load()
                    .as_ref()
                    .is_some_and(|n| Arc::ptr_eq(n, &node.state))
                {
                    served_by.store(Some(Arc::clone(&node.state)));
                }
                if keep_alive_h1 && node.state.admin() == AdminState::Draining {
                    // A client still served by a draining node (an affinity
                    // continuation) reconnects for its next request and picks anew.
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                return resp.map(|body| {
                    ProxyBody::Upstream(Upstream::new(body, sender, session, inflight))
                });
            }
            Ok(Err(mut e)) => match e.take_message() {
                // Never written: a fresh connection failing means the node is in trouble.
                Some(back) => {
                    req = back;
                    unreachable = true;
                    continue;
                }
                None => {
                    tracing::info!(node = %node.key(), error = %e.error(), "backend failed before answering");
                    match replay.take() {
                        Some((head, body)) => {
                            req = Request::from_parts(head, UpBody::Buffered(body));
                            lost = true;
                            continue;
                        }
                        None => {
                            node.state.metrics.response(502);
                            return local(
                                StatusCode::BAD_GATEWAY,
                                "the backend closed the connection before answering",
                            );
                        }
                    }
                }
            },
        }
    }
    let (status, reason) = if lost {
        (
            StatusCode::BAD_GATEWAY,
            "the backend closed the connection before answering",
        )
    } else if unreachable {
        (
            StatusCode::BAD_GATEWAY,
            "no node of the pool could be reached",
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy node in the pool",
        )
    };
    pool.metrics.local_response(status.as_u16());
    local(status, reason)
}
