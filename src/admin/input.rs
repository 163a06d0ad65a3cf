//! Parsing of admin request inputs (bodies and queries) into checked values, apart from any
//! state, so every input is refused with a clear 400 before anything changes — and so the
//! parsers can be fuzzed on their own.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::AdminError;
use crate::config::limits::{self, Range};
use crate::pool::{AdminState, Health};
use crate::rollout::StartRequest;

/// `wait` without `timeout=` waits this long.
pub const WAIT_DEFAULT: Duration = Duration::from_secs(30);

/// An optional JSON body: empty (or blank) means all defaults.
pub fn json_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))
}

/// An optional duration field, checked against its documented range.
fn parse_duration(
    field: &str,
    text: Option<&str>,
    range: Range,
) -> Result<Option<Duration>, AdminError> {
    text.map(|t| {
        range
            .parse(t)
            .map_err(|e| AdminError::BadRequest(format!("{field}: {e}")))
    })
    .transpose()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutBody {
    version: String,
    order: Option<Vec<String>>,
    drain_timeout: Option<String>,
    ready_timeout: Option<String>,
    warmup: Option<String>,
}

/// `POST /v1/pools/{pool}/rollouts` body: `version` required, the rest optional. Node names
/// in `order` are checked against the pool by the rollout itself.
pub fn rollout(body: &[u8]) -> Result<StartRequest, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::BadRequest(
            "missing body: expected {\"version\": \"...\"}".into(),
        ));
    }
    let b: RolloutBody = json_body(body)?;
    let version = b.version.trim();
    if version.is_empty() {
        return Err(AdminError::BadRequest("version: must not be empty".into()));
    }
    if version.len() > limits::VERSION_LEN || version.chars().any(char::is_control) {
        return Err(AdminError::BadRequest(format!(
            "version: at most {} bytes, without control characters",
            limits::VERSION_LEN
        )));
    }
    Ok(StartRequest {
        version: version.to_string(),
        order: b.order,
        drain_timeout: parse_duration(
            "drain_timeout",
            b.drain_timeout.as_deref(),
            limits::DRAIN_TIMEOUT,
        )?,
        ready_timeout: parse_duration(
            "ready_timeout",
            b.ready_timeout.as_deref(),
            limits::READY_TIMEOUT,
        )?,
        warmup: parse_duration("warmup", b.warmup.as_deref(), limits::WARMUP)?,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    timeout: Option<String>,
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableBody {
    warmup: Option<String>,
}

/// `POST …/drain` body: `{"timeout":"30s","force":false}`, both optional.
pub fn drain(body: &[u8]) -> Result<(Option<Duration>, bool), AdminError> {
    let b: DrainBody = json_body(body)?;
    Ok((
        parse_duration("timeout", b.timeout.as_deref(), limits::DRAIN_TIMEOUT)?,
        b.force,
    ))
}

/// `POST …/enable` body: `{"warmup":"10s"}`, optional.
pub fn enable(body: &[u8]) -> Result<Option<Duration>, AdminError> {
    let b: EnableBody = json_body(body)?;
    parse_duration("warmup", b.warmup.as_deref(), limits::WARMUP)
}

/// `GET …/wait?state=S&timeout=D`: the state name and the timeout, both checked.
pub fn wait_query(query: &str) -> Result<(String, Duration), AdminError> {
    let (mut state, mut timeout) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("state", v)) => state = Some(v.to_string()),
            Some(("timeout", v)) => {
                timeout = parse_duration("timeout", Some(v), limits::WAIT_TIMEOUT)?
            }
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter {pair:?}: expected state= and timeout="
                )))
            }
        }
    }
    let state = state.ok_or_else(|| {
        AdminError::BadRequest(
            "missing ?state= (active, draining, drained, warming, up, down, unknown)".into(),
        )
    })?;
    let known = AdminState::ALL.iter().any(|s| s.as_str() == state)
        || Health::ALL.iter().any(|h| h.as_str() == state);
    if !known {
        return Err(AdminError::BadRequest(format!(
            "unknown state {state:?}: expected active, draining, drained, warming, up, down or unknown"
        )));
    }
    Ok((state, timeout.unwrap_or(WAIT_DEFAULT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(drain(b"").unwrap(), (None, false));
        assert_eq!(
            drain(br#"{"timeout":"2s","force":true}"#).unwrap(),
            (Some(Duration::from_secs(2)), true)
        );
        assert!(drain(br#"{"timeout":"2x"}"#).is_err());
        assert!(drain(br#"{"colour":1}"#).is_err());
        assert!(drain(b"[").is_err());
        assert_eq!(
            enable(br#"{"warmup":"1m"}"#).unwrap(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            wait_query("state=drained").unwrap(),
            ("drained".into(), WAIT_DEFAULT)
        );
        assert_eq!(
            wait_query("state=up&timeout=1h").unwrap().1,
            limits::WAIT_TIMEOUT.max
        );
        let e = drain(br#"{"timeout":"999999999h"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout") && e.contains("at most 168h"), "{e}");
        let e = drain(br#"{"timeout":"18446744073709551615h"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout") && e.contains("too large"), "{e}");
        let e = enable(br#"{"warmup":"999999999h"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("warmup") && e.contains("at most 24h"), "{e}");
        assert!(rollout(br#"{"version":"2","ready_timeout":"999999999h"}"#).is_err());
        assert!(rollout(br#"{"version":" "}"#).is_err());
        assert!(rollout(b"").is_err());
        assert_eq!(rollout(br#"{"version":" 2.0 "}"#).unwrap().version, "2.0");
        for bad in [
            "",
            "state=zz",
            "state=up&x=1",
            "timeout=1s",
            "state=up&timeout=-1s",
            "state=up&timeout=2h",
        ] {
            assert!(wait_query(bad).is_err(), "{bad}");
        }
    }
}
