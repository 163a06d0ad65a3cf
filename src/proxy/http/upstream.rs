//! Upstream HTTP/1.1 connections for requests that came over HTTP/2: one hyper client
//! connection per request (HTTP/1.1 clients take handoff's own path, with pooled
//! connections, in `proxy::h1`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use super::body::{once_frame, once_size};
use crate::gated::Gated;
use crate::pool::Node;

pub type Sender = SendRequest<UpBody>;

/// A request body sent upstream: the client's, streamed; or buffered (a small body of an
/// idempotent request, kept so the request can be sent again; `None`: no body).
pub enum UpBody {
    Client(Incoming),
    Buffered(Option<Bytes>),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Client(body) => Pin::new(body).poll_frame(cx),
            UpBody::Buffered(data) => once_frame(data),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Client(body) => body.is_end_stream(),
            UpBody::Buffered(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Client(body) => body.size_hint(),
            UpBody::Buffered(data) => once_size(data),
        }
    }
}

/// Starts an HTTP/1.1 client connection to `node` over a connected stream. The connection
/// is closed (spread over the drain's close window) if the node reaches a drain deadline,
/// which ends any response still streaming from it.
pub async fn handshake(stream: TcpStream, node: &Node) -> hyper::Result<Sender> {
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    let lifecycle = &node.state.lifecycle;
    let offset = lifecycle.spread_offset(lifecycle.next_id());
    let mut deadline = Gated::new(Box::pin(lifecycle.close_token().cancelled_owned()));
    tokio::spawn(async move {
        let conn = conn.with_upgrades();
        tokio::pin!(conn);
        let mut close_at: Option<Instant> = None;
        loop {
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                    return;
                }
                _ = &mut deadline, if close_at.is_none() => close_at = Some(Instant::now() + offset),
                _ = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => return,
            }
        }
    });
    Ok(sender)
}
