//! Child processes that run in a process group of their own (rollout hooks), so that ending
//! one ends everything it started: `kill` of the first process alone would leave a hook's
//! `sleep` or `docker run` behind, still acting after handoff gave up on it.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Sends SIGKILL to process group `pgid` (gone already: nothing to do).
pub fn kill_group(pgid: u32) {
    let Ok(id) = i32::try_from(pgid) else { return };
    if id <= 1 {
        // Never the caller's own group (0) or init's.
        return;
    }
    let _ = killpg(Pid::from_raw(id), Signal::SIGKILL);
}

/// Kills a process group when dropped, unless [`GroupGuard::disarm`]ed (its leader exited
/// by itself, and what it left running in the background is meant to stay).
pub struct GroupGuard(Option<u32>);

impl GroupGuard {
    pub fn new(pgid: u32) -> Self {
        GroupGuard(Some(pgid))
    }

    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            kill_group(pgid);
        }
    }
}
