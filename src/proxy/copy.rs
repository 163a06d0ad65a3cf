//! Bidirectional copy for TCP sessions that holds no buffer while the session is idle.
//!
//! Each direction reads into a stack buffer inside one poll and writes it straight on; only
//! bytes the other side cannot take yet are copied to the heap, and that copy is freed as
//! soon as it drains. An idle long-lived connection therefore costs its task and sockets,
//! not two copy buffers (tokio's `copy_bidirectional` keeps one per direction for life).
//! End of stream in one direction is passed on as a write shutdown (half-close).
//!
//! On Linux, a direction between two TCP sockets that moves a full chunk in one read (bulk
//! traffic) switches to zero-copy: bytes then go socket → kernel pipe → socket by
//! `splice(2)` (see [`super::splice`]), never through user space.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[cfg(target_os = "linux")]
use super::splice::Pipe;

/// Bytes read per poll and direction (on the stack).
const CHUNK: usize = 16 * 1024;

/// One side of a copied session.
pub trait Endpoint: AsyncRead + AsyncWrite + Unpin {
    /// The TCP socket under the stream, for zero-copy transfers; `None` copies through
    /// user space.
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
    /// Bytes were taken from this side without `poll_read` (zero-copy).
    fn moved_in(&self, _n: usize) {}
    /// Bytes were given to this side without `poll_write` (zero-copy).
    fn moved_out(&self, _n: usize) {}
}

impl Endpoint for TcpStream {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

#[derive(Default)]
struct Direction {
    /// Bytes read but not yet written (empty, with no allocation, most of the time).
    pending: Vec<u8>,
    written: usize,
    eof: bool,
    done: bool,
    total: u64,
    /// Of `total`, the bytes moved zero-copy.
    piped: u64,
    /// Set once the direction went zero-copy.
    #[cfg(target_os = "linux")]
    pipe: Option<Pipe>,
    /// The error this direction ended with came from its reader (else from its writer).
    read_failed: bool,
}

impl Direction {
    fn poll_copy<R: Endpoint, W: Endpoint>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        loop {
            #[cfg(target_os = "linux")]
            if self.pipe.is_some() {
                return self.poll_piped(cx, r, w);
            }
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
            // Uninitialised: zeroing 16 KiB on every read attempt (most find nothing) cost
            // more than the rest of a small request's copy.
            let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut stack);
            if let Err(e) = ready!(Pin::new(&mut *r).poll_read(cx, &mut buf)) {
                self.read_failed = true;
                return Poll::Ready(Err(e));
            }
            let data = buf.filled();
            let n = data.len();
            if n == 0 {
                self.eof = true;
                continue;
            }
            self.total += n as u64;
            let mut off = 0;
            while off < n {
                match Pin::new(&mut *w).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(k)) => off += k,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending.extend_from_slice(&data[off..]);
                        return Poll::Pending;
                    }
                }
            }
            #[cfg(target_os = "linux")]
            if n == CHUNK && r.socket().is_some() && w.socket().is_some() {
                // A full chunk in one read: bulk traffic, worth a pipe.
                self.pipe = Pipe::open();
            }
        }
    }

    /// The zero-copy loop: drain the pipe into the writer, refill it from the reader.
    #[cfg(target_os = "linux")]
    fn poll_piped<R: Endpoint, W: Endpoint>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        let (Some(from), Some(to), Some(pipe)) = (r.socket(), w.socket(), self.pipe.as_mut())
        else {
            return Poll::Ready(Err(io::ErrorKind::Unsupported.into()));
        };
        loop {
            while !pipe.is_empty() {
                let n = ready!(pipe.poll_drain(cx, to))?;
                w.moved_out(n);
            }
            if self.eof {
                break;
            }
            let n = match ready!(pipe.poll_fill(cx, from)) {
                Ok(n) => n,
                // The kernel refuses splice here (a sandbox, say): nothing is in the pipe,
                // so going back to copying through user space loses nothing.
                Err(e) if super::splice::unsupported(&e) => {
                    self.pipe = None;
                    return self.poll_copy(cx, r, w);
                }
                Err(e) => {
                    self.read_failed = true;
                    return Poll::Ready(Err(e));
                }
            };
            if n == 0 {
                self.eof = true;
            } else {
                self.total += n as u64;
                self.piped += n as u64;
                r.moved_in(n);
            }
        }
        // End of stream: the pipe is empty; give it back and pass the half-close on.
        self.pipe = None;
        ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
        self.done = true;
        Poll::Ready(Ok(()))
    }
}

/// Bytes a finished session moved.
#[derive(Debug, PartialEq, Eq)]
pub struct Copied {
    /// `a → b`.
    pub up: u64,
    /// `b → a`.
    pub down: u64,
    /// Of both, the bytes moved zero-copy.
    pub piped: u64,
}

/// A copy that ended with an error, and on which side.
#[derive(Debug)]
pub struct Failed {
    /// The error came from `a` (reading from it or writing to it).
    pub on_a: bool,
    pub error: io::Error,
}

/// Copies `a → b` and `b → a` until both directions reached end of stream.
pub async fn copy<A: Endpoint, B: Endpoint>(a: &mut A, b: &mut B) -> Result<Copied, Failed> {
    let (mut to_b, mut to_a) = (Direction::default(), Direction::default());
    poll_fn(|cx| {
        if !to_b.done {
            if let Poll::Ready(Err(error)) = to_b.poll_copy(cx, a, b) {
                let on_a = to_b.read_failed;
                return Poll::Ready(Err(Failed { on_a, error }));
            }
        }
        if !to_a.done {
            if let Poll::Ready(Err(error)) = to_a.poll_copy(cx, b, a) {
                let on_a = !to_a.read_failed;
                return Poll::Ready(Err(Failed { on_a, error }));
            }
        }
        if to_b.done && to_a.done {
            Poll::Ready(Ok(Copied {
                up: to_b.total,
                down: to_a.total,
                piped: to_b.piped + to_a.piped,
            }))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    impl Endpoint for DuplexStream {}

    #[tokio::test]
    async fn copies_both_ways_through_tiny_pipes_and_passes_eof_on() {
        // 64-byte pipes force partial writes and pending data.
        let (client, mut a) = tokio::io::duplex(64);
        let (mut b, server) = tokio::io::duplex(64);
        let proxy = tokio::spawn(async move { copy(&mut a, &mut b).await });
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
        let copied = proxy.await.unwrap().unwrap();
        assert_eq!((copied.up, copied.down, copied.piped), (100_000, 50_000, 0));
    }

    /// Bulk between two TCP sockets goes zero-copy (on Linux), byte-exact, half-close and all.
    #[tokio::test]
    async fn bulk_between_tcp_sockets_is_exact_and_zero_copy() {
        use tokio::net::{TcpListener, TcpStream};
        async fn pair() -> (TcpStream, TcpStream) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            (c, l.accept().await.unwrap().0)
        }
        let (mut client, mut a) = pair().await;
        let (mut b, mut server) = pair().await;
        let proxy = tokio::spawn(async move { copy(&mut a, &mut b).await });
        let up: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
        let (mut sr, mut sw) = server.split();
        let (mut cr, mut cw) = client.split();
        let server_side = async {
            let mut got = Vec::new();
            let (r, w) = tokio::join!(sr.read_to_end(&mut got), async {
                sw.write_all(&down).await?;
                sw.shutdown().await
            });
            r.unwrap();
            w.unwrap();
            got
        };
        let client_side = async {
            let mut got = Vec::new();
            let (r, w) = tokio::join!(cr.read_to_end(&mut got), async {
                cw.write_all(&up).await?;
                cw.shutdown().await
            });
            r.unwrap();
            w.unwrap();
            got
        };
        let (at_server, at_client) =
            tokio::time::timeout(std::time::Duration::from_secs(20), async {
                tokio::join!(server_side, client_side)
            })
            .await
            .expect("transfer finished");
        assert!(at_server == up, "upstream bytes differ");
        assert!(at_client == down, "downstream bytes differ");
        let copied = proxy.await.unwrap().unwrap();
        assert_eq!((copied.up, copied.down), (4_000_000, 3_000_000));
        if cfg!(target_os = "linux") {
            assert!(
                copied.piped > 1_000_000,
                "zero-copy moved only {} bytes",
                copied.piped
            );
        }
    }
}
