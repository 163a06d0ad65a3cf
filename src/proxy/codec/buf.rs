//! I/O buffers that exist only while a message is in flight.
//!
//! A connection takes a buffer when bytes arrive and gives it back when it goes idle with
//! nothing left unread, so an idle keep-alive connection holds none. Freed buffers wait on
//! a per-thread free list (no lock: each worker thread has its own) for the next request.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BufMut;
use tokio::io::AsyncRead;

/// A buffer's usual size: a typical head and body, or one read of a streamed body.
pub const SIZE: usize = 16 * 1024;
/// Free buffers kept per worker thread: a request takes two, and at 1,000 requests in
/// flight a smaller list sent every other one to the allocator (a tenth of the user CPU).
/// At most 32 MiB, and only after that many requests were in flight at once (the
/// allocator would have kept most of it in its heap too).
const FREE_PER_THREAD: usize = 2048;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Bytes read and not yet consumed: `mem[start..]`. Reads go into the vector's spare
/// capacity (tokio's `BufMut` reads), so a fresh buffer is never zeroed.
pub struct Buf {
    mem: Vec<u8>,
    start: usize,
}

impl Buf {
    /// A buffer from this thread's free list, or a new one.
    pub fn take() -> Buf {
        let mem = FREE
            .with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(SIZE));
        Buf { mem, start: 0 }
    }

    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.mem[self.start..]
    }

    pub fn len(&self) -> usize {
        self.mem.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.mem.len()
    }

    /// Marks `n` bytes at the front as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.mem.len() {
            self.start = 0;
            self.mem.clear();
        }
    }

    /// Room to read at most this much more without holding more than `limit` bytes;
    /// makes room first, keeping the unconsumed bytes: moves them to the front, or grows
    /// the buffer (a request head larger than [`SIZE`]) up to `limit`.
    fn room(&mut self, limit: usize) -> usize {
        if self.mem.len() == self.mem.capacity() {
            if self.start > 0 {
                self.mem.drain(..self.start);
                self.start = 0;
            } else if self.mem.capacity() < limit {
                let grow = limit.min(self.mem.capacity().max(SIZE / 2) * 2) - self.mem.len();
                self.mem.reserve_exact(grow);
            }
        }
        let spare = self.mem.capacity() - self.mem.len();
        spare.min(limit.saturating_sub(self.len()))
    }

    /// Reads once from `io`, appending; `Ok(0)` at EOF (or when `limit` bytes are already
    /// held). Data is only ever appended, so earlier offsets stay valid until `consume`.
    pub fn poll_read_from<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        let room = self.room(limit);
        if room == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut window = (&mut self.mem).limit(room);
        tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut window)
    }

    /// Reads once from `io` (see [`Buf::poll_read_from`]).
    pub async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        limit: usize,
    ) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_from(io, cx, limit)).await
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // Only buffers of the usual size are kept; grown ones (rare big heads) are freed.
        if self.mem.capacity() == SIZE {
            let mut mem = std::mem::take(&mut self.mem);
            mem.clear();
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < FREE_PER_THREAD {
                    f.push(mem);
                }
            });
        }
    }
}

/// Output bytes (a rewritten head, and small bodies sent with it), reused like [`Buf`].
pub struct Out(pub Vec<u8>);

thread_local! {
    static FREE_OUT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl Out {
    pub fn take() -> Out {
        Out(FREE_OUT
            .with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(2048)))
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        if self.0.capacity() <= SIZE {
            let mut v = std::mem::take(&mut self.0);
            v.clear();
            let _ = FREE_OUT.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < FREE_PER_THREAD {
                    f.push(v);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_append_consume_and_grow_up_to_the_limit() {
        let data = vec![7u8; 3 * SIZE];
        let mut src: &[u8] = &data;
        let mut b = Buf::take();
        while b.read_from(&mut src, 2 * SIZE).await.unwrap() > 0 {}
        assert_eq!(b.len(), 2 * SIZE, "stops at the limit");
        b.consume(SIZE);
        assert_eq!(b.len(), SIZE);
        while b.read_from(&mut src, 2 * SIZE).await.unwrap() > 0 {}
        assert_eq!(b.len(), 2 * SIZE, "moved to the front to read more");
        b.consume(usize::MAX);
        assert!(b.is_empty());
    }
}
