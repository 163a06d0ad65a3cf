//! Self-upgrade with the real binary as separate processes: `run --upgrade` takes over the
//! listening sockets and the runtime state of the running process under load, and failed
//! takeovers change nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::affinity::Browser;
use crate::common::backends::HttpBackend;
use crate::common::process::{call, Handoff};
use crate::common::*;

fn config(a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
shutdown_grace: 5s
upgrade: {{ timeout: 10s }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{a}" }}, {{ name: b, addr: "{b}" }} ]
    health: {FAST_HEALTH}
    affinity: {{ cookie: "handoff_node", idle_timeout: 60s }}
"#
    )
}

async fn status(h: &Handoff) -> Value {
    match call(&client(), Method::GET, &h.url("/v1/status"), None).await {
        Some((200, v)) => v,
        other => panic!("status: {other:?}"),
    }
}

fn listener_url(status: &Value, path: &str) -> String {
    format!(
        "http://{}{path}",
        status["listeners"][0]["listen"].as_str().unwrap()
    )
}

/// Waits (bounded) for the child to exit; its exit code.
async fn exit_code(h: &mut Handoff) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = h.proc.0.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not exit: {:#?}",
            h.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn started(dir: &Path, yaml: &str) -> Handoff {
    let path = dir.join("handoff.yaml");
    std::fs::write(&path, yaml).unwrap();
    let h = Handoff::start(&path).await;
    h.wait_up("a").await;
    h.wait_up("b").await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_under_load_fails_no_request_and_carries_the_state_over() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut old = started(dir.path(), &config(a.addr, b.addr)).await;
    let before = status(&old).await;
    assert_eq!(before["process"]["generation"], 1, "{before}");
    let url = listener_url(&before, "/");
    // b drained, a client pinned to a by its cookie.
    let drain = call(
        &client(),
        Method::POST,
        &old.url("/v1/pools/web/nodes/b/drain"),
        Some(json!({})),
    )
    .await;
    assert!(matches!(drain, Some((200, _))), "{drain:?}");
    let mut browser = Browser::new();
    assert_eq!(browser.get(&url).await, "a");
    let cookie = browser.cookie.clone();

    let load = Load::start(url.clone(), 4, Duration::from_secs(20));
    eventually("the load runs", || {
        load.sent.load(std::sync::atomic::Ordering::SeqCst) > 50
    })
    .await;
    let mut new = Handoff::take_over(&dir.path().join("handoff.yaml")).await;
    assert_eq!(
        new.admin, old.admin,
        "the admin listener was not handed over"
    );
    assert_eq!(
        exit_code(&mut old).await,
        Some(0),
        "the old generation: {:#?}",
        old.log()
    );
    let sent_at_exit = load.sent.load(std::sync::atomic::Ordering::SeqCst);
    eventually("the new generation serves the load", || {
        load.sent.load(std::sync::atomic::Ordering::SeqCst) > sent_at_exit + 50
    })
    .await;
    let (sent, failed) = load.finish().await;
    println!("takeover under keep-alive load: {sent} requests, {failed} failed");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the takeover"
    );

    let after = status(&new).await;
    assert_eq!(after["process"]["generation"], 2, "{after}");
    assert_ne!(after["process"]["pid"], before["process"]["pid"]);
    assert_eq!(listener_url(&after, "/"), url, "the listener moved");
    let nodes = &after["pools"][0]["nodes"];
    assert_eq!(nodes[1]["state"], "drained", "{after}");
    assert_eq!(
        nodes[0]["health"], "up",
        "health was not carried over: {after}"
    );
    assert_eq!(nodes[0]["version"], "1.0.0", "{after}");
    assert_eq!(browser.get(&url).await, "a", "the cookie lost its node");
    assert_eq!(browser.cookie, cookie, "the cookie was not recognised");
    eventually_async(&new, |s| s.get("previous").is_none()).await;
    new.assert_alive("after the takeover");
}

/// Polls the status until `cond` holds (bounded).
async fn eventually_async(h: &Handoff, cond: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = status(h).await;
        if cond(&s) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_with_an_invalid_config_exits_1_and_changes_nothing() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut old = started(dir.path(), &config(a.addr, b.addr)).await;
    let url = listener_url(&status(&old).await, "/");
    let load = Load::start(url, 2, Duration::from_secs(20));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listeners: []\npools: [ { name: web, nodes: [] } ]\nbogus: 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--upgrade", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bogus"), "{stderr}");
    // A config whose upgrade socket nobody listens on: refused, saying so.
    let lonely = tempfile::tempdir().unwrap();
    let elsewhere = lonely.path().join("handoff.yaml");
    std::fs::write(&elsewhere, config(a.addr, b.addr)).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--upgrade", "-c"])
        .arg(&elsewhere)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no handoff is listening"), "{stderr}");
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} failed while the takeovers were refused"
    );
    old.assert_alive("after refused takeovers");
    assert_eq!(status(&old).await["process"]["generation"], 1);
}
