//! The response body handoff sends to HTTP/2 clients: a backend's body read off its
//! HTTP/1.1 connection, or a short local body for responses handoff makes itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use super::h1_upstream::UpstreamBody;
use crate::access_log::Termination;
use crate::proxy::h2up::H2Body;
use crate::proxy::logged::Logged;
use crate::proxy::walk::Local;

pub enum ProxyBody {
    Upstream(UpstreamBody),
    /// A stream of an HTTP/2 backend (h2c and h2 pools).
    H2(Box<H2Body>),
    Local(Option<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ProxyBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(up) => Pin::new(up).poll_frame(cx),
            ProxyBody::H2(up) => Pin::new(up.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(data) => data.is_none(),
            ProxyBody::Upstream(up) => up.is_end_stream(),
            ProxyBody::H2(up) => up.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Upstream(up) => up.size_hint(),
            ProxyBody::H2(up) => up.size_hint(),
        }
    }
}

/// The response body with the request's access log line, written when the body ends or the
/// stream goes (a reset, a cut connection). Counts the body's bytes.
pub struct LoggedBody {
    inner: ProxyBody,
    log: Logged,
    /// A node's body, whose end says how the exchange ended (a local answer's was set).
    relay: bool,
}

impl LoggedBody {
    pub fn new(inner: ProxyBody, mut log: Logged, relay: bool) -> Self {
        // hyper never polls a body that says it is over.
        if relay && inner.is_end_stream() {
            log.end(Termination::Ok, None);
        }
        LoggedBody { inner, log, relay }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.log.is_on() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    this.log.add_bytes(0, n);
                    // hyper ends the stream without another poll once the body says so.
                    if this.relay && this.inner.is_end_stream() {
                        this.log.end(Termination::Ok, None);
                    }
                }
                Poll::Ready(None) if this.relay => this.log.end(Termination::Ok, None),
                Poll::Ready(Some(Err(_))) if this.relay => {
                    this.log.end(Termination::UpstreamReset, None)
                }
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response handoff makes itself, from the node walk's answer.
pub fn local_answer(l: Local) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(l.status).unwrap_or(StatusCode::BAD_GATEWAY);
    local(status, l.reason)
}

pub fn local(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    let text = format!(
        "{} {}: {reason}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(ProxyBody::Local(Some(Bytes::from(text))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
