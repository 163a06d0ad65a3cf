//! The admin API over HTTP: views, errors, authentication, reload, metrics.

use http::Method;

use crate::common::backends::HttpBackend;
use crate::common::*;
use handoff::pool::Health;

#[tokio::test]
async fn status_pool_and_node_views() {
    let (_a, b, proxy) = http_pair_up().await;
    let (status, body) = proxy.admin(Method::GET, "/v1/status", None).await;
    assert_eq!(status, 200);
    let nodes = body["pools"][0]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        assert_eq!(n["state"], "active");
        assert_eq!(n["health"], "up");
        assert_eq!(n["version"], "1.0.0");
        assert_eq!(n["sessions"]["total"], 0);
        assert_eq!(n["effective_weight"], 100);
        for key in ["name", "addr", "state_since"] {
            assert!(n[key].is_string(), "{key} missing");
        }
        for kind in ["http_inflight", "tunnels", "tcp", "affinity"] {
            assert!(n["sessions"][kind].is_u64(), "sessions.{kind} missing");
        }
    }
    assert!(body["rollouts"].is_array());
    assert_eq!(
        body["listeners"][0]["listen"],
        proxy.addr("web").to_string()
    );
    let (status, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    assert_eq!((status.as_u16(), pool["name"].as_str()), (200, Some("web")));
    let (status, node) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/b", None)
        .await;
    assert_eq!(
        (status.as_u16(), node["addr"].as_str()),
        (200, Some(b.addr.to_string().as_str()))
    );
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    let cases = [
        (Method::GET, "/v1/pools/nope", 404, "unknown pool"),
        (Method::GET, "/v1/pools/web/nodes/zz", 404, "unknown node"),
        (Method::POST, "/v1/status", 405, "not allowed"),
        (Method::GET, "/v1/nothing", 404, "no such endpoint"),
        (Method::GET, "/v1/reload", 405, "not allowed"),
    ];
    for (method, path, code, text) in cases {
        let (status, body) = proxy.admin(method, path, None).await;
        assert_eq!(status.as_u16(), code, "{path}");
        assert!(
            body["error"].as_str().unwrap().contains(text),
            "{path}: {body}"
        );
        assert!(body.get("detail").is_some());
    }
}

#[tokio::test]
async fn bearer_token_guards_v1_when_its_variable_is_set() {
    let var = format!("HANDOFF_TEST_TOKEN_{}", std::process::id());
    std::env::set_var(&var, "s3cret");
    let a = HttpBackend::start("a", "1.0.0").await;
    let yaml = http_config(&[("a", a.addr)], "").replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        &format!("admin: {{ listen: \"127.0.0.1:0\", token_env: {var} }}"),
    );
    let proxy = Proxy::start(&yaml).await;
    assert_eq!(proxy.admin(Method::GET, "/v1/status", None).await.0, 401);
    assert_eq!(
        proxy
            .admin(Method::GET, "/v1/status", Some("wrong"))
            .await
            .0,
        401
    );
    assert_eq!(
        proxy
            .admin(Method::GET, "/v1/status", Some("s3cret"))
            .await
            .0,
        200
    );
    // Liveness and metrics stay open for probes and scrapers.
    assert_eq!(
        send(
            Method::GET,
            &format!("http://{}/healthz", proxy.admin),
            None
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn invalid_reload_reports_every_error_and_keeps_serving() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let good = http_config(&[("a", a.addr)], "");
    let proxy = Proxy::start(&good).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let bad = good
        .replace("{ pool: web }", "{ pool: nope }")
        .replace("interval: 100ms", "interval: 1x");
    std::fs::write(&proxy.config_path, bad).unwrap();
    let (status, body) = proxy.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 400);
    let errors = body["detail"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{body}");
    for e in errors {
        assert!(e["line"].as_u64().unwrap() > 0 && e["col"].as_u64().unwrap() > 0);
    }
    let (status, text) = get(&client(), &proxy.url("web", "/")).await;
    assert_eq!((status, text.as_str()), (200, "a 1.0.0"));
    assert!(proxy
        .metrics()
        .await
        .contains("handoff_config_reloads_total{result=\"failed\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_reload_adding_a_node_keeps_existing_state() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let c = HttpBackend::start("c", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let (_, before) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/a", None)
        .await;

    // A slow request holds a session on a across the reload.
    let url = proxy.url("web", "/slow/1500");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    let node_a = proxy.node("web", "a");
    eventually("the slow request reaches a", || {
        node_a.state.active_sessions() == 1
    })
    .await;

    std::fs::write(
        &proxy.config_path,
        http_config(&[("a", a.addr), ("c", c.addr)], ""),
    )
    .unwrap();
    let (status, body) = proxy.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    let (_, after) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/a", None)
        .await;
    assert_eq!(after["health"], "up");
    assert_eq!(after["sessions"]["http_inflight"], 1);
    assert_eq!(after["state_since"], before["state_since"]);
    assert_eq!(after["health_since"], before["health_since"]);
    let (_, added) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/c", None)
        .await;
    assert_eq!(added["addr"], c.addr.to_string());
    assert_eq!(slow.await.unwrap(), (200, "a 1.0.0".to_string()));
    proxy.wait_health("web", "c", Health::Up).await;
    assert!(proxy
        .metrics()
        .await
        .contains("handoff_config_reloads_total{result=\"ok\"} 1"));
}

#[tokio::test]
async fn metrics_expose_the_handoff_families() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    assert_eq!(get(&client(), &proxy.url("web", "/")).await.0, 200);
    let text = proxy.metrics().await;
    for family in [
        "handoff_sessions_total",
        "handoff_sessions_active",
        "handoff_requests_total",
        "handoff_request_duration_seconds",
        "handoff_connect_duration_seconds",
        "handoff_health_checks_total",
        "handoff_node_state",
        "handoff_node_health",
        "handoff_node_version_info",
        "handoff_node_transitions_total",
        "handoff_listener_bytes_total",
        "handoff_listener_connections_total",
        "handoff_config_reloads_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    assert!(text.contains("handoff_requests_total{class=\"2xx\",node=\"a\",pool=\"web\"} 1"));
    assert!(
        text.contains("handoff_sessions_total{kind=\"http_inflight\",node=\"a\",pool=\"web\"} 1")
    );
    assert!(text.contains("handoff_node_state{node=\"a\",pool=\"web\",state=\"active\"} 1"));
}

#[tokio::test]
async fn http_bytes_are_counted_per_listener_once_a_connection_ends() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    // One client, one keep-alive connection: dropped after two requests.
    {
        let c = client();
        for _ in 0..2 {
            assert_eq!(get(&c, &proxy.url("web", "/")).await.0, 200);
        }
    }
    let series =
        |dir: &str| format!("handoff_listener_bytes_total{{direction=\"{dir}\",listener=\"web\"}}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = proxy.metrics().await;
        let (bytes_in, bytes_out) = (
            metric_value(&text, &series("in")),
            metric_value(&text, &series("out")),
        );
        // Two request heads in (over 2×30 bytes), two answers out (over 2×60 bytes).
        if bytes_in > 60.0 && bytes_out > 120.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "in {bytes_in}, out {bytes_out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
