//! The rollout hook: a command handoff runs after draining a node, with the node described
//! in `HANDOFF_*` variables. Exit 0 means "upgraded"; anything else fails the rollout.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {program:?} could not start: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("hook {program:?} exited with {status}")]
    Failed { program: String, status: String },
    #[error("hook {program:?} did not finish within {limit}")]
    TimedOut { program: String, limit: String },
    #[error("aborted while the hook ran")]
    Aborted,
}

pub async fn run(
    argv: &[String],
    env: &[(&str, String)],
    limit: Duration,
    abort: &CancellationToken,
) -> Result<(), HookError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = Command::new(&program);
    cmd.args(&argv[1..]).stdin(Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        program: program.clone(),
        source,
    })?;
    let status = tokio::select! {
        s = child.wait() => s.map_err(|source| HookError::Spawn { program: program.clone(), source })?,
        _ = tokio::time::sleep(limit) => {
            let _ = child.kill().await;
            return Err(HookError::TimedOut { program, limit: crate::config::duration::format(limit) });
        }
        _ = abort.cancelled() => {
            let _ = child.kill().await;
            return Err(HookError::Aborted);
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(HookError::Failed {
            program,
            status: status.to_string(),
        })
    }
}
