//! `handoff hook-guard --within-ms N -- PROGRAM ARGS...` (internal): runs a rollout hook in
//! this process's group and kills the group when the driver's lease could expire.
//!
//! handoff starts it for every hook a cluster's rollout driver runs. It is a process of its
//! own so that it keeps time while handoff is frozen (SIGSTOP, a stalled VM): handoff writes
//! the time left under its lease (milliseconds) on a line to the guard's stdin each time the
//! lease is renewed. When that time passes with no renewal, or handoff goes away (stdin
//! closes), the group is killed: the hook never outlives the term it was started under.

use std::ffi::OsString;
use std::io::BufRead;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

enum Msg {
    Exited(std::io::Result<ExitStatus>),
    Renewed(Duration),
    Closed,
}

/// Runs `command` until it exits (its exit code is this one's) or the time runs out.
pub fn run(within: Duration, command: &[OsString]) -> anyhow::Result<i32> {
    let Some((program, args)) = command.split_first() else {
        anyhow::bail!("hook-guard: no command given");
    };
    let mut deadline = Instant::now() + within;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("hook {program:?} could not start: {e}"))?;
    let hook = child.id();
    let (tx, rx) = channel();
    let waiter = tx.clone();
    std::thread::spawn(move || {
        let _ = waiter.send(Msg::Exited(child.wait()));
    });
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Some(ms) = line.ok().and_then(|l| l.trim().parse::<u64>().ok()) else {
                break;
            };
            if tx.send(Msg::Renewed(Duration::from_millis(ms))).is_err() {
                return;
            }
        }
        let _ = tx.send(Msg::Closed);
    });
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Msg::Exited(Ok(status))) => return Ok(exit_code(status)),
            Ok(Msg::Exited(Err(e))) => anyhow::bail!("hook-guard: waiting for the hook: {e}"),
            Ok(Msg::Renewed(left)) => deadline = Instant::now() + left,
            Ok(Msg::Closed) | Err(RecvTimeoutError::Disconnected) => {
                kill_all(hook, "handoff stopped watching the hook")
            }
            Err(RecvTimeoutError::Timeout) => kill_all(
                hook,
                "the rollout driver's lease was not renewed in time (its term may end)",
            ),
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Kills this process's group: the hook, what it started, and this guard. Not the leader of
/// a group of its own (started by hand), it kills the hook alone, never its caller's group.
fn kill_all(hook: u32, why: &str) -> ! {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::{getpgrp, getpid, Pid};
    eprintln!("handoff hook-guard: {why}; killing the hook's process group");
    if getpgrp() == getpid() {
        crate::child::kill_group(getpid().as_raw().unsigned_abs());
    } else if let Ok(pid) = i32::try_from(hook) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    std::process::exit(137)
}
