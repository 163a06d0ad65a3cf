//! What packagers and operators wire up: JSON logs, shell completions, the man page, and
//! the systemd unit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

#[test]
fn completions_and_the_man_page_are_generated() {
    for (shell, marker) in [
        ("bash", "_handoff()"),
        ("zsh", "#compdef handoff"),
        ("fish", "complete -c handoff"),
    ] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(marker),
            "{shell}: {}",
            &text[..text.len().min(200)]
        );
        // Every subcommand is completed, ctl's verbs included.
        assert!(
            text.contains("rollout") && text.contains("watch"),
            "{shell}"
        );
    }
    let out = Command::new(BIN).arg("man").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.contains(".TH handoff 1") && man.contains("ctl"),
        "{man}"
    );
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handoff.yaml");
    std::fs::write(
        &config,
        "admin: { listen: \"127.0.0.1:0\" }\nlisteners:\n  - { name: web, listen: \"127.0.0.1:0\", protocol: http, routes: [ { pool: p } ] }\npools:\n  - { name: p, nodes: [ { name: a, addr: \"127.0.0.1:1\" } ] }\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _run = Running(child);
    let lines = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let done = line.contains("admin API listening");
                lines.push(line);
                if done {
                    break;
                }
            }
            lines
        }),
    )
    .await
    .expect("handoff logged its start in time")
    .unwrap();
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "message", "target"] {
            assert!(v.get(key).is_some(), "{key} missing: {line}");
        }
    }
    let admin: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(
        admin["admin"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{admin}"
    );
}

/// The unit in docs/systemd passes `systemd-analyze verify` (with this build's binary in the
/// place of /usr/local/bin/handoff).
#[test]
fn the_systemd_unit_verifies() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze not found");
        return;
    };
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/systemd/handoff.service"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handoff.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/handoff", BIN)).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(cmd: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(cmd))
        .find(|p| p.exists())
        .ok_or(())
}

/// `run` speaks systemd's notify protocol when `NOTIFY_SOCKET` is set: MAINPID and READY=1
/// once it serves, RELOADING=1 then READY=1 around a SIGHUP reload, STOPPING=1 at SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tells_systemd_when_it_is_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&socket).unwrap();
    let config = dir.path().join("handoff.yaml");
    std::fs::write(
        &config,
        "admin: { listen: \"127.0.0.1:0\" }\nlisteners:\n  - { name: web, listen: \"127.0.0.1:0\", protocol: http, routes: [ { pool: p } ] }\npools:\n  - { name: p, nodes: [ { name: a, addr: \"127.0.0.1:1\" } ] }\n",
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut run = Running(child);
    let next = || {
        let notify = &notify;
        async move {
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(WAIT, notify.recv(&mut buf))
                .await
                .expect("a notification in time")
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        }
    };
    let ready = next().await;
    assert!(
        ready.contains("READY=1") && ready.contains(&format!("MAINPID={pid}")),
        "{ready}"
    );
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
    };
    signal("-HUP");
    assert!(next().await.contains("RELOADING=1"));
    assert!(next().await.contains("READY=1"));
    signal("-TERM");
    assert!(next().await.contains("STOPPING=1"));
    let status = tokio::task::spawn_blocking(move || run.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Connections refused at `max_connections` are logged, at most one line a second, besides
/// the metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_max_connections_are_logged_once_a_second() {
    use crate::common::process::Handoff;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handoff.yaml");
    let port = free_port();
    std::fs::write(
        &config,
        format!("admin: {{ listen: \"127.0.0.1:0\" }}\nlisteners:\n  - {{ name: web, listen: \"127.0.0.1:{port}\", protocol: http, max_connections: 2, routes: [ {{ pool: p }} ] }}\npools:\n  - {{ name: p, nodes: [ {{ name: a, addr: \"127.0.0.1:1\" }} ] }}\n"),
    )
    .unwrap();
    let h = Handoff::start(&config).await;
    let mut held: Vec<tokio::net::TcpStream> = futures_util::future::join_all(
        (0..2).map(|_| tokio::net::TcpStream::connect(("127.0.0.1", port))),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    // Busy with a head arriving: silent ones would make room for the flood (see abuse.rs).
    for s in &mut held {
        use tokio::io::AsyncWriteExt;
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    }
    // Both held connections are counted before the flood starts.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, m) = send(http::Method::GET, &h.url("/metrics"), None).await;
        let m = String::from_utf8_lossy(&m).to_string();
        if metric_value(&m, "handoff_listener_connections_active{listener=\"web\"}") == 2.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..50 {
        let _ = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let lines = loop {
        let lines: Vec<String> = h
            .log()
            .into_iter()
            .filter(|l| l.contains("connections refused at max_connections"))
            .collect();
        if !lines.is_empty() {
            break lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal logged: {:#?}",
            h.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // 50 refusals in well under a few seconds: a line or two, not fifty.
    assert!(lines.len() <= 3, "{lines:#?}");
    drop(held);
}
