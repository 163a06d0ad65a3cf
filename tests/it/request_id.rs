//! Request IDs (`request_id:`): a request without one gets one, in the response and at the
//! node alike; a sane one is kept, an insane one replaced; W3C trace context passes
//! untouched. HTTP/1.1 and HTTP/2 clients, an answer of handoff's own, and an HTTP/2 pool.

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::common::backends::{dead_addr, HttpBackend};
use crate::common::*;
use handoff::pool::Health;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

fn with_ids(yaml: String) -> String {
    format!("request_id: {{ header: X-Request-Id }}\n{yaml}")
}

/// What a `/headers` answer says the node got, and the response's own headers.
pub(crate) async fn ask(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    url: &str,
    sent: &[(&str, &str)],
) -> (HeaderMap, serde_json::Value) {
    let mut req = Request::get(url);
    for (k, v) in sent {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (head, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        head.headers,
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

pub(crate) async fn ask_h1(url: &str, sent: &[(&str, &str)]) -> (HeaderMap, serde_json::Value) {
    let mut req = Request::get(url);
    for (k, v) in sent {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (head, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        head.headers,
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

fn id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn made(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_made_or_kept_and_reach_the_node_and_the_client_over_http1_and_http2() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&with_ids(http_config(&[("a", a.addr)], ""))).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let url = proxy.url("web", "/headers");

    // HTTP/1.1: none sent, one made; the node got the same.
    let (headers, seen) = ask_h1(&url, &[]).await;
    let given = id(&headers);
    assert!(made(&given), "{headers:?}");
    assert_eq!(seen["x-request-id"], given.as_str(), "{seen}");
    let (again, _) = ask_h1(&url, &[]).await;
    assert_ne!(id(&again), given, "every request its own ID");

    // A sane one is kept; trace context passes untouched.
    let sent = [
        ("x-request-id", "order-42.retry_1"),
        ("traceparent", TRACEPARENT),
        ("tracestate", TRACESTATE),
    ];
    let (headers, seen) = ask_h1(&url, &sent).await;
    assert_eq!(id(&headers), "order-42.retry_1");
    assert_eq!(seen["x-request-id"], "order-42.retry_1");
    assert_eq!(seen["traceparent"], TRACEPARENT);
    assert_eq!(seen["tracestate"], TRACESTATE);

    // Too long, or not visible ASCII: replaced, and the node never sees the client's.
    let long = "x".repeat(129);
    for bad in [long.as_str(), "two words"] {
        let (headers, seen) = ask_h1(&url, &[("x-request-id", bad)]).await;
        assert!(made(&id(&headers)), "{bad:?}: {headers:?}");
        assert_eq!(seen["x-request-id"], id(&headers).as_str());
    }

    // HTTP/2 (prior knowledge): the same.
    let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (headers, seen) = ask(&mut h2, &url, &[]).await;
    assert!(made(&id(&headers)), "{headers:?}");
    assert_eq!(seen["x-request-id"], id(&headers).as_str());
    let (headers, seen) = ask(&mut h2, &url, &sent).await;
    assert_eq!(id(&headers), "order-42.retry_1");
    assert_eq!(seen["x-request-id"], "order-42.retry_1");
    assert_eq!(seen["traceparent"], TRACEPARENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_handoffs_own_carries_the_id_and_none_is_added_when_ids_are_off() {
    let proxy = Proxy::start(&with_ids(http_config(&[("a", dead_addr().await)], ""))).await;
    let (headers, _) = ask_h1(&proxy.url("web", "/"), &[("x-request-id", "mine")]).await;
    assert_eq!(
        id(&headers),
        "mine",
        "the 503 says which request it answered"
    );

    let a = HttpBackend::start("a", "1.0.0").await;
    let plain = Proxy::start(&http_config(&[("a", a.addr)], "")).await;
    plain.wait_health("web", "a", Health::Up).await;
    let (headers, seen) = ask_h1(&plain.url("web", "/headers"), &[]).await;
    assert!(headers.get("x-request-id").is_none() && seen.get("x-request-id").is_none());
}

#[test]
fn a_header_that_framing_or_handoff_owns_cannot_carry_ids() {
    let base = http_config(&[("a", "127.0.0.1:1".parse().unwrap())], "");
    for bad in [
        "Content-Length",
        "connection",
        "X-Forwarded-For",
        "two words",
        "",
    ] {
        let yaml = format!("request_id: {{ header: \"{bad}\" }}\n{base}");
        let err = handoff::config::parse(&yaml).expect_err(bad).to_string();
        assert!(err.contains("request_id.header"), "{bad:?}: {err}");
    }
    let yaml = format!("request_id: {{}}\n{base}");
    let config = handoff::config::parse(&yaml).unwrap();
    assert_eq!(&*config.request_id.unwrap().header, "X-Request-Id");
}

/// An h2c backend that answers every request with the request's headers as JSON, and an
/// `x-request-id` of its own that the client must not see.
async fn h2c_headers_backend() -> std::net::SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let map: serde_json::Map<String, serde_json::Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                        .collect();
                    let body = serde_json::Value::Object(map).to_string();
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut()
                        .insert("x-request-id", "the-backend-s-own".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_of_an_http2_pool_gets_the_id_the_node_got() {
    let backend = h2c_headers_backend().await;
    let yaml = format!(
        r#"request_id: {{ header: X-Request-Id }}
admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    routes: [ {{ pool: h2 }} ]
pools:
  - name: h2
    upstream: {{ protocol: h2c }}
    nodes: [ {{ name: a, addr: "{backend}" }} ]
    health: {{ interval: 100ms, tcp: {{}} }}
"#
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("h2", "a", Health::Up).await;
    let url = proxy.url("web", "/headers");
    let (headers, seen) = ask_h1(&url, &[]).await;
    assert!(made(&id(&headers)), "{headers:?}");
    assert_eq!(seen["x-request-id"], id(&headers).as_str(), "{seen}");
    let (headers, seen) = ask_h1(
        &url,
        &[("x-request-id", "kept-1"), ("traceparent", TRACEPARENT)],
    )
    .await;
    assert_eq!(id(&headers), "kept-1");
    assert_eq!(seen["x-request-id"], "kept-1");
    assert_eq!(seen["traceparent"], TRACEPARENT);
    assert_eq!(
        headers.get_all("x-request-id").iter().count(),
        1,
        "{headers:?}"
    );

    // An HTTP/2 client of the same pool: the same.
    let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (headers, seen) = ask(&mut h2, &url, &[]).await;
    assert!(made(&id(&headers)), "{headers:?}");
    assert_eq!(seen["x-request-id"], id(&headers).as_str());
}
