//! The response body handoff sends to HTTP/2 clients: a backend's body passed through (its
//! end ends the session and closes the upstream connection), or a short local body for
//! responses handoff makes itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::upstream::Sender;
use crate::pool::SessionGuard;
use crate::proxy::activity::InflightGuard;

pub enum ProxyBody {
    Upstream(Upstream),
    Local(Option<Bytes>),
}

/// A backend body and what to release when it ends.
pub struct Upstream {
    body: Incoming,
    finish: Option<Finish>,
}

struct Finish {
    _sender: Sender,
    _session: SessionGuard,
    _inflight: InflightGuard,
}

impl Upstream {
    pub fn new(
        body: Incoming,
        sender: Sender,
        session: SessionGuard,
        inflight: InflightGuard,
    ) -> Self {
        Upstream {
            body,
            finish: Some(Finish {
                _sender: sender,
                _session: session,
                _inflight: inflight,
            }),
        }
    }

    /// Releases the session and the connection.
    fn release(&mut self) {
        self.finish.take();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.release();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Local(data) => once_frame(data),
            ProxyBody::Upstream(up) => {
                let polled = Pin::new(&mut up.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => up.release(),
                    Poll::Ready(Some(Ok(_))) if up.body.is_end_stream() => up.release(),
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(data) => data.is_none(),
            ProxyBody::Upstream(up) => up.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(data) => once_size(data),
            ProxyBody::Upstream(up) => up.body.size_hint(),
        }
    }
}

/// The one data frame of a body held whole (`None`: sent, or no body at all).
pub(super) fn once_frame<E>(data: &mut Option<Bytes>) -> Poll<Option<Result<Frame<Bytes>, E>>> {
    Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
}

/// The exact size of a body held whole.
pub(super) fn once_size(data: &Option<Bytes>) -> SizeHint {
    SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
}

/// A response handoff makes itself: a status and a one-line plain-text reason.
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
