//! TCP rebalance: long-lived connections move back to a returned node, gracefully, at the
//! configured rate.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::backends::tcp_echo_server;
use crate::common::*;
use handoff::pool::{Health, SessionKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_connections_on_b_become_twenty_twenty_at_the_configured_rate() {
    let (ea, eb) = (tcp_echo_server().await, tcp_echo_server().await);
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: t, listen: "127.0.0.1:0", protocol: tcp, pool: p }}
pools:
  - name: p
    nodes: [ {{ name: a, addr: "{ea}" }}, {{ name: b, addr: "{eb}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, unhealthy_after: 2, tcp: {{}} }}
    warmup: 200ms
    rebalance: {{ max_closes_per_sec: 20 }}
"#
    );
    let proxy = Arc::new(Proxy::start(&yaml).await);
    proxy.wait_health("p", "a", Health::Up).await;
    proxy.wait_health("p", "b", Health::Up).await;
    proxy
        .admin_json(Method::POST, "/v1/pools/p/nodes/a/drain", json!({}))
        .await;
    proxy.wait_drained("p", "a").await;

    // 40 clients that keep one connection open and reconnect whenever it is closed.
    let closes = Arc::new(AtomicUsize::new(0));
    let resets = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for i in 0..40 {
        let (addr, closes, resets, stop) = (
            proxy.addr("t"),
            closes.clone(),
            resets.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let msg = format!("client {i}");
                s.write_all(msg.as_bytes()).await.unwrap();
                let mut buf = vec![0u8; msg.len()];
                if s.read_exact(&mut buf).await.is_err() {
                    continue;
                }
                // Hold the connection until the proxy closes it (or the test ends).
                let mut rest = Vec::new();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = s.read_to_end(&mut rest) => match r {
                        Ok(_) => closes.fetch_add(1, SeqCst),
                        Err(_) => resets.fetch_add(1, SeqCst),
                    },
                };
            }
        }));
    }
    let (a, b) = (proxy.node("p", "a"), proxy.node("p", "b"));
    eventually("40 sessions on b", || {
        b.state.sessions(SessionKind::Tcp) == 40
    })
    .await;

    proxy
        .admin_json(Method::POST, "/v1/pools/p/nodes/a/enable", json!({}))
        .await;
    let (status, _) = proxy
        .admin(
            Method::GET,
            "/v1/pools/p/nodes/a/wait?state=active&timeout=5s",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let active_at = tokio::time::Instant::now();
    eventually("the shares even out", || {
        let (na, nb) = (
            a.state.sessions(SessionKind::Tcp),
            b.state.sessions(SessionKind::Tcp),
        );
        na + nb == 40 && na.abs_diff(nb) <= 4
    })
    .await;
    let took = active_at.elapsed();
    // The rebalancer notices the shares are even and stops: wait for that, not for a time.
    eventually("the rebalance finishes", || {
        !proxy.app.control.rebalancing.lock().unwrap().contains("p")
    })
    .await;
    let (na, nb) = (
        a.state.sessions(SessionKind::Tcp),
        b.state.sessions(SessionKind::Tcp),
    );
    println!(
        "after rebalance: a={na} b={nb}, {} closes in {took:?}",
        closes.load(SeqCst)
    );
    assert_eq!(na + nb, 40);
    assert!(na.abs_diff(nb) <= 4, "a={na} b={nb}");
    assert!(
        (18..=22).contains(&closes.load(SeqCst)),
        "closed {} connections",
        closes.load(SeqCst)
    );
    assert_eq!(
        resets.load(SeqCst),
        0,
        "a connection was reset instead of closed"
    );
    // 18+ closes at 20/s take at least 17 periods of 50 ms.
    assert!(
        took >= Duration::from_millis(700),
        "rebalanced faster than the rate allows: {took:?}"
    );
    let (_, node_b) = proxy.admin(Method::GET, "/v1/pools/p/nodes/b", None).await;
    assert_eq!(
        node_b["rebalance_closes"].as_u64().unwrap() as usize,
        closes.load(SeqCst)
    );
    stop.cancel();
    for c in clients {
        let _ = c.await;
    }
}
