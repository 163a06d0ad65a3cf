//! Per-route header rules (`request_headers`, `response_headers`): fields removed, set and
//! added, with `${request_id}`, `${client_ip}`, `${node}` and `${node_version}`, for HTTP/1
//! and HTTP/2 clients alike; a rule on a framing header is refused at reload, and the
//! running rules stay.

use http::{HeaderMap, Method};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::common::backends::HttpBackend;
use crate::common::*;
use crate::request_id::{ask, ask_h1};
use handoff::pool::Health;

fn config(a: std::net::SocketAddr, extra_rule: &str) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
request_id: {{ header: X-Request-Id }}
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    routes:
      - pool: web
        request_headers:
          set: {{ X-Env: prod }}
          add: {{ X-Client: "${{client_ip}}", X-Req: "id ${{request_id}}"{extra_rule} }}
          remove: [ X-Secret ]
        response_headers:
          set: {{ X-Served-By: "${{node}}@${{node_version}}" }}
          remove: [ X-Version ]
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{a}" }} ]
    health: {FAST_HEALTH}
"#
    )
}

fn check(headers: &HeaderMap, seen: &serde_json::Value) {
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(seen["x-env"], "prod", "{seen}");
    assert!(seen.get("x-secret").is_none(), "{seen}");
    assert_eq!(seen["x-client"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-req"], format!("id {id}").as_str(), "{seen}");
    assert_eq!(headers["x-served-by"], "a@1.0.0", "{headers:?}");
    assert!(headers.get("x-version").is_none(), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_rewrite_requests_and_responses_and_a_bad_reload_keeps_them() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&config(a.addr, "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let url = proxy.url("web", "/headers");
    let sent = [("x-secret", "s3cret"), ("x-env", "dev")];

    let (headers, seen) = ask_h1(&url, &sent).await;
    check(&headers, &seen);

    let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (headers, seen) = ask(&mut h2, &url, &sent).await;
    check(&headers, &seen);

    // A rule on a framing header, and a variable that does not exist: refused, named.
    std::fs::write(
        &proxy.config_path,
        config(a.addr, ", Content-Length: \"5\", X-Bad: \"${nope}\""),
    )
    .unwrap();
    let (status, body) = proxy.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("request_headers.add.Content-Length") && text.contains("framing"),
        "{text}"
    );
    assert!(text.contains("unknown variable ${nope}"), "{text}");
    let (headers, seen) = ask_h1(&url, &sent).await;
    check(&headers, &seen);
}

#[test]
fn node_variables_are_refused_in_request_rules() {
    let yaml = config("127.0.0.1:9".parse().unwrap(), ", X-To: \"${node}\"");
    let err = handoff::config::parse(&yaml).unwrap_err().to_string();
    assert!(
        err.contains("request_headers.add.X-To") && err.contains("response_headers"),
        "{err}"
    );
}
