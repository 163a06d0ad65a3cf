//! The rollout hook: a command handoff runs after draining a node, with the node and the
//! rollout described in `HANDOFF_*` variables. Exit 0 means "upgraded"; anything else fails
//! the rollout.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::child::GroupGuard;
use crate::cluster::term::Term;

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
    /// In a cluster: this instance's term as the rollout's driver ended (or could have,
    /// its lease not renewed in time); the hook was killed and the next driver redoes the
    /// step.
    #[error("the driver's term ended while the hook ran; it was killed")]
    TermEnded,
}

/// How much of the hook's output is kept for the log and the failure reason.
const OUTPUT_TAIL: usize = 2048;

/// The program that can watch a hook from outside this process (`handoff hook-guard`), when
/// this process is the handoff binary.
static GUARD: OnceLock<PathBuf> = OnceLock::new();

/// Says that `exe` runs `hook-guard` (the binary's `main` does; a library user need not).
pub fn use_hook_guard(exe: PathBuf) {
    let _ = GUARD.set(exe);
}

/// Runs the hook in a process group of its own; its stdout and stderr are captured and
/// logged (a hook writing to a closed terminal must not fail), and the tail of stderr goes
/// into a failure's reason. Timed out, aborted or dropped, the whole group is killed.
///
/// `term`: in a cluster, the driver's term the hook runs under. It does not start without
/// one, is killed when the term ends, and runs under `handoff hook-guard`, which kills it at
/// the lease's safe deadline even if this process is frozen.
pub async fn run(
    argv: &[String],
    env: &[(&str, String)],
    limit: Duration,
    abort: &CancellationToken,
    term: Option<&Term>,
) -> Result<String, HookError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut safe_until = term.map(Term::safe_until);
    let left = |u: &Option<Instant>| u.map(|u| u.saturating_duration_since(Instant::now()));
    let within = match &safe_until {
        Some(rx) => match left(&rx.borrow()) {
            Some(d) if !d.is_zero() => Some(d),
            _ => return Err(HookError::TermEnded),
        },
        None => None,
    };
    let guard = within.zip(GUARD.get());
    let mut cmd = match guard {
        Some((within, exe)) => {
            let mut cmd = Command::new(exe);
            cmd.arg("hook-guard")
                .arg("--within-ms")
                .arg(within.as_millis().to_string())
                .arg("--")
                .args(argv);
            cmd.stdin(Stdio::piped());
            cmd
        }
        None => {
            let mut cmd = Command::new(&program);
            cmd.args(&argv[1..]).stdin(Stdio::null());
            cmd
        }
    };
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pgid = child.id().unwrap_or(0);
    let mut group = GroupGuard::new(pgid);
    // Registered with the term, so that the term's end kills it; too late: it goes now.
    let _registered = match term {
        Some(t) => Some(t.enter(pgid).ok_or(HookError::TermEnded)?),
        None => None,
    };
    let mut renewals = child.stdin.take();
    let wait = child.wait_with_output();
    tokio::pin!(wait);
    let timeout = tokio::time::sleep(limit);
    tokio::pin!(timeout);
    let output = loop {
        tokio::select! {
            out = &mut wait => break out.map_err(|source| HookError::Spawn { program: program.clone(), source })?,
            _ = &mut timeout => {
                return Err(HookError::TimedOut { program, limit: crate::config::duration::format(limit) });
            }
            _ = abort.cancelled() => return Err(HookError::Aborted),
            Some(()) = changed(&mut safe_until) => {
                let Some(d) = safe_until.as_ref().and_then(|rx| left(&rx.borrow())).filter(|d| !d.is_zero()) else {
                    return Err(HookError::TermEnded);
                };
                if let Some(stdin) = renewals.as_mut() {
                    // The guard keeps its own clock from here.
                    let _ = stdin.write_all(format!("{}\n", d.as_millis()).as_bytes()).await;
                }
            }
        }
    };
    // Exited by itself: what it started in the background is meant to stay.
    group.disarm();
    let stdout = tail(&output.stdout);
    let stderr = tail(&output.stderr);
    tracing::info!(hook = %program, status = %output.status, %stdout, %stderr, "rollout hook finished");
    if term.is_some_and(|t| t.safe_until().borrow().is_none_or(|u| Instant::now() >= u)) {
        // Killed by the guard at the deadline, or finished just past it: this driver's
        // term may be over, so its outcome is not this driver's to act on.
        return Err(HookError::TermEnded);
    }
    if output.status.success() {
        Ok(stdout)
    } else {
        let status = match stderr.lines().last() {
            Some(line) => format!("{} ({line})", output.status),
            None => output.status.to_string(),
        };
        Err(HookError::Failed { program, status })
    }
}

/// The next change of the term's deadline; pending for ever without a term.
async fn changed(rx: &mut Option<watch::Receiver<Option<Instant>>>) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
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
    /// Replace: start a new node at the target version beside this one, and print its
    /// address (`ADDR` or `NAME ADDR`) on the last line of stdout.
    Provision,
    /// Replace: this node was removed from the pool; stop it.
    Retire,
}

/// The `HANDOFF_*` variables the hook gets for node `t` and `version`.
/// `rollout`: its id, and the driver's term in a cluster (0 without one): a hook about to
/// do something destructive can check with `GET /v1/rollouts/{id}` that `term` is still
/// its own.
pub fn env(
    t: &crate::control::NodeRef,
    version: &str,
    action: Action,
    (rollout, term): (&str, i64),
) -> Vec<(&'static str, String)> {
    vec![
        ("HANDOFF_ROLLOUT_ID", rollout.to_string()),
        ("HANDOFF_DRIVER_TERM", term.to_string()),
        ("HANDOFF_POOL", t.pool.name.clone()),
        ("HANDOFF_NODE", t.node.name.clone()),
        ("HANDOFF_NODE_ADDR", t.node.addr.to_string()),
        ("HANDOFF_TARGET_VERSION", version.to_string()),
        (
            "HANDOFF_ACTION",
            match action {
                Action::Upgrade => "upgrade",
                Action::Rollback => "rollback",
                Action::Provision => "provision",
                Action::Retire => "retire",
            }
            .to_string(),
        ),
    ]
}
