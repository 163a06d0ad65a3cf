//! Relaying a response body to the client as it arrives, framed as the backend framed it
//! (a chunked body loses its coding for HTTP/1.0 clients). Each read waits for the write
//! before it, so a slow client slows the backend (backpressure), and no more than one
//! buffer is held. A node's drain deadline (after this response's share of the close
//! spread) ends a response still streaming from it.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::AsyncWriteExt;

use super::ClientIo;
use crate::access_log::Termination;
use crate::pool::Upstream;
use crate::proxy::codec::buf::{Buf, Out, SIZE};
use crate::proxy::codec::framing::{ready, BodyLen, Left};

/// How a relayed response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// The whole body went to the client.
    Whole,
    /// Writing to the client failed.
    ClientGone,
    /// The backend closed, reset or broke its framing before the body was whole.
    UpstreamGone,
    /// The node's drain deadline ended it.
    Deadline,
}

impl Relayed {
    pub fn termination(self) -> Termination {
        match self {
            Relayed::Whole => Termination::Ok,
            Relayed::ClientGone => Termination::ClientClosed,
            Relayed::UpstreamGone => Termination::UpstreamReset,
            Relayed::Deadline => Termination::DrainDeadline,
        }
    }
}

/// Writes `out` (the client's head) and the body after it.
pub async fn response<I: ClientIo>(
    io: &mut I,
    up: &mut Upstream,
    ub: &mut Buf,
    mut out: Out,
    body: BodyLen,
    minor: u8,
) -> Relayed {
    let decode = body == BodyLen::Chunked && minor == 0;
    let Some(mut left) = Left::of(body) else {
        return match io.write_all(&out.0).await.is_ok() && io.flush().await.is_ok() {
            true => Relayed::Whole,
            false => Relayed::ClientGone,
        };
    };
    loop {
        // Whatever is held goes with the head (one write), then straight from the buffer.
        let copy = decode || !out.0.is_empty();
        let Ok((n, done)) = ready(&mut left, ub.data(), decode, &mut out.0, copy) else {
            return Relayed::UpstreamGone;
        };
        let written = if copy {
            let w = io.write_all(&out.0).await;
            out.0.clear();
            w
        } else {
            io.write_all(&ub.data()[..n]).await
        };
        if written.is_err() || io.flush().await.is_err() {
            return Relayed::ClientGone;
        }
        ub.consume(n);
        if done {
            return Relayed::Whole;
        }
        let read = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = ub.poll_read_from(&mut up.stream, cx, SIZE) {
                return Poll::Ready(Some(r));
            }
            match Pin::new(&mut up.close).poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match read {
            Some(Ok(0)) if left.ends_at_close() => return Relayed::Whole,
            Some(Ok(0)) | Some(Err(_)) => return Relayed::UpstreamGone,
            Some(Ok(_)) => {}
            None => {
                tracing::debug!("response cut at the node's drain deadline");
                return Relayed::Deadline;
            }
        }
    }
}
