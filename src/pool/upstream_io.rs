//! A connection to an HTTP/1.1 node: a plain socket, or TLS over it (`upstream.tls`). One
//! type for both, so the request path, the idle pool and tunnels are written once; the
//! branch costs a predictable jump per read or write.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// Whether an idle connection has nothing to read: a backend that closed it (FIN or
    /// RST, or TLS close_notify) or sent bytes nobody asked for made it readable. The
    /// reactor's cached readiness answers without a system call in the common case; when
    /// readiness is left over from the last response, a peek looks without taking a byte
    /// (which, under TLS, would corrupt the record stream).
    pub fn quiet(&self) -> bool {
        let tcp = match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_ref().0,
        };
        let mut cx = Context::from_waker(Waker::noop());
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                matches!(tcp.poll_peek(&mut cx, &mut buf), Poll::Pending)
            }
            Poll::Ready(Err(_)) => false,
        }
    }

    /// Moves the socket to the calling thread's runtime: a connection another worker thread
    /// put back is still polled by that thread's reactor, which would then do the waiting
    /// for this one (an extra wake-up across threads per response). A duplicate of the
    /// descriptor is registered here and the old one deregistered and closed; TLS state
    /// stays as it is, only the socket under it changes.
    pub fn rebind(&mut self) -> io::Result<()> {
        let tcp = match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_mut().0,
        };
        // A duplicate shares the open file and so its O_NONBLOCK, as `from_std` needs.
        let dup = std::net::TcpStream::from(tcp.as_fd().try_clone_to_owned()?);
        *tcp = TcpStream::from_std(dup)?;
        Ok(())
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A socket made on a runtime that then shuts down still works once rebound: its
    /// readiness comes from the runtime that took it.
    #[tokio::test]
    async fn a_rebound_connection_is_polled_by_the_runtime_that_took_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (made, peer) = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let made = rt.block_on(TcpStream::connect(addr)).unwrap();
            let peer = listener.accept().unwrap().0;
            (made, peer)
            // `rt` shuts down here: its reactor polls nothing any more.
        })
        .join()
        .unwrap();
        let mut up = UpstreamIo::Plain(made);
        up.rebind().unwrap();
        let mut peer = peer;
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut b = [0u8; 4];
            peer.read_exact(&mut b).unwrap();
            peer.write_all(&b).unwrap();
        });
        up.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(std::time::Duration::from_secs(5), up.read_exact(&mut back))
            .await
            .expect("answered through this runtime's reactor")
            .unwrap();
        assert_eq!(&back, b"ping");
    }
}
