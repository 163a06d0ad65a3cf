//! Messages with file descriptors over a Unix stream (SCM_RIGHTS): the one module of the
//! crate with `unsafe`, for taking ownership of the descriptors the kernel installed in
//! this process on receipt.
//!
//! A message is a 4-byte big-endian length, then that many bytes of payload. Descriptors
//! travel with the length's bytes, in one `sendmsg`, so they arrive with the message they
//! belong to.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Most descriptors in one message (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;
/// Largest payload accepted: a handover carries state, not bulk data.
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// Sends `payload` with `fds` attached.
pub fn send(stream: &UnixStream, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors in one message (at most {MAX_FDS})",
            fds.len()
        )));
    }
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_PAYLOAD)
        .ok_or_else(|| io::Error::other("message too large"))?
        .to_be_bytes();
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
    let mut sent = 0;
    while sent == 0 {
        sent = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&len)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
    }
    let mut w = stream;
    w.write_all(&len[sent..])?;
    w.write_all(payload)?;
    w.flush()
}

/// Receives one message and the descriptors that came with it. `Ok(None)` at a clean end
/// of stream before any byte of a message.
pub fn recv(stream: &UnixStream) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut len = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut len)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel installed `fd` in this process's table for this
                    // message (SCM_RIGHTS); nothing else in the process knows the number,
                    // so this is its only owner, and it is closed when the OwnedFd drops.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Ok(None);
    }
    let mut r = stream;
    r.read_exact(&mut len[got..])?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_PAYLOAD {
        return Err(io::Error::other(format!(
            "message of {n} bytes (at most {MAX_PAYLOAD})"
        )));
    }
    let mut payload = vec![0u8; n];
    r.read_exact(&mut payload)?;
    Ok(Some((payload, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_listening_socket_crosses_and_still_accepts() {
        let (a, b) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        send(&a, b"listeners", &[listener.as_fd()]).unwrap();
        drop(listener);
        let (payload, mut fds) = recv(&b).unwrap().unwrap();
        assert_eq!(payload, b"listeners");
        assert_eq!(fds.len(), 1);
        let inherited = std::net::TcpListener::from(fds.remove(0));
        assert_eq!(inherited.local_addr().unwrap(), addr);
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_, peer) = inherited.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        send(&a, b"", &[]).unwrap();
        let (empty, none) = recv(&b).unwrap().unwrap();
        assert!(empty.is_empty() && none.is_empty());
        drop(a);
        assert!(recv(&b).unwrap().is_none());
    }
}
