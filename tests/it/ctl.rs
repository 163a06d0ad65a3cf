//! `handoff ctl` against a running instance: verbs, human output, exit codes.

use std::process::Command;
use std::time::Duration;

use crate::common::backends::{dead_addr, HttpBackend};
use crate::common::*;
use handoff::pool::Health;

async fn ctl(proxy: &Proxy, args: &[&str]) -> (i32, String, String) {
    let admin = format!("http://{}", proxy.admin);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .arg("ctl")
            .arg("--admin")
            .arg(&admin)
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_enable_and_exit_codes() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let dead = dead_addr().await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr), ("b", dead)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Down).await;
    let (code, _, err) = ctl(&proxy, &["drain", "web/a"]).await;
    assert_eq!(code, 3, "pair guard refusal exits 3: {err}");
    assert!(err.contains("pair guard"), "{err}");
    let (code, out, _) = ctl(&proxy, &["drain", "web/a", "--force"]).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("web/a: draining") || out.starts_with("web/a: drained"),
        "{out}"
    );
    let (code, out, _) = ctl(
        &proxy,
        &["wait", "web/a", "--state", "drained", "--timeout", "5s"],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "web/a is drained\n"));
    let (code, out, _) = ctl(
        &proxy,
        &["wait", "web/b", "--state", "up", "--timeout", "200ms"],
    )
    .await;
    assert_eq!(code, 4, "a timed-out wait exits 4: {out}");
    let (code, _, _) = ctl(&proxy, &["enable", "web/a", "--warmup", "100ms"]).await;
    assert_eq!(code, 0);
    let (code, _, _) = ctl(
        &proxy,
        &["wait", "web/a", "--state", "active", "--timeout", "5s"],
    )
    .await;
    assert_eq!(code, 0);
    let (code, _, err) = ctl(&proxy, &["drain", "web"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("POOL/NODE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_start_then_status_shows_the_timeline() {
    let mut a = HttpBackend::start("a", "1.0.0").await;
    let mut b = HttpBackend::start("b", "1.0.0").await;
    let yaml = http_config(&[("a", a.addr), ("b", b.addr)], "")
        .replace("    health:", "    warmup: 100ms\n    health:");
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let (code, out, err) = ctl(
        &proxy,
        &[
            "rollout",
            "start",
            "web",
            "--version",
            "2.0.0",
            "--order",
            "a,b",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("rollout web-1 started: pool web to version 2.0.0 (order a, b)"),
        "{out}"
    );
    for backend in [&mut a, &mut b] {
        let (code, _, _) = ctl(
            &proxy,
            &[
                "wait",
                &format!("web/{}", backend.name),
                "--state",
                "drained",
                "--timeout",
                "20s",
            ],
        )
        .await;
        assert_eq!(code, 0);
        backend.restart("2.0.0").await;
    }
    proxy.rollout_end("web-1", Duration::from_secs(30)).await;
    let (code, out, _) = ctl(&proxy, &["rollout", "status", "web-1"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("rollout web-1: pool web to version 2.0.0: succeeded"),
        "{out}"
    );
    for phase in [
        "a: guard",
        "a: draining",
        "a: waiting_upgrade",
        "a: waiting_ready",
        "a: warming",
        "b: done",
    ] {
        assert!(out.contains(phase), "timeline lacks {phase:?}:\n{out}");
    }
    let (code, out, _) = ctl(&proxy, &["rollout", "status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("web-1") && out.contains("succeeded"), "{out}");
    let (code, out, _) = ctl(&proxy, &["--json", "rollout", "status", "web-1"]).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollout_makes_status_exit_5() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let yaml = http_config(&[("a", a.addr), ("b", b.addr)], "").replace(
        "    health:",
        "    rollout: { hook: { exec: [\"/bin/false\"] } }\n    health:",
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let (code, _, _) = ctl(&proxy, &["rollout", "start", "web", "--version", "2.0.0"]).await;
    assert_eq!(code, 0);
    proxy.rollout_end("web-1", Duration::from_secs(20)).await;
    let (code, out, _) = ctl(&proxy, &["rollout", "status", "web-1"]).await;
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("failed"), "{out}");
    let (code, _, _) = ctl(&proxy, &["rollout", "start", "nope", "--version", "2"]).await;
    assert_eq!(code, 1);
}
