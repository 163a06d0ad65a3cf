//! What monitoring reads: `/metrics` passes `promtool check metrics`, and every query of the
//! Grafana dashboard in docs/grafana names series handoff exports.

use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::common::*;

/// A scrape after traffic, a drain and a (failed) rollout step, so every family has series.
async fn busy_scrape() -> String {
    let (_a, _b, proxy) = http_pair_up().await;
    let c = client();
    for _ in 0..20 {
        let (status, _) = get(&c, &proxy.url("web", "/")).await;
        assert_eq!(status, 200);
    }
    proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    proxy.wait_drained("web", "a").await;
    proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/nodes/a/enable",
            json!({"warmup": "0s"}),
        )
        .await;
    let (status, r) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/rollouts",
            json!({"version": "9.9.9", "order": ["b"], "ready_timeout": "1ms"}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    proxy
        .rollout_end(r["id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    proxy.metrics().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_the_dashboard_names_only_exported_series() {
    let metrics = busy_scrape().await;
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Err(_) => {
            eprintln!("skipped promtool: not installed (.ci/run installs Debian's prometheus)")
        }
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(metrics.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana/handoff.json"
    )))
    .expect("the dashboard is JSON");
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("handoff_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.push(name);
            }
        }
    }
    assert!(names.len() >= 14, "{names:?}");
    for name in &names {
        let exported = metrics
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        assert!(
            exported,
            "the dashboard queries {name}, which /metrics does not have"
        );
    }
}
