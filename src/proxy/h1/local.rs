//! Responses handoff makes itself on the HTTP/1.x path: a status and a one-line reason,
//! written whole; the connection stays open only when the request was read to its end.

use tokio::io::AsyncWriteExt;

use super::{ClientIo, Next};
use crate::proxy::codec::buf::Out;
use crate::proxy::codec::head::{self, Refusal};
use crate::proxy::walk::Local;

impl From<Refusal> for Local {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Bad(reason) => Local {
                status: 400,
                reason,
            },
            Refusal::TooLarge => Local {
                status: 431,
                reason: "the request head is too large",
            },
            Refusal::NotImplemented(reason) => Local {
                status: 501,
                reason,
            },
        }
    }
}

/// Writes a local response. `keep_alive`: the request was read whole and the connection
/// may carry the next one.
pub async fn respond_local<I: ClientIo>(
    io: &mut I,
    local: &Local,
    to_head: bool,
    keep_alive: bool,
) -> Next {
    let mut out = Out::take();
    head::write_local(&mut out.0, local.status, local.reason, to_head, !keep_alive);
    let written = io.write_all(&out.0).await.and(io.flush().await);
    match (written, keep_alive) {
        (Ok(()), true) => Next::KeepAlive,
        _ => Next::Close,
    }
}
