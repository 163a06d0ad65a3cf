//! What a replace rollout does: never a node short, the old nodes retired; a bad
//! replacement caught and removed; the figures against an in-place rollout.

use std::time::Duration;

use http::Method;
use serde_json::json;

use super::*;
use crate::common::backends::HttpBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_rollout_is_never_a_node_short_and_retires_the_old_nodes() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&yaml(a.addr, b.addr, &hook(dir.path()), "")).await;
    both_up(&proxy).await;
    let load = Load::start(proxy.url("web", "/"), 4, Duration::from_secs(90));
    let serving = Serving::start(&proxy);

    let id = start_rollout(&proxy, "2.0.0").await;
    let done = proxy.rollout_end(&id, Duration::from_secs(60)).await;
    let least = serving.finish().await;
    let (sent, failed) = load.finish().await;
    stop_started(dir.path());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(failed, 0, "of {sent}");
    assert!(
        least >= 2,
        "the pool served with {least} node(s) at some point"
    );

    let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    let nodes: Vec<(String, String)> = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["version"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            ("a-2.0.0".to_string(), "2.0.0".to_string()),
            ("b-2.0.0".to_string(), "2.0.0".to_string())
        ],
        "{pool}"
    );
    let lines = log(dir.path());
    for old in [&a, &b] {
        let retire = format!("retire {} {}", old.name, old.addr);
        assert!(lines.contains(&retire), "{retire} missing: {lines:#?}");
    }
    let phases: Vec<&str> = done["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["phase"].as_str())
        .collect();
    for phase in [
        "provisioning",
        "waiting_ready",
        "warming",
        "draining",
        "retiring",
    ] {
        assert!(phases.contains(&phase), "{phase}: {phases:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_fails_analysis_is_removed_and_the_old_node_keeps_serving() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let analysis = ", analysis: { window: 3s, min_requests: 20, max_error_rate: 0.05 }";
    let proxy = Proxy::start(&yaml(a.addr, b.addr, &hook(dir.path()), analysis)).await;
    both_up(&proxy).await;
    let load = Load::start(proxy.url("web", "/"), 4, Duration::from_secs(90));
    let serving = Serving::start(&proxy);

    // Version 2.0.0-bad answers 500 to every third request.
    let started = std::time::Instant::now();
    let id = start_rollout(&proxy, "2.0.0-bad").await;
    let done = proxy.rollout_end(&id, Duration::from_secs(60)).await;
    let took = started.elapsed();
    let least = serving.finish().await;
    let (sent, failed) = load.finish().await;
    println!(
        "a failed replacement: caught and removed {took:.1?} after the start; {failed} of {sent} requests failed; fewest nodes serving {least}"
    );
    stop_started(dir.path());
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.contains("analysis of web/a-2.0.0-bad failed")
            && reason.contains("drained and removed")
            && reason.contains("web/a kept serving"),
        "{reason}"
    );
    assert!(
        least >= 2,
        "the pool served with {least} node(s) at some point"
    );
    assert!(failed * 100 < sent, "{failed} of {sent} failed");
    assert_eq!(states(&proxy).await, ["a active", "b active"]);
}

/// The same pool of two real backend processes, upgraded in place and by replacement under
/// the same load: the figures docs/upgrade-guide.md quotes (run with `--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_dips_to_one_node_and_replace_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let script = hook(dir.path());
    let mut figures = Vec::new();
    for strategy in ["in_place", "replace"] {
        let procs: Vec<(String, Running)> = ["a", "b"]
            .iter()
            .map(|name| {
                let addr = format!("127.0.0.1:{}", free_port());
                let child = std::process::Command::new(BIN)
                    .args([
                        "demo-backend",
                        "--name",
                        name,
                        "--version",
                        "1.0.0",
                        "--listen",
                        &addr,
                    ])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                (addr, Running(child))
            })
            .collect();
        let rollout = match strategy {
            "in_place" => format!("{{ ready_timeout: 20s, hook: {{ exec: [\"{BIN}\", \"demo-upgrade\"] }} }}"),
            _ => format!(
                "{{ strategy: replace, ready_timeout: 20s, hook: {{ exec: [\"/bin/sh\", \"{}\"] }} }}",
                script.display()
            ),
        };
        let text = format!(
            r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{}" }}, {{ name: b, addr: "{}" }} ]
    health: {FAST_HEALTH}
    warmup: 500ms
    drain: {{ timeout: 5s }}
    rollout: {rollout}
"#,
            procs[0].0, procs[1].0
        );
        let proxy = Proxy::start(&text).await;
        proxy
            .wait_health("web", "a", handoff::pool::Health::Up)
            .await;
        proxy
            .wait_health("web", "b", handoff::pool::Health::Up)
            .await;
        let load = Load::start(proxy.url("web", "/"), 4, Duration::from_secs(90));
        let serving = Serving::start(&proxy);
        let started = std::time::Instant::now();
        let (status, r) = proxy
            .admin_json(
                Method::POST,
                "/v1/pools/web/rollouts",
                json!({ "version": "2.0.0" }),
            )
            .await;
        assert_eq!(status, 201, "{r}");
        let done = proxy
            .rollout_end(r["id"].as_str().unwrap(), Duration::from_secs(60))
            .await;
        let took = started.elapsed();
        let least = serving.finish().await;
        let (sent, failed) = load.finish().await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(failed, 0, "of {sent}");
        figures.push((strategy, least, took, sent));
        drop(procs);
    }
    stop_started(dir.path());
    for (strategy, least, took, sent) in &figures {
        println!(
            "{strategy}: fewest nodes serving {least}, took {took:.1?}, {sent} requests, 0 failed"
        );
    }
    assert_eq!(
        figures[0].1, 1,
        "in place, the pool is one node short meanwhile"
    );
    assert_eq!(figures[1].1, 2, "replace is never a node short");
}
