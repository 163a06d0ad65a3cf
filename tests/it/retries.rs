//! Retries: a crashing backend under GET load, and which requests may be sent twice.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio::io::AsyncReadExt;

use crate::common::backends::HttpBackend;
use crate::common::*;
use handoff::pool::Health;

/// A backend in its own process (Python's standard library), so it can be SIGKILLed like a
/// crashing server: its keep-alive connections die mid-stream.
const PY_BACKEND: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"py 1.0.0"
        self.send_response(200)
        self.send_header("X-Version", "1.0.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_backend_under_get_load_fails_no_request() {
    use std::io::BufRead;
    /// Kills the backend process however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        std::process::Command::new("python3")
            .args(["-c", PY_BACKEND])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed for this test"),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("python backend port");
    let py: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let b = HttpBackend::start("b", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", py), ("b", b.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let load = Load::start(proxy.url("web", "/"), 8, Duration::from_secs(30));
    let series = "handoff_requests_total{class=\"2xx\",node=\"a\",pool=\"web\"}";
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut a_before = 0.0;
    while a_before < 20.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a served only {a_before} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        a_before = metric_value(&proxy.metrics().await, series);
    }
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    proxy.wait_health("web", "a", Health::Down).await;
    let b_now = b.hits();
    eventually("the load continues on b", || b.hits() > b_now + 200).await;
    let (sent, failed) = load.finish().await;
    println!("SIGKILL under load: sent {sent} GETs, {failed} failed (a had served {a_before})");
    assert_eq!(failed, 0);
}

/// A backend that reads a whole request and closes the connection without answering (a
/// crash between request and response); counts the requests it swallowed.
async fn swallowing_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let swallowed = Arc::new(AtomicUsize::new(0));
    let count = swallowed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            count.fetch_add(1, SeqCst);
                            return; // closes without a response
                        }
                    }
                }
            });
        }
    });
    (addr, swallowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_once_and_others_never_after_sending() {
    let (bad, swallowed) = swallowing_backend().await;
    let good = HttpBackend::start("good", "1.0.0").await;
    let yaml = http_config(&[("bad", bad), ("good", good.addr)], "").replace(
        FAST_HEALTH,
        "{ interval: 100ms, timeout: 100ms, healthy_after: 1, tcp: {} }",
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "bad", Health::Up).await;
    proxy.wait_health("web", "good", Health::Up).await;
    let send_body = |method: Method| {
        let url = proxy.url("web", "/echo");
        async move {
            let req = http::Request::builder()
                .method(method)
                .uri(url)
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"payload",
                )))
                .unwrap();
            let resp = client().request(req).await.unwrap();
            let status = resp.status().as_u16();
            use http_body_util::BodyExt;
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        }
    };
    for _ in 0..10 {
        let (status, body) = send_body(Method::PUT).await;
        assert_eq!((status, &body[..]), (200, &b"payload"[..]), "a PUT failed");
    }
    let put_swallowed = swallowed.load(SeqCst);
    assert!(
        put_swallowed >= 1,
        "no PUT went to the failing node first: the retry was not exercised"
    );
    let mut failed_posts = 0;
    for _ in 0..10 {
        let (status, _) = send_body(Method::POST).await;
        if status == 502 {
            failed_posts += 1;
        } else {
            assert_eq!(status, 200);
        }
    }
    // Each POST the failing node swallowed came back as 502: never sent twice.
    assert_eq!(swallowed.load(SeqCst) - put_swallowed, failed_posts);
    let retries = metric_value(
        &proxy.metrics().await,
        "handoff_retries_total{pool=\"web\"}",
    );
    assert!(
        retries >= put_swallowed as f64,
        "retries {retries}, swallowed PUTs {put_swallowed}"
    );
}
