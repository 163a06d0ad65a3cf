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
        other => panic!("status: {other:?}\n{:#?}", h.log()),
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

/// Backends a and b, both reporting version 1.0.0.
async fn pair() -> (HttpBackend, HttpBackend) {
    (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    )
}

async fn started(dir: &Path, yaml: &str) -> Handoff {
    let path = dir.join("handoff.yaml");
    std::fs::write(&path, yaml).unwrap();
    let h = Handoff::start(&path).await;
    h.wait_up("a").await;
    h.wait_up("b").await;
    h
}

fn listener_addr(status: &Value) -> std::net::SocketAddr {
    status["listeners"][0]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Clients that open a new connection for every request (`Connection: close`), counting
/// requests and failures (anything but a complete 200 answer).
struct FreshConnections {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(usize, usize)>>,
}

impl FreshConnections {
    fn start(addr: std::net::SocketAddr, clients: usize) -> FreshConnections {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                tokio::spawn(async move {
                    let (mut sent, mut failed) = (0, 0);
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                    while !stop.load(std::sync::atomic::Ordering::SeqCst)
                        && tokio::time::Instant::now() < deadline
                    {
                        sent += 1;
                        let answer = async {
                            let mut s = tokio::net::TcpStream::connect(addr).await?;
                            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                                .await?;
                            let mut buf = Vec::new();
                            s.read_to_end(&mut buf).await?;
                            Ok::<_, std::io::Error>(buf)
                        };
                        match tokio::time::timeout(WAIT, answer).await {
                            Ok(Ok(buf)) if buf.starts_with(b"HTTP/1.1 200") => {}
                            other => {
                                failed += 1;
                                eprintln!("fresh connection failed: {other:?}");
                            }
                        }
                    }
                    (sent, failed)
                })
            })
            .collect();
        FreshConnections { stop, tasks }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (mut sent, mut failed) = (0, 0);
        for t in self.tasks {
            let (s, f) = t.await.unwrap();
            sent += s;
            failed += f;
        }
        (sent, failed)
    }
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

mod access_log;
mod failures;
mod load;
mod sessions;
mod signal;
