//! Abusive clients (issue 18): connections that do nothing make room for real clients at
//! `max_connections`, oldest first, counted by reason.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::backends::HttpBackend;
use crate::common::*;
use handoff::pool::Health;

async fn proxy_with(listener: &str) -> (HttpBackend, Proxy) {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], listener)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    (a, proxy)
}

fn active(metrics: &str) -> f64 {
    metric_value(
        metrics,
        "handoff_listener_connections_active{listener=\"web\"}",
    )
}

fn reclaimed(metrics: &str, reason: &str) -> f64 {
    metric_value(
        metrics,
        &format!(
            "handoff_listener_connections_reclaimed_total{{listener=\"web\",reason=\"{reason}\"}}"
        ),
    )
}

/// One request on `s`, answered in full (the backend's answer ends with its version).
async fn get(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with("1.0.0") {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("answered in time")
            .expect("read");
        assert!(n > 0, "closed before answering: {got:?}");
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether handoff closed `s` (EOF or reset within a second).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn wait_active(proxy: &Proxy, n: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = active(&proxy.metrics().await);
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "active {now}, waited for {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_silent_connections_make_room_oldest_first() {
    let (_a, proxy) = proxy_with("    max_connections: 50\n").await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(proxy.addr("web")).await.unwrap());
        // One at a time, so their order is the order handoff accepted them in.
        wait_active(&proxy, silent.len() as f64).await;
    }
    // A real client is served, and the oldest silent connection paid for it.
    let mut real = TcpStream::connect(proxy.addr("web")).await.unwrap();
    assert!(get(&mut real).await.starts_with("HTTP/1.1 200"));
    assert!(
        closed(&mut silent[0]).await,
        "the oldest silent one is still open"
    );
    assert!(
        !closed(&mut silent[49]).await,
        "the newest silent one was closed"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(reclaimed(&metrics, "silent"), 1.0);
    assert_eq!(
        metric_value(
            &metrics,
            "handoff_listener_connections_rejected_total{listener=\"web\"}"
        ),
        0.0
    );
    // Every connection busy with a request: the next is refused, as before.
    assert_eq!(active(&metrics), 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_idle_keep_alive_connections_make_room_and_busy_ones_never() {
    let (a, proxy) = proxy_with("    max_connections: 10\n").await;
    let mut kept = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
        get(&mut s).await;
        kept.push(s);
    }
    // The first one has a request at the backend: busy, never reclaimed.
    let hits = a.hits();
    kept[0]
        .write_all(b"GET /slow/1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("the slow request reached the backend", || a.hits() > hits).await;
    let mut real = TcpStream::connect(proxy.addr("web")).await.unwrap();
    assert!(get(&mut real).await.starts_with("HTTP/1.1 200"));
    assert!(
        closed(&mut kept[1]).await,
        "the longest idle one is still open"
    );
    let mut answer = [0u8; 12];
    tokio::time::timeout(WAIT, kept[0].read_exact(&mut answer))
        .await
        .expect("answered")
        .expect("the busy connection was kept");
    assert_eq!(&answer, b"HTTP/1.1 200");
    assert_eq!(reclaimed(&proxy.metrics().await, "idle"), 1.0);
}

/// A client that stops reading is closed within `timeouts.send` (1.25 times it at most,
/// once its socket buffers are full), and the backend connection of its response goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_at_the_send_timeout_and_its_backend_released() {
    let backend = crate::framing::Scripted::start().await;
    let yaml = http_config(&[("a", backend.addr)], "    timeouts: { send: 1s }\n");
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(proxy.addr("web")).await.unwrap();
    s.write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let series = "handoff_send_timeouts_total{listener=\"web\"}";
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric_value(&proxy.metrics().await, series) < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("the backend's connection was released", || {
        backend.cut() == 1
    })
    .await;
    let metrics = proxy.metrics().await;
    let charged = "handoff_node_errors_total{cause=\"no_answer\",node=\"a\",pool=\"web\"}";
    assert_eq!(metric_value(&metrics, charged), 0.0, "the node was charged");
    drop(s);
}
