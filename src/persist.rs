//! The state file: admin states and rollouts, so a drained node stays drained and a running
//! rollout resumes across restarts and reloads. Written atomically (temporary file, fsync,
//! rename) by one writer task that always writes the latest state; changes only mark it
//! dirty, so control-plane actions never wait on the disk.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::app::App;
use crate::pool::AdminState;
use crate::rollout::Rollout;

/// Format version of the file.
const FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StateFile {
    pub format: u32,
    /// By `pool/node`.
    pub nodes: BTreeMap<String, NodeRecord>,
    pub rollouts: Vec<Rollout>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub state: AdminState,
    /// Unix ms of the last admin change.
    pub since_ms: u64,
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
}

/// Reads the state file; `None` when there is none yet.
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
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| PersistError::Corrupt {
            path: path.into(),
            source,
        })
}

/// Writes `state` so a crash leaves either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, state: &StateFile) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
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
pub fn collect(app: &App) -> StateFile {
    let mut nodes = BTreeMap::new();
    for pool in &app.snapshot.load().pools {
        for node in &pool.nodes {
            nodes.insert(
                node.key(),
                NodeRecord {
                    state: node.state.admin(),
                    since_ms: node.state.admin_since_ms(),
                },
            );
        }
    }
    StateFile {
        format: FORMAT,
        nodes,
        rollouts: app.rollouts.list(),
    }
}

/// Marks the state dirty; the writer picks it up.
pub struct Dirty(watch::Sender<u64>);

impl Dirty {
    pub fn new() -> (Self, watch::Receiver<u64>) {
        let (tx, rx) = watch::channel(0);
        (Dirty(tx), rx)
    }

    pub fn mark(&self) {
        self.0.send_modify(|n| *n += 1);
    }
}

/// Writes the state file every time it is marked dirty, until shutdown.
pub async fn writer(app: Arc<App>, path: PathBuf, mut dirty: watch::Receiver<u64>) {
    let stop = app.shutdown.force.clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = dirty.changed() => if r.is_err() { return },
        }
        write_now(&app, &path).await;
    }
}

/// Writes the current state at once (also used for the final write at shutdown).
pub async fn write_now(app: &App, path: &Path) {
    let state = collect(app);
    let path_owned = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || write_atomic(&path_owned, &state)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(path = %path.display(), error = %e, "writing the state file failed")
        }
        Err(e) => tracing::error!(error = %e, "state file writer panicked"),
    }
}
