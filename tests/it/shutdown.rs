//! Process lifecycle: graceful shutdown in-process, and the real binary's signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::backends::{read_to_eof, tcp_echo_server, HttpBackend};
use crate::common::*;
use handoff::pool::Health;
use handoff::shutdown::Stage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let url = proxy.url("web", "/slow/700");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    let node = proxy.node("web", "a");
    eventually("the slow request is in flight", || {
        node.state.active_sessions() == 1
    })
    .await;

    let shutdown = proxy.app.shutdown.clone();
    let mut stage = shutdown.stage();
    let run = tokio::spawn(async move { shutdown.run(Duration::from_secs(10)).await });
    stage.wait_for(|p| *p == Stage::Draining).await.unwrap();
    // Accepting stopped: a new connection is refused or closed without an answer.
    if let Ok(mut s) = TcpStream::connect(proxy.addr("web")).await {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (data, _) = read_to_eof(&mut s, Duration::from_secs(2)).await;
        assert!(data.is_empty(), "served after drain began");
    }
    assert_eq!(slow.await.unwrap(), (200, "a 1.0.0".to_string()));
    assert_eq!(run.await.unwrap(), 0, "nothing should have been cut");
    assert_eq!(*stage.borrow(), Stage::Stopped);
}

#[tokio::test]
async fn shutdown_closes_tcp_sessions_with_fin_at_the_grace_deadline() {
    let echo = tcp_echo_server().await;
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\nlisteners:\n  - {{ name: t, listen: \"127.0.0.1:0\", protocol: tcp, pool: p }}\npools:\n  - {{ name: p, nodes: [ {{ name: a, addr: \"{echo}\" }} ], health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, tcp: {{}} }} }}\n"
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("p", "a", Health::Up).await;
    let mut s = TcpStream::connect(proxy.addr("t")).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    let cut = proxy.app.shutdown.run(Duration::from_millis(200)).await;
    assert_eq!(cut, 1);
    // A FIN reads as a clean EOF (an RST would be an error).
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(n.is_ok(), "expected FIN, got {n:?}");
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_drains_on_sigterm() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handoff.yaml");
    std::fs::write(&path, http_config(&[("a", a.addr)], "")).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .args(["--threads", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The admin address (port 0 in the config) is in the start-up log line.
    let stderr = child.stderr.take().unwrap();
    let proc = Running(child);
    let admin = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let admin = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split("admin=")
                    .nth(1)
                    .map(|r| r.split_whitespace().next().unwrap().to_string())
            })
            .expect("start-up line");
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        admin
    })
    .await
    .unwrap();
    let status_nodes = || {
        let admin = admin.clone();
        async move {
            let (_, body) = send(Method::GET, &format!("http://{admin}/v1/status"), None).await;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            v["pools"][0]["nodes"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(status_nodes().await, 1);
    std::fs::write(&path, http_config(&[("a", a.addr), ("b", b.addr)], "")).unwrap();
    signal(&proc.0, "HUP");
    let deadline = tokio::time::Instant::now() + WAIT;
    while status_nodes().await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&proc.0, "TERM");
    let mut proc = proc;
    let code = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = proc.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(started.elapsed() < WAIT, "did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_get_connection_close_when_handoff_drains() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(b"GET /slow/600 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let node = proxy.node("web", "a");
    eventually("the request is in flight", || {
        node.state.active_sessions() == 1
    })
    .await;
    let shutdown = proxy.app.shutdown.clone();
    let run = tokio::spawn(async move { shutdown.run(Duration::from_secs(10)).await });
    let (raw, eof) = read_to_eof(&mut s, WAIT).await;
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(eof, "the connection stayed open after its last response");
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("connection: close"),
        "no Connection: close while draining: {text}"
    );
    assert_eq!(run.await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_goaway_and_their_streams_finish_when_handoff_drains() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    // Prior-knowledge h2c on the plain listener.
    let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/slow/600", proxy.addr("web")))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let slow = tokio::spawn(sender.send_request(req));
    let node = proxy.node("web", "a");
    eventually("the stream is in flight", || {
        node.state.active_sessions() == 1
    })
    .await;
    let shutdown = proxy.app.shutdown.clone();
    let run = tokio::spawn(async move { shutdown.run(Duration::from_secs(10)).await });
    let resp = slow.await.unwrap().expect("the in-flight stream finished");
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, http::Version::HTTP_2)
    );
    // GOAWAY: the connection ends cleanly once its last stream is done.
    let ended = tokio::time::timeout(WAIT, conn)
        .await
        .expect("connection not closed after GOAWAY");
    assert!(
        ended.unwrap().is_ok(),
        "connection ended with an error instead of GOAWAY"
    );
    assert_eq!(run.await.unwrap(), 0);
}
