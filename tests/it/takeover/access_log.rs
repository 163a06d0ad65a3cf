//! The access log across logrotate (SIGUSR1) and a takeover: both generations append to
//! the same file, and under load the lines are exactly the requests, none lost, none twice.

use std::collections::HashSet;

use super::*;
use crate::access_log::wait_lines;

fn count_lines(paths: &[&Path]) -> (usize, HashSet<String>, usize) {
    let (mut lines, mut ids, mut not_json) = (0, HashSet::new(), 0);
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for l in text.lines() {
            lines += 1;
            match serde_json::from_str::<Value>(l) {
                Ok(v) => {
                    ids.insert(v["request_id"].as_str().unwrap_or_default().to_string());
                }
                Err(_) => not_json += 1,
            }
        }
    }
    (lines, ids, not_json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_and_a_takeover_under_load_loses_and_repeats_no_line() {
    let (a, b) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let yaml = format!(
        "access_log: {{ path: \"{}\" }}\nrequest_id: {{ header: X-Request-Id }}\n{}",
        log.display(),
        config(a.addr, b.addr)
    );
    let mut old = started(dir.path(), &yaml).await;
    let before = status(&old).await;
    let url = listener_url(&before, "/");
    let load = Load::start(url, 4, Duration::from_secs(20));
    let fresh = FreshConnections::start(listener_addr(&before), 2);
    let sent = || load.sent.load(std::sync::atomic::Ordering::SeqCst);
    eventually("the load runs", || sent() > 50).await;
    wait_lines(&log, 1).await;

    // logrotate: the file is moved, then SIGUSR1; new lines go to a new file.
    std::fs::rename(&log, &rotated).unwrap();
    let pid = before["process"]["pid"].as_u64().unwrap();
    let signalled = std::process::Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    wait_lines(&log, 20).await;

    let mut new = Handoff::take_over(&dir.path().join("handoff.yaml")).await;
    assert_eq!(exit_code(&mut old).await, Some(0), "{:#?}", old.log());
    let at_exit = sent();
    eventually("the new generation serves the load", || {
        sent() > at_exit + 50
    })
    .await;
    let (sent, failed) = load.finish().await;
    let (fresh_sent, fresh_failed) = fresh.finish().await;
    assert_eq!((failed, fresh_failed), (0, 0), "requests failed");
    let requests = sent + fresh_sent;
    // The new generation's last lines reach the file within its flush interval.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (lines, ids, not_json) = loop {
        let counted = count_lines(&[&rotated, &log]);
        if counted.0 >= requests || tokio::time::Instant::now() >= deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("access log across SIGUSR1 and a takeover: {requests} requests, {lines} lines");
    assert_eq!(not_json, 0, "lines that are not JSON (interleaved writes?)");
    assert_eq!(lines, requests, "lines != requests");
    assert_eq!(ids.len(), requests, "a request ID is missing or repeated");
    assert!(
        count_lines(&[&rotated]).0 > 0,
        "nothing before the rotation"
    );
    new.assert_alive("after the takeover");
}
