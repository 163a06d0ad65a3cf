//! Abusive clients: connections that do nothing make room for real clients at
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

/// A slow upload holds no backend connection: with `request_buffer` (64 KiB by default) the
/// body is read before a node is asked, and one that stops coming gets 408 with nothing
/// sent to the backend. With `request_buffer: 0` the head goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_buffered_before_a_backend_connection_is_taken() {
    let backend = crate::framing::Scripted::start().await;
    let listener = "    timeouts: { response: 1s }\n";
    let proxy = Proxy::start(&http_config(&[("a", backend.addr)], listener)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n";
    // Sent in two parts: the backend gets it in one piece, once whole.
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(head).await.unwrap();
    s.write_all(&[b'a'; 500]).await.unwrap();
    let mut b = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await;
    assert!(early.is_err(), "answered before the body was whole");
    assert_eq!(
        backend.received(),
        "",
        "the backend got a part of the request"
    );
    s.write_all(&[b'b'; 500]).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(&[b'b'; 500]) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(backend.answered(), 1);
    // A body that stops coming: 408, and the backend never heard of it.
    let received = backend.received();
    let mut slow = TcpStream::connect(proxy.addr("web")).await.unwrap();
    slow.write_all(head).await.unwrap();
    slow.write_all(b"0123456789").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut got)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        backend.received(),
        received,
        "the slow upload reached the backend"
    );
    let metrics = proxy.metrics().await;
    let series = "handoff_node_errors_total{cause=\"no_answer\",node=\"a\",pool=\"web\"}";
    assert_eq!(metric_value(&metrics, series), 0.0);

    // Streaming: the head goes as soon as it is read.
    let backend = crate::framing::Scripted::start().await;
    let listener = "    request_buffer: 0\n";
    let proxy = Proxy::start(&http_config(&[("a", backend.addr)], listener)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(head).await.unwrap();
    s.write_all(b"0123456789").await.unwrap();
    eventually("the streamed head reached the backend", || {
        backend.received().contains("POST /echo")
    })
    .await;
}

/// `max_connections_per_client`: one address over its limit is closed at once, counted;
/// another address is served, and a place given back is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_held_to_max_connections_per_client() {
    let (_a, proxy) = proxy_with("    max_connections_per_client: 2\n").await;
    let addr = proxy.addr("web");
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(addr)
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = from("127.0.0.1").await.unwrap();
        assert!(get(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = from("127.0.0.1").await.unwrap();
    assert!(
        closed(&mut third).await,
        "a third connection from one address was kept"
    );
    let mut other = from("127.0.0.2").await.unwrap();
    assert!(get(&mut other).await.starts_with("HTTP/1.1 200"));
    let series = "handoff_listener_connections_per_client_rejected_total{listener=\"web\"}";
    assert_eq!(metric_value(&proxy.metrics().await, series), 1.0);
    drop(held.pop());
    wait_active(&proxy, 2.0).await;
    let mut again = from("127.0.0.1").await.unwrap();
    assert!(get(&mut again).await.starts_with("HTTP/1.1 200"));
}

/// The resident memory of a real handoff process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Clients that ask for a 64 MiB response and never read cost the real process at most
/// 64 KiB each (one 16 KiB window of the response, the request's buffers and state; the
/// rest waits in the backend and the kernel's socket buffers, under backpressure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cost_at_most_64_kib_each() {
    const CLIENTS: usize = 50;
    let backend = crate::framing::Scripted::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("handoff.yaml");
    std::fs::write(
        &config,
        format!(
            "admin: {{ listen: \"127.0.0.1:0\" }}\nlisteners:\n  - {{ name: web, listen: \"127.0.0.1:{port}\", protocol: http, routes: [ {{ pool: web }} ] }}\npools:\n  - {{ name: web, nodes: [ {{ name: a, addr: \"{}\" }} ], health: {{ interval: 100ms, healthy_after: 1, tcp: {{}} }} }}\n",
            backend.addr
        ),
    )
    .unwrap();
    let h = crate::common::process::Handoff::start(&config).await;
    h.wait_up("a").await;
    let pid = h.proc.0.id();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Warm: a served request, so allocations of the first one are not counted.
    let mut warm = TcpStream::connect(addr).await.unwrap();
    warm.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"ok") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, warm.read(&mut chunk))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&chunk[..n]);
    }
    let before = rss_kib(pid);
    let mut stalled = Vec::new();
    for _ in 0..CLIENTS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    eventually("every request reached the backend", || {
        backend.received().matches("GET /huge").count() == CLIENTS
    })
    .await;
    // The responses fill the sockets' buffers, then stop: RSS settles (bounded look).
    let mut last = rss_kib(pid);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kib(pid);
        if now == last {
            break;
        }
        last = now;
    }
    let per = last.saturating_sub(before) / CLIENTS as u64;
    println!("{CLIENTS} stalled readers: RSS {before} -> {last} KiB, {per} KiB each");
    assert!(per <= 64, "{per} KiB per stalled reader");
    drop(stalled);
}
