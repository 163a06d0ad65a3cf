//! gRPC end to end through an h2c pool, with Python's grpcio as client and servers
//! (`tests/peers/grpc_peer.py`, generic handlers, no generated code): unary and streaming
//! calls byte-exact, a bidirectional stream across a drain of the other node, and a stream
//! still open at its node's drain deadline ended with `grpc-status: 14`.
//!
//! `.ci/run` makes the venv (`target/grpc-venv`, grpcio from PyPI); without it these tests
//! say they were skipped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::common::*;
use handoff::pool::Health;

/// The venv's python with grpcio, or `None` (the test is then skipped, and says so).
fn python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/grpc-venv/bin/python");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: no grpcio venv at {} (.ci/run makes it: python3 -m venv target/grpc-venv && target/grpc-venv/bin/pip install grpcio)", p.display());
        None
    }
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/grpc_peer.py")
}

/// A grpcio server named `name` on a free port (killed on drop).
struct Server {
    _proc: Running,
    port: u16,
}

impl Server {
    async fn start(py: &PathBuf, name: &str) -> Server {
        let mut child = Command::new(py)
            .arg(peer_script())
            .args(["serve", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the grpc server");
        let stdout = child.stdout.take().unwrap();
        let proc = Running(child);
        let line = tokio::time::timeout(
            WAIT,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).unwrap();
                line
            }),
        )
        .await
        .expect("grpc server started in time")
        .unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected server output {line:?}"));
        Server { _proc: proc, port }
    }
}

/// Runs a client to its end and returns its output lines.
async fn run_client(py: &PathBuf, args: &[&str]) -> Vec<String> {
    let text = run_peer(
        tokio::process::Command::new(py)
            .arg(peer_script())
            .args(args),
        Duration::from_secs(60),
        "the grpc client",
    )
    .await;
    text.lines().map(str::to_string).collect()
}

/// A client whose lines arrive as it prints them.
fn stream_client(
    py: &PathBuf,
    args: &[&str],
) -> (Running, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut child = Command::new(py)
        .arg(peer_script())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the grpc client");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Running(child), rx)
}

async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a line in time")
        .expect("the client is still running")
}

async fn grpc_pair(py: &PathBuf, drain: &str) -> (Server, Server, Proxy) {
    let a = Server::start(py, "a").await;
    let b = Server::start(py, "b").await;
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    routes: [ {{ pool: grpc }} ]
pools:
  - name: grpc
    upstream: {{ protocol: h2c }}
    nodes: [ {{ name: a, addr: "127.0.0.1:{}" }}, {{ name: b, addr: "127.0.0.1:{}" }} ]
    health: {{ interval: 100ms, tcp: {{}} }}
    drain: {drain}
"#,
        a.port, b.port
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("grpc", "a", Health::Up).await;
    proxy.wait_health("grpc", "b", Health::Up).await;
    (a, b, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming_calls_are_answered_byte_exact_by_both_nodes() {
    let Some(py) = python() else { return };
    let (_a, _b, proxy) = grpc_pair(&py, "{ timeout: 5s }").await;
    let target = proxy.addr("web").to_string();
    let mut nodes = std::collections::HashSet::new();
    for i in 0..16u8 {
        // Payloads of every byte value, past the 64 KiB flow-control window.
        let size = (70_000 + usize::from(i)).to_string();
        let lines = run_client(&py, &["unary", &target, &size, &i.to_string()]).await;
        let parts: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(parts[0], "ok", "{lines:?}");
        assert_eq!(parts[2], parts[3], "call {i} not byte-exact");
        nodes.insert(parts[1].to_string());
    }
    assert_eq!(nodes.len(), 2, "both nodes answer: {nodes:?}");
    let payload = "00ff10ef".repeat(256);
    let lines = run_client(&py, &["stream", &target, "50", &payload]).await;
    assert_eq!(lines.len(), 51, "{lines:?}");
    for (i, line) in lines[..50].iter().enumerate() {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts[0], "msg");
        assert_eq!(parts[2], i.to_string());
        let expected: String = format!("{i:04} ")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            + &payload;
        assert_eq!(parts[3], expected, "message {i}");
    }
    assert_eq!(lines[50], "end OK -");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_runs_across_a_drain_of_the_other_node() {
    let Some(py) = python() else { return };
    let (_a, _b, proxy) = grpc_pair(&py, "{ timeout: 5s }").await;
    let target = proxy.addr("web").to_string();
    let (_client, mut lines) = stream_client(&py, &["bidi", &target, "40", "50"]);
    let first = next_line(&mut lines).await;
    let node = first.split(' ').nth(1).unwrap().to_string();
    let other = if node == "a" { "b" } else { "a" };
    let (status, body) = proxy
        .admin_json(
            Method::POST,
            &format!("/v1/pools/grpc/nodes/{other}/drain"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    proxy.wait_drained("grpc", other).await;
    let mut got = vec![first];
    loop {
        let line = next_line(&mut lines).await;
        if line.starts_with("end") {
            assert_eq!(line, "end OK -", "{got:?}");
            break;
        }
        got.push(line);
    }
    assert_eq!(got.len(), 40, "{got:?}");
    for (i, line) in got.iter().enumerate() {
        let expected = format!("msg {node} {i} ");
        assert!(line.starts_with(&expected), "{line} (expected {expected}…)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_at_the_drain_deadline_ends_with_unavailable_and_is_counted() {
    let Some(py) = python() else { return };
    let (_a, _b, proxy) = grpc_pair(&py, "{ timeout: 500ms, close_spread: 0s }").await;
    let target = proxy.addr("web").to_string();
    let (_client, mut lines) = stream_client(&py, &["forever", &target]);
    let first = next_line(&mut lines).await;
    let node = first.split(' ').nth(1).unwrap().to_string();
    let (status, body) = proxy
        .admin_json(
            Method::POST,
            &format!("/v1/pools/grpc/nodes/{node}/drain"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let end = loop {
        let line = next_line(&mut lines).await;
        if line.starts_with("end") {
            break line;
        }
    };
    assert!(
        end.starts_with(&format!("end UNAVAILABLE node grpc/{node} is draining")),
        "{end}"
    );
    proxy.wait_drained("grpc", &node).await;
    let metrics = proxy.metrics().await;
    let closes: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("handoff_drain_deadline_closes_total"))
        .collect();
    assert_eq!(
        metric_value(
            &metrics,
            &format!("handoff_drain_deadline_closes_total{{kind=\"http_inflight\",node=\"{node}\",pool=\"grpc\"}}")
        ),
        1.0,
        "{closes:?}"
    );
}
