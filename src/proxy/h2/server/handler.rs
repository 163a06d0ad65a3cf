//! What runs each request: the [`Service`] a connection calls for every stream (the
//! proxy's request handler; a trait, so the server stays below the proxy's own types), and
//! the [`Handler`] that runs it in the connection's set, stopped when the client resets
//! its stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Body;

use super::stream::{RequestBody, Shared};

/// What serves each request.
pub trait Service {
    type Body: Body<Data = Bytes> + Unpin;
    type Future: Future<Output = Response<Self::Body>>;
    fn call(&mut self, req: Request<RequestBody>) -> Self::Future;

    /// The server answered a request head over the limit with 431 itself, before any
    /// handler: the proxy counts and logs it, as it does a 431 on HTTP/1.1.
    fn too_large(&mut self) {}
}

impl<F, Fut, B> Service for F
where
    F: FnMut(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
{
    type Body = B;
    type Future = Fut;
    fn call(&mut self, req: Request<RequestBody>) -> Fut {
        self(req)
    }
}

pin_project_lite::pin_project! {
    /// A stream's handler, stopped when the client resets the stream.
    pub struct Handler<F> {
        shared: Arc<Shared>,
        registered: bool,
        #[pin]
        fut: F,
    }
}

impl<F> Handler<F> {
    pub fn new(shared: Arc<Shared>, fut: F) -> Self {
        Handler {
            shared,
            registered: false,
            fut,
        }
    }
}

impl<F: Future> Future for Handler<F> {
    type Output = (u32, Option<F::Output>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if !*this.registered {
            this.shared.register_handler(cx);
            *this.registered = true;
        }
        if this.shared.cancelled() {
            return Poll::Ready((this.shared.id, None));
        }
        this.fut.poll(cx).map(|resp| (this.shared.id, Some(resp)))
    }
}
