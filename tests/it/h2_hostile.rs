//! HTTP/2 clients that misbehave without breaking the protocol: a flood of PING ACKs for
//! PINGs handoff never sent leaves no WARN line in the log (any client could fill it).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::backends::HttpBackend;
use crate::common::process::Handoff;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unsolicited_ping_acks_leaves_no_warn_line() {
    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handoff.yaml");
    std::fs::write(&config, http_config(&[("a", a.addr), ("b", b.addr)], "")).unwrap();
    let h = Handoff::start(&config).await;
    h.wait_up("a").await;
    let web = h.listener().await;
    let mut s = tokio::net::TcpStream::connect(&web).await.unwrap();
    // h2c with prior knowledge: the preface, empty SETTINGS, then 200 PING frames with ACK.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for i in 0..200u64 {
        out.extend_from_slice(&[0, 0, 8, 6, 1, 0, 0, 0, 0]);
        out.extend_from_slice(&i.to_be_bytes());
    }
    // Then a PING of our own: its ACK comes back only once every frame before it was read.
    out.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
    out.extend_from_slice(b"handoff!");
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let ack: &[u8] = &[
        0, 0, 8, 6, 1, 0, 0, 0, 0, b'h', b'a', b'n', b'd', b'o', b'f', b'f', b'!',
    ];
    while !got.windows(ack.len()).any(|w| w == ack) {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the server answered our PING")
            .unwrap();
        assert!(n > 0, "the connection was closed: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    // The proxy still serves.
    let (code, _) = get(&client(), &format!("http://{web}/")).await;
    assert_eq!(code, 200);
    drop(s);
    // The log is read by another thread: give it a moment to see any line written.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let warns: Vec<String> = h
        .log()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.to_lowercase().contains("ping"))
        .collect();
    assert!(warns.is_empty(), "{warns:#?}");
}

/// One HPACK header field, literal without indexing, no Huffman (RFC 7541 §6.2.2).
fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Sends one malformed HTTP/2 request (cleartext, prior knowledge) and reads what comes
/// back for a moment; the status of stream 1, if a HEADERS frame carried one.
async fn malformed(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
    data: Option<&[u8]>,
) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in headers {
        field(&mut block, n, v);
    }
    request_block(addr, &block, data).await
}

/// Sends stream 1 (a POST to `/` on app.test, then `extra`, already HPACK-encoded) and reads
/// until the stream or the connection ends (bounded).
async fn request_block(addr: std::net::SocketAddr, extra: &[u8], data: Option<&[u8]>) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]);
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "app.test"),
    ] {
        field(&mut block, n, v);
    }
    block.extend_from_slice(extra);
    let end_stream = if data.is_none() { 1 } else { 0 };
    frame(&mut out, 1, 4 | end_stream, 1, &block);
    if let Some(d) = data {
        frame(&mut out, 0, 1, 1, d);
    }
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the stream ends (a HEADERS or RST_STREAM for stream 1) or the connection does.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let read = tokio::time::timeout_at(deadline, s.read(&mut buf)).await;
        let Ok(Ok(n)) = read else { break };
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        // Frames for stream 1 of type HEADERS (1) or RST_STREAM (3).
        let mut i = 0;
        let mut ended = false;
        while i + 9 <= got.len() {
            let len = u32::from_be_bytes([0, got[i], got[i + 1], got[i + 2]]) as usize;
            let (kind, stream) = (
                got[i + 3],
                u32::from_be_bytes([got[i + 5], got[i + 6], got[i + 7], got[i + 8]]) & 0x7fff_ffff,
            );
            if stream == 1 && (kind == 1 || kind == 3) {
                ended = true;
            }
            i += 9 + len;
        }
        if ended {
            break;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_requests_are_refused_with_nothing_forwarded() {
    let (backend, proxy) = crate::framing::proxy_with_script().await;
    let addr = proxy.addr("web");
    // content-length: 0, then a DATA frame carrying a whole request.
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    malformed(addr, &[("content-length", "0")], Some(smuggled)).await;
    // A field value with leading whitespace.
    malformed(addr, &[("x-a", " 1")], None).await;
    // And trailing.
    malformed(addr, &[("x-a", "1\t")], None).await;
    // A well-formed request after them reaches the backend: the only one it ever got.
    let (code, _) = get(&client(), &format!("http://{addr}/ok")).await;
    assert_eq!(code, 200);
    let received = backend.received();
    assert_eq!(received.matches("HTTP/1.1\r\n").count(), 1, "{received:?}");
    assert!(received.starts_with("GET /ok"), "{received:?}");
}

/// The payload of the first HEADERS frame on stream 1 in `got`, if any.
fn stream_1_headers(got: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    while i + 9 <= got.len() {
        let len = u32::from_be_bytes([0, got[i], got[i + 1], got[i + 2]]) as usize;
        let stream = u32::from_be_bytes([got[i + 5], got[i + 6], got[i + 7], got[i + 8]]);
        if got[i + 3] == 1 && stream & 0x7fff_ffff == 1 {
            return got.get(i + 9..i + 9 + len);
        }
        i += 9 + len;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_head_over_the_limit_gets_431_counted_and_logged() {
    let a = HttpBackend::start("a", "1.0").await;
    let yaml = format!(
        "access_log: {{ path: \"{{DIR}}/access.log\", format: json }}\n{}",
        http_config(&[("a", a.addr)], "")
    );
    let proxy = Proxy::start(&yaml).await;
    proxy
        .wait_health("web", "a", handoff::pool::Health::Up)
        .await;
    // One field put in HPACK's dynamic table, then referred to 600 times by index (a byte
    // each): a small frame whose head decodes to about 83 KB, over the 64 KiB limit.
    let mut extra = vec![0x40, 6];
    extra.extend_from_slice(b"x-fill");
    extra.push(100);
    extra.extend_from_slice(&[b'x'; 100]);
    extra.extend(std::iter::repeat_n(0x80 | 62, 600));
    let got = request_block(proxy.addr("web"), &extra, None).await;
    let headers = stream_1_headers(&got).unwrap_or_else(|| panic!("no HEADERS: {got:?}"));
    assert!(headers.windows(3).any(|w| w == b"431"), "{headers:?}");

    let metrics = proxy.metrics().await;
    let series = "handoff_client_errors_total{listener=\"web\",reason=\"head_too_large\"}";
    assert_eq!(metric_value(&metrics, series), 1.0, "{series}");
    assert_eq!(proxy.node("web", "a").state.traffic.sample().requests, 0);
    // Its access-log line: the access log is written by another thread.
    let path = proxy._dir.path().join("access.log");
    let deadline = tokio::time::Instant::now() + WAIT;
    let line = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(l) = text.lines().next() {
            break serde_json::from_str::<serde_json::Value>(l).expect("a JSON line");
        }
        assert!(tokio::time::Instant::now() < deadline, "no access-log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["status"], 431, "{line}");
    assert_eq!(line["termination"], "client_fault:head_too_large", "{line}");
    assert_eq!(line["proto"], "HTTP/2", "{line}");
}
