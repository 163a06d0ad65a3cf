//! Control-plane correctness: the pair guard under concurrency, pending enables, address
//! changes on reload, out-of-range admin input, and tunnels counted across the 101.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common::backends::HttpBackend;
use crate::common::*;
use handoff::lifecycle;
use handoff::pool::{AdminState, Health, SessionKind};

/// Concurrent trials of draining both nodes of a pair at once.
const TRIALS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_drains_of_both_nodes_never_both_pass_the_guard() {
    let (_a, _b, proxy) = http_pair_up().await;
    let ctl = Arc::clone(&proxy.app.control);
    let (a, b) = (
        ctl.node("web", "a").expect("a"),
        ctl.node("web", "b").expect("b"),
    );
    let mut both = 0;
    let runtime = tokio::runtime::Handle::current();
    for trial in 0..TRIALS {
        // Two OS threads released by one barrier race as closely as the machine allows.
        let barrier = std::sync::Barrier::new(2);
        let attempt = |t: &handoff::control::NodeRef| {
            let _runtime = runtime.enter();
            barrier.wait();
            lifecycle::drain(&ctl, t, Some(Duration::ZERO), false).is_ok()
        };
        let (ok_a, ok_b) = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let ra = scope.spawn(|| attempt(&a));
                let rb = scope.spawn(|| attempt(&b));
                (ra.join().unwrap(), rb.join().unwrap())
            })
        });
        if ok_a && ok_b {
            both += 1;
        }
        assert!(ok_a || ok_b, "trial {trial}: the guard refused both drains");
        // Back to both active for the next trial.
        for t in [&a, &b] {
            lifecycle::enable(&ctl, t, Some(Duration::ZERO));
        }
        for t in [&a, &b] {
            let active = t
                .node
                .state
                .wait_until(WAIT, |s| s.admin() == AdminState::Active)
                .await;
            assert!(active, "trial {trial}: {} not active again", t.node.name);
        }
    }
    println!("{TRIALS} concurrent drain trials of a pair: both drains passed {both} times");
    assert_eq!(both, 0, "both nodes of the pair were drained without force");
}

/// A pair where node `a` is down (its backend stopped) and drained.
async fn pair_with_a_down_and_drained() -> (HttpBackend, HttpBackend, Proxy) {
    let (mut a, b, proxy) = http_pair_up().await;
    a.stop().await;
    proxy.wait_health("web", "a", Health::Down).await;
    let (status, _) = proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    assert_eq!(status, 200);
    proxy.wait_drained("web", "a").await;
    (a, b, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cancels_a_pending_enable() {
    let (mut a, _b, proxy) = pair_with_a_down_and_drained().await;
    let (status, node) = proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/enable", json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (node["state"].as_str(), node["enable_pending"].as_bool()),
        (Some("drained"), Some(true)),
        "{node}"
    );
    let (status, node) = proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(node["enable_pending"], false, "{node}");
    a.restart("1.0.0").await;
    proxy.wait_health("web", "a", Health::Up).await;
    // The node is up now; a pending enable would make it warming at once. A negative can
    // only be checked over a span: give it half a second.
    let n = proxy.node("web", "a");
    let moved = n
        .state
        .wait_until(Duration::from_millis(500), |s| {
            s.admin() != AdminState::Drained
        })
        .await;
    assert!(
        !moved,
        "node went {:?} after its pending enable was cancelled",
        n.state.admin()
    );
}

/// TCP pair whose health is driven by hand (checks once an hour, one check flips it).
fn tcp_pair_manual_health(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: t, listen: "127.0.0.1:0", protocol: tcp, pool: p }}
pools:
  - name: p
    nodes: [ {{ name: a, addr: "{a}" }}, {{ name: b, addr: "{b}" }} ]
    health: {{ interval: 1h, timeout: 1s, healthy_after: 1, unhealthy_after: 1, tcp: {{}} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_on_a_draining_node_that_is_down_keeps_it_draining_until_it_is_up() {
    let (ea, eb) = (
        backends::tcp_echo_server().await,
        backends::tcp_echo_server().await,
    );
    let drain = json!({"timeout": "60s"});
    let (proxy, long, busy) = tcp_session_drained(&tcp_pair_manual_health(ea, eb), drain).await;
    let node = proxy.node("p", busy);
    let cfg = proxy
        .app
        .snapshot
        .load()
        .pool("p")
        .unwrap()
        .config
        .health
        .clone();
    node.state
        .record_check(node.state.address_epoch(), false, None, &cfg);
    assert_eq!(node.state.health(), Health::Down);
    let (status, view) = proxy
        .admin_json(
            Method::POST,
            &format!("/v1/pools/p/nodes/{busy}/enable"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        view["state"], "draining",
        "a node with a session is not drained: {view}"
    );
    assert!(
        view["deadline"].is_string(),
        "the drain deadline must stay: {view}"
    );
    assert_eq!(view["enable_pending"], true, "{view}");
    assert_eq!(view["sessions"]["tcp"], 1, "{view}");
    node.state
        .record_check(node.state.address_epoch(), true, None, &cfg);
    let warming = node
        .state
        .wait_until(WAIT, |s| {
            s.admin() == AdminState::Warming || s.admin() == AdminState::Active
        })
        .await;
    assert!(
        warming,
        "the pending enable did not start once up: {:?}",
        node.state.admin()
    );
    drop(long);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_a_node_checks_it_afresh_before_any_request() {
    let (a, b, proxy) = http_pair_up().await;
    let upgraded = HttpBackend::start("a2", "2.0.0").await;
    let dead = backends::dead_addr().await;
    let load = Load::start(proxy.url("web", "/"), 2, Duration::from_secs(30));
    // The load reaches `a` at its first address before it moves (else the move proves
    // nothing about requests in flight).
    eventually("a serves before it moves", || a.hits() > 0).await;
    let write = |addr: SocketAddr| {
        let yaml = http_config(&[("a", addr), ("b", b.addr)], "");
        std::fs::write(&proxy.config_path, yaml).unwrap();
    };
    // To a dead port: unknown at once, never up, and no request fails on it.
    write(dead);
    let (status, body) = proxy.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    let (_, view) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/a", None)
        .await;
    assert_eq!(
        (view["health"].as_str(), view["state"].as_str()),
        (Some("unknown"), Some("active")),
        "{view}"
    );
    assert!(
        view["version"].is_null(),
        "the old address's version was kept: {view}"
    );
    proxy.wait_health("web", "a", Health::Down).await;
    let failures_before = metric_value(
        &proxy.metrics().await,
        "handoff_connect_failures_total{node=\"a\",pool=\"web\"}",
    );
    // To a new backend: requests reach it only after `healthy_after` (2) checks passed there.
    write(upgraded.addr);
    let (status, _) = proxy.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 200);
    proxy.wait_health("web", "a", Health::Up).await;
    eventually("traffic reaches the moved node", || upgraded.hits() > 0).await;
    let (sent, failed) = load.finish().await;
    let checks_first = upgraded
        .stats
        .checks_at_first_hit
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        checks_first >= 2,
        "the new address got a request after {checks_first} checks"
    );
    let (_, view) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/a", None)
        .await;
    assert_eq!(view["version"], "2.0.0", "{view}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the moves"
    );
    let failures_after = metric_value(
        &proxy.metrics().await,
        "handoff_connect_failures_total{node=\"a\",pool=\"web\"}",
    );
    assert_eq!(
        failures_before, failures_after,
        "requests were sent to the dead address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_admin_durations_are_refused_and_change_nothing() {
    let (_a, _b, proxy) = http_pair_up().await;
    let (_, before) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/a", None)
        .await;
    let calls = [
        (
            "/v1/pools/web/nodes/a/drain",
            json!({"timeout": "999999999h"}),
            "at most 168h",
        ),
        (
            "/v1/pools/web/nodes/a/enable",
            json!({"warmup": "999999999h"}),
            "at most 24h",
        ),
        (
            "/v1/pools/web/rollouts",
            json!({"version": "2", "ready_timeout": "999999999h"}),
            "at most 168h",
        ),
        (
            "/v1/pools/web/rollouts",
            json!({"version": "2", "drain_timeout": "18446744073709551615h"}),
            "too large",
        ),
    ];
    for (path, body, limit) in calls {
        let (status, answer) = proxy.admin_json(Method::POST, path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        let error = answer["error"].as_str().unwrap_or("");
        assert!(error.contains(limit), "{path} {body}: {answer}");
        let (status, _) = proxy.admin(Method::GET, "/v1/status", None).await;
        assert_eq!(status, 200);
    }
    let (status, _) = proxy
        .admin(
            Method::GET,
            "/v1/pools/web/nodes/a/wait?state=drained&timeout=2h",
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (_, after) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/a", None)
        .await;
    for field in [
        "state",
        "state_since",
        "enable_pending",
        "deadline",
        "health",
    ] {
        assert_eq!(before[field], after[field], "{field} changed: {after}");
    }
    let (_, rollouts) = proxy.admin(Method::GET, "/v1/rollouts", None).await;
    assert_eq!(rollouts["rollouts"], json!([]));
}

/// A backend that answers health connects by closing, and an upgrade request with 101 only
/// when the test says so (then echoes); it reports each upgrade request as it arrives.
async fn held_upgrade_backend() -> (SocketAddr, mpsc::Receiver<tokio::sync::oneshot::Sender<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let (go_tx, go_rx) = tokio::sync::oneshot::channel();
                if tx.send(go_tx).await.is_err() || go_rx.await.is_err() {
                    return;
                }
                let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n";
                if s.write_all(answer).await.is_err() {
                    return;
                }
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_is_counted_from_its_request_to_its_end_and_holds_a_connection_slot() {
    let (backend, mut upgrades) = held_upgrade_backend().await;
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, max_connections: 1, routes: [ {{ pool: p }} ] }}
pools:
  - name: p
    nodes: [ {{ name: a, addr: "{backend}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, tcp: {{}} }}
"#
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("p", "a", Health::Up).await;
    let mut client = TcpStream::connect(proxy.addr("web")).await.unwrap();
    client
        .write_all(
            b"GET /tunnel HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let go = tokio::time::timeout(WAIT, upgrades.recv())
        .await
        .unwrap()
        .unwrap();
    // The request is on the node: drain it now, with the 101 still to come.
    let (status, view) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/p/nodes/a/drain",
            json!({"force": true, "timeout": "60s"}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["sessions"]["http_inflight"], 1, "{view}");
    go.send(()).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the 101");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    client.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(WAIT, client.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
    let node = proxy.node("p", "a");
    assert_eq!(node.state.sessions(SessionKind::Tunnel), 1);
    assert_eq!(
        node.state.admin(),
        AdminState::Draining,
        "drained with a tunnel open"
    );
    // The tunnel holds the listener's only slot: a second client is turned away.
    let mut second = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let (bytes, _) = backends::read_to_eof(&mut second, WAIT).await;
    assert!(
        bytes.is_empty(),
        "a connection beyond max_connections was served: {}",
        String::from_utf8_lossy(&bytes)
    );
    drop(client);
    proxy.wait_drained("p", "a").await;
}
