//! The CLI as a new user runs it: `handoff demo`, then `handoff ctl status`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_both_nodes_and_ctl_shows_them_up() {
    let mut child = Command::new(BIN)
        // One worker: the single-threaded scheduler (what the load benchmark runs).
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = Running(child);
    // The demo prints its addresses once both nodes are up.
    let (proxy, admin, takeover) = tokio::task::spawn_blocking(move || {
        let (mut proxy, mut admin, mut takeover) = (None, None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let field = |prefix: &str| {
                line.trim().strip_prefix(prefix).map(|r| {
                    r.trim()
                        .trim_start_matches("http://")
                        .split('/')
                        .next()
                        .unwrap()
                        .to_string()
                })
            };
            proxy = proxy.or_else(|| field("proxy:"));
            admin = admin.or_else(|| field("admin:"));
            takeover = takeover.or_else(|| {
                let rest = line.split("run -c ").nth(1)?;
                Some(rest.strip_suffix(" --upgrade")?.trim().to_string())
            });
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
        (
            proxy.expect("proxy address printed"),
            admin.expect("admin address printed"),
            takeover.expect("takeover command printed"),
        )
    })
    .await
    .unwrap();

    let client = client();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let (status, body) = get(&client, &format!("http://{proxy}/")).await;
        assert_eq!(status, 200);
        seen.insert(body);
    }
    assert!(
        seen.iter().any(|b| b.contains("node a")) && seen.iter().any(|b| b.contains("node b")),
        "{seen:?}"
    );

    let out = Command::new(BIN)
        .args(["ctl", "--admin", &format!("http://{admin}"), "status"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("web ") && matches!(l.split_whitespace().nth(1), Some("a" | "b")))
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols[3..6], ["active", "up", "1.0.0"], "{row}");
    }
    let out = Command::new(BIN)
        .args([
            "ctl",
            "--admin",
            &format!("http://{admin}"),
            "--json",
            "status",
        ])
        .output()
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("ctl --json prints JSON");
    assert_eq!(json["pools"][0]["nodes"][0]["health"], "up");

    // The demo's rollout runs end to end: its hook "upgrades" each backend.
    let admin_url = format!("http://{admin}");
    let ctl = |args: &[&str]| {
        Command::new(BIN)
            .args(["ctl", "--admin", &admin_url])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctl(&["rollout", "start", "web", "--version", "2.0.0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = ctl(&["--json", "rollout", "status", "web-1"]);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if r["state"] != "running" {
            assert_eq!(r["state"], "succeeded", "{r}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "demo rollout did not finish: {r}"
        );
        let (status, body) = get(&client, &format!("http://{proxy}/")).await;
        assert_eq!(
            status, 200,
            "a request failed during the demo rollout: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, body) = get(&client, &format!("http://{proxy}/")).await;
    assert!(body.contains("version 2.0.0"), "{body}");

    // The printed takeover command: a new process takes the proxy over, the backends stay.
    let new = Command::new(BIN)
        .args(["run", "-c", &takeover, "--upgrade"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _new = Running(new);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = ctl(&["--json", "status"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if s["process"]["generation"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no takeover: {s}");
        let (status, body) = get(&client, &format!("http://{proxy}/")).await;
        assert_eq!(status, 200, "a request failed during the takeover: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = get(&client, &format!("http://{proxy}/")).await;
    assert_eq!(status, 200);
    assert!(body.contains("version 2.0.0"), "{body}");
    let table = String::from_utf8_lossy(&ctl(&["status"]).stdout).to_string();
    assert!(table.contains("generation 2"), "{table}");
    // The demo lives on with its backends, but its generation of the proxy is done once its
    // connections end (this client's idle keep-alive ones: closing them ends them).
    drop(client);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = ctl(&["--json", "status"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if s.get("previous").is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "previous never went: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn ctl_exits_2_when_the_admin_api_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args([
            "ctl",
            "--admin",
            &format!("http://127.0.0.1:{port}"),
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
}
