//! Rollout analysis and passive ejection (design §11), against real backends under load: a
//! version that fails part of its requests is caught while it warms and never reaches the
//! sibling; a good one passes; 5xx streaks eject a node until its checks pass again.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::common::backends::HttpBackend;
use crate::common::process::call;
use crate::common::*;
use handoff::pool::Health;

pub(crate) fn config(a: SocketAddr, b: SocketAddr, warmup: &str, analysis: &str) -> String {
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
    warmup: {warmup}
    drain: {{ timeout: 5s, close_spread: 100ms }}
    rollout: {{ ready_timeout: 20s, analysis: {analysis} }}
"#
    )
}

async fn node(proxy: &Proxy, name: &str) -> Value {
    let (status, n) = proxy
        .admin(Method::GET, &format!("/v1/pools/web/nodes/{name}"), None)
        .await;
    assert_eq!(status, 200);
    n
}

pub(crate) async fn start(proxy: &Proxy, version: &str) -> String {
    let (status, r) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/rollouts",
            json!({"version": version, "order": ["a", "b"]}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    r["id"].as_str().unwrap().to_string()
}

fn events(r: &Value) -> Vec<(String, String)> {
    r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["phase"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_failing_30_percent_is_stopped_while_warming_and_never_reaches_the_sibling() {
    let mut a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let analysis = "{ window: 30s, min_requests: 30, max_error_rate: 0.05 }";
    let proxy = Proxy::start(&config(a.addr, b.addr, "10s", analysis)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let load = Load::start(proxy.url("web", "/"), 8, Duration::from_secs(60));
    let id = start(&proxy, "2.0.0-bad").await;
    proxy.wait_drained("web", "a").await;
    // The new version starts, reports its version, passes its checks, and fails 30 %.
    a.set_failing(30);
    a.restart("2.0.0-bad").await;
    let r = proxy.rollout_end(&id, Duration::from_secs(30)).await;
    let (sent, failed) = load.finish().await;
    println!("bad version under load: sent {sent}, {failed} not 200; {r}");

    assert_eq!(r["state"], "failed", "{r}");
    let reason = r["reason"].as_str().unwrap();
    let rate: f64 = reason
        .split("error rate ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no measured error rate in {reason:?}"));
    assert!((0.2..=0.4).contains(&rate), "{reason}");
    assert!(reason.contains("web/a drained"), "{reason}");
    // Caught while warming: the failure is on the warming phase, and b was never touched.
    let failed_at: Vec<_> = events(&r)
        .into_iter()
        .filter(|(_, m)| m.starts_with("failed:"))
        .collect();
    assert_eq!(failed_at.len(), 1, "{r}");
    assert_eq!(failed_at[0].0, "warming", "{r}");
    assert!(!events(&r).iter().any(|(_, m)| m.starts_with("b:")), "{r}");
    let a_json = node(&proxy, "a").await;
    assert_eq!(a_json["state"], "drained", "{a_json}");
    let b_json = node(&proxy, "b").await;
    assert_eq!(
        (b_json["state"].as_str(), b_json["version"].as_str()),
        (Some("active"), Some("1.0.0")),
        "{b_json}"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "handoff_node_transitions_total{node=\"b\",pool=\"web\",to=\"draining\"}"
        ),
        0.0
    );
    // The node's own figures say what happened; clients barely noticed.
    assert!(
        a_json["traffic"]["errors_5xx"].as_u64().unwrap() >= 9,
        "{a_json}"
    );
    assert!(sent > 200, "too little load: {sent}");
    assert!(failed * 100 < sent, "{failed} of {sent} requests failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_version_passes_analysis_and_the_rollout_succeeds() {
    let mut a = HttpBackend::start("a", "1.0.0").await;
    let mut b = HttpBackend::start("b", "1.0.0").await;
    let analysis = "{ window: 1500ms, min_requests: 10, max_error_rate: 0.05, max_p99_ratio: 5 }";
    let proxy = Proxy::start(&config(a.addr, b.addr, "300ms", analysis)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let load = Load::start(proxy.url("web", "/"), 4, Duration::from_secs(60));
    let id = start(&proxy, "2.0.0").await;
    for backend in [&mut a, &mut b] {
        proxy.wait_drained("web", backend.name).await;
        backend.restart("2.0.0").await;
    }
    let r = proxy.rollout_end(&id, Duration::from_secs(30)).await;
    let (sent, failed) = load.finish().await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(failed, 0, "of {sent}");
    let passed: Vec<_> = events(&r)
        .into_iter()
        .filter(|(p, m)| p == "analysis" && m.contains("passed: error rate 0.00"))
        .collect();
    assert_eq!(passed.len(), 2, "{r}");
    // Figures are in the node JSON and the metrics, rollout or not.
    let n = node(&proxy, "a").await;
    let t = &n["traffic"];
    assert!(t["requests"].as_u64().unwrap() > 10, "{n}");
    assert_eq!(t["errors"], 0, "{n}");
    assert!(t["p99_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{n}");
    assert!(
        t["p50_ms"].as_f64().unwrap() <= t["p99_ms"].as_f64().unwrap(),
        "{n}"
    );
    let metrics = proxy.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "handoff_node_requests_total{node=\"a\",pool=\"web\"}"
        ) > 10.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "handoff_node_errors_total{cause=\"5xx\",node=\"a\",pool=\"web\"}"
        ),
        0.0
    );
    assert!(
        metric_value(
            &metrics,
            "handoff_node_latency_p99_seconds{node=\"a\",pool=\"web\"}"
        ) > 0.0
    );
}

/// A pair with passive ejection after `streak` 5xx in a row, and checks every 500ms.
async fn ejecting_pair(streak: u32) -> (HttpBackend, HttpBackend, Proxy) {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let yaml = config(a.addr, b.addr, "0s", "{}").replace(
        FAST_HEALTH,
        &FAST_HEALTH
            .replace("interval: 100ms", "interval: 500ms")
            .replace(
                "unhealthy_after: 2,",
                &format!("unhealthy_after: 2, passive: {{ consecutive_5xx: {streak} }},"),
            ),
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    (a, b, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_5xx_in_a_row_mark_a_node_down_until_its_checks_pass_again() {
    let (a, _b, proxy) = ejecting_pair(5).await;
    a.set_failing(100);
    let c = client();
    let mut from_a = 0;
    for _ in 0..200 {
        let (status, body) = get(&c, &proxy.url("web", "/")).await;
        if body.starts_with("a ") {
            assert_eq!(status, 500);
            from_a += 1;
            // Marked down by the answer that completes the streak, not before.
            let health = proxy.node("web", "a").state.health();
            let expect = if from_a < 5 { Health::Up } else { Health::Down };
            assert_eq!(health, expect, "after {from_a} 5xx from a");
        }
        if from_a == 5 {
            break;
        }
    }
    assert_eq!(from_a, 5);
    // Down: every request goes to b.
    for _ in 0..10 {
        let (status, body) = get(&c, &proxy.url("web", "/")).await;
        assert_eq!((status, body.as_str()), (200, "b 1.0.0"));
    }
    a.set_failing(0);
    proxy.wait_health("web", "a", Health::Up).await;
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "handoff_node_errors_total{cause=\"5xx\",node=\"a\",pool=\"web\"}"
        ),
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_serving_node_is_never_ejected() {
    let (a, _b, proxy) = ejecting_pair(3).await;
    let (status, _) = proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/b/drain", json!({}))
        .await;
    assert_eq!(status, 200);
    proxy.wait_drained("web", "b").await;
    a.set_failing(100);
    let c = client();
    for _ in 0..10 {
        let (status, body) = get(&c, &proxy.url("web", "/")).await;
        assert_eq!((status, body.as_str()), (500, "a 1.0.0 failed"));
    }
    assert_eq!(proxy.node("web", "a").state.health(), Health::Up);
}

/// `handoff demo` as a new user runs it: a rollout to its `2.0.0-bad` version (500 to every
/// third request) under steady traffic is caught while warming, and its hook puts the
/// version back: the node serves again at 1.0.0, the sibling was never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_rolls_a_bad_version_back_with_its_hook() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = Running(child);
    let (proxy, admin, printed) = tokio::task::spawn_blocking(move || {
        let (mut proxy, mut admin, mut printed) = (None, None, String::new());
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let field = |prefix: &str| {
                let rest = line.trim().strip_prefix(prefix)?;
                Some(
                    rest.trim()
                        .trim_start_matches("http://")
                        .split('/')
                        .next()?
                        .to_string(),
                )
            };
            proxy = proxy.or_else(|| field("proxy:"));
            admin = admin.or_else(|| field("admin:"));
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
        (
            proxy.expect("proxy printed"),
            admin.expect("admin printed"),
            printed,
        )
    })
    .await
    .unwrap();
    assert!(printed.contains("--version 2.0.0-bad"), "{printed}");

    let c = client();
    let load = Load::start(format!("http://{proxy}/"), 4, Duration::from_secs(90));
    let (status, r) = call(
        &c,
        Method::POST,
        &format!("http://{admin}/v1/pools/web/rollouts"),
        Some(json!({"version": "2.0.0-bad", "order": ["a", "b"]})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    // Failed at once when judged; then the rollback runs to its end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let r = loop {
        let (_, r) = call(
            &c,
            Method::GET,
            &format!("http://{admin}/v1/rollouts/{id}"),
            None,
        )
        .await
        .unwrap();
        if r["state"] != "running" && r["rollback"]["state"] != "running" {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (sent, failed) = load.finish().await;
    println!("demo bad version: sent {sent}, {failed} not 200");
    assert_eq!(r["state"], "failed", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("error rate 0.3"), "{reason}");
    assert!(reason.contains("rolling it back to 1.0.0"), "{reason}");
    assert_eq!(r["rollback"]["state"], "succeeded", "{r}");
    let node = |name: &'static str| {
        let (c, admin) = (&c, &admin);
        async move {
            call(
                c,
                Method::GET,
                &format!("http://{admin}/v1/pools/web/nodes/{name}"),
                None,
            )
            .await
            .unwrap()
            .1
        }
    };
    let a = node("a").await;
    assert_eq!(a["version"], "1.0.0", "{a}");
    assert!(
        matches!(a["state"].as_str(), Some("warming" | "active")),
        "{a}"
    );
    let b = node("b").await;
    assert_eq!(
        (b["state"].as_str(), b["version"].as_str()),
        (Some("active"), Some("1.0.0"))
    );
    assert!(failed * 100 < sent, "{failed} of {sent} failed");
}
