//! Relaying a response body to the client as it arrives, framed as the backend framed it
//! (a chunked body loses its coding for HTTP/1.0 clients). Each read waits for the write
//! before it, so a slow client slows the backend (backpressure), and no more than one
//! buffer is held. A node's drain deadline (after this response's share of the close
//! spread) ends a response still streaming from it.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::AsyncWriteExt;

use super::buf::{Buf, Out, SIZE};
use super::framing::{Bad, BodyLen, Chunked, Piece};
use super::ClientIo;
use crate::pool::Upstream;

/// What is left of a body, by its framing.
pub(crate) enum Left {
    Bytes(u64),
    Chunked(Chunked),
    UntilClose,
}

impl Left {
    /// `None`: the body is empty.
    pub(crate) fn of(body: BodyLen) -> Option<Left> {
        match body {
            BodyLen::Empty | BodyLen::Length(0) => None,
            BodyLen::Length(n) => Some(Left::Bytes(n)),
            BodyLen::Chunked => Some(Left::Chunked(Chunked::default())),
            BodyLen::UntilClose => Some(Left::UntilClose),
        }
    }

    /// Whether the sender closing ends this body cleanly.
    pub(crate) fn ends_at_close(&self) -> bool {
        matches!(self, Left::UntilClose)
    }
}

/// Writes `out` (the client's head) and the body after it; `true` when the whole body went
/// to the client.
pub async fn response<I: ClientIo>(
    io: &mut I,
    up: &mut Upstream,
    ub: &mut Buf,
    mut out: Out,
    body: BodyLen,
    minor: u8,
) -> bool {
    let decode = body == BodyLen::Chunked && minor == 0;
    let Some(mut left) = Left::of(body) else {
        return io.write_all(&out.0).await.is_ok() && io.flush().await.is_ok();
    };
    loop {
        // Whatever is held goes with the head (one write), then straight from the buffer.
        let copy = decode || !out.0.is_empty();
        let Ok((n, done)) = ready(&mut left, ub.data(), decode, &mut out.0, copy) else {
            return false;
        };
        let written = if copy {
            let w = io.write_all(&out.0).await;
            out.0.clear();
            w
        } else {
            io.write_all(&ub.data()[..n]).await
        };
        if written.is_err() || io.flush().await.is_err() {
            return false;
        }
        ub.consume(n);
        if done {
            return true;
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
            Some(Ok(0)) => return left.ends_at_close(),
            Some(Ok(_)) => {}
            Some(Err(_)) => return false,
            None => {
                tracing::debug!("response cut at the node's drain deadline");
                return false;
            }
        }
    }
}

/// How much of `data` belongs to the body, and whether the body ends there. Copies it into
/// `out` when `copy` (only the chunk data, when `decode`).
pub(crate) fn ready(
    left: &mut Left,
    data: &[u8],
    decode: bool,
    out: &mut Vec<u8>,
    copy: bool,
) -> Result<(usize, bool), Bad> {
    let (n, done) = match left {
        Left::Bytes(l) => {
            let n = (*l).min(data.len() as u64);
            *l -= n;
            (n as usize, *l == 0)
        }
        Left::UntilClose => (data.len(), false),
        Left::Chunked(c) if decode => {
            let mut at = 0;
            loop {
                match c.step(&data[at..])? {
                    Piece::Data(k) => {
                        out.extend_from_slice(&data[at..at + k]);
                        at += k;
                    }
                    Piece::Framing(k) => at += k,
                    Piece::End(k) => return Ok((at + k, true)),
                    Piece::Incomplete => return Ok((at, false)),
                }
            }
        }
        Left::Chunked(c) => {
            let n = c.scan(data)?;
            (n, c.is_done())
        }
    };
    if copy {
        out.extend_from_slice(&data[..n]);
    }
    Ok((n, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_pass_whole_or_lose_their_coding_for_http10() {
        let data = b"3\r\nabc\r\n0\r\n\r\nextra";
        let mut out = Vec::new();
        let mut left = Left::Chunked(Chunked::default());
        assert_eq!(
            ready(&mut left, data, false, &mut out, true),
            Ok((data.len() - 5, true))
        );
        assert_eq!(out, &data[..data.len() - 5]);
        let mut out = Vec::new();
        let mut left = Left::Chunked(Chunked::default());
        assert_eq!(
            ready(&mut left, data, true, &mut out, true),
            Ok((data.len() - 5, true))
        );
        assert_eq!(out, b"abc");
        let mut left = Left::Bytes(4);
        assert_eq!(
            ready(&mut left, b"abcdef", false, &mut out, false),
            Ok((4, true))
        );
    }
}
