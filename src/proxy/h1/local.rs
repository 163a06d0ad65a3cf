//! Responses handoff makes itself on the HTTP/1.x path: a status and a one-line reason,
//! written whole; the connection stays open only when the request was read to its end.

use tokio::io::AsyncWriteExt;

use super::{ClientIo, Next};
use crate::proxy::codec::buf::Out;
use crate::proxy::codec::head::Refusal;
use crate::proxy::codec::response;
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

/// What becomes of the client connection after a local response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Close,
    /// The request was read whole and the connection carries the next one; `minor`: the
    /// client's HTTP/1.x minor version (an HTTP/1.0 client is told the connection stays).
    KeepAlive {
        minor: u8,
    },
}

impl Then {
    pub fn keep_if(keep: bool, minor: u8) -> Then {
        if keep {
            Then::KeepAlive { minor }
        } else {
            Then::Close
        }
    }
}

/// Writes a local response (with the request's ID, once it has one), then keeps or closes
/// the connection as `then` says.
pub async fn respond_local<I: ClientIo>(
    io: &mut I,
    local: &Local,
    to_head: bool,
    then: Then,
    id: Option<(&str, &[u8])>,
) -> Next {
    let mut out = Out::take();
    let connection = match then {
        Then::Close => Some("close"),
        Then::KeepAlive { minor: 0 } => Some("keep-alive"),
        Then::KeepAlive { .. } => None,
    };
    response::write_local(
        &mut out.0,
        local.status,
        local.reason,
        to_head,
        connection,
        id,
    );
    let written = io.write_all(&out.0).await.and(io.flush().await);
    match (written, then) {
        (Ok(()), Then::KeepAlive { .. }) => Next::KeepAlive,
        _ => Next::Close,
    }
}
