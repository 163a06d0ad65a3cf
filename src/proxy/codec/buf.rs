//! I/O buffers that exist only while a message is in flight.
//!
//! A connection takes a buffer when bytes arrive and gives it back when it goes idle with
//! nothing left unread, so an idle keep-alive connection holds none. Freed buffers wait on
//! a per-thread free list (no lock: each worker thread has its own) for the next request.
//! The lists are long enough for 1,000 requests in flight; after a burst ends, the
//! control plane's trim ([`shrink_free_lists`]) cuts them back to [`FREE_AFTER_TRIM`].

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::BufMut;
use tokio::io::AsyncRead;

/// A buffer's usual size: a typical head and body, or one read of a streamed body.
pub const SIZE: usize = 16 * 1024;
/// Free buffers kept per worker thread: a request takes two, and at 1,000 requests in
/// flight a list of 256 sent most releases to the allocator (a tenth of the user CPU).
/// At most 32 MiB, and only while that many requests were in flight at once.
const FREE_PER_THREAD: usize = 2048;
/// What a free list keeps once a burst is over (4 MiB).
pub const FREE_AFTER_TRIM: usize = 256;

/// Bumped by each trim: a thread cuts its lists back at its next release after it.
static TRIMS: AtomicU32 = AtomicU32::new(0);

/// After a burst: every worker thread cuts its free lists back to [`FREE_AFTER_TRIM`] the
/// next time it releases a buffer (the control plane's next trim hands it back).
pub fn shrink_free_lists() {
    TRIMS.fetch_add(1, Relaxed);
}

/// Cuts the calling thread's free lists back at once, not at its next release, which may
/// not come before the trim that should hand them back: the trimming thread's own (with
/// `--threads 1`, every list), and each worker's when the trim sends it there.
pub fn cut_free_lists_here() {
    let _ = FREE.try_with(|f| {
        if let Ok(mut lists) = f.try_borrow_mut() {
            lists.cut(TRIMS.load(Relaxed));
        }
    });
}

#[derive(Default)]
struct FreeLists {
    bufs: Vec<Vec<u8>>,
    outs: Vec<Vec<u8>>,
    /// [`TRIMS`] when the lists were last cut back.
    trims: u32,
}

impl FreeLists {
    /// Back to [`FREE_AFTER_TRIM`] each, as of the `trims`-th trim.
    fn cut(&mut self, trims: u32) {
        self.trims = trims;
        self.bufs.truncate(FREE_AFTER_TRIM);
        self.outs.truncate(FREE_AFTER_TRIM);
    }

    /// Keeps `mem` for reuse (`out`: the output list), unless the list is full.
    fn keep(&mut self, mut mem: Vec<u8>, out: bool) {
        let trims = TRIMS.load(Relaxed);
        if trims != self.trims {
            self.cut(trims);
        }
        let list = if out { &mut self.outs } else { &mut self.bufs };
        if list.len() < FREE_PER_THREAD {
            mem.clear();
            list.push(mem);
        }
    }
}

thread_local! {
    static FREE: RefCell<FreeLists> = RefCell::new(FreeLists::default());
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
            .with(|f| f.borrow_mut().bufs.pop())
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
            let mem = std::mem::take(&mut self.mem);
            let _ = FREE.try_with(|f| f.borrow_mut().keep(mem, false));
        }
    }
}

/// Output bytes (a rewritten head, and small bodies sent with it), reused like [`Buf`].
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn take() -> Out {
        Out(FREE
            .with(|f| f.borrow_mut().outs.pop())
            .unwrap_or_else(|| Vec::with_capacity(2048)))
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        if self.0.capacity() <= SIZE {
            let v = std::mem::take(&mut self.0);
            let _ = FREE.try_with(|f| f.borrow_mut().keep(v, true));
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

    #[test]
    fn free_lists_keep_a_burst_and_give_it_back_after_a_trim() {
        std::thread::spawn(|| {
            let held: Vec<Buf> = (0..FREE_AFTER_TRIM * 2).map(|_| Buf::take()).collect();
            drop(held);
            let kept = || FREE.with(|f| f.borrow().bufs.len());
            assert_eq!(kept(), FREE_AFTER_TRIM * 2, "a burst's buffers are kept");
            shrink_free_lists();
            drop(Buf::take());
            assert_eq!(
                kept(),
                FREE_AFTER_TRIM + 1,
                "cut back at the next release, which it keeps"
            );
        })
        .join()
        .expect("the test thread");
    }

    #[test]
    fn the_trimming_thread_cuts_its_own_lists_at_once() {
        std::thread::spawn(|| {
            let held: Vec<Out> = (0..FREE_AFTER_TRIM * 2).map(|_| Out::take()).collect();
            drop(held);
            let kept = || FREE.with(|f| f.borrow().outs.len());
            assert_eq!(kept(), FREE_AFTER_TRIM * 2);
            // Without bumping the trim counter: that would cut the other test's lists.
            cut_free_lists_here();
            assert_eq!(kept(), FREE_AFTER_TRIM, "cut with no release in between");
        })
        .join()
        .expect("the test thread");
    }
}
