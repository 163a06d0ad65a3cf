//! Sending a request upstream and reading its response head. While a streamed request body
//! goes out, the backend is watched: interim responses (`100 Continue`) go to the client at
//! once, and a final response that comes early ends the upload. A body held before it is
//! sent (for a replay, or `request_buffer`) is read here too.

use std::sync::Arc;

use crate::metrics::ClientError;
use crate::pool::Node;
use crate::pool::UpstreamIo;
use crate::proxy::ctx::ConnCtx;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use super::local::{respond_local, Then};
use super::plan::RequestPlan;
use super::ClientIo;
use crate::proxy::codec::buf::{Buf, Out, SIZE};
use crate::proxy::codec::framing::{BodyLen, Chunked};
use crate::proxy::codec::head;
use crate::proxy::codec::head::MAX_HEAD;
use crate::proxy::codec::response::{self, ClientSide};
use crate::proxy::walk::{Failure, Local};

/// A final response head, already rewritten for the client.
pub struct RelayHead {
    pub status: u16,
    /// Length of the backend's head at the front of the upstream buffer.
    pub len: usize,
    pub body: BodyLen,
    pub upstream_closes: bool,
    /// The client connection stays open after this response.
    pub keep_alive: bool,
    /// A 101 to an upgrade request: the connections become a tunnel.
    pub tunnel: bool,
    /// The head for the client.
    pub out: Out,
}

/// How the client side of a final response is decided (keep-alive, affinity cookie), given
/// its status, its framing and whether the request body was read whole.
pub struct ReplyTerms {
    pub keep_alive: bool,
    pub set_cookie: Option<String>,
    /// The node answering, when response header rules need its name and version.
    pub node: Option<Arc<Node>>,
}

/// Sends the request (`p.out`, and the rest of the body from the client unless `whole`) and
/// reads the final response head. `uploading` says, while it holds, that the client still
/// owes body bytes (a stall is then the client's fault).
#[allow(clippy::too_many_arguments)]
pub async fn request<I: ClientIo>(
    io: &mut I,
    buf: &mut Buf,
    up: &mut UpstreamIo,
    ub: &mut Buf,
    p: &RequestPlan,
    whole: bool,
    uploading: &AtomicBool,
    mut decide: impl FnMut(u16, BodyLen, bool) -> ReplyTerms,
) -> Result<RelayHead, Failure> {
    up.write_all(&p.out.0)
        .await
        .map_err(|_| Failure::Upstream { answered: false })?;
    // While the rest of the body comes from the client, a stall is the client's.
    uploading.store(!whole, Relaxed);
    let body_read = whole || body(io, buf, up, ub, p).await?;
    uploading.store(false, Relaxed);
    loop {
        match parse(ub, p, body_read, &mut decide)? {
            Parsed::Interim(out, len) => {
                forward_interim(io, &out).await?;
                ub.consume(len);
                continue;
            }
            Parsed::Final(head) => return Ok(head),
            Parsed::Partial => {}
        }
        if ub.len() >= MAX_HEAD {
            return Err(Failure::Upstream { answered: true });
        }
        match ub.read_from(up, MAX_HEAD).await {
            Ok(0) | Err(_) => {
                return Err(Failure::Upstream {
                    answered: !ub.is_empty(),
                })
            }
            Ok(_) => {}
        }
    }
}

enum Parsed {
    Partial,
    Interim(Out, usize),
    Final(RelayHead),
}

fn parse(
    ub: &Buf,
    p: &RequestPlan,
    body_read: bool,
    decide: &mut impl FnMut(u16, BodyLen, bool) -> ReplyTerms,
) -> Result<Parsed, Failure> {
    let bad = Failure::Upstream { answered: true };
    let mut fields = head::fields();
    let Some(resp) = response::parse_response(ub.data(), &mut fields).map_err(|_| bad)? else {
        return Ok(Parsed::Partial);
    };
    let mut out = Out::take();
    if (100..200).contains(&resp.status) && resp.status != 101 {
        // HTTP/1.0 clients cannot take interim responses: dropped.
        if p.minor >= 1 {
            response::write_interim(&mut out.0, &resp);
        }
        return Ok(Parsed::Interim(out, resp.len));
    }
    let tunnel = resp.status == 101;
    if tunnel && p.upgrade.is_none() {
        return Err(Failure::Upstream { answered: true });
    }
    let info = response::inspect_response(&resp, p.is_head)
        .map_err(|_| Failure::Upstream { answered: true })?;
    let d = decide(resp.status, info.body, body_read);
    let upgrade = if tunnel {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .map(|h| h.value)
            .or(Some(b"websocket"))
    } else {
        None
    };
    let version = d.node.as_ref().and_then(|n| n.state.version());
    let client = ClientSide {
        minor: p.minor,
        keep_alive: d.keep_alive,
        set_cookie: d.set_cookie.as_deref().map(str::as_bytes),
        upgrade,
        request_id: p.id(),
        rules: p.response_rules(d.node.as_deref(), version.as_deref().map(String::as_str)),
    };
    response::write_response(&mut out.0, &resp, &info, &client);
    Ok(Parsed::Final(RelayHead {
        status: resp.status,
        len: resp.len,
        body: info.body,
        upstream_closes: info.upstream_closes,
        keep_alive: d.keep_alive,
        tunnel,
        out,
    }))
}

async fn forward_interim<I: ClientIo>(io: &mut I, out: &Out) -> Result<(), Failure> {
    if out.0.is_empty() {
        return Ok(());
    }
    let client = Failure::Client { bad: false };
    io.write_all(&out.0).await.map_err(|_| client)?;
    io.flush().await.map_err(|_| Failure::Client { bad: false })
}

/// Streams the request body from the client. Returns `false` when a final response arrived
/// before the body was all sent (the rest is never read: the client connection closes).
async fn body<I: ClientIo>(
    io: &mut I,
    buf: &mut Buf,
    up: &mut UpstreamIo,
    ub: &mut Buf,
    p: &RequestPlan,
) -> Result<bool, Failure> {
    enum Left {
        Bytes(u64),
        Chunked(Chunked),
    }
    let mut left = match p.body {
        BodyLen::Length(n) => Left::Bytes(n),
        BodyLen::Chunked => Left::Chunked(Chunked::default()),
        BodyLen::Empty | BodyLen::UntilClose => return Ok(true),
    };
    loop {
        let (n, done) = match &mut left {
            Left::Bytes(l) => {
                let n = (*l).min(buf.len() as u64);
                *l -= n;
                (n as usize, *l == 0)
            }
            Left::Chunked(c) => {
                let n = c
                    .scan(buf.data())
                    .map_err(|_| Failure::Client { bad: true })?;
                (n, c.is_done())
            }
        };
        if n > 0 {
            up.write_all(&buf.data()[..n])
                .await
                .map_err(|_| Failure::Upstream { answered: false })?;
            buf.consume(n);
        }
        if done {
            return Ok(true);
        }
        tokio::select! {
            biased;
            r = buf.read_from(io, SIZE) => match r {
                Ok(0) | Err(_) => return Err(Failure::Client { bad: false }),
                Ok(_) => {}
            },
            // Dropped unfinished when the client's bytes come first: a read either happened
            // or did not (TLS keeps what it decrypted), so nothing is lost.
            r = ub.read_from(up, MAX_HEAD) => {
                match r {
                    Ok(0) | Err(_) => return Err(Failure::Upstream { answered: !ub.is_empty() }),
                    Ok(_) => {
                        // Interim responses go to the client (it may be waiting for
                        // `100 Continue` to send the body); a final one ends the upload.
                        loop {
                            match parse(ub, p, false, &mut |_, _, _| ReplyTerms { keep_alive: false, set_cookie: None, node: None })? {
                                Parsed::Interim(out, len) => {
                                    forward_interim(io, &out).await?;
                                    ub.consume(len);
                                }
                                Parsed::Final(_) => return Ok(false),
                                Parsed::Partial => break,
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Reads until the first `n` body bytes are held (bounded by the response timeout: a client
/// that stalls gets 408).
pub(super) async fn read_body<I: ClientIo>(
    ctx: &ConnCtx,
    io: &mut I,
    buf: &mut Buf,
    n: usize,
    p: &RequestPlan,
) -> bool {
    let timeouts = p.timeouts;
    let limit = n.max(SIZE);
    let read = async {
        while buf.len() < n {
            match buf.read_from(io, limit).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    };
    match timeout(timeouts.response, read).await {
        Ok(done) => done,
        Err(_) => {
            let local = Local {
                status: 408,
                reason: "the request body did not arrive in time",
            };
            ctx.listener.metrics.client_error(ClientError::BodyTimeout);
            respond_local(io, &local, false, Then::Close, p.id()).await;
            false
        }
    }
}
