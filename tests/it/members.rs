//! Nodes at runtime through the admin API: added, changed and removed under load, kept by
//! the state file, a takeover and a reload of the file, refused with a 4xx that changes
//! nothing.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::backends::HttpBackend;
use crate::common::process::{call, Handoff};
use crate::common::*;

fn yaml(a: std::net::SocketAddr, b: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
state_file: "{{DIR}}/state.json"
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{a}" }}, {{ name: b, addr: "{b}" }}{extra} ]
    health: {FAST_HEALTH}
    warmup: 2s
    drain: {{ timeout: 5s }}
"#
    )
}

async fn pair() -> (HttpBackend, HttpBackend) {
    (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    )
}

/// Waits (the API's long poll) until `node` reaches `state`; its view.
async fn wait_for(proxy: &Proxy, node: &str, state: &str) -> Value {
    let path = format!("/v1/pools/web/nodes/{node}/wait?state={state}&timeout=5s");
    let (status, view) = proxy.admin(Method::GET, &path, None).await;
    assert_eq!(status, 200, "web/{node} never {state}: {view}");
    view
}

async fn add(proxy: &Proxy, body: Value) -> (StatusCode, Value) {
    proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes", body)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_under_load_serves_warming_and_one_removed_with_drain_goes_with_nothing_failed(
) {
    let (a, b) = pair().await;
    let c = HttpBackend::start("c", "1.0").await;
    let proxy = Proxy::start(&yaml(a.addr, b.addr, "")).await;
    proxy
        .wait_health("web", "a", handoff::pool::Health::Up)
        .await;
    proxy
        .wait_health("web", "b", handoff::pool::Health::Up)
        .await;
    let load = Load::start(proxy.url("web", "/"), 4, Duration::from_secs(60));

    let (status, added) = add(&proxy, json!({ "name": "c", "addr": c.addr.to_string() })).await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["source"], "api", "{added}");
    assert_eq!(
        added["health"], "unknown",
        "a new node proves itself first: {added}"
    );
    assert_eq!(added["enable_pending"], true, "{added}");
    // Up within a few checks, then warming: a reduced share first.
    let warming = wait_for(&proxy, "c", "warming").await;
    assert!(
        warming["effective_weight"].as_u64().unwrap() < 100,
        "{warming}"
    );
    eventually("c serves", || c.hits() > 0).await;
    wait_for(&proxy, "c", "active").await;

    // Removing a node that is not drained, without drain: 409, nothing changes.
    let (status, refused) = proxy
        .admin(Method::DELETE, "/v1/pools/web/nodes/a", None)
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("?drain=true"),
        "{refused}"
    );
    assert_eq!(proxy.node("web", "a").state.admin().as_str(), "active");

    // With drain: 202, drained, then removed; the load never fails.
    let (status, removing) = proxy
        .admin(Method::DELETE, "/v1/pools/web/nodes/a?drain=true", None)
        .await;
    assert_eq!(status, 202, "{removing}");
    let hits = a.hits();
    until_gone(&proxy, "a").await;
    let (status, _) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    assert_eq!(status, 200);
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "of {sent}");
    assert!(sent > 100, "{sent}");
    assert!(a.hits() <= hits + 4, "a took new requests once draining");
    let metrics = proxy.metrics().await;
    for change in ["added", "removed"] {
        let series = format!(
            "handoff_pool_membership_changes_total{{change=\"{change}\",pool=\"web\",source=\"{}\"}}",
            if change == "added" { "api" } else { "config" }
        );
        assert_eq!(metric_value(&metrics, &series), 1.0, "{series}\n{metrics}");
    }
}

async fn until_gone(proxy: &Proxy, node: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, view) = proxy
            .admin(Method::GET, &format!("/v1/pools/web/nodes/{node}"), None)
            .await;
        if status == 404 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "web/{node} still there: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_node_changes_are_refused_and_change_nothing() {
    let (a, b) = pair().await;
    let proxy = Proxy::start(&yaml(a.addr, b.addr, "")).await;
    // Both up, so the drain below passes the pair guard.
    proxy
        .wait_health("web", "a", handoff::pool::Health::Up)
        .await;
    proxy
        .wait_health("web", "b", handoff::pool::Health::Up)
        .await;
    let free = format!("127.0.0.1:{}", free_port());
    for (body, field) in [
        (json!({ "addr": free }), "name"),
        (json!({ "name": "c" }), "addr"),
        (json!({ "name": "c d", "addr": free }), "name"),
        (
            json!({ "name": "c", "addr": "backend.internal:80" }),
            "addr",
        ),
        (json!({ "name": "c", "addr": "127.0.0.1:0" }), "addr"),
        (json!({ "name": "c", "addr": free, "weight": 0 }), "weight"),
        (
            json!({ "name": "c", "addr": free, "state": "draining" }),
            "state",
        ),
        (
            json!({ "name": "c", "addr": free, "colour": "red" }),
            "colour",
        ),
    ] {
        let (status, refused) = add(&proxy, body.clone()).await;
        assert_eq!(status, 400, "{body}: {refused}");
        assert!(
            refused["error"].as_str().unwrap().contains(field),
            "{body}: {refused}"
        );
    }
    let (status, refused) = add(&proxy, json!({ "name": "a", "addr": free })).await;
    assert_eq!(status, 409, "{refused}");
    let (status, _) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/nope/nodes",
            json!({ "name": "c", "addr": free }),
        )
        .await;
    assert_eq!(status, 404);
    // An address changes only while the node is drained with no session.
    let (status, refused) = proxy
        .admin_json(
            Method::PATCH,
            "/v1/pools/web/nodes/a",
            json!({ "addr": free }),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    let (status, refused) = proxy
        .admin_json(Method::PATCH, "/v1/pools/web/nodes/a", json!({}))
        .await;
    assert_eq!(status, 400, "{refused}");
    let (status, refused) = proxy
        .admin(Method::DELETE, "/v1/pools/web/nodes/a?drain=maybe", None)
        .await;
    assert_eq!(status, 400, "{refused}");
    let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    let nodes: Vec<(&str, &str)> = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(nodes, [("a", "active"), ("b", "active")]);
    assert_eq!(pool["nodes"][0]["addr"], a.addr.to_string());

    // A weight any time; an address once drained (health starts over).
    let (status, view) = proxy
        .admin_json(
            Method::PATCH,
            "/v1/pools/web/nodes/a",
            json!({ "weight": 50 }),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &view["weight"]),
        (200, &json!(50)),
        "{view}"
    );
    proxy
        .admin(Method::POST, "/v1/pools/web/nodes/a/drain", None)
        .await;
    wait_for(&proxy, "a", "drained").await;
    let (status, view) = proxy
        .admin_json(
            Method::PATCH,
            "/v1/pools/web/nodes/a",
            json!({ "addr": free }),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (view["addr"].as_str(), view["health"].as_str()),
        (Some(free.as_str()), Some("unknown"))
    );
    // The last node is never removed.
    let (status, _) = proxy
        .admin(Method::DELETE, "/v1/pools/web/nodes/a", None)
        .await;
    assert_eq!(status, 200);
    let (status, refused) = proxy
        .admin(
            Method::DELETE,
            "/v1/pools/web/nodes/b?drain=true&force=true",
            None,
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(proxy.node("web", "b").state.admin().as_str(), "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_nodes_survive_a_restart_and_a_reload_and_a_clashing_file_is_refused() {
    let (a, b) = pair().await;
    let c = HttpBackend::start("c", "1.0").await;
    let proxy = Proxy::start(&yaml(a.addr, b.addr, "")).await;
    let (status, added) = add(
        &proxy,
        json!({ "name": "c", "addr": c.addr.to_string(), "weight": 30, "state": "drained" }),
    )
    .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["state"], "drained");
    assert_eq!(
        added["enable_pending"], false,
        "held until enabled: {added}"
    );

    // Restart with the state file: c is there, still held out.
    let proxy = proxy.restart().await;
    let (status, c_view) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/c", None)
        .await;
    assert_eq!(status, 200, "{c_view}");
    assert_eq!(
        (
            c_view["state"].as_str(),
            c_view["weight"].as_u64(),
            c_view["source"].as_str()
        ),
        (Some("drained"), Some(30), Some("api"))
    );

    // A reload of the unchanged file keeps it.
    let (status, reloaded) = proxy.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 200, "{reloaded}");
    let (status, _) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/c", None)
        .await;
    assert_eq!(status, 200, "a reload of the same file keeps API nodes");
    proxy
        .admin(Method::POST, "/v1/pools/web/nodes/c/enable", None)
        .await;
    wait_for(&proxy, "c", "active").await;

    // A file that adds a node named c: refused, naming both; nothing changes.
    let clash = yaml(
        a.addr,
        b.addr,
        &format!(", {{ name: c, addr: \"127.0.0.1:{}\" }}", free_port()),
    )
    .replace("{DIR}", &proxy._dir.path().display().to_string());
    std::fs::write(&proxy.config_path, clash).unwrap();
    let (status, refused) = proxy.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 409, "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("web/c") && error.contains(&c.addr.to_string()),
        "{error}"
    );
    let view = proxy.node("web", "c");
    assert_eq!((view.addr, view.weight), (c.addr, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_through_the_api_is_kept_by_a_takeover() {
    let (a, b) = pair().await;
    let c = HttpBackend::start("c", "1.0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handoff.yaml");
    let text = yaml(a.addr, b.addr, "").replace(
        "state_file: \"{DIR}/state.json\"\n",
        "upgrade: { timeout: 10s }\n",
    );
    std::fs::write(&path, text).unwrap();
    let old = Handoff::start(&path).await;
    // d: held out until enabled, a state the takeover must carry too.
    let held =
        json!({ "name": "d", "addr": format!("127.0.0.1:{}", free_port()), "state": "drained" });
    let answer = call(
        &client(),
        Method::POST,
        &old.url("/v1/pools/web/nodes"),
        Some(held),
    )
    .await;
    assert!(matches!(answer, Some((201, _))), "{answer:?}");
    let body = json!({ "name": "c", "addr": c.addr.to_string() });
    let answer = call(
        &client(),
        Method::POST,
        &old.url("/v1/pools/web/nodes"),
        Some(body),
    )
    .await;
    assert!(matches!(answer, Some((201, _))), "{answer:?}");
    old.wait_up("c").await;
    let new = Handoff::take_over(&path).await;
    let (status, view) = call(
        &client(),
        Method::GET,
        &new.url("/v1/pools/web/nodes/c"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["source"], "api");
    assert_eq!(view["addr"], c.addr.to_string());
    new.wait_up("c").await;
    let (_, d) = call(
        &client(),
        Method::GET,
        &new.url("/v1/pools/web/nodes/d"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (d["state"].as_str(), d["source"].as_str()),
        (Some("drained"), Some("api")),
        "{d}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_node_adds_sets_and_removes() {
    let (a, b) = pair().await;
    let proxy = Proxy::start(&yaml(a.addr, b.addr, "")).await;
    let admin = format!("http://{}", proxy.admin);
    let addr = format!("127.0.0.1:{}", free_port());
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["ctl", "--admin", &admin, "node"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = ctl(&["add", "web/c", &addr, "--drained", "--weight", "40"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("web/c") || out.contains('c'), "{out}");
    let (code, out) = ctl(&["set", "web/c", "--weight", "20"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(proxy.node("web", "c").weight, 20);
    let (code, out) = ctl(&["remove", "web/a"]);
    assert_eq!(code, Some(3), "a node in service is not removed: {out}");
    let (code, out) = ctl(&["remove", "web/c"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("web/c removed"), "{out}");
    let (status, _) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/c", None)
        .await;
    assert_eq!(status, 404);
}
