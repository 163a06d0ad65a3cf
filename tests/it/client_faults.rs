//! What the client got wrong is answered by handoff itself and charged to no node: a body
//! that stops coming gets 408 (not a 504 against the node), `Connection: host` cannot take
//! Host away, and a flood of malformed requests leaves every node up and uncharged, counted
//! in `handoff_client_errors_total` by reason.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::backends::HttpBackend;
use crate::common::*;
use handoff::pool::Health;

async fn pair_with(extra_listener: &str, health: &str) -> (HttpBackend, HttpBackend, Proxy) {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let yaml =
        http_config(&[("a", a.addr), ("b", b.addr)], extra_listener).replace(FAST_HEALTH, health);
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    (a, b, proxy)
}

/// Sends `raw` on a new connection and returns what came back until the server closed (or
/// `limit` passed).
async fn exchange(proxy: &Proxy, raw: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn no_node_charged(metrics: &str) {
    for node in ["a", "b"] {
        for cause in ["5xx", "connect", "no_answer"] {
            let series = format!(
                "handoff_node_errors_total{{cause=\"{cause}\",node=\"{node}\",pool=\"web\"}}"
            );
            assert_eq!(metric_value(metrics, &series), 0.0, "{series}");
        }
        let series =
            format!("handoff_requests_total{{class=\"5xx\",node=\"{node}\",pool=\"web\"}}");
        assert_eq!(metric_value(metrics, &series), 0.0, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_coming_gets_408_and_charges_no_node() {
    let (_a, _b, proxy) = pair_with("    timeouts: { response: 1s }\n", FAST_HEALTH).await;
    let started = tokio::time::Instant::now();
    let got = exchange(
        &proxy,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\nabc",
        Duration::from_secs(5),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let metrics = proxy.metrics().await;
    no_node_charged(&metrics);
    assert_eq!(
        metric_value(
            &metrics,
            "handoff_client_errors_total{listener=\"web\",reason=\"body_timeout\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_host_cannot_take_host_away() {
    let (_a, _b, proxy) = pair_with("", FAST_HEALTH).await;
    let got = exchange(
        &proxy,
        b"GET /headers HTTP/1.1\r\nHost: app.test\r\nConnection: host, close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("\"host\":\"app.test\""), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_requests_leaves_every_node_up_and_uncharged() {
    let passive = FAST_HEALTH.replace(
        "unhealthy_after: 2,",
        "unhealthy_after: 2, passive: { consecutive_5xx: 3 },",
    );
    let (a, b, proxy) = pair_with("", &passive).await;
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(70_000)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n".to_vec(), "bad_body"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n".to_vec(), "bad_body"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), "bad_request"),
        (b"GET / HTTP/1.1\nHost: x\n\n".to_vec(), "bad_request"),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".to_vec(), "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), "bad_request"),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), "not_implemented"),
        (huge.into_bytes(), "head_too_large"),
    ];
    for round in 0..25 {
        for (raw, reason) in &cases {
            let got = exchange(&proxy, raw, Duration::from_secs(5)).await;
            let status: u16 = got.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            assert!(
                (400..500).contains(&status) || status == 501,
                "round {round}, {reason}: {got:?}"
            );
        }
    }
    let metrics = proxy.metrics().await;
    no_node_charged(&metrics);
    for node in ["a", "b"] {
        assert_eq!(proxy.node("web", node).state.health(), Health::Up, "{node}");
    }
    for reason in [
        "bad_body",
        "bad_request",
        "not_implemented",
        "head_too_large",
    ] {
        let n = metric_value(
            &metrics,
            &format!("handoff_client_errors_total{{listener=\"web\",reason=\"{reason}\"}}"),
        );
        assert!(n >= 25.0, "{reason}: {n}");
    }
    // Nothing refused before the body reached a backend: only the chunked bodies that were
    // being streamed got there, and those connections were dropped, not reused.
    println!(
        "backend hits during the flood: a {} b {}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_reach_the_backend_on_every_method_and_absolute_form_sets_host() {
    let (_a, _b, proxy) = pair_with("", FAST_HEALTH).await;
    for method in ["GET", "HEAD", "DELETE", "OPTIONS", "POST"] {
        // By length, then chunked: the backend echoes the body it got.
        let by_length = format!("{method} /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
        let got = exchange(&proxy, by_length.as_bytes(), Duration::from_secs(5)).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{method}: {got}");
        if method != "HEAD" {
            assert!(got.ends_with("hello"), "{method} by length: {got}");
        }
        let chunked = format!("{method} /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
        let got = exchange(&proxy, chunked.as_bytes(), Duration::from_secs(5)).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{method} chunked: {got}");
        if method != "HEAD" {
            assert!(got.ends_with("hello world"), "{method} chunked: {got}");
        }
    }
    // Absolute form: the URI's authority is the Host the backend sees (RFC 9112 §3.2.2).
    let got = exchange(
        &proxy,
        b"GET http://app.test/headers HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("\"host\":\"app.test\""), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_byte_is_closed_within_the_header_timeout() {
    let (_a, _b, proxy) = pair_with("    timeouts: { header_read: 1s }\n", FAST_HEALTH).await;
    let mut silent = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent connection was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    // The watchdog looks every quarter of header_read: closed between 1 and 1.25 s.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // A keep-alive connection between requests keeps the (longer) idle timeout.
    let mut kept = TcpStream::connect(proxy.addr("web")).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).ends_with("1.0.0") {
        let n = tokio::time::timeout(WAIT, kept.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    let still = tokio::time::timeout(Duration::from_millis(1600), kept.read(&mut buf)).await;
    assert!(
        still.is_err(),
        "the idle keep-alive connection was closed early: {still:?}"
    );
}
