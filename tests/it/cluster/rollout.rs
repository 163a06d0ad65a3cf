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
