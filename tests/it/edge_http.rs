//! Edge HTTP semantics, case by case, against a strict origin that records every byte it
//! receives: what the client got wrong is answered by handoff itself (400, 408, 501), the
//! connection is closed when the framing is broken, a refused request never reaches the
//! backend, a body found bad while streaming costs the backend its connection (never a
//! whole request), and no node is charged. What is valid (bodies on every method, Host
//! from `:authority`) reaches the backend intact.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::framing::{proxy_with_script, Scripted};

const CHUNKED_POST: &str = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

/// What came back for `raw` sent on a new connection, and whether handoff closed it (read
/// until it did, or until it stayed quiet for a second).
async fn ask(proxy: &Proxy, raw: &[u8]) -> (String, bool) {
    ask_quiet(proxy, raw, Duration::from_secs(1)).await
}

/// [`ask`], waiting up to `quiet` for each read.
async fn ask_quiet(proxy: &Proxy, raw: &[u8], quiet: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    let closed = loop {
        match tokio::time::timeout(quiet, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn status(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Nothing was charged to node `a` of pool `web`.
fn uncharged(metrics: &str) {
    for cause in ["5xx", "connect", "no_answer"] {
        let series =
            format!("handoff_node_errors_total{{cause=\"{cause}\",node=\"a\",pool=\"web\"}}");
        assert_eq!(metric_value(metrics, &series), 0.0, "{series}");
    }
    let series = "handoff_requests_total{class=\"5xx\",node=\"a\",pool=\"web\"}";
    assert_eq!(metric_value(metrics, series), 0.0, "{series}");
}

fn client_errors(metrics: &str, reason: &str) -> f64 {
    metric_value(
        metrics,
        &format!("handoff_client_errors_total{{listener=\"web\",reason=\"{reason}\"}}"),
    )
}

/// Case 1: invalid chunked bodies. 400 and a closed connection; the backend never gets a
/// whole request nor any of the bad bytes, and a connection it got a head on is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunked_bodies_get_400_and_never_reach_the_backend_whole() {
    let (backend, proxy) = proxy_with_script().await;
    let bodies: &[&[u8]] = &[
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"-1\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"10000000000000005\r\nhello\r\n0\r\n\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"5\0\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for body in bodies {
        let mut raw = CHUNKED_POST.as_bytes().to_vec();
        raw.extend_from_slice(body);
        let (answer, closed) = ask(&proxy, &raw).await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(status(&answer), 400, "{shown:?}: {answer}");
        assert!(closed, "{shown:?}: the connection stayed open");
    }
    // A bare LF ending the head's last field: refused before anything is sent.
    let (answer, closed) =
        ask(&proxy, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    assert_eq!(status(&answer), 400, "{answer}");
    assert!(closed);

    let received = backend.received();
    assert_eq!(
        backend.answered(),
        0,
        "a whole request got through: {received:?}"
    );
    for bad in [
        "0x5",
        "-1",
        "+5",
        "10000000000000005",
        "5 x",
        "XX",
        "smuggled",
        "0\r\n\r\n",
    ] {
        assert!(
            !received.contains(bad),
            "{bad:?} reached the backend: {received:?}"
        );
    }
    // Each head that went ahead of its body cost the backend that connection, not a request.
    let heads = received.matches("POST /echo").count();
    eventually("the backend's connections were dropped", || {
        backend.cut() == heads
    })
    .await;
    let metrics = proxy.metrics().await;
    uncharged(&metrics);
    assert_eq!(client_errors(&metrics, "bad_body"), bodies.len() as f64);
    assert_eq!(client_errors(&metrics, "bad_request"), 1.0);
}

/// Case 2: a body that stops coming is the client's fault: 408, and the backend's
/// connection is dropped without a whole request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_the_backend_never_answers_it() {
    let backend = Scripted::start().await;
    let listener = "    timeouts: { response: 1s }\n";
    let proxy = Proxy::start(&http_config(&[("a", backend.addr)], listener)).await;
    proxy
        .wait_health("web", "a", handoff::pool::Health::Up)
        .await;
    let (answer, closed) = ask_quiet(
        &proxy,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\nabc",
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(status(&answer), 408, "{answer}");
    assert!(closed);
    assert_eq!(backend.answered(), 0);
    if !backend.received().is_empty() {
        eventually("the backend's connection was dropped", || {
            backend.cut() == 1
        })
        .await;
    }
    let metrics = proxy.metrics().await;
    uncharged(&metrics);
    assert_eq!(client_errors(&metrics, "body_timeout"), 1.0);
}

/// Cases 3, 6 and 7: Host per RFC 9112 §3.2, CONNECT, and a length beside chunked. Each is
/// answered by handoff and the backend gets nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_host_connect_and_ambiguous_framing_are_refused_before_the_backend() {
    let (backend, proxy) = proxy_with_script().await;
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.test/x\r\n\r\n", 400),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
    ];
    for (raw, want) in cases {
        let (answer, closed) = ask(&proxy, raw).await;
        let shown = String::from_utf8_lossy(raw);
        assert_eq!(status(&answer), *want, "{shown:?}: {answer}");
        assert!(closed, "{shown:?}: the connection stayed open");
    }
    assert_eq!(
        backend.received(),
        "",
        "a refused request reached the backend"
    );
    // HTTP/1.0 needs no Host.
    let (answer, _) = ask(&proxy, b"GET /plain HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&answer), 200, "{answer}");
    uncharged(&proxy.metrics().await);
}

/// Case 4: all `Connection` lines are combined and what they name is removed, but never
/// Host; framing headers are handoff's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_lines_are_combined_and_cannot_remove_host() {
    let (backend, proxy) = proxy_with_script().await;
    let (answer, _) = ask(
        &proxy,
        b"GET /plain HTTP/1.1\r\nHost: app.test\r\nConnection: host\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\nX-Kept: 2\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
    let head = backend.received();
    assert!(head.starts_with("GET /plain HTTP/1.1\r\n"), "{head:?}");
    assert_eq!(head.matches("Host: app.test\r\n").count(), 1, "{head:?}");
    assert!(head.contains("X-Kept: 2\r\n"), "{head:?}");
    assert!(!head.to_ascii_lowercase().contains("x-secret"), "{head:?}");
    assert!(!head.contains("Connection: host"), "{head:?}");
}

/// Case 5: a chunked body on a GET reaches the backend whole, and a pipelined request after
/// a 200 KB one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_on_a_get_reaches_the_backend_and_the_next_request_is_answered() {
    let (backend, proxy) = proxy_with_script().await;
    let big = "z".repeat(200_000);
    let raw = format!(
        "GET /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\nGET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        big.len()
    );
    let (answer, _) = ask(&proxy, raw.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.contains(&big), "the echoed body was not whole");
    assert!(
        answer.ends_with("\r\n\r\nok"),
        "the pipelined request went unanswered"
    );
    assert_eq!(backend.answered(), 2);
    let received = backend.received();
    assert!(received.contains(&format!("\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n", big.len())));
}

/// Case 8, cleartext: an HTTP/2 request reaches an HTTP/1.1 backend with Host from
/// `:authority` (RFC 9113 §8.3.1), not from a `host` field that differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_take_host_from_authority() {
    let (backend, proxy) = proxy_with_script().await;
    let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("http://app.test/echo")
        .header("host", "other.test")
        .method("GET")
        .body(Full::new(Bytes::from_static(b"body on a GET")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"body on a GET");
    let head = backend.received();
    assert_eq!(head.matches("app.test").count(), 1, "{head:?}");
    assert!(!head.contains("other.test"), "{head:?}");
}
