//! Faults and bad input on the data path: oversized and malformed requests, a backend that
//! black-holes connects, a backend that dies mid-response. Each test bounds its waits.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::backends::{read_to_eof, HttpBackend};
use crate::common::*;
use handoff::pool::Health;

async fn raw(proxy: &Proxy, request: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(request).await.unwrap();
    let (data, _) = read_to_eof(&mut s, WAIT).await;
    String::from_utf8_lossy(&data).into_owned()
}

#[tokio::test]
async fn oversized_headers_get_431_and_malformed_requests_400() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = raw(&proxy, big.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(80)]
    );
    let answer = raw(&proxy, b"GARBAGE / NONSENSE\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(a.hits(), 0, "bad requests reached the backend");
    // The listener is unharmed.
    assert_eq!(get(&client(), &proxy.url("web", "/")).await.0, 200);
}

/// A listener whose accept queue is full and never drained: connects to it hang.
async fn black_hole() -> (SocketAddr, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the queue; keep the listener alive (leaked: it must never accept).
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    std::mem::forget(listener);
    (addr, fillers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_black_holes_connects_costs_a_connect_timeout_then_the_sibling_serves() {
    let (hole, _fillers) = black_hole().await;
    let good = HttpBackend::start("good", "1.0.0").await;
    // Checks say both are up (a connect-only check never runs: 1h interval after the first).
    let yaml = http_config(
        &[("hole", hole), ("good", good.addr)],
        "    timeouts: { connect: 200ms }\n",
    )
    .replace(
        FAST_HEALTH,
        "{ interval: 1h, timeout: 1s, healthy_after: 1, unhealthy_after: 50, tcp: {} }",
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "good", Health::Up).await;
    let hole_node = proxy.node("web", "hole");
    if hole_node.state.health() != Health::Up {
        // The first check may itself have hung: mark it up as a check would have.
        hole_node.state.record_check(
            hole_node.state.address_epoch(),
            true,
            None,
            &proxy.app.snapshot.load().pools[0].config.health,
        );
    }
    let started = tokio::time::Instant::now();
    for _ in 0..6 {
        let (status, body) = get(&client(), &proxy.url("web", "/")).await;
        assert_eq!((status, body.as_str()), (200, "good 1.0.0"));
    }
    // At least one request tried the black hole and waited its connect timeout.
    let failures = metric_value(
        &proxy.metrics().await,
        "handoff_connect_failures_total{node=\"hole\",pool=\"web\"}",
    );
    assert!(failures >= 1.0, "the black hole was never tried");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "connect timeouts were not applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_mid_response_fails_that_response_only() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dying = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                if String::from_utf8_lossy(&buf[..n]).starts_with("GET /die") {
                    // Promise 1000 bytes, send 10, vanish.
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                        .await;
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    let yaml = http_config(&[("d", dying)], "").replace(
        FAST_HEALTH,
        "{ interval: 100ms, timeout: 100ms, healthy_after: 1, tcp: {} }",
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "d", Health::Up).await;
    let bystander = tokio::spawn({
        let url = proxy.url("web", "/fine");
        async move { get(&client(), &url).await }
    });
    let (status, body) = get(&client(), &proxy.url("web", "/die")).await;
    // The client sees its own response cut short (status 200 was already sent)...
    assert!(
        status == 0 || body.len() < 1000,
        "a truncated response looked complete: {status} {}",
        body.len()
    );
    // ...and nobody else notices.
    assert_eq!(bystander.await.unwrap(), (200, "ok".to_string()));
    assert_eq!(
        get(&client(), &proxy.url("web", "/fine")).await,
        (200, "ok".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_the_response_timeout_gets_504_in_time() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(
        &[("a", a.addr)],
        "    timeouts: { response: 400ms }\n",
    ))
    .await;
    proxy.wait_health("web", "a", Health::Up).await;
    let started = tokio::time::Instant::now();
    let answer = raw(
        &proxy,
        b"GET /slow/5000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    // The watchdog looks every quarter of the response timeout: 504 within 1.25 times it
    // (plus scheduling slack), long before the backend's 5 s.
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "504 after {took:?}"
    );
    // The connection is fine for the next request.
    assert_eq!(get(&client(), &proxy.url("web", "/")).await.0, 200);
}

/// The same over HTTP/2, where the connection's watchdog times every stream: the slow
/// stream gets 504 in time, and a stream beside it on the same connection is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_to_a_slow_backend_gets_504_in_time_and_its_sibling_is_served() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(
        &[("a", a.addr)],
        "    timeouts: { response: 400ms }\n",
    ))
    .await;
    proxy.wait_health("web", "a", Health::Up).await;
    let sender = h2_connection(proxy.addr("web")).await;
    let get = |path: &str| h2_get(&sender, proxy.url("web", path));
    let started = tokio::time::Instant::now();
    let (slow, quick) = tokio::join!(get("/slow/5000"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        get("/slow/200").await
    });
    let took = started.elapsed();
    assert_eq!(slow.unwrap(), 504);
    assert_eq!(
        quick.unwrap(),
        200,
        "the sibling stream finished in its own time"
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "504 after {took:?}"
    );
    assert_eq!(get("/").await.unwrap(), 200, "the connection serves on");
}
