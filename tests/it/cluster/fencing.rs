//! One hook at a time: the rollout driver is frozen (SIGSTOP) or cut off from etcd while its
//! hook runs, with the smallest `lease_ttl` allowed (2s). Another instance takes the rollout
//! over and runs the hook again; the two runs must never overlap. The hook holds a lock
//! (flock) for as long as it or anything it started lives, and writes a line when it finds
//! the lock taken.

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::json;

use super::partitions::{endpoints, prefix, relays, start, Spec};
use super::relay::Relay;
use super::*;

/// The hook: takes the lock (saying so when it was held), logs its start with the rollout
/// and term it got, sleeps, logs its end.
fn hook(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("hook.sh");
    let d = dir.display();
    std::fs::write(
        &script,
        format!(
            r#"exec 9>>"{d}/lock"
if ! flock -n 9; then
  echo "overlap $HANDOFF_NODE $HANDOFF_DRIVER_TERM" >> "{d}/log"
  flock 9
fi
echo "start $HANDOFF_NODE $HANDOFF_DRIVER_TERM $HANDOFF_ROLLOUT_ID" >> "{d}/log"
sleep 3
echo "end $HANDOFF_NODE $HANDOFF_DRIVER_TERM" >> "{d}/log"
"#
        ),
    )
    .unwrap();
    script
}

fn log_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The terms of the hook runs started for node `node`, in order.
fn starts(dir: &Path, node: &str) -> Vec<String> {
    log_lines(dir)
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("start") && w.next() == Some(node))
                .then(|| w.next().unwrap_or_default().to_string())
        })
        .collect()
}

async fn wait_starts(dir: &Path, node: &str, n: usize) -> Vec<String> {
    until(
        &format!("{n} hook runs started for {node}"),
        Duration::from_secs(30),
        async || {
            let s = starts(dir, node);
            (s.len() >= n)
                .then_some(s.clone())
                .ok_or_else(|| format!("{:?}", log_lines(dir)))
        },
    )
    .await
}

enum Fault {
    /// SIGSTOP of the driver's process.
    Freeze,
    /// The driver's every path to etcd stops passing bytes.
    Partition,
}

async fn hooks_never_overlap(test: &str, fault: Fault) {
    if !etcd_installed(test) {
        return;
    }
    let etcd = Etcd::start().await;
    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let p = prefix(test);
    let dir = tempfile::tempdir().unwrap();
    let script = hook(dir.path());
    let through = relays(&etcd).await;
    let spec = |name, etcd| Spec {
        hook: Some(script.clone()),
        ..Spec::new(name, etcd, a.addr, b.addr)
    };
    let mut one = start(&p, spec("lb-1", endpoints(&through))).await;
    let two = start(&p, spec("lb-2", etcd.endpoints())).await;
    for i in [&one, &two] {
        i.h.wait_up("a").await;
        i.h.wait_up("b").await;
    }
    let (status, started) = one
        .call(
            Method::POST,
            "/v1/pools/web/rollouts",
            Some(json!({ "version": "2.0", "order": ["a", "b"] })),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    // What the hook "installs".
    a.set_version("2.0");
    b.set_version("2.0");
    let first = wait_starts(dir.path(), "a", 1).await;
    let (_, record) = one
        .call(Method::GET, &format!("/v1/rollouts/{id}"), None)
        .await;
    assert_eq!(
        record["term"].to_string(),
        first[0],
        "the hook got the driver's term: {record}"
    );
    assert_eq!(record["driver"], "lb-1", "{record}");
    assert!(
        log_lines(dir.path())[0].ends_with(&id),
        "and the rollout's id"
    );

    match fault {
        Fault::Freeze => {
            signal(&one.h, "STOP");
            // lb-2 takes over once lb-1's lease ran out, and runs the hook again.
            two.wait_driver(&id, "lb-2").await;
            wait_starts(dir.path(), "a", 2).await;
            signal(&one.h, "CONT");
        }
        Fault::Partition => {
            through.iter().for_each(Relay::cut);
            // Cut off, lb-1 claims no role: no driver, members stale, driver gauge 0.
            one.wait_connected(false).await;
            let (_, view) = one.call(Method::GET, "/v1/cluster", None).await;
            assert_eq!(view["drivers"], json!({}), "{view}");
            assert_eq!(view["members_stale"], true, "{view}");
            let metrics = send(Method::GET, &one.h.url("/metrics"), None).await.1;
            let text = String::from_utf8_lossy(&metrics);
            let driver = text
                .lines()
                .find(|l| l.starts_with("handoff_cluster_driver{"))
                .unwrap_or_default();
            assert!(driver.ends_with(" 0"), "{driver}");
            two.wait_driver(&id, "lb-2").await;
            let second = wait_starts(dir.path(), "a", 2).await;
            // The term a hook checks against is the one lb-2 shows.
            let (_, record) = two
                .call(Method::GET, &format!("/v1/rollouts/{id}"), None)
                .await;
            assert_eq!(record["term"].to_string(), second[1], "{record}");
            through.iter().for_each(Relay::heal);
        }
    }
    let done = two
        .rollout_until(&id, Duration::from_secs(60), |r| r["state"] != "running")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    one.h.assert_alive("after the fault");
    let lines = log_lines(dir.path());
    assert!(
        !lines.iter().any(|l| l.starts_with("overlap")),
        "two hook runs overlapped: {lines:#?}"
    );
    // lb-1's run was cut short (killed with its process group), lb-2's ran to the end.
    let terms = starts(dir.path(), "a");
    assert_ne!(terms[0], terms[1], "{lines:#?}");
    assert!(
        !lines.contains(&format!("end a {}", terms[0])),
        "the first driver's hook was killed: {lines:#?}"
    );
    assert!(lines.contains(&format!("end a {}", terms[1])), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_driver_s_hook_is_killed_before_another_driver_runs_it_again() {
    hooks_never_overlap("hook-freeze", Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_driver_s_hook_is_killed_and_it_claims_no_role() {
    hooks_never_overlap("hook-partition", Fault::Partition).await;
}
