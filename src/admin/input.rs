//! Parsing of admin request inputs (bodies and queries) into checked values, apart from any
//! state, so every input is refused with a clear 400 before anything changes — and so the
//! parsers can be fuzzed on their own.

use std::net::SocketAddr;
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
    // Counted and checked as sent, before trimming: what the API document says.
    if b.version.chars().count() > limits::VERSION_LEN || b.version.chars().any(char::is_control) {
        return Err(AdminError::BadRequest(format!(
            "version: at most {} characters, without control characters",
            limits::VERSION_LEN
        )));
    }
    let version = b.version.trim();
    if version.is_empty() {
        return Err(AdminError::BadRequest("version: must not be empty".into()));
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

/// A node to add (`POST /v1/pools/{pool}/nodes`), checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNode {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// `state: "drained"`: added but held out until enabled.
    pub drained: bool,
    /// The node a replace rollout is provisioning, that this one replaces.
    pub replaces: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNodeBody {
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    addr: Option<String>,
    #[serde(default, deserialize_with = "integer")]
    weight: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    state: Option<String>,
    #[serde(default, deserialize_with = "present")]
    replaces: Option<String>,
}

/// `POST /v1/pools/{pool}/nodes` body: `name` and `addr` required.
pub fn add_node(body: &[u8]) -> Result<NewNode, AdminError> {
    let b: AddNodeBody = json_body(body)?;
    let name = b
        .name
        .ok_or_else(|| AdminError::BadRequest("name: required".into()))?;
    if !crate::config::valid_name(&name) {
        return Err(AdminError::BadRequest(format!(
            "name: invalid node name {name:?}: use letters, digits, '-', '_' or '.', at most 64 bytes"
        )));
    }
    let addr = node_addr(
        b.addr
            .as_deref()
            .ok_or_else(|| AdminError::BadRequest("addr: required".into()))?,
    )?;
    let weight = node_weight(b.weight)?.unwrap_or(crate::config::defaults::WEIGHT);
    let drained = match b.state.as_deref() {
        None | Some("active") => false,
        Some("drained") => true,
        Some(other) => {
            return Err(AdminError::BadRequest(format!(
                "state: {other:?} is not a state a node can be added in: \"active\" or \"drained\""
            )))
        }
    };
    Ok(NewNode {
        name,
        addr,
        weight,
        drained,
        replaces: b.replaces,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchNodeBody {
    #[serde(default, deserialize_with = "present")]
    addr: Option<String>,
    #[serde(default, deserialize_with = "integer")]
    weight: Option<u32>,
}

/// `PATCH /v1/pools/{pool}/nodes/{node}` body: `addr` and/or `weight`.
pub fn patch_node(body: &[u8]) -> Result<(Option<SocketAddr>, Option<u32>), AdminError> {
    let b: PatchNodeBody = json_body(body)?;
    if b.addr.is_none() && b.weight.is_none() {
        return Err(AdminError::BadRequest(
            "nothing to change: expected {\"weight\": N} and/or {\"addr\": \"IP:PORT\"}".into(),
        ));
    }
    let addr = b.addr.as_deref().map(node_addr).transpose()?;
    Ok((addr, node_weight(b.weight)?))
}

/// `DELETE /v1/pools/{pool}/nodes/{node}?drain=true&force=true&timeout=30s`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Removal {
    pub drain: bool,
    pub force: bool,
    pub timeout: Option<Duration>,
}

pub fn remove_query(query: &str) -> Result<Removal, AdminError> {
    let mut r = Removal::default();
    let flag = |name: &str, v: &str| match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(AdminError::BadRequest(format!(
            "{name}: expected true or false, got {v:?}"
        ))),
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("drain", v)) => r.drain = flag("drain", v)?,
            Some(("force", v)) => r.force = flag("force", v)?,
            Some(("timeout", v)) => {
                r.timeout = parse_duration("timeout", Some(v), limits::DRAIN_TIMEOUT)?
            }
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter {pair:?}: expected drain=, force= and timeout="
                )))
            }
        }
    }
    // `timeout` is the drain's: without `drain=true` there is none, and it is unused.
    Ok(r)
}

/// An IP address and port: a node's address is never a name resolved once (DNS discovery
/// follows names).
fn node_addr(text: &str) -> Result<SocketAddr, AdminError> {
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        AdminError::BadRequest(format!(
            "addr: {text:?} is not an IP address and port (like \"10.0.0.13:8000\" or \"[::1]:8000\")"
        ))
    })?;
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(AdminError::BadRequest(format!(
            "addr: {addr} cannot be a node's address (port 0, unspecified or multicast)"
        )));
    }
    Ok(addr)
}

/// A field of a node body, when sent: `null` is refused (it is no string), as the API
/// document says.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A whole number, when sent, that JSON may write as `327` or `327.0` (both are the integer
/// 327 to JSON Schema); `null`, a fraction, a negative or a value past `u32` is refused.
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    let whole = match (n.as_u64(), n.as_f64()) {
        (Some(u), _) => Some(u),
        (None, Some(f)) if f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&f) => {
            Some(f as u64)
        }
        _ => None,
    };
    whole
        .and_then(|u| u32::try_from(u).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("invalid value: {n}, expected a whole number")))
}

fn node_weight(weight: Option<u32>) -> Result<Option<u32>, AdminError> {
    weight
        .map(|w| {
            limits::number(w, limits::WEIGHT)
                .map_err(|e| AdminError::BadRequest(format!("weight: {e}")))
        })
        .transpose()
}
