//! Affinity: cookie and source-address pinning, and how a draining node keeps its pinned
//! clients until `drain.session_timeout`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::backends::{read_to_eof, tcp_echo_server, HttpBackend};
use crate::common::*;
use handoff::pool::{AdminState, Health, SessionKind};

fn cookie_config(a: SocketAddr, b: SocketAddr) -> String {
    http_config(&[("a", a), ("b", b)], "").replace(
        "    health:",
        "    affinity: { cookie: \"handoff_node\", idle_timeout: 60s }\n    drain: { timeout: 30s, session_timeout: 1s }\n    health:",
    )
}

/// A client that keeps the affinity cookie, as a browser would.
pub(crate) struct Browser {
    client: TestClient,
    pub(crate) cookie: Option<String>,
}

impl Browser {
    pub(crate) fn new() -> Self {
        Browser {
            client: client(),
            cookie: None,
        }
    }

    /// GETs `url`; returns which node answered.
    pub(crate) async fn get(&mut self, url: &str) -> String {
        self.get_with_close(url).await.0
    }

    /// GETs `url`; returns which node answered, and whether it said `Connection: close`.
    async fn get_with_close(&mut self, url: &str) -> (String, bool) {
        let mut req = http::Request::get(url);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c.as_str());
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        if let Some(set) = resp.headers().get("set-cookie") {
            let set = set.to_str().unwrap();
            assert!(set.contains("HttpOnly"), "{set}");
            self.cookie = Some(set.split(';').next().unwrap().to_string());
        }
        let close = resp
            .headers()
            .get("connection")
            .is_some_and(|v| v == "close");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let node = String::from_utf8_lossy(&body)
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        (node, close)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_pins_a_client_which_follows_its_node_into_drain_until_the_session_timeout() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let proxy = Proxy::start(&cookie_config(a.addr, b.addr)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let url = proxy.url("web", "/");

    let mut alice = Browser::new();
    let home = alice.get(&url).await;
    let cookie = alice.cookie.clone().expect("affinity cookie");
    // Opaque: it names neither an address nor a port of any backend.
    for addr in [a.addr, b.addr] {
        assert!(
            !cookie.contains(&addr.ip().to_string()) && !cookie.contains(&addr.port().to_string()),
            "{cookie}"
        );
    }
    for _ in 0..99 {
        assert_eq!(alice.get(&url).await, home, "a pinned client changed node");
    }
    let (_, view) = proxy
        .admin(Method::GET, &format!("/v1/pools/web/nodes/{home}"), None)
        .await;
    assert_eq!(view["sessions"]["affinity"], 1, "{view}");

    // A forged cookie cannot pick a node: it is just a new client.
    let mut mallory = Browser {
        client: client(),
        cookie: Some("handoff_node=ffffffffffffffff.1".into()),
    };
    mallory.get(&url).await;
    assert_ne!(
        mallory.cookie.as_deref(),
        Some("handoff_node=ffffffffffffffff.1")
    );

    // The session window (1 s) runs from the moment the drain took effect, which lies between
    // `before` and `after`: requests answered before `before + 1s` must stay home, requests
    // sent after `after + 1s` must not. Only these bounds are asserted, so load cannot flake
    // it (a request sent within the window may be routed after it).
    let window = Duration::from_secs(1);
    // The window is compared in whole milliseconds.
    let rounding = Duration::from_millis(2);
    let before = tokio::time::Instant::now();
    let (status, _) = proxy
        .admin_json(
            Method::POST,
            &format!("/v1/pools/web/nodes/{home}/drain"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let after = tokio::time::Instant::now();
    let mut moved = false;
    let mut stayed = 0;
    loop {
        let sent = tokio::time::Instant::now();
        if sent > after + window + Duration::from_millis(300) && moved {
            break;
        }
        assert!(
            sent < after + WAIT,
            "the client never moved off the draining node"
        );
        let (node, close) = alice.get_with_close(&url).await;
        // The proxy picked the node between `sent` and now: a slow answer may have been
        // picked after the window though sent within it.
        let answered = tokio::time::Instant::now();
        // The draining node tells its keep-alive client to reconnect.
        assert_eq!(close, node == home, "Connection: close from {node}");
        if node == home {
            assert!(!moved, "went back to the draining node");
            stayed += 1;
        } else {
            moved = true;
        }
        if answered + rounding < before + window {
            assert_eq!(node, home, "left its node before the session window ended");
        }
        if sent > after + window + rounding {
            assert_ne!(
                node, home,
                "still on the draining node after the session window"
            );
        }
        let mut newcomer = Browser::new();
        assert_ne!(
            newcomer.get(&url).await,
            home,
            "a new client reached the draining node"
        );
    }
    println!("pinned client stayed for {stayed} requests within the session window (1s)");
    assert!(stayed > 0, "the pinned client never continued on its node");
    proxy.wait_drained("web", &home).await;
}

#[tokio::test]
async fn source_ip_affinity_keeps_a_tcp_client_on_one_node() {
    let (ea, eb) = (tcp_echo_server().await, tcp_echo_server().await);
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: t, listen: "127.0.0.1:0", protocol: tcp, pool: p }}
pools:
  - name: p
    nodes: [ {{ name: a, addr: "{ea}" }}, {{ name: b, addr: "{eb}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, tcp: {{}} }}
    affinity: {{ source_ip: true }}
"#
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("p", "a", Health::Up).await;
    proxy.wait_health("p", "b", Health::Up).await;
    let mut homes = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy.addr("t")).await.unwrap();
        s.write_all(b"x").await.unwrap();
        s.shutdown().await.unwrap();
        read_to_eof(&mut s, WAIT).await;
        let (_, pool) = proxy.admin(Method::GET, "/v1/pools/p", None).await;
        for n in pool["nodes"].as_array().unwrap() {
            if n["sessions"]["affinity"] == 1 {
                homes.insert(n["name"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(homes.len(), 1, "one address landed on {homes:?}");
}

/// Whether `s` is closed by the proxy within `limit` (EOF or reset), after one echo try.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let _ = s.write_all(b"x").await;
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_continues_on_a_node_past_its_drain_deadline_is_closed_at_once() {
    let (ea, eb) = (tcp_echo_server().await, tcp_echo_server().await);
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: t, listen: "127.0.0.1:0", protocol: tcp, pool: p }}
pools:
  - name: p
    nodes: [ {{ name: a, addr: "{ea}" }}, {{ name: b, addr: "{eb}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, tcp: {{}} }}
    affinity: {{ source_ip: true, idle_timeout: 60s }}
    drain: {{ timeout: 200ms, close_spread: 0s, session_timeout: 30s }}
"#
    );
    let (proxy, mut first, home) = tcp_session_drained(&yaml, json!({})).await;
    let mut byte = [0u8; 1];
    // The deadline closes the session that was open...
    assert!(
        closed_within(&mut first, WAIT).await,
        "the open session outlived the deadline"
    );
    let node = proxy.node("p", home);
    assert_eq!(
        node.state.admin(),
        AdminState::Draining,
        "pinned client keeps it draining"
    );
    // ...and a continuation of the pinned client that starts after it is closed at once.
    let mut late = TcpStream::connect(proxy.addr("t")).await.unwrap();
    assert!(
        closed_within(&mut late, WAIT).await,
        "a session started after the deadline was left open"
    );
    // Serving again, the node's new sessions live.
    let (status, _) = proxy
        .admin_json(
            Method::POST,
            &format!("/v1/pools/p/nodes/{home}/enable"),
            json!({"warmup": "0s"}),
        )
        .await;
    assert_eq!(status, 200);
    let active = node
        .state
        .wait_until(WAIT, |s| s.admin() == AdminState::Active)
        .await;
    assert!(active);
    let mut again = TcpStream::connect(proxy.addr("t")).await.unwrap();
    again.write_all(b"y").await.unwrap();
    again.read_exact(&mut byte).await.unwrap();
    assert_eq!(
        node.state.sessions(SessionKind::Tcp),
        1,
        "the client went back home"
    );
    assert!(
        !closed_within(&mut again, Duration::from_millis(500)).await,
        "a session on the enabled node was closed"
    );
}
