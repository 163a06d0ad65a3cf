//! The admin API's OpenAPI document (`GET /v1/openapi.json`, docs/openapi.json): it
//! describes every route, and schemathesis (PyPI, in the venv `.ci/run` makes) finds no
//! answer that breaks it — no 5xx, every status and body as documented, 405 with `Allow`.

use std::path::PathBuf;

use http::Method;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_and_covers_every_route() {
    let (_a, _b, proxy) = http_pair_up().await;
    let (status, doc) = proxy.admin(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/v1/status", "get"),
        ("/v1/cluster", "get"),
        ("/v1/events", "get"),
        ("/v1/openapi.json", "get"),
        ("/v1/pools/{pool}", "get"),
        ("/v1/pools/{pool}/nodes", "post"),
        ("/v1/pools/{pool}/nodes/{node}", "get"),
        ("/v1/pools/{pool}/nodes/{node}", "patch"),
        ("/v1/pools/{pool}/nodes/{node}", "delete"),
        ("/v1/pools/{pool}/nodes/{node}/drain", "post"),
        ("/v1/pools/{pool}/nodes/{node}/enable", "post"),
        ("/v1/pools/{pool}/nodes/{node}/wait", "get"),
        ("/v1/pools/{pool}/rollouts", "post"),
        ("/v1/rollouts", "get"),
        ("/v1/rollouts/{id}", "get"),
        ("/v1/rollouts/{id}/abort", "post"),
        ("/v1/reload", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not described"
        );
    }
    // A wrong method: 405, with the one it takes.
    let (status, body) = proxy
        .admin(Method::DELETE, "/v1/pools/web/nodes/a/drain", None)
        .await;
    assert_eq!(status, 405, "{body}");
}

fn schemathesis() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/grpc-venv/bin/schemathesis");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: schemathesis not installed at {} (.ci/run installs it)",
            p.display()
        );
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_that_breaks_the_document() {
    let Some(st) = schemathesis() else { return };
    let (_a, _b, proxy) = http_pair_up().await;
    let base = format!("http://{}", proxy.admin);
    // Its cache goes in a directory of its own, not in the checkout.
    let scratch = tempfile::tempdir().unwrap();
    let text = run_peer(
        tokio::process::Command::new(st)
            .arg("run")
            .arg(format!("{base}/v1/openapi.json"))
            .args(["--url", &base])
            // Every check; the long poll is left out (a generated timeout can hold it for an
            // hour: it has tests of its own). The event stream never ends by itself: each
            // request reads it for 2 s, and every event read is checked against the document.
            .args(["--checks", "all"])
            .args(["--exclude-path", "/v1/pools/{pool}/nodes/{node}/wait"])
            .args(["--request-timeout", "2"])
            .args(["--max-examples", "25", "--no-color"])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .current_dir(scratch.path()),
        std::time::Duration::from_secs(240),
        "schemathesis",
    )
    .await;
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("passed") || l.contains("generated"))
        .collect();
    println!("schemathesis: {summary:?}");
    // The run really tested the API.
    assert!(text.contains("passed"), "{text}");
}
