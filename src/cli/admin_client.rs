//! The admin API as `handoff ctl` and `ctl watch` talk to it: one HTTP/1.1 connection to
//! the admin URL, and one call on it.

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

pub(super) async fn call(
    base: &Uri,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let (mut sender, authority) = connect(base).await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority.as_str());
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let payload = match body {
        Some(v) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(&v)?)
        }
        None => Bytes::new(),
    };
    let resp = sender.send_request(req.body(Full::new(payload))?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// An HTTP/1.1 connection to the admin API at `base`, and its authority (for `Host`).
pub(super) async fn connect(
    base: &Uri,
) -> anyhow::Result<(
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    http::uri::Authority,
)> {
    if base.scheme_str().is_some_and(|s| s != "http") {
        bail!("only http:// admin URLs are supported");
    }
    let authority = base
        .authority()
        .context("the admin URL needs a host and port")?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((authority.host().trim_matches(['[', ']']), port)).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok((sender, authority))
}
