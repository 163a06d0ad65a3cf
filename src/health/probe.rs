//! One health probe: a TCP connect, or an HTTP GET whose status must match and whose
//! response may carry the node's version (a header, or a field of a JSON body).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::config::{CheckKind, HealthConfig, UpstreamProtocol, UpstreamTls, VersionSource};

/// A JSON health body larger than this is a failed check, not a memory hazard.
const MAX_BODY: usize = 64 * 1024;

/// What one probe found.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub ok: bool,
    pub version: Option<String>,
    /// Why the check failed, or "ok".
    pub reason: String,
}

impl ProbeResult {
    fn fail(reason: impl Into<String>) -> Self {
        ProbeResult {
            ok: false,
            version: None,
            reason: reason.into(),
        }
    }
}

/// How a probe reaches the node: the pool's protocol, and its TLS when it has one (so a
/// bad certificate fails the check, as it would fail requests).
#[derive(Clone, Copy)]
pub struct Reach<'a> {
    pub protocol: UpstreamProtocol,
    pub tls: Option<(&'a TlsConnector, &'a UpstreamTls)>,
}

impl Reach<'_> {
    /// Plain HTTP/1.1 (and tcp checks): what a pool without `upstream:` gets.
    pub const PLAIN: Reach<'static> = Reach {
        protocol: UpstreamProtocol::Http1,
        tls: None,
    };
}

/// Probes `addr` as `cfg` says, within `cfg.timeout`.
pub async fn probe(addr: SocketAddr, cfg: &HealthConfig, reach: Reach<'_>) -> ProbeResult {
    match timeout(cfg.timeout, probe_inner(addr, cfg, reach)).await {
        Ok(r) => r,
        Err(_) => ProbeResult::fail(format!(
            "timed out after {}",
            crate::config::duration::format(cfg.timeout)
        )),
    }
}

async fn probe_inner(addr: SocketAddr, cfg: &HealthConfig, reach: Reach<'_>) -> ProbeResult {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return ProbeResult::fail(format!("connect: {e}")),
    };
    let _ = stream.set_nodelay(true);
    // A tcp check is a connect, TLS or not; an http check speaks what requests speak.
    let tls = reach
        .tls
        .filter(|_| matches!(cfg.check, CheckKind::Http { .. }));
    match tls {
        None => check(stream, addr, cfg, reach.protocol, false).await,
        Some((connector, tls)) => match connector.connect(tls.server_name(addr), stream).await {
            Ok(tls) => check(tls, addr, cfg, reach.protocol, true).await,
            Err(e) => ProbeResult::fail(format!("TLS: {e}")),
        },
    }
}

/// The check proper, on a connected (and maybe TLS) stream: nothing more for a tcp check,
/// else a GET in the pool's HTTP version.
async fn check<S>(
    io: S,
    addr: SocketAddr,
    cfg: &HealthConfig,
    protocol: UpstreamProtocol,
    tls: bool,
) -> ProbeResult
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let CheckKind::Http {
        path,
        host,
        expect_status,
        version,
    } = &cfg.check
    else {
        return ProbeResult {
            ok: true,
            version: None,
            reason: "ok".into(),
        };
    };
    let host = host.clone().unwrap_or_else(|| addr.to_string());
    let sent = match protocol {
        UpstreamProtocol::Http1 => {
            let request = http::Request::get(path.as_str())
                .header(http::header::HOST, host)
                .header(http::header::USER_AGENT, "handoff-health")
                .body(Empty::<Bytes>::new());
            let (mut sender, conn) =
                match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
                    Ok(pair) => pair,
                    Err(e) => return ProbeResult::fail(format!("handshake: {e}")),
                };
            tokio::spawn(async move {
                let _ = conn.await;
            });
            match request {
                Ok(r) => sender.send_request(r).await,
                Err(e) => return ProbeResult::fail(format!("building request: {e}")),
            }
        }
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
            let scheme = if tls { "https" } else { "http" };
            let request = http::Request::get(format!("{scheme}://{host}{path}"))
                .header(http::header::USER_AGENT, "handoff-health")
                .body(Empty::<Bytes>::new());
            let (mut sender, conn) =
                match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                {
                    Ok(pair) => pair,
                    Err(e) => return ProbeResult::fail(format!("HTTP/2 handshake: {e}")),
                };
            tokio::spawn(async move {
                let _ = conn.await;
            });
            match request {
                Ok(r) => sender.send_request(r).await,
                Err(e) => return ProbeResult::fail(format!("building request: {e}")),
            }
        }
    };
    let response = match sent {
        Ok(r) => r,
        Err(e) => return ProbeResult::fail(format!("request: {e}")),
    };
    let status = response.status().as_u16();
    if status != *expect_status {
        return ProbeResult::fail(format!("status {status}, expected {expect_status}"));
    }
    let version = match version {
        None => None,
        Some(VersionSource::Header(name)) => response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string()),
        Some(VersionSource::Json(field)) => {
            let body = match Limited::new(response.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return ProbeResult::fail(format!("reading body: {e}")),
            };
            match json_field(&body, field) {
                Ok(v) => Some(v),
                Err(reason) => return ProbeResult::fail(reason),
            }
        }
    };
    ProbeResult {
        ok: true,
        version,
        reason: "ok".into(),
    }
}

/// Reads a dotted field (`build.version`) of a JSON body as a string.
fn json_field(body: &[u8], field: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("health body is not JSON: {e}"))?;
    let mut v = &value;
    for part in field.split('.') {
        v = v
            .get(part)
            .ok_or_else(|| format!("health body has no field {field:?}"))?;
    }
    match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("field {field:?} is not a string: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::json_field;

    #[test]
    fn reads_nested_json_fields() {
        let body = br#"{"version":"2.0.0","build":{"version":"2.0.0-abc","n":7}}"#;
        assert_eq!(json_field(body, "version").unwrap(), "2.0.0");
        assert_eq!(json_field(body, "build.version").unwrap(), "2.0.0-abc");
        assert_eq!(json_field(body, "build.n").unwrap(), "7");
        assert!(json_field(body, "missing").is_err());
        assert!(json_field(b"not json", "version").is_err());
    }
}
