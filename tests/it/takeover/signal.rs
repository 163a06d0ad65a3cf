//! SIGUSR2: the running process starts the binary at its own path with `--upgrade`, and the
//! new process takes over (what `systemctl kill -s USR2 handoff` does under systemd).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_a_successor_that_takes_over() {
    let (a, b) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    let mut old = started(dir.path(), &config(a.addr, b.addr)).await;
    let before = status(&old).await;
    assert_eq!(before["process"]["generation"], 1, "{before}");
    let old_pid = before["process"]["pid"].as_u64().unwrap();
    let url = listener_url(&before, "/");
    let load = Load::start(url, 2, Duration::from_secs(20));
    let sent = || load.sent.load(std::sync::atomic::Ordering::SeqCst);
    eventually("the load runs", || sent() > 20).await;
    let signalled = std::process::Command::new("kill")
        .args(["-USR2", &old_pid.to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    // The admin socket is handed over too: the same address answers for generation 2.
    eventually_async(&old, |s| s["process"]["generation"] == 2).await;
    let after = status(&old).await;
    let new_pid = after["process"]["pid"].as_u64().unwrap();
    assert_ne!(new_pid, old_pid);
    // The successor is not this test's child: stopped by its pid when the test ends.
    let _successor = KillPid(new_pid);
    assert_eq!(exit_code(&mut old).await, Some(0), "{:#?}", old.log());
    let at_exit = sent();
    eventually("the successor serves the load", || sent() > at_exit + 20).await;
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the takeover"
    );
}

struct KillPid(u64);

impl Drop for KillPid {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.0.to_string())
            .status();
    }
}
