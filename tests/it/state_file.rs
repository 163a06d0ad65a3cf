//! The state file: admin states and rollouts survive a restart of handoff.

use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::common::backends::HttpBackend;
use crate::common::*;
use handoff::pool::Health;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_stays_drained_across_a_restart() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let yaml = format!(
        "state_file: \"{{DIR}}/state.json\"\n{}",
        http_config(&[("a", a.addr), ("b", b.addr)], "")
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    proxy.wait_drained("web", "a").await;

    let proxy = proxy.restart().await;
    let (_, node) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/a", None)
        .await;
    assert_eq!(node["state"], "drained", "{node}");
    proxy.wait_health("web", "b", Health::Up).await;
    for _ in 0..10 {
        assert_eq!(
            get(&client(), &proxy.url("web", "/")).await,
            (200, "b 1.0.0".to_string())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_rollout_resumes_after_a_restart() {
    let mut a = HttpBackend::start("a", "1.0.0").await;
    let mut b = HttpBackend::start("b", "1.0.0").await;
    let yaml = format!(
        "state_file: \"{{DIR}}/state.json\"\n{}",
        http_config(&[("a", a.addr), ("b", b.addr)], "")
            .replace("    health:", "    warmup: 200ms\n    health:")
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let (status, r) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/rollouts",
            json!({"version": "2.0.0", "order": ["a", "b"]}),
        )
        .await;
    assert_eq!(status, 201);
    let id = r["id"].as_str().unwrap().to_string();
    let (status, _) = proxy
        .admin(
            Method::GET,
            "/v1/pools/web/nodes/a/wait?state=drained&timeout=10s",
            None,
        )
        .await;
    assert_eq!(status, 200);

    let proxy = proxy.restart().await;
    let (_, r) = proxy
        .admin(Method::GET, &format!("/v1/rollouts/{id}"), None)
        .await;
    assert_eq!(r["state"], "running", "{r}");
    assert_eq!(r["current_node"], "a");
    a.restart("2.0.0").await;
    let (status, _) = proxy
        .admin(
            Method::GET,
            "/v1/pools/web/nodes/b/wait?state=drained&timeout=20s",
            None,
        )
        .await;
    assert_eq!(status, 200);
    b.restart("2.0.0").await;
    let r = proxy.rollout_end(&id, Duration::from_secs(30)).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let resumed = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["message"].as_str().unwrap().contains("resumed"));
    assert!(resumed, "{r}");
}
