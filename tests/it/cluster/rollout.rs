//! One rollout driver at a time: SIGKILL the driver mid-rollout, and another instance
//! finishes the rollout at its step.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use super::*;
use crate::common::backends::{tcp_echo_server, HttpBackend};

/// Polls (bounded) the rollout on `at` until `done` holds for its record.
async fn rollout_until(
    at: &Instance,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, record) = at
            .call(Method::GET, &format!("/v1/rollouts/{id}"), None)
            .await;
        if status == 200 && done(&record) {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout {id} on {}: {record}\n{:#?}",
            at.name,
            at.h.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_finishes_a_rollout_whose_driver_was_killed() {
    if !etcd_installed("rollout driver failover") {
        return;
    }
    let etcd = Etcd::start().await;
    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let echo = [tcp_echo_server().await, tcp_echo_server().await];
    let p = prefix("driver-killed");
    let yaml = |name: &str| config(&etcd.endpoints(), &p, name, [a.addr, b.addr], echo, false);
    let mut one = Instance::start(yaml("lb-1"), "lb-1").await;
    let two = Instance::start(yaml("lb-2"), "lb-2").await;
    assert_eq!(
        one.call(Method::GET, "/v1/cluster", None).await.1["driver"],
        "lb-1"
    );

    let load = Load::start(two.web.clone(), 2, Duration::from_secs(60));
    let (status, started) = one
        .call(
            Method::POST,
            "/v1/pools/web/rollouts",
            Some(json!({ "version": "2.0", "ready_timeout": "60s" })),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    // Instance 2 shows the rollout the driver runs, up to the wait for a's upgrade.
    let waiting = rollout_until(&two, &id, WAIT, |r| r["phase"] == "waiting_upgrade").await;
    assert_eq!(waiting["current_node"], "a", "{waiting}");
    // The driver moved on only once a was drained on every instance.
    assert_eq!(two.node("web", "a").await["state"], "drained");

    one.h.proc.0.kill().unwrap();
    one.h.proc.0.wait().unwrap();
    a.set_version("2.0");
    b.set_version("2.0");

    // The lease of lb-1 runs out (2 s), lb-2 is elected and resumes at waiting_upgrade.
    let done = rollout_until(&two, &id, Duration::from_secs(40), |r| {
        r["state"] != "running"
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let timeline: Vec<&str> = done["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        timeline.contains(&"driven by lb-2 (took over from lb-1)"),
        "{timeline:#?}"
    );
    let (_, cluster) = two.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(cluster["driver"], "lb-2", "{cluster}");
    assert_eq!(cluster["members"].as_array().unwrap().len(), 1, "{cluster}");
    for node in ["a", "b"] {
        let view = two.node("web", node).await;
        assert_eq!(
            (view["state"].as_str(), view["version"].as_str()),
            (Some("active"), Some("2.0")),
            "{view}"
        );
    }
    let (sent, failed) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(failed, 0, "{failed} of {sent} requests through lb-2 failed");
}

/// Sends `signal` (STOP, CONT) to a test's own child process.
fn signal(h: &Handoff, signal: &str) {
    let pid = h.proc.0.id().to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

async fn driver_is(at: &Instance, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, view) = at.call(Method::GET, "/v1/cluster", None).await;
        if view["driver"] == want && view["connected"] == true {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: driver never {want}: {view}",
            at.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_driver_that_wakes_up_after_its_term_changes_nothing() {
    if !etcd_installed("driver fencing") {
        return;
    }
    let etcd = Etcd::start().await;
    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let echo = [tcp_echo_server().await, tcp_echo_server().await];
    let p = prefix("driver-stalled");
    let yaml = |name: &str| config(&etcd.endpoints(), &p, name, [a.addr, b.addr], echo, false);
    let one = Instance::start(yaml("lb-1"), "lb-1").await;
    let two = Instance::start(yaml("lb-2"), "lb-2").await;
    driver_is(&two, "lb-1").await;

    // Started on lb-2, driven by lb-1.
    let (status, started) = two
        .call(
            Method::POST,
            "/v1/pools/web/rollouts",
            Some(json!({ "version": "2.0", "ready_timeout": "60s" })),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    rollout_until(&two, &id, WAIT, |r| r["phase"] == "waiting_upgrade").await;

    // lb-1 stalls past its lease; lb-2 drives on to b.
    signal(&one.h, "STOP");
    driver_is(&two, "lb-2").await;
    a.set_version("2.0");
    rollout_until(&two, &id, Duration::from_secs(20), |r| {
        r["current_node"] == "b" && r["phase"] == "waiting_upgrade"
    })
    .await;

    // lb-1 wakes up believing it drives at a's waiting_upgrade: every write it tries is
    // fenced off, it stops, and it shows lb-2's record.
    signal(&one.h, "CONT");
    driver_is(&one, "lb-2").await;
    let seen = rollout_until(&one, &id, WAIT, |r| r["current_node"] == "b").await;
    assert_eq!(seen["phase"], "waiting_upgrade", "{seen}");
    assert_eq!(one.node("web", "b").await["state"], "drained");
    assert_eq!(two.node("web", "b").await["state"], "drained");

    b.set_version("2.0");
    let done = rollout_until(&one, &id, Duration::from_secs(30), |r| {
        r["state"] != "running"
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let messages: Vec<&str> = done["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    let takeover = messages
        .iter()
        .position(|m| *m == "driven by lb-2 (took over from lb-1)")
        .unwrap_or_else(|| panic!("{messages:#?}"));
    assert!(
        !messages[takeover..]
            .iter()
            .any(|m| m.contains("driven by lb-1")),
        "{messages:#?}"
    );
    for i in [&one, &two] {
        for node in ["a", "b"] {
            assert_eq!(
                i.node("web", node).await["state"],
                "active",
                "{} {node}",
                i.name
            );
        }
    }
}
