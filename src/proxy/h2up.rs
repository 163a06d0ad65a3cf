//! HTTP/2 to backends (`upstream.protocol: h2c | h2`): each request, from an HTTP/2 client
//! (`http::forward`) or an HTTP/1.x one (`h1::bridge`), is a stream on the node's one
//! multiplexed connection (`pool::H2Conn`), flow control left to h2 both ways, bodies and
//! trailers streamed as they come, so gRPC works end to end.
//!
//! At the node's drain deadline (spread like every other close) a stream still open ends:
//! a gRPC one with trailers `grpc-status: 14` (UNAVAILABLE) and a message naming the drain,
//! so the client retries elsewhere; another one with a reset. Either is counted as a
//! deadline close of kind `http_inflight` (by the drain, as it fires), the kind a gRPC call
//! is counted as.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::{timeout, Instant};

use super::ctx::ConnCtx;
use super::logged::Logged;
use super::walk::{self, Local, Outcome, Step, Walk};
use crate::config::Timeouts;
use crate::pool::h2conn::{H2Sender, UpBody};
use crate::pool::{CloseWatch, Node, Pool, SessionGuard, SessionKind};
use crate::proxy::activity::InflightGuard;
use crate::proxy::connect::connect_node;
use crate::proxy::sticky::Client;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request fields that belong to one hop (`te` is kept when it is `trailers`, as gRPC
/// sends it; `x-forwarded-*` are written afresh).
const HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// A node's answer: the response (its body still to stream), the node, and the session
/// the stream holds.
pub struct Answer {
    pub resp: Response<Incoming>,
    pub index: usize,
    pub session: SessionGuard,
}

/// Sends `req` to a node of an h2c or h2 pool, moving to another node while the stream has
/// not started (connect failed, connection closed), and waits for the response head
/// within the response timeout. Counts the node's traffic and the pool's request duration.
pub async fn send(
    pool: &Arc<Pool>,
    req: Request<UpBody>,
    client: &Option<Client>,
    timeouts: Timeouts,
    started: Instant,
    log: &mut Logged,
) -> Result<Answer, Local> {
    let preview = pool.preview_node(
        req.headers()
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
    );
    let mut req = Some(req);
    let mut attempts = crate::proxy::sticky::attempts(pool, client, preview);
    // Streamed bodies are never sent twice: a request moves on only while unstarted.
    let mut walk = Walk::new(false, pool.nodes.len(), started);
    while let Some(i) = attempts.next_node() {
        let node = &pool.nodes[i];
        let session = SessionGuard::new(&node.state, SessionKind::HttpInflight);
        log.attempt(i);
        let connecting = log.is_on().then(Instant::now);
        let Some(mut sender) = sender(pool, i, timeouts).await else {
            walk.decide(Outcome::NotSent, Instant::now());
            continue;
        };
        if sender.ready().await.is_err() {
            // Closed since it was stored (the backend went away): connect again elsewhere.
            node.h2.clear();
            walk.decide(Outcome::NotSent, Instant::now());
            continue;
        }
        let Some(request) = req.take() else { break };
        let sending = connecting.map(|c| {
            let now = Instant::now();
            log.connected(now.duration_since(c));
            now
        });
        let sent = timeout(timeouts.response, sender.try_send_request(request)).await;
        let now = Instant::now();
        let outcome = match sent {
            Err(_) => Outcome::TimedOut,
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                pool.answered(i, status, now.duration_since(walk.asked()));
                if let Some(sent) = sending {
                    log.answered(now.duration_since(sent), status);
                }
                observe(pool, started);
                return Ok(Answer {
                    resp,
                    index: i,
                    session,
                });
            }
            Ok(Err(mut e)) => {
                tracing::info!(node = %node.key(), error = %e.error(), "HTTP/2 request to the backend failed");
                match e.take_message() {
                    // The stream never started: another node may take the request.
                    Some(back) => {
                        node.h2.clear();
                        req = Some(back);
                        Outcome::Refused
                    }
                    None => Outcome::Reset,
                }
            }
        };
        let decision = walk.decide(outcome, now);
        if let Some(status) = decision.charge {
            pool.no_answer(i, status);
        }
        if let Step::Answer { local, .. } = decision.step {
            walk::log_failure(node, outcome);
            observe(pool, started);
            log.end(local.termination(), Some(local.status));
            return Err(local);
        }
    }
    let failed = walk.exhausted(false);
    pool.metrics.local_response(failed.status);
    observe(pool, started);
    log.end(failed.termination(), Some(failed.status));
    Err(failed)
}

/// Whether a request is a gRPC call (its streams end with `grpc-status: 14` at a drain
/// deadline).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn observe(pool: &Pool, started: Instant) {
    pool.metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
}

/// The request as the node gets it: an absolute URI (h2 needs `:scheme` and `:authority`),
/// hop-by-hop fields dropped, `x-forwarded-for` and `x-forwarded-proto` written.
pub fn upstream_request(
    ctx: &ConnCtx,
    pool: &Pool,
    mut parts: Parts,
    body: UpBody,
) -> Request<UpBody> {
    let scheme = if pool.tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let authority = parts.uri.authority().cloned().or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
    });
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut uri = Uri::builder().scheme(scheme).path_and_query(path.clone());
    if let Some(a) = authority {
        uri = uri.authority(a);
    } else {
        uri = uri.authority("localhost");
    }
    if let Ok(u) = uri.build() {
        parts.uri = u;
    }
    let mut forwarded: Vec<u8> = Vec::new();
    for prior in parts.headers.get_all("x-forwarded-for") {
        forwarded.extend_from_slice(prior.as_bytes());
        forwarded.extend_from_slice(b", ");
    }
    forwarded.extend_from_slice(ctx.client_addr().as_bytes());
    let trailers_te = parts
        .headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip(&mut parts.headers);
    parts.headers.remove(http::header::HOST);
    if trailers_te {
        parts
            .headers
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    if let Ok(v) = HeaderValue::from_bytes(&forwarded) {
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if ctx.proto() == "https" {
            "https"
        } else {
            "http"
        }),
    );
    parts.version = http::Version::HTTP_2;
    Request::from_parts(parts, body)
}

/// Drops the fields that belong to one hop (and `te`, which the caller puts back when it is
/// `trailers`).
pub fn strip(headers: &mut HeaderMap) {
    for name in HOP {
        headers.remove(name);
    }
    headers.remove(http::header::TE);
}

/// The node's HTTP/2 connection, connecting (TCP, then TLS for h2) when it has none.
async fn sender(pool: &Pool, index: usize, timeouts: Timeouts) -> Option<H2Sender> {
    let node = &pool.nodes[index];
    if let Some(s) = node.h2.get() {
        return Some(s);
    }
    let tcp = connect_node(pool, index, timeouts.connect).await.ok()?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(hyper_util::rt::TokioTimer::new());
    let handshake = async {
        match &pool.tls {
            None => builder
                .handshake(TokioIo::new(tcp))
                .await
                .map(|(s, c)| (s, spawn_conn(c)))
                .map_err(|e| e.to_string()),
            Some(connector) => {
                let name = pool
                    .config
                    .upstream
                    .tls
                    .as_ref()
                    .map(|t| t.server_name(node.addr))
                    .ok_or_else(|| "no TLS settings".to_string())?;
                let tls = connector.connect(name, tcp).await.map_err(|e| {
                    node.state.metrics.tls_failures.inc();
                    format!("TLS: {e}")
                })?;
                builder
                    .handshake(TokioIo::new(tls))
                    .await
                    .map(|(s, c)| (s, spawn_conn(c)))
                    .map_err(|e| e.to_string())
            }
        }
    };
    let error = match timeout(timeouts.connect, handshake).await {
        Ok(Ok((sender, ()))) => {
            node.h2.put(sender.clone());
            return Some(sender);
        }
        Ok(Err(e)) => e,
        Err(_) => "the handshake timed out".to_string(),
    };
    tracing::warn!(node = %node.key(), error = %error, "HTTP/2 connection to the backend failed");
    if let Some((from, to)) = pool.passive_failure(index) {
        node.health_flipped(from, to, "passive connect failures");
    }
    None
}

/// Runs a connection until it ends (its streams done and no sender left, or an error).
fn spawn_conn<F>(conn: F)
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    tokio::spawn(async move {
        let _ = conn.await;
    });
}

/// A node's answer streamed to the client, ended at the node's drain deadline.
pub struct H2Body {
    inner: Incoming,
    node: Arc<Node>,
    grpc: bool,
    close: CloseWatch,
    /// The deadline came: the trailers that end the stream, then the end.
    ending: Option<Option<HeaderMap>>,
    _session: SessionGuard,
    _inflight: InflightGuard,
}

impl H2Body {
    pub fn new(
        inner: Incoming,
        node: Arc<Node>,
        grpc: bool,
        session: SessionGuard,
        inflight: InflightGuard,
    ) -> Self {
        let close = CloseWatch::new(&node.state.lifecycle);
        H2Body {
            inner,
            node,
            grpc,
            close,
            ending: None,
            _session: session,
            _inflight: inflight,
        }
    }

    /// The drain deadline came while the stream was open (the drain counted it as an
    /// `http_inflight` deadline close when it fired).
    fn deadline(&mut self) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if !self.grpc {
            self.ending = Some(None);
            return Poll::Ready(Some(Err(std::io::Error::other(
                "the node's drain deadline passed",
            ))));
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("14"));
        let message = format!(
            "node {} is draining for an upgrade: retry on another node",
            self.node.key()
        );
        if let Ok(v) = HeaderValue::try_from(message) {
            trailers.insert("grpc-message", v);
        }
        self.ending = Some(None);
        tracing::debug!(node = %self.node.key(), "gRPC stream ended at the drain deadline");
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some(ending) = &mut this.ending {
            return match ending.take() {
                Some(t) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                None => Poll::Ready(None),
            };
        }
        if Pin::new(&mut this.close).poll(cx).is_ready() {
            return this.deadline();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
