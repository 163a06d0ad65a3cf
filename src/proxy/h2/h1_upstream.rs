//! HTTP/2 requests sent to a node over handoff's HTTP/1.1 upstream path (the same pooled
//! connections as HTTP/1.1 clients use): the request head and a held body go out in one
//! write, a streamed body follows frame by frame (chunked when its length is unknown), the
//! response head is parsed with httparse, and the response body is read into frames as
//! it arrives; the connection goes back to the node's pool when the body ended cleanly.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::pool::UpstreamIo;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;

use super::server::RequestBody;
use crate::pool::{Node, SessionGuard, Upstream};
use crate::proxy::activity::InflightGuard;
use crate::proxy::codec::buf::{Buf, SIZE};
use crate::proxy::codec::framing::BodyLen;
use crate::proxy::codec::framing::{ready, Left};
use crate::proxy::codec::head::{self, MAX_HEAD};
use crate::proxy::codec::response;
use crate::proxy::codec::translate::response_headers;
use crate::proxy::walk::Failure;

/// Sends the head (and a held body, already in `out`), then streams `body` if given.
pub async fn send(
    up: &mut UpstreamIo,
    out: &[u8],
    body: Option<&mut RequestBody>,
    framing: BodyLen,
    sent: &mut u64,
) -> Result<(), Failure> {
    let upstream = Failure::Upstream { answered: false };
    up.write_all(out).await.map_err(|_| upstream)?;
    let Some(body) = body else { return Ok(()) };
    let chunked = framing == BodyLen::Chunked;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Failure::Client { bad: false })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not passed on
        };
        if data.is_empty() {
            continue;
        }
        *sent += data.len() as u64;
        let gone = |_| Failure::Upstream { answered: false };
        if chunked {
            up.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await
                .map_err(gone)?;
            up.write_all(&data).await.map_err(gone)?;
            up.write_all(b"\r\n").await.map_err(gone)?;
        } else {
            up.write_all(&data).await.map_err(gone)?;
        }
    }
    if chunked {
        up.write_all(b"0\r\n\r\n")
            .await
            .map_err(|_| Failure::Upstream { answered: false })?;
    }
    Ok(())
}

/// A final response head, as an HTTP/2 answer's parts.
pub struct BackendHead {
    pub response: Response<()>,
    pub body: BodyLen,
    pub upstream_closes: bool,
}

/// Reads the final response head into `ub` (interim responses are skipped: none is relayed
/// to HTTP/2 clients) and consumes it.
pub async fn read_head(
    up: &mut UpstreamIo,
    ub: &mut Buf,
    to_head: bool,
) -> Result<BackendHead, Failure> {
    let bad = Failure::Upstream { answered: true };
    loop {
        let parsed = {
            let mut fields = head::fields();
            match response::parse_response(ub.data(), &mut fields) {
                Err(_) => return Err(bad),
                Ok(None) => None,
                Ok(Some(resp)) if (100..200).contains(&resp.status) => Some((resp.len, None)),
                Ok(Some(resp)) => {
                    let info = response::inspect_response(&resp, to_head)
                        .map_err(|_| Failure::Upstream { answered: true })?;
                    let mut response = Response::new(());
                    *response.status_mut() = StatusCode::from_u16(resp.status)
                        .map_err(|_| Failure::Upstream { answered: true })?;
                    let head = &ub.data()[..resp.len];
                    *response.headers_mut() = response_headers(head, resp.headers, info.body);
                    let head = BackendHead {
                        response,
                        body: info.body,
                        upstream_closes: info.upstream_closes,
                    };
                    Some((resp.len, Some(head)))
                }
            }
        };
        match parsed {
            Some((len, Some(head))) => {
                ub.consume(len);
                return Ok(head);
            }
            Some((len, None)) => {
                ub.consume(len);
                continue;
            }
            None => {}
        }
        if ub.len() >= MAX_HEAD {
            return Err(Failure::Upstream { answered: true });
        }
        match ub.read_from(up, MAX_HEAD).await {
            Ok(0) | Err(_) => {
                return Err(Failure::Upstream {
                    answered: !ub.is_empty(),
                })
            }
            Ok(_) => {}
        }
    }
}

/// What one look at a response body found.
enum BodyStep {
    Data(Vec<u8>, bool),
    Again,
    End,
    Fail(&'static str),
    Error(io::Error),
}

/// A backend's response body as HTTP/2 data frames.
pub struct UpstreamBody {
    up: Option<Upstream>,
    ub: Option<Buf>,
    left: Option<Left>,
    reusable: bool,
    node: Arc<Node>,
    _session: SessionGuard,
    _inflight: InflightGuard,
}

impl UpstreamBody {
    pub fn new(
        up: Upstream,
        ub: Buf,
        head: &BackendHead,
        node: Arc<Node>,
        session: SessionGuard,
        inflight: InflightGuard,
    ) -> Self {
        let mut body = UpstreamBody {
            up: Some(up),
            ub: Some(ub),
            left: Left::of(head.body),
            reusable: !head.upstream_closes,
            node,
            _session: session,
            _inflight: inflight,
        };
        if body.left.is_none() {
            body.finish(true);
        }
        body
    }

    /// The body ended (or failed): a clean end with nothing left over returns the
    /// connection to the node's pool.
    fn finish(&mut self, clean: bool) {
        self.left = None;
        let held_nothing = self.ub.take().is_some_and(|b| b.is_empty());
        if let Some(up) = self.up.take() {
            if clean && held_nothing && self.reusable {
                self.node.idle.put(up);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let step = {
                let (Some(left), Some(ub), Some(up)) = (&mut this.left, &mut this.ub, &mut this.up)
                else {
                    return Poll::Ready(None);
                };
                if !ub.is_empty() {
                    let mut data = Vec::new();
                    match ready(left, ub.data(), true, &mut data, false) {
                        Err(_) => BodyStep::Fail("invalid chunked framing from the backend"),
                        Ok((n, done)) => {
                            // Decoding copied the chunk data; other bodies are copied here.
                            if !matches!(left, Left::Chunked(_)) {
                                data.extend_from_slice(&ub.data()[..n]);
                            }
                            ub.consume(n);
                            BodyStep::Data(data, done)
                        }
                    }
                } else {
                    match ub.poll_read_from(&mut up.stream, cx, SIZE) {
                        Poll::Ready(Ok(0)) if left.ends_at_close() => BodyStep::End,
                        Poll::Ready(Ok(0)) => BodyStep::Fail("the backend closed mid-body"),
                        Poll::Ready(Ok(_)) => BodyStep::Again,
                        Poll::Ready(Err(e)) => BodyStep::Error(e),
                        // The node's drain deadline ends a response still streaming from it.
                        Poll::Pending if Pin::new(&mut up.close).poll(cx).is_ready() => {
                            BodyStep::Fail("cut at the node's drain deadline")
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            };
            match step {
                BodyStep::Data(data, done) => {
                    if done {
                        this.finish(true);
                    }
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))));
                    }
                }
                BodyStep::Again => {}
                BodyStep::End => {
                    this.finish(true);
                    return Poll::Ready(None);
                }
                BodyStep::Fail(why) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(io::Error::other(why))));
                }
                BodyStep::Error(e) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.left {
            None => SizeHint::with_exact(0),
            Some(Left::Bytes(n)) => SizeHint::with_exact(*n),
            Some(_) => SizeHint::default(),
        }
    }
}
