//! The client socket, watched: every read and write stamps the connection's [`Activity`]
//! and counts its bytes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Activity;
use crate::proxy::ListenerStats;

/// The client socket, watched: bytes read count as `in`, bytes written as `out`. Bytes are
/// added up here and moved to the listener's shared counters every [`FLUSH_BYTES`], at EOF,
/// at shutdown and when the connection ends, so small reads and writes of many connections
/// on many cores do not all write one shared counter.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    stats: Arc<ListenerStats>,
    pending_in: u64,
    pending_out: u64,
}

/// Bytes a connection counts by itself before it adds them to the listener's counters.
const FLUSH_BYTES: u64 = 64 * 1024;

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>, stats: Arc<ListenerStats>) -> Self {
        Watched {
            inner,
            activity,
            stats,
            pending_in: 0,
            pending_out: 0,
        }
    }

    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    fn note_read(&mut self, n: usize) {
        self.activity.on_read();
        self.activity.add_read(n);
        self.pending_in += n as u64;
        if self.pending_in >= FLUSH_BYTES {
            self.flush_counts();
        }
    }

    fn note_written(&mut self, n: usize) {
        self.activity.touch();
        self.activity.add_written(n);
        if self.activity.blocked_since.load(Relaxed) != 0 {
            self.activity.blocked_since.store(0, Relaxed);
        }
        self.pending_out += n as u64;
        if self.pending_out >= FLUSH_BYTES {
            self.flush_counts();
        }
    }

    fn flush_counts(&mut self) {
        if self.pending_in > 0 {
            self.stats
                .metrics
                .bytes_in
                .inc_by(std::mem::take(&mut self.pending_in));
        }
        if self.pending_out > 0 {
            self.stats
                .metrics
                .bytes_out
                .inc_by(std::mem::take(&mut self.pending_out));
        }
    }
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        self.flush_counts();
    }
}

impl crate::proxy::copy::Endpoint for Watched<tokio::net::TcpStream> {
    fn socket(&self) -> Option<&tokio::net::TcpStream> {
        Some(&self.inner)
    }

    // Spliced bytes move in large chunks: counted straight away.
    fn moved_in(&self, n: usize) {
        self.activity.on_read();
        self.activity.add_read(n);
        self.stats.metrics.bytes_in.inc_by(n as u64);
    }

    fn moved_out(&self, n: usize) {
        self.activity.touch();
        self.activity.add_written(n);
        self.activity.blocked_since.store(0, Relaxed);
        self.stats.metrics.bytes_out.inc_by(n as u64);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.note_read(n);
        } else if matches!(result, Poll::Ready(Ok(()))) {
            // EOF: what was read is all there will be.
            self.flush_counts();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        match result {
            Poll::Ready(Ok(n)) if n > 0 => self.note_written(n),
            Poll::Pending => self.activity.write_blocked(),
            _ => {}
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        match result {
            Poll::Ready(Ok(n)) if n > 0 => self.note_written(n),
            Poll::Pending => self.activity.write_blocked(),
            _ => {}
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush_counts();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
