//! Health checks against real backends: version extraction, status expectations.

use crate::common::backends::HttpBackend;
use crate::common::*;
use handoff::pool::Health;

#[tokio::test]
async fn version_is_read_from_a_json_body_field() {
    let a = HttpBackend::start("a", "3.1.4").await;
    let yaml = http_config(&[("a", a.addr)], "")
        .replace("version_header: \"X-Version\"", "version_json: \"version\"");
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let (status, node) = proxy
        .admin(http::Method::GET, "/v1/pools/web/nodes/a", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(node["version"], "3.1.4");
    assert!(proxy
        .metrics()
        .await
        .contains("handoff_node_version_info{node=\"a\",pool=\"web\",version=\"3.1.4\"} 1"));
}

#[tokio::test]
async fn version_changes_are_picked_up_by_the_next_check() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    a.set_version("2.0.0");
    let node = proxy.node("web", "a");
    // Version changes don't wake waiters (only state and health do): bounded polling.
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.state.version().as_deref().map(String::as_str) != Some("2.0.0") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "version never updated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_unexpected_status_marks_the_node_down() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let yaml = http_config(&[("a", a.addr)], "").replace(
        "path: \"/healthz\"",
        "path: \"/healthz\", expect_status: 204",
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Down).await;
    let (status, _) = get(&client(), &proxy.url("web", "/")).await;
    assert_eq!(status, 503);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("handoff_health_checks_total{node=\"a\",pool=\"web\",result=\"fail\"}")
    );
    assert!(metrics.contains("handoff_node_health{health=\"down\",node=\"a\",pool=\"web\"} 1"));
}
