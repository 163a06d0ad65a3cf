//! Rollouts end to end: a pair of real HTTP backends upgraded under steady load.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::common::backends::HttpBackend;
use crate::common::*;
use handoff::pool::Health;

fn pair_config(a: SocketAddr, b: SocketAddr, rollout: &str) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    routes: [ {{ pool: web }} ]
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{a}" }}, {{ name: b, addr: "{b}" }} ]
    health: {FAST_HEALTH}
    warmup: 300ms
    drain: {{ timeout: 5s, close_spread: 100ms }}
    rollout: {rollout}
"#
    )
}

async fn start_rollout(proxy: &Proxy, body: Value) -> String {
    let (status, r) = proxy
        .admin_json(Method::POST, "/v1/pools/web/rollouts", body)
        .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["state"], "running");
    r["id"].as_str().unwrap().to_string()
}

/// Waits (long poll) until `node` is drained: the rollout then waits for its upgrade.
async fn wait_drained(proxy: &Proxy, node: &str) {
    let (status, body) = proxy
        .admin(
            Method::GET,
            &format!("/v1/pools/web/nodes/{node}/wait?state=drained&timeout=20s"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{node} never drained: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_upgrades_the_pair_under_load_without_failing_a_request() {
    let mut a = HttpBackend::start("a", "1.0.0").await;
    let mut b = HttpBackend::start("b", "1.0.0").await;
    let proxy = Proxy::start(&pair_config(a.addr, b.addr, "{ ready_timeout: 20s }")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let load = Load::start(proxy.url("web", "/"), 20, Duration::from_secs(60));
    let id = start_rollout(&proxy, json!({"version": "2.0.0"})).await;
    for backend in [&mut a, &mut b] {
        wait_drained(&proxy, backend.name).await;
        // The operator's upgrade: stop the node and start it again on the same port.
        backend.restart("2.0.0").await;
    }
    let r = proxy.rollout_end(&id, Duration::from_secs(30)).await;
    let (sent, failed) = load.finish().await;
    println!("rollout under load: sent {sent} requests, {failed} failed");
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(failed, 0);
    assert!(sent > 100, "too little load: {sent}");
    let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    for n in pool["nodes"].as_array().unwrap() {
        assert_eq!(
            (n["state"].as_str(), n["version"].as_str()),
            (Some("active"), Some("2.0.0")),
            "{n}"
        );
    }
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "an upgraded node got no traffic"
    );
    let phases: Vec<&str> = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["phase"].as_str())
        .collect();
    assert_eq!(
        phases.iter().filter(|p| **p == "waiting_ready").count(),
        2,
        "{phases:?}"
    );
    let metrics = proxy.metrics().await;
    assert!(metrics.contains(
        "handoff_rollout_step_duration_seconds_count{phase=\"draining\",pool=\"web\"} 2"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_comes_back_with_the_old_version_is_not_readmitted() {
    let mut a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let proxy = Proxy::start(&pair_config(a.addr, b.addr, "{ ready_timeout: 1s }")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let load = Load::start(proxy.url("web", "/"), 8, Duration::from_secs(60));
    let id = start_rollout(&proxy, json!({"version": "2.0.0", "order": ["a", "b"]})).await;
    wait_drained(&proxy, "a").await;
    a.restart("1.0.0").await;
    let r = proxy.rollout_end(&id, Duration::from_secs(20)).await;
    let hits_a = a.hits();
    let (sent, failed) = load.finish().await;
    println!("failed rollout: sent {sent} requests, {failed} failed");
    assert_eq!(r["state"], "failed", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("version 1.0.0") && reason.contains("expected 2.0.0"),
        "{reason}"
    );
    assert_eq!(failed, 0);
    assert_eq!(hits_a, 0, "the old-version node was readmitted");
    let (_, node) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/a", None)
        .await;
    assert_eq!(node["state"], "drained");
    let (_, node) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/b", None)
        .await;
    assert_eq!(node["state"], "active");
}

#[tokio::test]
async fn one_rollout_per_pool_and_abort_leaves_nodes_safe() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let proxy = Proxy::start(&pair_config(a.addr, b.addr, "{ ready_timeout: 30s }")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let id = start_rollout(&proxy, json!({"version": "2.0.0", "order": ["a", "b"]})).await;
    let (status, body) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/rollouts",
            json!({"version": "3.0.0"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["detail"]["running"], id.as_str());
    wait_drained(&proxy, "a").await;
    let (status, _) = proxy
        .admin_json(Method::POST, &format!("/v1/rollouts/{id}/abort"), json!({}))
        .await;
    assert_eq!(status, 200);
    let r = proxy.rollout_end(&id, Duration::from_secs(10)).await;
    assert_eq!(r["state"], "aborted", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("a=drained") && reason.contains("b=active"),
        "{reason}"
    );
    let (_, list) = proxy.admin(Method::GET, "/v1/rollouts", None).await;
    assert_eq!(list["rollouts"].as_array().unwrap().len(), 1);
    // A new rollout may start now.
    start_rollout(&proxy, json!({"version": "3.0.0"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_runs_with_the_node_in_its_environment() {
    let a = HttpBackend::start("a", "2.0.0").await;
    let b = HttpBackend::start("b", "2.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hook.log");
    let script = dir.path().join("upgrade.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$HANDOFF_POOL $HANDOFF_NODE $HANDOFF_NODE_ADDR $HANDOFF_TARGET_VERSION\" >> {}\n", log.display())).unwrap();
    let rollout = format!(
        "{{ ready_timeout: 10s, hook: {{ exec: [\"/bin/sh\", \"{}\"] }} }}",
        script.display()
    );
    let proxy = Proxy::start(&pair_config(a.addr, b.addr, &rollout)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let id = start_rollout(&proxy, json!({"version": "2.0.0", "order": ["b", "a"]})).await;
    let r = proxy.rollout_end(&id, Duration::from_secs(20)).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        lines,
        format!("web b {} 2.0.0\nweb a {} 2.0.0\n", b.addr, a.addr)
    );
}

#[tokio::test]
async fn a_failing_hook_fails_the_rollout_with_the_node_drained() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let proxy = Proxy::start(&pair_config(
        a.addr,
        b.addr,
        "{ hook: { exec: [\"/bin/sh\", \"-c\", \"exit 3\"] } }",
    ))
    .await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let id = start_rollout(&proxy, json!({"version": "2.0.0", "order": ["a", "b"]})).await;
    let r = proxy.rollout_end(&id, Duration::from_secs(20)).await;
    assert_eq!(r["state"], "failed");
    assert!(
        r["reason"].as_str().unwrap().contains("exit status: 3"),
        "{r}"
    );
    assert_eq!(proxy.node("web", "a").state.admin().as_str(), "drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_target_version_sends_new_sessions_to_upgraded_nodes_only() {
    let mut a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let yaml = pair_config(
        a.addr,
        b.addr,
        "{ ready_timeout: 20s, prefer_target_version: true }",
    )
    .replace("warmup: 300ms", "warmup: 20s");
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let id = start_rollout(&proxy, json!({"version": "2.0.0", "order": ["a", "b"]})).await;
    wait_drained(&proxy, "a").await;
    a.restart("2.0.0").await;
    let (status, _) = proxy
        .admin(
            Method::GET,
            "/v1/pools/web/nodes/a/wait?state=warming&timeout=10s",
            None,
        )
        .await;
    assert_eq!(status, 200);
    // a warms at ~10 % weight, but it runs the target version: it takes every new session.
    let c = client();
    for _ in 0..20 {
        let (status, body) = get(&c, &proxy.url("web", "/")).await;
        assert_eq!((status, body.as_str()), (200, "a 2.0.0"));
    }
    proxy
        .admin_json(Method::POST, &format!("/v1/rollouts/{id}/abort"), json!({}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_order_is_refused_and_starts_nothing() {
    let (_a, _b, proxy) = http_pair_up().await;
    let (status, refused) = proxy
        .admin_json(
            http::Method::POST,
            "/v1/pools/web/rollouts",
            serde_json::json!({ "version": "9.9.9", "order": [] }),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("order"),
        "{refused}"
    );
    let (_, all) = proxy.admin(http::Method::GET, "/v1/rollouts", None).await;
    assert_eq!(all["rollouts"], serde_json::json!([]), "{all}");
}
