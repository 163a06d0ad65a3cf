//! HTTP proxying over real sockets: balancing, failover, header handling, routing, errors,
//! timeouts and limits.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::backends::{dead_addr, read_to_eof, HttpBackend};
use crate::common::*;
use handoff::pool::Health;

#[tokio::test]
async fn requests_reach_both_nodes() {
    let (a, b, proxy) = http_pair_up().await;
    let client = client();
    for _ in 0..20 {
        let (status, body) = get(&client, &proxy.url("web", "/")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(a.hits() + b.hits(), 20);
    assert!(
        a.hits() >= 5 && b.hits() >= 5,
        "a={} b={}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_node_fails_no_request_and_it_returns_only_after_passing_checks() {
    let (mut a, b, proxy) = http_pair_up().await;
    let proxy = Arc::new(proxy);

    // A steady stream from 8 keep-alive clients, bounded in time.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loaders = Vec::new();
    for _ in 0..8 {
        let (proxy, stop, sent, failed) =
            (proxy.clone(), stop.clone(), sent.clone(), failed.clone());
        loaders.push(tokio::spawn(async move {
            let client = client();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(SeqCst) && tokio::time::Instant::now() < deadline {
                let (status, body) = get(&client, &proxy.url("web", "/")).await;
                sent.fetch_add(1, SeqCst);
                if status != 200 {
                    failed.fetch_add(1, SeqCst);
                    eprintln!("failed request: {status} {body}");
                }
            }
        }));
    }
    let wait_hits = |b: &HttpBackend, n: usize| {
        let stats = b.stats.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while stats.hits.load(SeqCst) < n && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stats.hits.load(SeqCst) >= n
        }
    };
    assert!(wait_hits(&a, 50).await, "a got no traffic before the stop");

    a.stop().await;
    proxy.wait_health("web", "a", Health::Down).await;
    let b_before = b.hits();
    assert!(
        wait_hits(&b, b_before + 100).await,
        "b did not carry the load"
    );

    a.restart("1.0.0").await;
    proxy.wait_health("web", "a", Health::Up).await;
    assert!(
        wait_hits(&a, 20).await,
        "a got no traffic after coming back"
    );
    stop.store(true, SeqCst);
    for l in loaders {
        l.await.unwrap();
    }
    let checks_first = a.stats.checks_at_first_hit.load(SeqCst);
    assert!(
        checks_first >= 2,
        "a got traffic after only {checks_first} health checks"
    );
    println!(
        "sent {} requests, {} failed",
        sent.load(SeqCst),
        failed.load(SeqCst)
    );
    assert_eq!(failed.load(SeqCst), 0);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(
        b"GET /headers HTTP/1.1\r\nHost: example.test\r\nConnection: close, x-private\r\nX-Private: 1\r\n\
          Keep-Alive: timeout=5\r\nX-Forwarded-For: 198.51.100.1\r\nX-Custom: kept\r\n\r\n",
    )
    .await
    .unwrap();
    let (raw, eof) = read_to_eof(&mut s, WAIT).await;
    assert!(eof);
    let text = String::from_utf8_lossy(&raw);
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let headers: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(headers["host"], "example.test");
    assert_eq!(headers["x-custom"], "kept");
    assert_eq!(headers["x-forwarded-for"], "198.51.100.1, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    for gone in ["x-private", "keep-alive"] {
        assert!(headers.get(gone).is_none(), "{gone} reached the backend");
    }
    assert!(headers
        .get("connection")
        .is_none_or(|v| v != "close, x-private"));
}

#[tokio::test]
async fn routes_by_host_then_path_prefix() {
    let api = HttpBackend::start("api", "1.0.0").await;
    let web = HttpBackend::start("web", "1.0.0").await;
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    routes:
      - {{ host: "api.test", pool: api }}
      - {{ path_prefix: "/api/", pool: api }}
      - {{ pool: web }}
pools:
  - {{ name: api, nodes: [ {{ name: n, addr: "{}" }} ], health: {FAST_HEALTH} }}
  - {{ name: web, nodes: [ {{ name: n, addr: "{}" }} ], health: {FAST_HEALTH} }}
"#,
        api.addr, web.addr
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("api", "n", Health::Up).await;
    proxy.wait_health("web", "n", Health::Up).await;
    let ask = |host: &'static str, path: &'static str| {
        let addr = proxy.addr("web");
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let (raw, _) = read_to_eof(&mut s, WAIT).await;
            String::from_utf8_lossy(&raw).into_owned()
        }
    };
    assert!(ask("api.test:80", "/").await.ends_with("api 1.0.0"));
    assert!(ask("www.test", "/api/x").await.ends_with("api 1.0.0"));
    assert!(ask("www.test", "/apix").await.ends_with("web 1.0.0"));
}

#[tokio::test]
async fn no_healthy_node_gives_503_and_unreachable_nodes_give_502() {
    let dead = dead_addr().await;
    // Health starts unknown: before any check passes, nobody gets traffic.
    let proxy = Proxy::start(&http_config(&[("a", dead)], "")).await;
    let (status, body) = get(&client(), &proxy.url("web", "/")).await;
    assert_eq!(status, 503);
    assert!(body.contains("no healthy node"), "{body}");
    proxy.wait_health("web", "a", Health::Down).await;
    let (status, _) = get(&client(), &proxy.url("web", "/")).await;
    assert_eq!(status, 503);
    assert!(proxy
        .metrics()
        .await
        .contains("handoff_requests_total{class=\"5xx\",node=\"none\",pool=\"web\"} 2"));
}

#[tokio::test]
async fn connect_failures_are_retried_on_the_sibling() {
    let mut a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    // Slow checks, so the proxy only learns about the stop from failed connects.
    let yaml = http_config(&[("a", a.addr), ("b", b.addr)], "").replace(
        FAST_HEALTH,
        "{ interval: 1h, timeout: 1s, healthy_after: 1, unhealthy_after: 100 }",
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    a.stop().await;
    for _ in 0..10 {
        // A fresh client each time: no pooled connection hides the connect.
        let (status, body) = get(&client(), &proxy.url("web", "/")).await;
        assert_eq!((status, body.as_str()), (200, "b 1.0.0"));
    }
    let metrics = proxy.metrics().await;
    assert!(metrics.contains("handoff_retries_total{pool=\"web\"}"));
    assert!(
        !metrics.contains("handoff_retries_total{pool=\"web\"} 0"),
        "no retry counted"
    );
}

#[tokio::test]
async fn slow_request_heads_are_cut_at_the_header_read_timeout() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let extra = "    timeouts: { header_read: 300ms, idle: 5s }\n";
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], extra)).await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = tokio::time::Instant::now();
    let (_, eof) = read_to_eof(&mut s, WAIT).await;
    assert!(eof, "connection not closed");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let extra = "    timeouts: { idle: 300ms }\n";
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], extra)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = tokio::time::Instant::now();
    let (_, eof) = read_to_eof(&mut s, WAIT).await;
    assert!(eof);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed too early"
    );
}

#[tokio::test]
async fn connections_above_the_limit_are_closed_at_once() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let extra = "    max_connections: 2\n";
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], extra)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    // Both busy with the start of a next head: idle ones would make room (see abuse.rs).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        held.push(s);
    }
    let mut third = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (data, eof) = read_to_eof(&mut third, WAIT).await;
    assert!(eof && data.is_empty(), "third connection was served");
    drop(held);
    // Once the held connections are gone, a new one is served again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = get(&client(), &proxy.url("web", "/")).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(proxy
        .metrics()
        .await
        .contains("handoff_listener_connections_rejected_total{listener=\"web\"} 1"));
}

#[tokio::test]
async fn request_bodies_are_streamed_to_the_backend() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let payload = "x".repeat(200_000);
    let req = http::Request::post(proxy.url("web", "/echo"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            payload.clone(),
        )))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), payload.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_client_sending_pings_is_not_cut_as_a_slow_head() {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let a = HttpBackend::start("a", "1.0.0").await;
    let extra = "    timeouts: { header_read: 300ms, idle: 5s }\n";
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], extra)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
    // Keep-alive PINGs every 100 ms: bytes on the wire with no request in flight.
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = http::Request::get(proxy.url("web", "/"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
}

/// A client connection's HTTP/2 streams run in its own task (`proxy/h2/server`), and
/// still concurrently: a stream waiting on a slow node holds up no other stream.
#[tokio::test]
async fn http2_streams_of_one_connection_do_not_wait_for_each_other() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let sender = h2_connection(proxy.addr("web")).await;
    let get = |path: &str| h2_get(&sender, proxy.url("web", path));
    let slow = get("/slow/3000");
    tokio::pin!(slow);
    // The slow stream is sent first; the fast one must be answered while it waits.
    let fast = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::select! {
            biased;
            _ = &mut slow => panic!("the slow stream was answered before the fast one"),
            r = get("/") => r,
        }
    })
    .await
    .expect("a fast stream waited for a slow one on the same connection");
    assert_eq!(fast.unwrap(), 200);
    let slow = tokio::time::timeout(Duration::from_secs(10), slow).await;
    assert_eq!(slow.expect("the slow stream ended").unwrap(), 200);
}
