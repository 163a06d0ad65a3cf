//! Drain, the pair guard and wait, over real sockets.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::common::backends::{dead_addr, tcp_echo_server, HttpBackend};
use crate::common::*;
use handoff::pool::{Health, SessionKind};

#[tokio::test]
async fn draining_a_node_whose_sibling_is_down_needs_force() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let dead = dead_addr().await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr), ("b", dead)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Down).await;
    let (status, body) = proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("pair guard"),
        "{body}"
    );
    assert_eq!(body["detail"]["node"], "a");
    assert_eq!(
        proxy.node("web", "a").state.admin().as_str(),
        "active",
        "a refused drain changed state"
    );
    let (status, body) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/nodes/a/drain",
            json!({"force": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        matches!(body["state"].as_str(), Some("draining" | "drained")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_finishes_its_requests_and_takes_no_new_ones() {
    let (a, b, proxy) = http_pair_up().await;
    // A slow request lands on one node; drain that node.
    let url = proxy.url("web", "/slow/800");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    let (na, nb) = (proxy.node("web", "a"), proxy.node("web", "b"));
    eventually("the slow request is in flight", || {
        na.state.active_sessions() + nb.state.active_sessions() == 1
    })
    .await;
    let (busy, other, other_backend) = if na.state.active_sessions() == 1 {
        ("a", "b", &b)
    } else {
        ("b", "a", &a)
    };
    let (status, view) = proxy
        .admin_json(
            Method::POST,
            &format!("/v1/pools/web/nodes/{busy}/drain"),
            json!({"timeout": "10s"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["state"], "draining");
    assert!(view["deadline"].is_string(), "{view}");
    // Idempotent: a second drain changes nothing.
    let (status, again) = proxy
        .admin_json(
            Method::POST,
            &format!("/v1/pools/web/nodes/{busy}/drain"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &again["deadline"]),
        (200, &view["deadline"])
    );
    let before = other_backend.hits();
    let c = client();
    for _ in 0..20 {
        let (status, body) = get(&c, &proxy.url("web", "/")).await;
        assert_eq!(status, 200);
        assert!(
            body.starts_with(other),
            "new request reached the draining node: {body}"
        );
    }
    assert_eq!(other_backend.hits(), before + 20);
    let (status, body) = slow.await.unwrap();
    assert_eq!(
        (status, body.starts_with(busy)),
        (200, true),
        "in-flight request lost: {body}"
    );
    let node = proxy.wait_drained("web", busy).await;
    assert_eq!(node["state"], "drained");
    assert_eq!(node["deadline_closes"], 0);
}

fn tcp_pair(a: SocketAddr, b: SocketAddr, drain: &str) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: t, listen: "127.0.0.1:0", protocol: tcp, pool: p }}
pools:
  - name: p
    nodes: [ {{ name: a, addr: "{a}" }}, {{ name: b, addr: "{b}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, unhealthy_after: 2, tcp: {{}} }}
    drain: {drain}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_tcp_session_lives_until_the_deadline_then_gets_a_fin() {
    let (ea, eb) = (tcp_echo_server().await, tcp_echo_server().await);
    let proxy = Proxy::start(&tcp_pair(ea, eb, "{ timeout: 700ms, close_spread: 0s }")).await;
    proxy.wait_health("p", "a", Health::Up).await;
    proxy.wait_health("p", "b", Health::Up).await;
    let mut long = TcpStream::connect(proxy.addr("t")).await.unwrap();
    echo_once(&mut long, b"hello").await;
    let (na, nb) = (proxy.node("p", "a"), proxy.node("p", "b"));
    let (busy, other) = if na.state.sessions(SessionKind::Tcp) == 1 {
        ("a", nb)
    } else {
        ("b", na)
    };
    let started = tokio::time::Instant::now();
    let (status, _) = proxy
        .admin_json(
            Method::POST,
            &format!("/v1/pools/p/nodes/{busy}/drain"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    // Before the deadline the session still works, and new sessions go to the sibling.
    echo_once(&mut long, b"still here").await;
    let mut fresh = TcpStream::connect(proxy.addr("t")).await.unwrap();
    echo_once(&mut fresh, b"new").await;
    assert_eq!(
        other.state.sessions(SessionKind::Tcp),
        1,
        "the new session did not go to the sibling"
    );
    // At the deadline: a FIN (a clean EOF, not a reset).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, long.read_to_end(&mut rest))
        .await
        .expect("never closed");
    assert!(read.is_ok(), "expected FIN, got {read:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "closed before the deadline"
    );
    let node = proxy.wait_drained("p", busy).await;
    assert_eq!(node["deadline_closes"], 1);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(&format!(
            "handoff_drain_deadline_closes_total{{kind=\"tcp\",node=\"{busy}\",pool=\"p\"}} 1"
        )),
        "{metrics}"
    );
}

/// A TCP pair with one long-lived session, whose node (returned) has just been drained.
async fn drained_with_a_session(drain: &str) -> (Proxy, TcpStream, &'static str) {
    let (ea, eb) = (tcp_echo_server().await, tcp_echo_server().await);
    tcp_session_drained(&tcp_pair(ea, eb, drain), json!({})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_answers_as_the_last_session_ends() {
    let (proxy, long, busy) = drained_with_a_session("{ timeout: 60s }").await;
    let admin = proxy.admin;
    let waiter = tokio::spawn(async move {
        let (status, _) = send(
            Method::GET,
            &format!("http://{admin}/v1/pools/p/nodes/{busy}/wait?state=drained&timeout=20s"),
            None,
        )
        .await;
        (status, tokio::time::Instant::now())
    });
    // The long poll must be waiting before the session ends (it is not drained yet): the
    // drain task waits on the node too, so a second waiter is the long poll.
    let node = proxy.node("p", busy);
    eventually("the long poll is waiting", || node.state.waiters() >= 2).await;
    assert!(
        !waiter.is_finished(),
        "wait answered while a session was open"
    );
    let ended = tokio::time::Instant::now();
    drop(long);
    let (status, answered) = waiter.await.unwrap();
    let lag = answered.duration_since(ended);
    println!("wait answered {lag:?} after the last session ended");
    assert_eq!(status, 200);
    // Woken by the session's end, not by a poll: well within a second even on a loaded
    // 2-core machine (a polling wait would show its period here).
    assert!(
        lag < Duration::from_secs(1),
        "wait answered {lag:?} after the last session ended"
    );
}

#[tokio::test]
async fn wait_times_out_with_504_and_the_remaining_sessions() {
    let (proxy, _long, busy) = drained_with_a_session("{ timeout: 60s }").await;
    let (status, node) = proxy
        .admin(
            Method::GET,
            &format!("/v1/pools/p/nodes/{busy}/wait?state=drained&timeout=300ms"),
            None,
        )
        .await;
    assert_eq!(status, 504);
    assert_eq!(node["state"], "draining");
    assert_eq!(node["sessions"]["tcp"], 1);
    assert_eq!(node["sessions"]["total"], 1);
}

#[tokio::test]
async fn bad_lifecycle_requests_are_refused_and_change_nothing() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr), ("b", b.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let cases = [
        (Method::POST, "/v1/pools/web/nodes/zz/drain", json!({}), 404),
        (
            Method::POST,
            "/v1/pools/web/nodes/a/drain",
            json!({"timeout": "soon"}),
            400,
        ),
        (
            Method::POST,
            "/v1/pools/web/nodes/a/drain",
            json!({"timeout": "1s", "colour": 1}),
            400,
        ),
        (
            Method::POST,
            "/v1/pools/web/nodes/a/enable",
            json!({"warmup": "5x"}),
            400,
        ),
        (
            Method::POST,
            "/v1/pools/nope/rollouts",
            json!({"version": "2"}),
            404,
        ),
        (
            Method::POST,
            "/v1/pools/web/rollouts",
            json!({"version": ""}),
            400,
        ),
        (
            Method::POST,
            "/v1/pools/web/rollouts",
            json!({"version": "2", "order": ["a", "zz"]}),
            404,
        ),
        (Method::POST, "/v1/rollouts/none/abort", json!({}), 404),
    ];
    for (method, path, body, code) in cases {
        let (status, resp) = proxy.admin_json(method, path, body.clone()).await;
        assert_eq!(status.as_u16(), code, "{path} {body}: {resp}");
        assert!(resp["error"].is_string());
    }
    for bad in [
        "state=sleeping",
        "state=drained&timeout=x",
        "timeout=1s",
        "state=up&x=1",
    ] {
        let (status, _) = proxy
            .admin(
                Method::GET,
                &format!("/v1/pools/web/nodes/a/wait?{bad}"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = send(
        Method::POST,
        &format!("http://{}/v1/pools/web/nodes/a/drain", proxy.admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "an empty body means defaults");
    let (_, b_node) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/b", None)
        .await;
    assert_eq!(b_node["state"], "active");
    let (_, rollouts) = proxy.admin(Method::GET, "/v1/rollouts", None).await;
    assert_eq!(rollouts["rollouts"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_waiting_at_the_deadline_is_counted_and_served_by_the_sibling() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let yaml = http_config(&[("a", a.addr), ("b", b.addr)], "").replace(
        "    health:",
        "    drain: { timeout: 300ms, close_spread: 0s }\n    health:",
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let url = proxy.url("web", "/slow/2000");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    let (na, nb) = (proxy.node("web", "a"), proxy.node("web", "b"));
    eventually("the slow request is in flight", || {
        na.state.active_sessions() + nb.state.active_sessions() == 1
    })
    .await;
    let (busy, other) = if na.state.active_sessions() == 1 {
        ("a", "b")
    } else {
        ("b", "a")
    };
    proxy
        .admin_json(
            Method::POST,
            &format!("/v1/pools/web/nodes/{busy}/drain"),
            json!({}),
        )
        .await;
    let node = proxy.wait_drained("web", busy).await;
    assert_eq!(node["deadline_closes"], 1);
    // The GET had no answer yet when its connection was closed: it is sent again, once, to
    // the sibling.
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with(other), "{body}");
}

#[tokio::test]
async fn draining_closes_idle_pooled_connections_at_once() {
    let (_a, _b, proxy) = http_pair_up().await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, &proxy.url("web", "/")).await.0, 200);
    }
    let node = proxy.node("web", "a");
    eventually("a pooled connection to a is idle", || !node.idle.is_empty()).await;
    let (status, view) = proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        view["idle_connections"], 0,
        "idle pooled connections were not closed at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_of_a_node_get_goaway_at_its_drain_deadline() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let a = HttpBackend::start("a", "1.0.0").await;
    let yaml = http_config(&[("a", a.addr)], "    timeouts: { header_read: 400ms }\n").replace(
        "    health:",
        "    drain: { timeout: 300ms, close_spread: 0s }\n    health:",
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    // An h2c client served once by a, then idle on its connection.
    let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(proxy.url("web", "/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    // A slow request keeps a busy past its drain deadline.
    let url = proxy.url("web", "/slow/3000");
    let _slow = tokio::spawn(async move { get(&client(), &url).await });
    let node = proxy.node("web", "a");
    eventually("the slow request is in flight", || {
        node.state.active_sessions() == 1
    })
    .await;
    let (status, _) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/nodes/a/drain",
            json!({"force": true}),
        )
        .await;
    assert_eq!(status, 200);
    let ended = tokio::time::timeout(WAIT, conn)
        .await
        .expect("no GOAWAY after the node's deadline");
    assert!(
        ended.unwrap().is_ok(),
        "the connection ended with an error instead of a GOAWAY"
    );
}
