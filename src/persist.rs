//! The state file: admin states and rollouts, so a drained node stays drained and a running
//! rollout resumes across restarts and reloads. One writer task owns the file and writes it
//! atomically (temporary file, fsync, rename) every time the state is marked dirty, always
//! the latest state; a flush waits for that writer rather than writing beside it. Loading
//! checks the format and every value, so a damaged file stops the start with a reason
//! instead of changing what runs.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{duration, limits};
use crate::control::{Control, StoreWriter};
use crate::members::Membership;
use crate::pool::affinity::{KeySource, Keys};
use crate::pool::AdminState;
use crate::rollout::{Registry, Rollout};
use crate::time::MAX_UNIX_MS;

/// Format version of the file.
const FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub format: u32,
    /// By `pool/node`.
    pub nodes: BTreeMap<String, NodeRecord>,
    pub rollouts: Vec<Rollout>,
    /// The affinity key (32 hex digits), so cookies and address pins survive a restart.
    /// Absent when the key comes from a shared secret (never written to disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_key: Option<String>,
    /// Nodes added, changed or removed at runtime (admin API, DNS), relative to the config
    /// file: applied to the file at start.
    #[serde(default, skip_serializing_if = "Membership::is_empty")]
    pub membership: Membership,
    /// The TLS session ticket keys, so that clients resume after a restart. The file is
    /// owner-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_tickets: Option<crate::tickets::KeySet>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub state: AdminState,
    /// Unix ms of the last admin change.
    pub since_ms: u64,
    /// `enable` is waiting for the node to be up, with this warmup.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_duration"
    )]
    pub enable_pending: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read state file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {} is not valid (fix or remove it): {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state file {} is not valid (fix or remove it): {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// Reads and checks the state file; `None` when there is none yet.
pub fn load(path: &Path) -> Result<Option<StateFile>, PersistError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.into(),
                source,
            })
        }
    };
    let state: StateFile = serde_json::from_str(&text).map_err(|source| PersistError::Corrupt {
        path: path.into(),
        source,
    })?;
    check(&state).map_err(|reason| PersistError::Invalid {
        path: path.into(),
        reason,
    })?;
    Ok(Some(state))
}

/// Every value within the ranges the API itself would accept.
fn check(state: &StateFile) -> Result<(), String> {
    if state.format != FORMAT {
        return Err(format!(
            "format {} is not one this handoff reads (expected {FORMAT})",
            state.format
        ));
    }
    if let Some(key) = &state.affinity_key {
        if Keys::parse_hex(key).is_none() {
            return Err("affinity_key must be 32 hex digits".into());
        }
    }
    if let Some(keys) = &state.tls_tickets {
        keys.check().map_err(|e| format!("tls_tickets.{e}"))?;
    }
    for (key, n) in &state.nodes {
        if n.since_ms > MAX_UNIX_MS {
            return Err(format!(
                "nodes.{key:?}.since_ms {} is past year 9999",
                n.since_ms
            ));
        }
        if let Some(w) = n.enable_pending {
            limits::WARMUP
                .check(w)
                .map_err(|e| format!("nodes.{key:?}.enable_pending: {e}"))?;
        }
    }
    for r in &state.rollouts {
        let at = |field: &str, e: String| format!("rollout {:?}: {field}: {e}", r.id);
        limits::DRAIN_TIMEOUT
            .check(r.drain_timeout)
            .map_err(|e| at("drain_timeout", e))?;
        limits::READY_TIMEOUT
            .check(r.ready_timeout)
            .map_err(|e| at("ready_timeout", e))?;
        limits::WARMUP
            .check(r.warmup)
            .map_err(|e| at("warmup", e))?;
        if let Some(a) = &r.analysis {
            a.check().map_err(|e| at("analysis", e))?;
        }
        if r.node_index > r.order.len() {
            return Err(at(
                "node_index",
                format!(
                    "{} is past the {} nodes of `order`",
                    r.node_index,
                    r.order.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Writes `state` so a crash leaves either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, state: &StateFile) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    {
        // Owner-only: the file holds the affinity key, which names nodes in cookies.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The state to write now, read from the runtime.
pub fn collect(control: &Control, rollouts: &Registry) -> StateFile {
    let snapshot = control.snapshot.load();
    let mut nodes = BTreeMap::new();
    for pool in &snapshot.pools {
        for node in &pool.nodes {
            let rec = node.state.record();
            nodes.insert(
                node.key(),
                NodeRecord {
                    state: rec.kind(),
                    since_ms: rec.since_ms,
                    enable_pending: rec.pending_warmup,
                },
            );
        }
    }
    StateFile {
        format: FORMAT,
        nodes,
        rollouts: rollouts.list(),
        affinity_key: (snapshot.keys.source() != KeySource::Secret).then(|| snapshot.keys.to_hex()),
        membership: control.membership(),
        tls_tickets: Some(snapshot.tickets.keys()),
    }
}

/// The one writer of the state file: writes the latest state every time it is marked
/// dirty, and reports how many marks it has covered (what a flush waits for). Ends when
/// the requesting side is dropped.
pub async fn writer(
    control: Arc<Control>,
    rollouts: Arc<Registry>,
    path: PathBuf,
    mut store: StoreWriter,
) {
    loop {
        if store.requested.changed().await.is_err() {
            return;
        }
        let covers = *store.requested.borrow_and_update();
        let state = collect(&control, &rollouts);
        let target = path.clone();
        match tokio::task::spawn_blocking(move || write_atomic(&target, &state)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(path = %path.display(), error = %e, "writing the state file failed")
            }
            Err(e) => tracing::error!(error = %e, "state file writer panicked"),
        }
        store.written.send_replace(covers);
    }
}

/// Serde for `Option<Duration>` written as text.
pub mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::text::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| super::duration::parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Option<StateFile>, PersistError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, text).expect("write");
        load(&path)
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        assert!(load_text(r#"{"format":1,"nodes":{},"rollouts":[]}"#).is_ok());
        let e = load_text(r#"{"format":7,"nodes":{},"rollouts":[]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("format 7"), "{e}");
        let e = load_text(
            r#"{"format":1,"nodes":{"web/a":{"state":"drained","since_ms":1,"enable_pending":"999999999h"}},"rollouts":[]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("enable_pending") && e.contains("at most 24h"),
            "{e}"
        );
        let e = load_text(
            r#"{"format":1,"nodes":{"web/a":{"state":"drained","since_ms":18446744073709551615}},"rollouts":[]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("since_ms"), "{e}");
        assert!(load_text("{").is_err());
    }
}
