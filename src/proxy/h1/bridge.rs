//! HTTP/1.x clients to HTTP/2 backends (h2c and h2 pools): the request head becomes an
//! HTTP/2 request (hop-by-hop fields dropped), its body streams into the stream as it is
//! read (a chunked body decoded), and the answer comes back as HTTP/1.x: its length kept
//! when the backend gave one, else chunked (HTTP/1.1, trailers passed on) or until close
//! (HTTP/1.0).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::local::{respond_local, Then};
use super::plan::RequestPlan;
use super::relay::Relayed;
use super::{ClientIo, Next};
use crate::access_log::Termination;
use crate::metrics::ClientError;
use crate::pool::h2conn::UpBody;
use crate::pool::AdminState;
use crate::proxy::activity::InflightGuard;
use crate::proxy::codec::buf::{Buf, Out, SIZE};
use crate::proxy::codec::framing::BodyLen;
use crate::proxy::codec::framing::{ready, Left};
use crate::proxy::codec::head::{self, field};
use crate::proxy::codec::rules;
use crate::proxy::ctx::ConnCtx;
use crate::proxy::h2up::{self, BoxError, H2Body};
use crate::proxy::walk::Local;

/// The request body as hyper reads it: frames the pump sends (an error resets the stream).
struct Pumped {
    rx: mpsc::Receiver<Result<Bytes, ()>>,
    length: Option<u64>,
}

impl Body for Pumped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(()))) => {
                Poll::Ready(Some(Err("the client's request body was cut short".into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.length
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Reads the rest of the body off the client into the stream. `Err(true)`: bad framing.
async fn pump<I: ClientIo>(
    io: &mut I,
    buf: &mut Buf,
    tx: mpsc::Sender<Result<Bytes, ()>>,
    mut left: Left,
) -> Result<(), bool> {
    let mut out = Vec::new();
    loop {
        let (n, done) = match ready(&mut left, buf.data(), true, &mut out, true) {
            Ok(r) => r,
            Err(_) => {
                let _ = tx.send(Err(())).await;
                return Err(true);
            }
        };
        buf.consume(n);
        // A backend that stopped reading (it answered already) drops the receiver: the
        // rest of the body is still read off the client, and dropped.
        if !out.is_empty() {
            let _ = tx.send(Ok(Bytes::from(std::mem::take(&mut out)))).await;
        }
        if done {
            return Ok(());
        }
        match buf.read_from(io, SIZE).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(Err(())).await;
                return Err(false);
            }
            Ok(_) => {}
        }
    }
}

/// Sends the request to an HTTP/2 node and relays the answer to the HTTP/1.x client.
pub async fn forward<I: ClientIo>(
    ctx: &ConnCtx,
    io: &mut I,
    buf: &mut Buf,
    closing: &AtomicBool,
    p: &mut RequestPlan,
    parts: Parts,
    started: Instant,
) -> Next {
    let pool = Arc::clone(&p.pool);
    let mut parts = parts;
    if let BodyLen::Length(n) = p.body {
        parts.headers.insert(http::header::CONTENT_LENGTH, n.into());
    }
    let grpc = h2up::is_grpc(&parts.headers);
    let (body, pumping) = match p.body {
        BodyLen::Empty => (UpBody::new(Empty::new().map_err(|e| match e {})), None),
        BodyLen::Length(n) if n as usize <= buf.len() => {
            let bytes = Bytes::copy_from_slice(&buf.data()[..n as usize]);
            buf.consume(n as usize);
            (UpBody::new(Full::new(bytes).map_err(|e| match e {})), None)
        }
        other => {
            let (tx, rx) = mpsc::channel(4);
            let length = match other {
                BodyLen::Length(n) => Some(n),
                _ => None,
            };
            let left = Left::of(other);
            (UpBody::new(Pumped { rx, length }), left.map(|l| (tx, l)))
        }
    };
    let req = h2up::upstream_request(ctx, &pool, parts, body);
    let send = h2up::send(&pool, req, &p.client, p.timeouts, started, &mut p.log);
    let (pumped, answer) = match pumping {
        None => (Ok(()), send.await),
        Some((tx, left)) => tokio::join!(pump(io, buf, tx, left), send),
    };
    let whole = pumped.is_ok();
    let answer = match (answer, pumped) {
        (_, Err(true)) => {
            let local = Local {
                status: 400,
                reason: "invalid chunked framing",
            };
            p.log
                .end(Termination::ClientFault(ClientError::BadBody), Some(400));
            return respond_local(io, &local, false, Then::Close, p.id()).await;
        }
        (Err(local), _) => {
            return respond_local(
                io,
                &local,
                p.is_head,
                Then::keep_if(whole && p.keep_alive, p.minor),
                p.id(),
            )
            .await;
        }
        (Ok(a), _) => a,
    };
    let node = Arc::clone(&pool.nodes[answer.index]);
    ctx.served(&node.state);
    let cookie = p
        .client
        .as_ref()
        .and_then(|c| c.served(&pool, answer.index));
    let (mut head, incoming) = answer.resp.into_parts();
    let version = node.state.version();
    if let Some((r, vars)) = p.response_rules(Some(&node), version.as_deref().map(String::as_str)) {
        rules::apply(&mut head.headers, r, &vars);
    }
    let status = head.status;
    let bodiless = p.is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let framing = match (bodiless, length) {
        (true, _) => BodyLen::Empty,
        (false, Some(n)) => BodyLen::Length(n),
        (false, None) if p.minor >= 1 => BodyLen::Chunked,
        (false, None) => BodyLen::UntilClose,
    };
    let keep_alive = whole
        && p.keep_alive
        && framing != BodyLen::UntilClose
        && !closing.load(Relaxed)
        && !ctx.plane.shutdown.is_draining()
        && !ctx.plane.shutdown.is_retired()
        && node.state.admin() != AdminState::Draining;
    let mut out = Out::take();
    write_head(
        &mut out.0,
        p.minor,
        status,
        &head.headers,
        framing,
        keep_alive,
        p.id(),
    );
    if let Some(c) = cookie {
        field(&mut out.0, "set-cookie", c.as_bytes());
    }
    out.0.extend_from_slice(b"\r\n");
    if io.write_all(&out.0).await.is_err() {
        p.log.end(Termination::ClientClosed, None);
        return Next::Close;
    }
    drop(out);
    let inflight = InflightGuard::new(&ctx.activity);
    let mut body = H2Body::new(incoming, node, grpc, answer.session, inflight);
    let relayed = match framing {
        BodyLen::Empty if io.flush().await.is_ok() => Relayed::Whole,
        BodyLen::Empty => Relayed::ClientGone,
        _ => relay_body(io, &mut body, framing).await,
    };
    p.log.end(relayed.termination(), None);
    match (relayed, keep_alive) {
        (Relayed::Whole, true) => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// The status line and fields for the client: the backend's fields but those of one hop,
/// and the framing handoff chose.
fn write_head(
    out: &mut Vec<u8>,
    minor: u8,
    status: StatusCode,
    headers: &HeaderMap,
    framing: BodyLen,
    keep_alive: bool,
    request_id: Option<(&str, &[u8])>,
) {
    out.extend_from_slice(if minor == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        let n = name.as_str();
        let replaced = request_id.is_some_and(|(id, _)| n.eq_ignore_ascii_case(id));
        if replaced || n == "content-length" || head::dropped(n, &[], false, false) {
            continue;
        }
        field(out, n, value.as_bytes());
    }
    if let Some((name, id)) = request_id {
        field(out, name, id);
    }
    head::framing_field(out, framing);
    match (keep_alive, minor) {
        (false, _) => field(out, "connection", b"close"),
        (true, 0) => field(out, "connection", b"keep-alive"),
        (true, _) => {}
    }
}

/// Writes the body as `framing` says.
async fn relay_body<I: ClientIo>(io: &mut I, body: &mut H2Body, framing: BodyLen) -> Relayed {
    let chunked = framing == BodyLen::Chunked;
    let mut scratch = Vec::new();
    let client = |ok: bool| match ok {
        true => Relayed::Whole,
        false => Relayed::ClientGone,
    };
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Err(_)) => return Relayed::UpstreamGone,
            Some(Ok(f)) => f,
        };
        scratch.clear();
        let frame = match frame.into_data() {
            Ok(data) if data.is_empty() => continue,
            Ok(data) if chunked => {
                scratch.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                scratch.extend_from_slice(&data);
                scratch.extend_from_slice(b"\r\n");
                if io.write_all(&scratch).await.is_err() {
                    return Relayed::ClientGone;
                }
                continue;
            }
            Ok(data) => {
                if io.write_all(&data).await.is_err() {
                    return Relayed::ClientGone;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
            scratch.extend_from_slice(b"0\r\n");
            for (name, value) in &trailers {
                field(&mut scratch, name.as_str(), value.as_bytes());
            }
            scratch.extend_from_slice(b"\r\n");
            return client(io.write_all(&scratch).await.is_ok() && io.flush().await.is_ok());
        }
    }
    if chunked && io.write_all(b"0\r\n\r\n").await.is_err() {
        return Relayed::ClientGone;
    }
    client(io.flush().await.is_ok())
}
