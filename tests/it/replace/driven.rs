//! A replace rollout as operators drive and interrupt it: preview requests before
//! admission, replacements added by hand, aborts, a restart with the state file and a
//! takeover of handoff in the middle.

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::json;

use super::*;
use crate::common::backends::HttpBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_admission_only_preview_requests_reach_the_new_node_and_an_abort_removes_it() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let preview = ", preview: { header: \"X-Handoff-Preview\", for: 30s }";
    let proxy = Proxy::start(&yaml(a.addr, b.addr, &hook(dir.path()), preview)).await;
    both_up(&proxy).await;
    let id = start_rollout(&proxy, "2.0.0").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, r) = proxy
            .admin(Method::GET, &format!("/v1/rollouts/{id}"), None)
            .await;
        if r["phase"] == "preview" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never in preview: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = client();
    let url = proxy.url("web", "/");
    let ask = |header: Option<(&'static str, &'static str)>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut req = http::Request::get(url);
            if let Some((k, v)) = header {
                req = req.header(k, v);
            }
            let resp = client
                .request(
                    req.body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8_lossy(&body).to_string())
        }
    };
    for _ in 0..20 {
        let (status, body) = ask(Some(("x-handoff-preview", "2.0.0"))).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("node new-a (version 2.0.0)"),
            "a preview request: {body}"
        );
        let (status, body) = ask(Some(("cookie", "handoff_preview=2.0.0"))).await;
        assert_eq!(status, 200);
        assert!(body.contains("new-a"), "a preview cookie: {body}");
        let (_, body) = ask(None).await;
        assert!(
            !body.contains("new-"),
            "a plain request reached the new node: {body}"
        );
        let (_, body) = ask(Some(("x-handoff-preview", "9.9.9"))).await;
        assert!(!body.contains("new-"), "another version: {body}");
    }
    let (_, node) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/a-2.0.0", None)
        .await;
    assert_eq!(node["state"], "drained", "not admitted: {node}");
    assert_eq!(node["traffic"]["preview_requests"], 40, "{node}");

    // An abort in preview takes the replacement out; the pool is as before.
    let (status, _) = proxy
        .admin(Method::POST, &format!("/v1/rollouts/{id}/abort"), None)
        .await;
    assert_eq!(status, 200);
    let done = proxy.rollout_end(&id, Duration::from_secs(20)).await;
    stop_started(dir.path());
    assert_eq!(done["state"], "aborted", "{done}");
    assert_eq!(names(&proxy).await, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_hook_an_operator_adds_each_replacement() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let news = [
        HttpBackend::start("a2", "2.0.0").await,
        HttpBackend::start("b2", "2.0.0").await,
    ];
    let text = yaml(a.addr, b.addr, Path::new("/unused"), "")
        .replace(", hook: { exec: [\"/bin/sh\", \"/unused\"] }", "");
    let proxy = Proxy::start(&text).await;
    both_up(&proxy).await;
    // Not waiting for one: refused, nothing added.
    let (status, refused) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/nodes",
            json!({ "name": "x", "addr": news[0].addr.to_string(), "replaces": "a" }),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    let id = start_rollout(&proxy, "2.0.0").await;
    for (old, new) in [("a", &news[0]), ("b", &news[1])] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, r) = proxy
                .admin(Method::GET, &format!("/v1/rollouts/{id}"), None)
                .await;
            if r["phase"] == "provisioning" && r["current_node"] == old {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not provisioning {old}: {r}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let name = format!("{old}-new");
        let (status, added) = proxy
            .admin_json(
                Method::POST,
                "/v1/pools/web/nodes",
                json!({ "name": name, "addr": new.addr.to_string(), "replaces": old }),
            )
            .await;
        assert_eq!(status, 201, "{added}");
        assert_eq!(added["state"], "drained", "held out until ready: {added}");
    }
    let done = proxy.rollout_end(&id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(names(&proxy).await, ["a-new", "b-new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_in_the_middle_of_a_replace_rollout_finishes_it() {
    use crate::common::process::{call, Handoff};
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let preview = ", preview: { for: 2s }";
    let config = dir.path().join("handoff.yaml");
    let text = yaml(a.addr, b.addr, &hook(dir.path()), preview)
        .replace("listeners:", "upgrade: { timeout: 10s }\nlisteners:");
    std::fs::write(&config, text).unwrap();
    let old = Handoff::start(&config).await;
    old.wait_up("a").await;
    old.wait_up("b").await;
    let (_, status) = call(&client(), Method::GET, &old.url("/v1/status"), None)
        .await
        .unwrap();
    let web = format!(
        "http://{}/",
        status["listeners"][0]["listen"].as_str().unwrap()
    );
    let load = Load::start(web, 4, Duration::from_secs(60));
    let (code, started) = call(
        &client(),
        Method::POST,
        &old.url("/v1/pools/web/rollouts"),
        Some(json!({ "version": "2.0.0" })),
    )
    .await
    .unwrap();
    assert_eq!(code, 201, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let rollout = |h: &Handoff| h.url(&format!("/v1/rollouts/{id}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, r) = call(&client(), Method::GET, &rollout(&old), None)
            .await
            .unwrap();
        if r["phase"] == "preview" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never in preview: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new process takes the rollout over mid-way (the replacement of a is in the pool).
    let new = Handoff::take_over(&config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, r) = call(&client(), Method::GET, &rollout(&new), None)
            .await
            .unwrap();
        if r["state"] != "running" {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "still running: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (sent, failed) = load.finish().await;
    stop_started(dir.path());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(failed, 0, "of {sent}");
    let (_, pool) = call(&client(), Method::GET, &new.url("/v1/pools/web"), None)
        .await
        .unwrap();
    let names: Vec<&str> = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-2.0.0", "b-2.0.0"], "{pool}");
    let provisions = log(dir.path())
        .iter()
        .filter(|l| l.starts_with("provision a "))
        .count();
    assert_eq!(
        provisions,
        1,
        "a's replacement was provisioned once: {:#?}",
        log(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_while_provisioning_or_waiting_for_readiness_leaves_the_pool_as_it_was() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    for phase in ["provisioning", "waiting_ready"] {
        let dir = tempfile::tempdir().unwrap();
        let script = hook(dir.path());
        // Provisioning: no hook, so the rollout waits for an operator. Waiting for
        // readiness: the new node reports another version than the target.
        let text = match phase {
            "provisioning" => yaml(a.addr, b.addr, Path::new("/unused"), "")
                .replace(", hook: { exec: [\"/bin/sh\", \"/unused\"] }", ""),
            _ => {
                std::fs::write(dir.path().join("version"), "1.9.9").unwrap();
                yaml(a.addr, b.addr, &script, "")
            }
        };
        let proxy = Proxy::start(&text).await;
        proxy
            .wait_health("web", "a", handoff::pool::Health::Up)
            .await;
        proxy
            .wait_health("web", "b", handoff::pool::Health::Up)
            .await;
        let load = Load::start(proxy.url("web", "/"), 2, Duration::from_secs(60));
        let id = start_rollout(&proxy, "2.0.0").await;
        until_phase(&proxy, &id, phase).await;
        if phase == "waiting_ready" {
            // The replacement is in the pool, held out.
            let (status, _) = proxy
                .admin(Method::GET, "/v1/pools/web/nodes/a-2.0.0", None)
                .await;
            assert_eq!(status, 200);
        }
        let (status, _) = proxy
            .admin(Method::POST, &format!("/v1/rollouts/{id}/abort"), None)
            .await;
        assert_eq!(status, 200);
        let done = proxy.rollout_end(&id, Duration::from_secs(20)).await;
        let (sent, failed) = load.finish().await;
        stop_started(dir.path());
        assert_eq!(done["state"], "aborted", "{phase}: {done}");
        assert_eq!(failed, 0, "{phase}: of {sent}");
        assert_eq!(states(&proxy).await, ["a active", "b active"], "{phase}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_state_file_resumes_a_replace_rollout() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(a.addr, b.addr, &hook(dir.path()), ", preview: { for: 1s }")
        .replace("listeners:", "state_file: \"{DIR}/state.json\"\nlisteners:");
    let proxy = Proxy::start(&text).await;
    both_up(&proxy).await;
    let id = start_rollout(&proxy, "2.0.0").await;
    until_phase(&proxy, &id, "preview").await;
    // Restarted mid-way: the record, a's replacement and its admin state come back.
    let proxy = proxy.restart().await;
    let done = proxy.rollout_end(&id, Duration::from_secs(60)).await;
    stop_started(dir.path());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(names(&proxy).await, ["a-2.0.0", "b-2.0.0"]);
    let provisions = log(dir.path())
        .iter()
        .filter(|l| l.starts_with("provision a "))
        .count();
    assert_eq!(provisions, 1, "{:#?}", log(dir.path()));
}
