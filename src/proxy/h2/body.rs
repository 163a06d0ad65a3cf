//! The response body handoff sends to HTTP/2 clients: a backend's body read off its
//! HTTP/1.1 connection, or a short local body for responses handoff makes itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use super::h1_upstream::UpstreamBody;
use crate::proxy::h2up::H2Body;
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

/// A response handoff makes itself: a status and a one-line plain-text reason.
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
