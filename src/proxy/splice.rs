//! Bidirectional copy for TCP sessions that holds no buffer while the session is idle.
//!
//! Each direction reads into a stack buffer inside one poll and writes it straight on; only
//! bytes the other side cannot take yet are copied to the heap, and that copy is freed as
//! soon as it drains. An idle long-lived connection therefore costs its task and sockets,
//! not two copy buffers (tokio's `copy_bidirectional` keeps one per direction for life).
//! End of stream in one direction is passed on as a write shutdown (half-close).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per poll and direction (on the stack).
const CHUNK: usize = 16 * 1024;

#[derive(Default)]
struct Direction {
    /// Bytes read but not yet written (empty, with no allocation, most of the time).
    pending: Vec<u8>,
    written: usize,
    eof: bool,
    done: bool,
    total: u64,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            while self.written < self.pending.len() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
            }
            if !self.pending.is_empty() {
                // Drained: give the memory back.
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut stack = [0u8; CHUNK];
            let mut buf = ReadBuf::new(&mut stack);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                self.eof = true;
                continue;
            }
            self.total += n as u64;
            let mut off = 0;
            while off < n {
                match Pin::new(&mut *w).poll_write(cx, &stack[off..n]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(k)) => off += k,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending.extend_from_slice(&stack[off..n]);
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// Copies `a → b` and `b → a` until both directions reached end of stream; returns the
/// bytes copied each way.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut to_b, mut to_a) = (Direction::default(), Direction::default());
    poll_fn(|cx| {
        if !to_b.done {
            if let Poll::Ready(r) = to_b.poll_copy(cx, a, b) {
                r?;
            }
        }
        if !to_a.done {
            if let Poll::Ready(r) = to_a.poll_copy(cx, b, a) {
                r?;
            }
        }
        if to_b.done && to_a.done {
            Poll::Ready(Ok((to_b.total, to_a.total)))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_through_tiny_pipes_and_passes_eof_on() {
        // 64-byte pipes force partial writes and pending data.
        let (client, mut a) = tokio::io::duplex(64);
        let (mut b, server) = tokio::io::duplex(64);
        let proxy = tokio::spawn(async move { splice(&mut a, &mut b).await });
        let up: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
        let (mut sr, mut sw) = tokio::io::split(server);
        let (mut cr, mut cw) = tokio::io::split(client);
        let (up2, down2) = (up.clone(), down.clone());
        let server_write = tokio::spawn(async move {
            sw.write_all(&down2).await.unwrap();
            sw.shutdown().await.unwrap();
        });
        let server_read = tokio::spawn(async move {
            let mut got = Vec::new();
            sr.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, up2, "upstream bytes");
        });
        let client_write = tokio::spawn(async move {
            cw.write_all(&up).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        cr.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, down, "downstream bytes");
        for t in [server_write, server_read, client_write] {
            t.await.unwrap();
        }
        assert_eq!(proxy.await.unwrap().unwrap(), (100_000, 50_000));
    }
}
