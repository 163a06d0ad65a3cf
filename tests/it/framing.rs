//! RFC 9112 framing through handoff, rule by rule, against a scripted backend that writes
//! exact bytes: chunked bodies with extensions and trailers both ways, close-delimited
//! responses, HEAD / 204 / 304, interim responses and `100-continue`, HTTP/1.0 clients,
//! large bodies, and header names that keep their case.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::backends::{dead_addr, read_to_eof};
use crate::common::*;
use handoff::pool::Health;

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nX-Backend-Case: Kept\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
const BIG: usize = 4 << 20;

/// A backend that answers by path with fixed bytes, and records every byte it received
/// (health checks left out).
pub(crate) struct Scripted {
    pub addr: std::net::SocketAddr,
    raw: Arc<Mutex<Vec<u8>>>,
    /// Requests it answered, health checks left out.
    answered: Arc<AtomicUsize>,
    /// Connections that ended in the middle of a request or of its answer (the peer gave up
    /// on it).
    cut: Arc<AtomicUsize>,
}

impl Scripted {
    pub async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (answered, cut) = (Arc::default(), Arc::default());
        let log = Log {
            raw: Arc::clone(&raw),
            answered: Arc::clone(&answered),
            cut: Arc::clone(&cut),
        };
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, log.clone()));
            }
        });
        Scripted {
            addr,
            raw,
            answered,
            cut,
        }
    }

    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }

    pub fn answered(&self) -> usize {
        self.answered.load(Relaxed)
    }

    pub fn cut(&self) -> usize {
        self.cut.load(Relaxed)
    }
}

#[derive(Clone)]
struct Log {
    raw: Arc<Mutex<Vec<u8>>>,
    answered: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn serve(mut s: TcpStream, log: Log) {
    let mut buf = Vec::new();
    loop {
        let (head_len, method, path, length, chunked, expect) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut fields);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let has = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                };
                let length = has("content-length")
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                break (
                    n,
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    length,
                    has("transfer-encoding").is_some(),
                    has("expect").is_some(),
                );
            }
            if !read_more(&mut s, &mut buf).await {
                if !buf.is_empty() {
                    log.cut.fetch_add(1, Relaxed);
                }
                return;
            }
        };
        let head: Vec<u8> = buf.drain(..head_len).collect();
        let health = path == "/healthz";
        if !health {
            log.raw.lock().unwrap().extend_from_slice(&head);
        }
        if expect && s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
            return;
        }
        // The body: a length, or chunks up to the last one and its trailers.
        let end = |buf: &Vec<u8>| -> Option<usize> {
            if !chunked {
                return (buf.len() >= length).then_some(length);
            }
            let last = if buf.starts_with(b"0\r\n") {
                0
            } else {
                buf.windows(5).position(|w| w == b"\r\n0\r\n")? + 2
            };
            let trailers = buf[last..].windows(4).position(|w| w == b"\r\n\r\n")?;
            Some(last + trailers + 4)
        };
        let body_len = loop {
            if let Some(n) = end(&buf) {
                break n;
            }
            if !read_more(&mut s, &mut buf).await {
                if !health {
                    log.raw.lock().unwrap().extend_from_slice(&buf);
                    log.cut.fetch_add(1, Relaxed);
                }
                return;
            }
        };
        let body: Vec<u8> = buf.drain(..body_len).collect();
        if !health {
            log.raw.lock().unwrap().extend_from_slice(&body);
            log.answered.fetch_add(1, Relaxed);
        }
        let answer: Vec<u8> = match (method.as_str(), path.as_str()) {
            ("HEAD", "/head") => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec(),
            (_, "/204") => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            (_, "/304") => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n".to_vec(),
            (_, "/chunked") => CHUNKED.to_vec(),
            (_, "/hints") => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            (_, "/big") => {
                let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").into_bytes();
                v.resize(v.len() + BIG, b'x');
                v
            }
            (_, "/huge") => {
                // 64 MiB, more than any socket buffers hold, written as it goes.
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 64 << 20);
                let block = vec![b'x'; 1 << 20];
                let mut sent = s.write_all(head.as_bytes()).await;
                for _ in 0..64 {
                    sent = sent.and(s.write_all(&block).await);
                    if sent.is_err() {
                        break;
                    }
                }
                if sent.is_err() {
                    log.cut.fetch_add(1, Relaxed);
                    return;
                }
                continue;
            }
            (_, "/close") => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close").await;
                return;
            }
            (_, "/echo") => {
                let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                v.extend_from_slice(&body);
                v
            }
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        };
        if s.write_all(&answer).await.is_err() {
            return;
        }
    }
}

pub(crate) async fn proxy_with_script() -> (Scripted, Proxy) {
    let backend = Scripted::start().await;
    let proxy = Proxy::start(&http_config(&[("a", backend.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    (backend, proxy)
}

/// Reads exactly `n` bytes (bounded by [`WAIT`]).
async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("the answer came in time")
        .expect("the connection stayed open");
    got
}

#[tokio::test]
async fn chunked_request_bodies_reach_the_backend_with_extensions_and_trailers() {
    let (backend, proxy) = proxy_with_script().await;
    let body = "4;note=\"a b\"\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Sum: 9\r\n\r\n";
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let req = format!("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    s.write_all(req.as_bytes()).await.unwrap();
    let expected = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let got = read_exact(&mut s, expected.len()).await;
    assert_eq!(String::from_utf8_lossy(&got), expected);
    let seen = backend.received();
    assert!(
        seen.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{seen}"
    );
    assert!(seen.ends_with(body), "{seen}");
}

#[tokio::test]
async fn chunked_responses_pass_whole_to_http11_clients_and_decoded_to_http10_ones() {
    let (_backend, proxy) = proxy_with_script().await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let expected = "HTTP/1.1 200 OK\r\nX-Backend-Case: Kept\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let got = read_exact(&mut s, expected.len()).await;
    assert_eq!(String::from_utf8_lossy(&got), expected);
    // The connection carries the next request.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let next = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_eq!(
        String::from_utf8_lossy(&read_exact(&mut s, next.len()).await),
        next
    );

    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let (raw, eof) = read_to_eof(&mut s, WAIT).await;
    assert!(
        eof,
        "an HTTP/1.0 body without a length ends with the connection"
    );
    assert_eq!(
        String::from_utf8_lossy(&raw),
        "HTTP/1.1 200 OK\r\nX-Backend-Case: Kept\r\nConnection: close\r\n\r\nhello world"
    );
}

#[tokio::test]
async fn a_close_delimited_response_ends_the_client_connection() {
    let (_backend, proxy) = proxy_with_script().await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (raw, eof) = read_to_eof(&mut s, WAIT).await;
    assert!(eof);
    assert_eq!(
        String::from_utf8_lossy(&raw),
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close"
    );
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body_and_keep_the_connection() {
    let (_backend, proxy) = proxy_with_script().await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(
        b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\nGET /204 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /304 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let expected = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n\
                    HTTP/1.1 204 No Content\r\n\r\n\
                    HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n\
                    HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let got = read_exact(&mut s, expected.len()).await;
    assert_eq!(String::from_utf8_lossy(&got), expected);
    // Nothing more: no body bytes were invented.
    let mut extra = [0u8; 1];
    let more = tokio::time::timeout(Duration::from_millis(300), s.read(&mut extra)).await;
    assert!(more.is_err(), "unexpected bytes after the last answer");
}

#[tokio::test]
async fn interim_answers_reach_the_client_and_100_continue_lets_the_body_go() {
    let (_backend, proxy) = proxy_with_script().await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    // The client sends its body only after `100 Continue`.
    let cont = "HTTP/1.1 100 Continue\r\n\r\n";
    assert_eq!(
        String::from_utf8_lossy(&read_exact(&mut s, cont.len()).await),
        cont
    );
    s.write_all(b"hello").await.unwrap();
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(
        String::from_utf8_lossy(&read_exact(&mut s, ok.len()).await),
        ok
    );

    s.write_all(b"GET /hints HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let hints = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_eq!(
        String::from_utf8_lossy(&read_exact(&mut s, hints.len()).await),
        hints
    );
}

#[tokio::test]
async fn header_names_keep_the_case_they_were_sent_with() {
    let (backend, proxy) = proxy_with_script().await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHOST: x\r\nX-MiXeD-Case: 1\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    read_exact(
        &mut s,
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".len(),
    )
    .await;
    let seen = backend.received();
    assert!(
        seen.starts_with(
            "GET / HTTP/1.1\r\nHOST: x\r\nX-MiXeD-Case: 1\r\nX-Forwarded-For: 127.0.0.1\r\n"
        ),
        "{seen}"
    );
    assert!(!seen.to_ascii_lowercase().contains("connection"), "{seen}");
}

#[tokio::test]
async fn a_large_response_arrives_whole() {
    let (_backend, proxy) = proxy_with_script().await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (raw, eof) = read_to_eof(&mut s, WAIT).await;
    assert!(eof);
    let text = String::from_utf8_lossy(&raw[..200]).into_owned();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        text.contains(&format!("Content-Length: {BIG}\r\n")),
        "{text}"
    );
    assert_eq!(raw.len() - head_end, BIG);
    assert!(raw[head_end..].iter().all(|&b| b == b'x'));
}

/// Reads one response with a Content-Length body off `s`: its head and body as text.
async fn read_one(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no Content-Length in {head}"));
            let mut body = buf[end + 4..].to_vec();
            if body.len() < len {
                body.extend(read_exact(s, len - body.len()).await);
            }
            return (head, String::from_utf8_lossy(&body).into_owned());
        }
        assert!(
            read_more(s, &mut buf).await,
            "closed before a whole head: {buf:?}"
        );
    }
}

#[tokio::test]
async fn an_http10_keep_alive_client_is_told_its_connection_stays_after_a_local_answer() {
    // No node can serve: every answer is handoff's own 503.
    let proxy = Proxy::start(&http_config(&[("a", dead_addr().await)], "")).await;
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = tokio::time::timeout(WAIT, read_one(&mut s))
            .await
            .expect("an answer in time");
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        // Without it an HTTP/1.0 client waits for the close that ends its exchange.
        assert!(head.contains("\r\nConnection: keep-alive"), "{head}");
        assert!(body.contains("no healthy node"), "{body}");
    }
    // An HTTP/1.0 client that did not ask to keep it is told, and the connection closes.
    let mut s = TcpStream::connect(proxy.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let (head, _) = tokio::time::timeout(WAIT, read_one(&mut s))
        .await
        .expect("an answer in time");
    assert!(head.contains("\r\nConnection: close"), "{head}");
    let mut rest = Vec::new();
    let more = tokio::time::timeout(WAIT, read_more(&mut s, &mut rest))
        .await
        .expect("closed in time");
    assert!(!more && rest.is_empty());
}
