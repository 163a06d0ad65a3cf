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
    assert_eq!(status, 200, "after the takeover: {body}");
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
    let port = free_port();
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

/// Kills a process the test did not start itself (the demo's etcd) when the test ends, even
/// by a panic, so a failed test leaves nothing running.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_cluster_runs_two_instances_that_obey_one_drain() {
    if !std::path::Path::new("/usr/bin/etcd").exists() {
        eprintln!("skipped demo --cluster: /usr/bin/etcd not found (apt-get install etcd-server; .ci/run does)");
        return;
    }
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--cluster",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut demo = Running(child);
    let (etcd_pid, admins) = tokio::task::spawn_blocking(move || {
        let (mut pid, mut admins) = (None, Vec::new());
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("(pid ").nth(1) {
                pid = rest.split(')').next().and_then(|p| p.parse::<u32>().ok());
            }
            let instance_line = line.trim_start().starts_with("lb-");
            if let Some(rest) = line.split("admin http://").nth(1).filter(|_| instance_line) {
                admins.push(rest.split('/').next().unwrap().to_string());
            }
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
        (pid.expect("etcd pid printed"), admins)
    })
    .await
    .unwrap();
    let _etcd = KillOnDrop(etcd_pid);
    assert_eq!(admins.len(), 2, "{admins:?}");
    let ctl = |admin: &str, args: &[&str]| {
        let out = Command::new(BIN)
            .args(["ctl", "--admin", &format!("http://{admin}")])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = ctl(&admins[0], &["drain", "web/a"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = ctl(&admins[1], &["--json", "status"]);
    assert_eq!(code, Some(0), "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &status["pools"][0]["nodes"][0];
    assert_eq!(
        (a["name"].as_str(), a["state"].as_str()),
        (Some("a"), Some("drained")),
        "{a}"
    );
    let (code, out) = ctl(&admins[1], &["cluster"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("lb-1") && out.contains("lb-2") && out.contains("connected"),
        "{out}"
    );

    // Ctrl-C stops the demo, and its etcd with it.
    let pid = demo.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + WAIT;
    while demo.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not stop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let etcd_gone = || {
        !std::path::Path::new(&format!("/proc/{etcd_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{etcd_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    };
    eventually("the demo's etcd stopped", etcd_gone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_replace_rollout_starts_new_backend_processes_and_nothing_fails() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut demo = Running(child);
    let (proxy, admin) = tokio::task::spawn_blocking(move || {
        let (mut proxy, mut admin) = (None, None);
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
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
        (proxy.expect("proxy printed"), admin.expect("admin printed"))
    })
    .await
    .unwrap();
    let load = Load::start(
        format!("http://{proxy}/api/"),
        2,
        std::time::Duration::from_secs(60),
    );
    let ctl = |args: &[&str]| {
        Command::new(BIN)
            .args(["ctl", "--admin", &format!("http://{admin}")])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctl(&["rollout", "start", "api", "--version", "2.0.0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let done = loop {
        let out = ctl(&["--json", "rollout", "status", "api-1"]);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if r["state"] != "running" {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "still running: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let (sent, failed) = load.finish().await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(failed, 0, "of {sent}");
    let (_, body) = get(&client(), &format!("http://{proxy}/api/")).await;
    assert!(body.contains("version 2.0.0"), "{body}");
    let out = ctl(&["--json", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = status["pools"][1]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c-2.0.0", "d-2.0.0"], "{status}");
    // Ctrl-C stops the demo, and the backends its hook started.
    let pid = demo.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while demo.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not stop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
