//! Request smuggling (RFC 9112 §6.3, §11.2): ambiguous requests are refused before any byte
//! reaches a backend, and a backend never sees a request boundary other than the one
//! handoff saw. The backend here records every request it parses (with httparse), so a
//! smuggled request would show up in its log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;
use handoff::pool::Health;

/// A backend that answers every request `200 ok` and records `METHOD PATH` of each one it
/// parsed (health checks left out).
struct Recorder {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, Arc::clone(&log)));
            }
        });
        Recorder { addr, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Parses requests one after another as an HTTP/1.1 server would (Content-Length or chunked
/// bodies), answering each.
async fn serve(mut s: TcpStream, log: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        // A complete head.
        let (head_len, line, body) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let line = format!("{} {}", req.method.unwrap_or(""), req.path.unwrap_or(""));
                    let header = |name: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).to_string())
                    };
                    let body = match (header("transfer-encoding"), header("content-length")) {
                        (Some(_), _) => None,
                        (None, Some(cl)) => Some(cl.trim().parse::<usize>().unwrap_or(0)),
                        (None, None) => Some(0),
                    };
                    break (n, line, body);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..head_len);
        // The body: a length, or chunks up to the last one and its (empty) trailer.
        let need_end = |buf: &Vec<u8>| match body {
            Some(len) => (buf.len() >= len).then_some(len),
            None => buf
                .windows(5)
                .position(|w| w == b"0\r\n\r\n")
                .map(|p| p + 5),
        };
        let consumed = loop {
            if let Some(n) = need_end(&buf) {
                break n;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..consumed);
        if !line.ends_with("/healthz") {
            log.lock().unwrap().push(line);
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Sends `bytes` on one connection and reads until the proxy closes it or goes quiet;
/// returns the status line of each response.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(700), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
    // Bodies here are `ok` or short error texts: every `HTTP/1.` starts a status line.
    let text = String::from_utf8_lossy(&got);
    text.match_indices("HTTP/1.")
        .map(|(at, _)| text[at..].split("\r\n").next().unwrap_or("").to_string())
        .collect()
}

async fn proxy_with_recorder() -> (Recorder, Proxy) {
    let backend = Recorder::start().await;
    let proxy = Proxy::start(&http_config(&[("a", backend.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    (backend, proxy)
}

/// An ambiguous request is answered 400 (or the connection closed) and nothing of it, nor of
/// what follows it, reaches the backend.
async fn refused(name: &str, bytes: &[u8]) {
    let (backend, proxy) = proxy_with_recorder().await;
    let statuses = exchange(proxy.addr("web"), bytes).await;
    assert!(
        statuses.iter().all(|s| s.contains(" 400 ")) && statuses.len() <= 1,
        "{name}: answered {statuses:?}"
    );
    assert_eq!(
        backend.requests(),
        Vec::<String>::new(),
        "{name}: reached the backend"
    );
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

/// RFC 9112 §6.3 lets a server frame such a message by its chunked coding; a proxy refuses it
/// (400), since the next hop might frame it by the length.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    refused("CL+TE", req.as_bytes()).await;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    refused("TE+CL", req.as_bytes()).await;
}

#[tokio::test]
async fn bare_lf_line_ends_are_refused() {
    refused(
        "bare LF head",
        format!("GET / HTTP/1.1\nHost: x\n\n{SMUGGLED}").as_bytes(),
    )
    .await;
    refused(
        "bare LF in one field",
        format!("GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n{SMUGGLED}").as_bytes(),
    )
    .await;
}

/// A request inside another's body is body: the backend sees one request.
#[tokio::test]
async fn a_request_hidden_in_a_body_stays_body() {
    let (backend, proxy) = proxy_with_recorder().await;
    let req = format!(
        "POST /outer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    let statuses = exchange(proxy.addr("web"), req.as_bytes()).await;
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(backend.requests(), ["POST /outer"]);
}

#[tokio::test]
async fn differing_content_lengths_are_refused() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    refused("duplicate CL", req.as_bytes()).await;
}

#[tokio::test]
async fn a_transfer_encoding_that_does_not_end_in_chunked_is_refused() {
    for te in [
        "chunked, identity",
        "xchunked",
        "chunked\u{b}",
        "gzip",
        "chunked\r\nTransfer-Encoding: identity",
        "\"chunked\"",
        "chunked;q=1",
    ] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n{SMUGGLED}"
        );
        refused(&format!("TE {te:?}"), req.as_bytes()).await;
    }
}

#[tokio::test]
async fn whitespace_before_the_colon_and_obs_fold_are_refused() {
    let ws = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}");
    refused("space before colon", ws.as_bytes()).await;
    let fold = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n{SMUGGLED}");
    refused("obs-fold", fold.as_bytes()).await;
}

#[tokio::test]
async fn a_bad_chunk_size_never_smuggles_a_request() {
    let (backend, proxy) = proxy_with_recorder().await;
    let req =
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{SMUGGLED}");
    let statuses = exchange(proxy.addr("web"), req.as_bytes()).await;
    let seen = backend.requests();
    assert!(
        !seen.iter().any(|r| r.contains("smuggled")),
        "{seen:?} {statuses:?}"
    );
    assert_eq!(statuses, ["HTTP/1.1 400 Bad Request"]);
    // A chunk extension hiding a bare LF is refused the same way.
    let (backend, proxy) = proxy_with_recorder().await;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    );
    let statuses = exchange(proxy.addr("web"), req.as_bytes()).await;
    assert_eq!(statuses, ["HTTP/1.1 400 Bad Request"]);
    assert!(!backend.requests().iter().any(|r| r.contains("smuggled")));
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_each_reaching_the_backend_once() {
    let (backend, proxy) = proxy_with_recorder().await;
    let req = "GET /one HTTP/1.1\r\nHost: x\r\n\r\nPOST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /three HTTP/1.1\r\nHost: x\r\n\r\n";
    let statuses = exchange(proxy.addr("web"), req.as_bytes()).await;
    assert_eq!(
        statuses.len(),
        3,
        "{statuses:?} backend saw {:?}",
        backend.requests()
    );
    assert_eq!(backend.requests(), ["GET /one", "POST /two", "GET /three"]);
}
