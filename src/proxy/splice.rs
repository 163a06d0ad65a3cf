//! Zero-copy TCP transfers (Linux): `splice(2)` moves bytes from one socket into a kernel
//! pipe and from the pipe into the other socket, without copying them through user space.
//!
//! A pipe costs two file descriptors, so the copy in [`super::copy`] takes one only once
//! a direction shows bulk traffic, gives it back when the session ends, and the process
//! holds at most [`MAX_PIPES`] at a time (beyond that, sessions copy through user space,
//! as HAProxy does with `maxpipes`). If the kernel refuses splice (a sandbox that filters
//! it, say), the session goes back to copying and the process tries no more pipes.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::task::{ready, Context, Poll};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipes open at once, process-wide (two descriptors each).
pub const MAX_PIPES: usize = 1024;
/// Requested pipe capacity: room for several segments per call. On loopback iperf3, 256 KiB
/// moved 10–20 % more than the kernel's default 64 KiB, and 1 MiB no more than 256 KiB; if
/// the kernel refuses, the default stays.
const PIPE_BYTES: usize = 256 * 1024;

static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Set when the kernel refused a splice: no more pipes are tried in this process.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// A kernel pipe used as the buffer of one copy direction.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// Bytes in the pipe, not yet written on.
    held: usize,
}

impl Pipe {
    /// A new pipe, or `None` when the process already holds [`MAX_PIPES`] or the kernel
    /// refuses (out of descriptors): the caller then copies through user space.
    pub fn open() -> Option<Pipe> {
        if REFUSED.load(Relaxed) {
            return None;
        }
        if OPEN.fetch_add(1, Relaxed) >= MAX_PIPES {
            OPEN.fetch_sub(1, Relaxed);
            return None;
        }
        match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
            Ok((read, write)) => {
                let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_BYTES as i32))
                    .ok()
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(64 * 1024);
                Some(Pipe {
                    read,
                    write,
                    capacity,
                    held: 0,
                })
            }
            Err(e) => {
                OPEN.fetch_sub(1, Relaxed);
                tracing::debug!(error = %e, "no pipe for zero-copy: copying through user space");
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Moves what the socket has (up to the pipe's capacity) into the empty pipe.
    /// `Ok(0)` is the end of the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>, from: &TcpStream) -> Poll<io::Result<usize>> {
        debug_assert!(self.held == 0);
        let n = ready!(poll_io(from, cx, Interest::READABLE, || {
            splice_once(from, &self.write, self.capacity)
        }))
        .inspect_err(|e| {
            if unsupported(e) {
                tracing::info!(error = %e, "the kernel refuses splice: TCP copies through user space from now on");
                REFUSED.store(true, Relaxed);
            }
        })?;
        self.held = n;
        Poll::Ready(Ok(n))
    }

    /// Writes what the pipe holds into the socket; returns the bytes moved by this call.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<io::Result<usize>> {
        let n = ready!(poll_io(to, cx, Interest::WRITABLE, || {
            splice_once(&self.read, to, self.held)
        }))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.held -= n;
        Poll::Ready(Ok(n))
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Relaxed);
    }
}

/// Whether a splice error means "not possible here" rather than a failed connection.
pub fn unsupported(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|code| {
        [Errno::EINVAL, Errno::ENOSYS, Errno::EPERM].contains(&Errno::from_raw(code))
    })
}

fn splice_once(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    splice(from, None, to, None, len, flags).map_err(io::Error::from)
}

/// Runs `op` once the socket is ready for `interest`; a `WouldBlock` clears the readiness
/// and waits again (tokio's `try_io` contract).
fn poll_io(
    socket: &TcpStream,
    cx: &mut Context<'_>,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        if interest.is_readable() {
            ready!(socket.poll_read_ready(cx))?;
        } else {
            ready!(socket.poll_write_ready(cx))?;
        }
        match socket.try_io(interest, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_fall_back_to_copying() {
        let err = |e: nix::errno::Errno| io::Error::from_raw_os_error(e as i32);
        assert!(unsupported(&err(nix::errno::Errno::EINVAL)));
        assert!(unsupported(&err(nix::errno::Errno::ENOSYS)));
        assert!(!unsupported(&err(nix::errno::Errno::ECONNRESET)));
        assert!(!unsupported(&io::ErrorKind::WriteZero.into()));
    }
}
