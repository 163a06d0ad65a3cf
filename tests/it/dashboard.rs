//! The dashboard (`GET /dashboard`) in a real browser: headless Chromium, driven by
//! `tests/peers/dashboard_check.py` (selenium). It shows both nodes with state, health and
//! version; a drain clicked on the page (and confirmed) shows within a second, with no
//! reload. `.ci/run` installs Debian's chromium and chromium-driver and selenium; without
//! them the test says it was skipped.

use std::path::{Path, PathBuf};

use http::Method;

use crate::common::*;

fn browser() -> Option<PathBuf> {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/grpc-venv/bin/python");
    let ready = py.exists()
        && Path::new("/usr/bin/chromium").exists()
        && Path::new("/usr/bin/chromedriver").exists()
        && std::process::Command::new(&py)
            .args(["-c", "import selenium"])
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        Some(py)
    } else {
        eprintln!("skipped: needs chromium, chromium-driver (Debian) and selenium in target/grpc-venv (.ci/run installs them)");
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_one_self_contained_document() {
    let (_a, _b, proxy) = http_pair_up().await;
    let (status, body) = send(
        Method::GET,
        &format!("http://{}/dashboard", proxy.admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&body);
    assert!(page.starts_with("<!doctype html>"));
    // No external asset: nothing is loaded from anywhere but this admin API.
    for outside in ["http://", "https://", "src=\"", "href=\""] {
        assert!(!page.contains(outside), "the page refers to {outside}…");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_sees_both_nodes_and_a_drain_clicked_on_the_page() {
    let Some(py) = browser() else { return };
    let (_a, _b, proxy) = http_pair_up().await;
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let text = run_peer(
        tokio::process::Command::new(py)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/dashboard_check.py"))
            .arg(format!("http://{}", proxy.admin))
            .arg("web/a")
            .arg(&shot)
            .arg(format!("127.0.0.1:{}", free_port())),
        std::time::Duration::from_secs(90),
        "the browser",
    )
    .await;
    let lines: Vec<&str> = text.lines().collect();
    for node in ["web/a", "web/b"] {
        let line = format!("node {node} active up 1.0.0");
        assert!(lines.contains(&line.as_str()), "{line} not shown: {text}");
    }
    let changed = lines
        .iter()
        .find(|l| l.starts_with("changed "))
        .expect("the drain showed");
    let secs: f64 = changed.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs < 1.0, "the drain showed after {secs} s");
    // It really was drained, by the page.
    assert_ne!(proxy.node("web", "a").state.admin().as_str(), "active");
    // A node added through the API showed up live.
    assert!(
        lines.iter().any(|l| l.starts_with("added web/c ")),
        "the added node never showed: {text}"
    );
    println!("dashboard: {changed}; screenshot {}", shot.display());
}
