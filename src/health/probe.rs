//! One health probe: a TCP connect, or an HTTP GET whose status must match and whose
//! response may carry the node's version (a header, or a field of a JSON body).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{CheckKind, HealthConfig, VersionSource};

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

/// Probes `addr` as `cfg` says, within `cfg.timeout`.
pub async fn probe(addr: SocketAddr, cfg: &HealthConfig) -> ProbeResult {
    match timeout(cfg.timeout, probe_inner(addr, cfg)).await {
        Ok(r) => r,
        Err(_) => ProbeResult::fail(format!(
            "timed out after {}",
            crate::config::duration::format(cfg.timeout)
        )),
    }
}

async fn probe_inner(addr: SocketAddr, cfg: &HealthConfig) -> ProbeResult {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return ProbeResult::fail(format!("connect: {e}")),
    };
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
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return ProbeResult::fail(format!("handshake: {e}")),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = host.clone().unwrap_or_else(|| addr.to_string());
    let request = http::Request::get(path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "handoff-health")
        .body(Empty::<Bytes>::new());
    let request = match request {
        Ok(r) => r,
        Err(e) => return ProbeResult::fail(format!("building request: {e}")),
    };
    let response = match sender.send_request(request).await {
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
