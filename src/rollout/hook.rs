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

/// How much of the hook's output is kept for the log and the failure reason.
const OUTPUT_TAIL: usize = 2048;

/// Runs the hook; its stdout and stderr are captured and logged (a hook writing to a closed
/// terminal must not fail), and the tail of stderr goes into a failure's reason.
pub async fn run(
    argv: &[String],
    env: &[(&str, String)],
    limit: Duration,
    abort: &CancellationToken,
) -> Result<(), HookError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = Command::new(&program);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropping the wait (timeout, abort) kills the hook.
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|source| HookError::Spawn {
        program: program.clone(),
        source,
    })?;
    let output = tokio::select! {
        out = child.wait_with_output() => out.map_err(|source| HookError::Spawn { program: program.clone(), source })?,
        _ = tokio::time::sleep(limit) => {
            return Err(HookError::TimedOut { program, limit: crate::config::duration::format(limit) });
        }
        _ = abort.cancelled() => return Err(HookError::Aborted),
    };
    let stdout = tail(&output.stdout);
    let stderr = tail(&output.stderr);
    tracing::info!(hook = %program, status = %output.status, %stdout, %stderr, "rollout hook finished");
    if output.status.success() {
        Ok(())
    } else {
        let status = match stderr.lines().last() {
            Some(line) => format!("{} ({line})", output.status),
            None => output.status.to_string(),
        };
        Err(HookError::Failed { program, status })
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

/// Why the hook runs.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Put the target version on the node.
    Upgrade,
    /// Put back the version the node had before it failed analysis.
    Rollback,
}

/// The `HANDOFF_*` variables the hook gets for node `t` and `version`.
pub fn env(
    t: &crate::control::NodeRef,
    version: &str,
    action: Action,
) -> Vec<(&'static str, String)> {
    vec![
        ("HANDOFF_POOL", t.pool.name.clone()),
        ("HANDOFF_NODE", t.node.name.clone()),
        ("HANDOFF_NODE_ADDR", t.node.addr.to_string()),
        ("HANDOFF_TARGET_VERSION", version.to_string()),
        (
            "HANDOFF_ACTION",
            match action {
                Action::Upgrade => "upgrade",
                Action::Rollback => "rollback",
            }
            .to_string(),
        ),
    ]
}
