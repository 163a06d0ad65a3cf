//! How exchanges end, word by word: every termination the access log can say, each caused
//! for real (a node killed mid-response, a client that leaves or never reads, a malformed
//! request, no node, a tunnel at a drain deadline, shutdown), over HTTP/1, HTTP/2, tunnels
//! and TCP.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_an_exchange_ends_has_its_word() {
    let killed = raw_backend(100_000, 1000, false).await;
    let endless = raw_backend(100_000_000, 0, true).await;
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    let slow = HttpBackend::start("s", "1.0.0").await;
    let ok = HttpBackend::start("o", "1.0.0").await;
    let down = dead_addr().await;
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    timeouts: {{ response: 300ms }}
    routes:
      - {{ path_prefix: /killed, pool: killed }}
      - {{ path_prefix: /endless, pool: endless }}
      - {{ path_prefix: /gone, pool: gone }}
      - {{ path_prefix: /slow, pool: slow }}
      - {{ path_prefix: /down, pool: down }}
      - {{ path_prefix: /ok, pool: ok }}
pools:
{}{}{}{}{}{}"#,
        pool_yaml("killed", killed, TCP_HEALTH),
        pool_yaml("endless", endless, TCP_HEALTH),
        pool_yaml("gone", gone_addr, ONCE),
        pool_yaml("slow", slow.addr, TCP_HEALTH),
        pool_yaml("down", down, TCP_HEALTH),
        pool_yaml("ok", ok.addr, FAST_HEALTH),
    );
    let proxy = Proxy::start(&logged(&yaml)).await;
    for pool in ["killed", "endless", "gone", "slow", "ok"] {
        proxy.wait_health(pool, "n", Health::Up).await;
    }
    proxy.wait_health("down", "n", Health::Down).await;
    drop(gone); // up by its one check, but nothing listens any more
    let addr = proxy.addr("web");
    let c = client();

    // A node killed mid-response.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /killed HTTP/1.1\r\nHost: t\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = backends::read_to_eof(&mut s, WAIT).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let line = line_for(&proxy, "/killed").await;
    assert_eq!(line["termination"], "upstream_reset", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(
        line["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "{line}"
    );
    assert!(line["bytes_out"].as_u64().unwrap() > 1000, "{line}");

    // A client that leaves mid-response.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    drop(s);
    let line = line_for(&proxy, "/endless").await;
    assert_eq!(line["termination"], "client_closed", "{line}");

    // A request refused as malformed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /malformed HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = backends::read_to_eof(&mut s, WAIT).await;
    assert!(
        got.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let line = line_for(&proxy, "/malformed").await;
    assert_eq!(line["termination"], "client_fault:bad_request", "{line}");
    assert_eq!(line["status"], 400);

    // No node up; no node to connect to; a node too slow.
    for (path, status, word) in [
        ("/down", 503, "no_node"),
        ("/gone", 502, "connect_failed"),
        ("/slow/2000", 504, "upstream_timeout"),
        ("/nowhere", 404, "client_fault:no_route"),
        ("/ok", 200, "ok"),
    ] {
        let (got, _) = get(&c, &format!("http://{addr}{path}")).await;
        assert_eq!(got, status, "{path}");
        let line = line_for(&proxy, path).await;
        assert_eq!(line["termination"], word, "{path}: {line}");
        assert_eq!(line["status"], status, "{path}: {line}");
    }
    let line = line_for(&proxy, "/gone").await;
    assert_eq!(line["attempts"], json!(["n"]), "{line}");
    assert!(line["node_version"].is_null(), "{line}");
    let line = line_for(&proxy, "/ok").await;
    assert_eq!(line["node_version"], "1.0.0", "{line}");
    assert!(line["header_ms"].as_f64().is_some() && line["connect_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_cut_at_the_drain_deadline_says_so_and_a_tcp_session_has_its_line() {
    let ws = ws_echo().await;
    let echo = tcp_echo_server().await;
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: ws }} ] }}
  - {{ name: raw, listen: "127.0.0.1:0", protocol: tcp, pool: echo }}
pools:
{}    drain: {{ timeout: 300ms, close_spread: 0s }}
{}"#,
        pool_yaml("ws", ws, TCP_HEALTH),
        pool_yaml("echo", echo, TCP_HEALTH),
    );
    let proxy = Proxy::start(&logged(&yaml)).await;
    proxy.wait_health("ws", "n", Health::Up).await;
    proxy.wait_health("echo", "n", Health::Up).await;

    let mut s = TcpStream::connect(proxy.addr("raw")).await.unwrap();
    echo_once(&mut s, b"hello").await;
    s.shutdown().await.unwrap();
    let _ = backends::read_to_eof(&mut s, WAIT).await;
    let lines = wait_lines(&log_path(&proxy), 1).await;
    let tcp = &lines[0];
    assert_eq!(tcp["proto"], "tcp", "{tcp}");
    assert_eq!(tcp["listener"], "raw");
    assert_eq!(tcp["node"], "n");
    assert_eq!(tcp["termination"], "ok", "{tcp}");
    assert_eq!(
        (tcp["bytes_in"].as_u64(), tcp["bytes_out"].as_u64()),
        (Some(5), Some(5)),
        "{tcp}"
    );

    let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut client, resp) =
        tokio_tungstenite::client_async(format!("ws://{}/chat", proxy.addr("web")), tcp)
            .await
            .expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    client.send(Message::text("hi")).await.unwrap();
    let echo = tokio::time::timeout(WAIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("hi"));
    let (status, _) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/ws/nodes/n/drain",
            json!({"force": true}),
        )
        .await;
    assert_eq!(status, 200);
    // The client is told "going away" at the deadline.
    let close = tokio::time::timeout(WAIT, client.next())
        .await
        .expect("no close");
    assert!(matches!(close, Some(Ok(Message::Close(_)))), "{close:?}");
    let line = line_for(&proxy, "/chat").await;
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["termination"], "drain_deadline", "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() >= 250.0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_say_how_they_ended_too() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let killed = raw_backend(100_000, 1000, false).await;
    let endless = raw_backend(100_000_000, 0, true).await;
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    routes:
      - {{ path_prefix: /killed, pool: killed }}
      - {{ path_prefix: /endless, pool: endless }}
pools:
{}{}"#,
        pool_yaml("killed", killed, TCP_HEALTH),
        pool_yaml("endless", endless, TCP_HEALTH),
    );
    let proxy = Proxy::start(&logged(&yaml)).await;
    proxy.wait_health("killed", "n", Health::Up).await;
    proxy.wait_health("endless", "n", Health::Up).await;
    let h2 = || async {
        let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        (send, tokio::spawn(conn))
    };
    let get = |path: &str| {
        http::Request::get(format!("http://t{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };

    // The node dies mid-response: the stream is reset, the line says why.
    let (mut send, _conn) = h2().await;
    // The reset may overtake the head on its way to the client.
    if let Ok(resp) = send.send_request(get("/killed")).await {
        assert_eq!(resp.status(), 200);
        assert!(
            resp.into_body().collect().await.is_err(),
            "the body should break off"
        );
    }
    let line = line_for(&proxy, "/killed").await;
    assert_eq!(
        (&line["proto"], &line["termination"]),
        (&json!("HTTP/2"), &json!("upstream_reset")),
        "{line}"
    );

    // The client goes away mid-response.
    let (mut send, conn) = h2().await;
    let resp = send.send_request(get("/endless")).await.unwrap();
    let mut body = resp.into_body();
    let _ = body.frame().await;
    drop(body);
    drop(send);
    conn.abort();
    let line = line_for(&proxy, "/endless").await;
    assert_eq!(line["termination"], "client_closed", "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_timeouts_and_shutdown_have_their_words() {
    let endless = raw_backend(100_000_000, 0, true).await;
    let ok = HttpBackend::start("o", "1.0.0").await;
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    timeouts: {{ header_read: 400ms, send: 400ms }}
    routes:
      - {{ path_prefix: /endless, pool: endless }}
      - {{ pool: ok }}
pools:
{}{}"#,
        pool_yaml("endless", endless, TCP_HEALTH),
        pool_yaml("ok", ok.addr, TCP_HEALTH),
    );
    let proxy = Proxy::start(&logged(&yaml)).await;
    proxy.wait_health("endless", "n", Health::Up).await;
    proxy.wait_health("ok", "n", Health::Up).await;
    let addr = proxy.addr("web");
    let exchange = |bytes: Vec<u8>| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        backends::read_to_eof(&mut s, WAIT).await.0
    };

    // Faults of the client's: each its reason.
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: t\r\nX-Fill: {}\r\n\r\n",
        "x".repeat(70_000)
    );
    let got = exchange(big.into_bytes()).await;
    assert!(
        got.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let got =
        exchange(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec())
            .await;
    assert!(
        got.starts_with(b"HTTP/1.1 501"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let chunked =
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
    let got = exchange(chunked).await;
    assert!(
        got.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // A head that never ends; a client that never reads its answer.
    let got = exchange(b"GET /slow-head HTTP/1.1\r\nHost: t\r\n".to_vec()).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let mut deaf = TcpStream::connect(addr).await.unwrap();
    deaf.write_all(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();

    let lines = wait_lines(&log_path(&proxy), 5).await;
    let word = |pred: &dyn Fn(&Value) -> bool| -> String {
        let found: Vec<&Value> = lines.iter().filter(|l| pred(l)).collect();
        assert_eq!(found.len(), 1, "{lines:#?}");
        found[0]["termination"].as_str().unwrap().to_string()
    };
    assert_eq!(word(&|l| l["status"] == 431), "client_fault:head_too_large");
    assert_eq!(
        word(&|l| l["method"] == "CONNECT"),
        "client_fault:not_implemented"
    );
    assert_eq!(word(&|l| l["path"] == "/echo"), "client_fault:bad_body");
    assert_eq!(
        word(&|l| l["termination"] == "client_timeout"),
        "client_timeout"
    );
    let line = line_for(&proxy, "/endless").await;
    assert_eq!(line["termination"], "send_timeout", "{line}");
    drop(deaf);

    // Shutdown's force deadline cuts a response still streaming.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /endless/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let reader = tokio::spawn(async move { backends::read_to_eof(&mut s, WAIT).await });
    let node = proxy.node("endless", "n");
    eventually("the request is in flight", || {
        node.state.active_sessions() == 1
    })
    .await;
    let cut = proxy.app.shutdown.run(Duration::from_millis(300)).await;
    assert_eq!(cut, 1);
    let _ = reader.await;
    let line = line_for(&proxy, "/endless/2").await;
    assert_eq!(line["termination"], "shutdown", "{line}");
}

/// A backend that answers its first request with a head promising `length` bytes, then
/// sends `body` bytes of it and closes (`keep_writing`: or writes on until the peer goes).
async fn raw_backend(length: usize, body: usize, keep_writing: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return, // a health check
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n");
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.write_all(&vec![b'x'; body]).await;
                // Bounded: 100 MB at most, as the head promised.
                for _ in 0..(length / (16 * 1024)) * usize::from(keep_writing) {
                    if s.write_all(&[b'y'; 16 * 1024]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // Dropped: the node "dies" mid-response.
            });
        }
    });
    addr
}

fn pool_yaml(name: &str, addr: SocketAddr, health: &str) -> String {
    format!(
        "  - name: {name}\n    nodes: [ {{ name: n, addr: \"{addr}\" }} ]\n    health: {health}\n"
    )
}

const TCP_HEALTH: &str =
    "{ interval: 100ms, timeout: 100ms, healthy_after: 1, unhealthy_after: 1, tcp: {} }";

/// Checked once at start, then not for an hour: the node stays up whatever its backend does.
const ONCE: &str = "{ interval: 1h, timeout: 1s, healthy_after: 1, tcp: {} }";

/// A WebSocket echo backend (health checks connect and leave).
async fn ws_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
