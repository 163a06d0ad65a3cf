//! Durable affinity keys: a cookie issued before a restart (with a state file) still names
//! its node after it, client addresses keep their node, and instances that share a secret
//! pin a client to the same node.

use std::net::SocketAddr;

use crate::affinity::Browser;
use crate::common::backends::{tcp_echo_server, HttpBackend};
use crate::common::*;
use handoff::pool::{Health, SessionKind};

/// Clients, each from its own loopback address, so a key change would move some of them.
const CLIENTS: u8 = 8;

fn config(a: SocketAddr, b: SocketAddr, ea: SocketAddr, eb: SocketAddr, top: &str) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
{top}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
  - {{ name: t, listen: "127.0.0.1:0", protocol: tcp, pool: p }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{a}" }}, {{ name: b, addr: "{b}" }} ]
    health: {FAST_HEALTH}
    affinity: {{ cookie: "handoff_node", idle_timeout: 60s }}
  - name: p
    nodes: [ {{ name: a, addr: "{ea}" }}, {{ name: b, addr: "{eb}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, tcp: {{}} }}
    affinity: {{ source_ip: true, idle_timeout: 60s }}
"#
    )
}

async fn all_up(proxy: &Proxy) {
    for (pool, node) in [("web", "a"), ("web", "b"), ("p", "a"), ("p", "b")] {
        proxy.wait_health(pool, node, Health::Up).await;
    }
}

/// The node a TCP client from 127.0.0.`host` lands on.
async fn tcp_home(proxy: &Proxy, host: u8) -> &'static str {
    let s = echo_session_from(host, proxy.addr("t")).await;
    let on_a = proxy.node("p", "a").state.sessions(SessionKind::Tcp) == 1;
    drop(s);
    let (a, b) = (proxy.node("p", "a"), proxy.node("p", "b"));
    eventually("the session ends", || {
        a.state.sessions(SessionKind::Tcp) + b.state.sessions(SessionKind::Tcp) == 0
    })
    .await;
    if on_a {
        "a"
    } else {
        "b"
    }
}

/// Each browser's node and cookie, and each address's node.
async fn homes(proxy: &Proxy, browsers: &mut [Browser]) -> (Vec<String>, Vec<&'static str>) {
    let url = proxy.url("web", "/");
    let mut web = Vec::new();
    for b in browsers.iter_mut() {
        web.push(b.get(&url).await);
    }
    let mut tcp = Vec::new();
    for host in 2..2 + CLIENTS {
        tcp.push(tcp_home(proxy, host).await);
    }
    (web, tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_and_addresses_keep_their_node_across_a_restart_with_a_state_file() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let (ea, eb) = (tcp_echo_server().await, tcp_echo_server().await);
    let yaml = config(a.addr, b.addr, ea, eb, "state_file: \"{DIR}/state.json\"");
    let proxy = Proxy::start(&yaml).await;
    all_up(&proxy).await;
    let mut browsers: Vec<Browser> = (0..CLIENTS).map(|_| Browser::new()).collect();
    let (web_before, tcp_before) = homes(&proxy, &mut browsers).await;
    let cookies: Vec<Option<String>> = browsers.iter().map(|b| b.cookie.clone()).collect();
    assert!(cookies.iter().all(Option::is_some));
    let proxy = proxy.restart().await;
    all_up(&proxy).await;
    let (web_after, tcp_after) = homes(&proxy, &mut browsers).await;
    let cookies_after: Vec<Option<String>> = browsers.iter().map(|b| b.cookie.clone()).collect();
    assert_eq!(
        cookies, cookies_after,
        "a cookie was not recognised after the restart"
    );
    assert_eq!(
        web_before, web_after,
        "a cookie changed node across the restart"
    );
    assert_eq!(
        tcp_before, tcp_after,
        "a client address changed node across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_secret_pin_a_client_to_the_same_node() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let (ea, eb) = (tcp_echo_server().await, tcp_echo_server().await);
    // A variable of this test's own: tests run in parallel in one process.
    let var = "HANDOFF_TEST_SHARED_AFFINITY_SECRET";
    std::env::set_var(var, "a shared secret of more than sixteen bytes");
    let yaml = config(a.addr, b.addr, ea, eb, &format!("affinity_key_env: {var}"));
    let (one, two) = (Proxy::start(&yaml).await, Proxy::start(&yaml).await);
    all_up(&one).await;
    all_up(&two).await;
    let mut browsers: Vec<Browser> = (0..CLIENTS).map(|_| Browser::new()).collect();
    let (web_one, tcp_one) = homes(&one, &mut browsers).await;
    let cookies: Vec<Option<String>> = browsers.iter().map(|b| b.cookie.clone()).collect();
    let (web_two, tcp_two) = homes(&two, &mut browsers).await;
    let cookies_two: Vec<Option<String>> = browsers.iter().map(|b| b.cookie.clone()).collect();
    assert_eq!(
        cookies, cookies_two,
        "the second instance did not recognise a cookie"
    );
    assert_eq!(
        web_one, web_two,
        "a cookie reached another node on the second instance"
    );
    assert_eq!(
        tcp_one, tcp_two,
        "an address reached another node on the second instance"
    );
}

#[tokio::test]
async fn a_short_affinity_secret_is_refused_at_start() {
    let var = "HANDOFF_TEST_SHORT_AFFINITY_SECRET";
    std::env::set_var(var, "too short");
    let yaml = format!(
        "affinity_key_env: {var}\nadmin: {{ listen: \"127.0.0.1:0\" }}\nlisteners: [ {{ name: t, listen: \"127.0.0.1:0\", protocol: tcp, pool: p }} ]\npools: [ {{ name: p, nodes: [ {{ name: a, addr: \"127.0.0.1:1\" }} ] }} ]\n"
    );
    let config = handoff::config::parse(&yaml).unwrap();
    let bound = handoff::app::bind(&config).await.unwrap();
    let shutdown = handoff::shutdown::Shutdown::new();
    let err = handoff::app::App::start(config, None, bound.listeners, shutdown)
        .await
        .err()
        .expect("a 9-byte secret must be refused");
    let text = err.to_string();
    assert!(text.contains(var) && text.contains("at least 16"), "{text}");
}
