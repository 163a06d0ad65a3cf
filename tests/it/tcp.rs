//! TCP proxying over real sockets: byte-exact bulk copy with half-close, connect retry,
//! no-node behaviour, idle timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::backends::{dead_addr, read_to_eof, tcp_echo_server, tcp_transform_server};
use crate::common::*;
use handoff::pool::Health;

fn tcp_config(nodes: &[(&str, SocketAddr)], timeouts: &str) -> String {
    let nodes: String = nodes
        .iter()
        .map(|(n, a)| format!("      - {{ name: {n}, addr: \"{a}\" }}\n"))
        .collect();
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: cache
    listen: "127.0.0.1:0"
    protocol: tcp
    pool: cache
{timeouts}pools:
  - name: cache
    nodes:
{nodes}    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, unhealthy_after: 2, tcp: {{}} }}
"#
    )
}

/// A deterministic pseudo-random payload.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carries_ten_mebibytes_each_way_byte_exact_with_half_close() {
    let backend = tcp_transform_server().await;
    let proxy = Proxy::start(&tcp_config(&[("a", backend)], "")).await;
    proxy.wait_health("cache", "a", Health::Up).await;
    let data = payload(10 * 1024 * 1024);
    let expected: Vec<u8> = data.iter().map(|b| b ^ 0xA5).collect();
    let stream = TcpStream::connect(proxy.addr("cache")).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        // Half-close: the backend only answers once it sees our EOF.
        w.shutdown().await.unwrap();
        w
    });
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut reply))
        .await
        .expect("reply timed out")
        .unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(reply.len(), expected.len());
    assert_eq!(fnv1a(&reply), fnv1a(&expected), "reply corrupted");
    let metrics = proxy.metrics().await;
    let bytes_in = metric_value(
        &metrics,
        "handoff_listener_bytes_total{direction=\"in\",listener=\"cache\"}",
    );
    assert!(bytes_in >= 10.0 * 1024.0 * 1024.0, "bytes in: {bytes_in}");
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_node() {
    let echo = tcp_echo_server().await;
    let dead = dead_addr().await;
    let proxy = Proxy::start(&tcp_config(&[("dead", dead), ("live", echo)], "")).await;
    proxy.wait_health("cache", "live", Health::Up).await;
    // Force the dead node to look up so picks do try it.
    let node = proxy.node("cache", "dead");
    for _ in 0..3 {
        node.state.record_check(
            node.state.address_epoch(),
            true,
            None,
            &proxy.app.snapshot.load().pools[0].config.health,
        );
    }
    for i in 0..6 {
        let mut s = TcpStream::connect(proxy.addr("cache")).await.unwrap();
        let msg = format!("hello {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let (got, eof) = read_to_eof(&mut s, WAIT).await;
        assert!(eof);
        assert_eq!(String::from_utf8_lossy(&got), msg);
    }
}

#[tokio::test]
async fn with_every_node_down_connections_close_at_once() {
    let dead = dead_addr().await;
    let proxy = Proxy::start(&tcp_config(&[("a", dead)], "")).await;
    proxy.wait_health("cache", "a", Health::Down).await;
    let mut s = TcpStream::connect(proxy.addr("cache")).await.unwrap();
    let started = tokio::time::Instant::now();
    let (data, eof) = read_to_eof(&mut s, WAIT).await;
    assert!(eof && data.is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn idle_sessions_are_closed_after_the_idle_timeout() {
    let echo = tcp_echo_server().await;
    let proxy = Proxy::start(&tcp_config(
        &[("a", echo)],
        "    timeouts: { idle: 300ms }\n",
    ))
    .await;
    proxy.wait_health("cache", "a", Health::Up).await;
    let mut s = TcpStream::connect(proxy.addr("cache")).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    let started = tokio::time::Instant::now();
    let (_, eof) = read_to_eof(&mut s, WAIT).await;
    assert!(eof, "idle session not closed");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // The session is no longer counted on the node.
    let node = proxy.node("cache", "a");
    assert!(
        node.state
            .wait_until(WAIT, |s| s.active_sessions() == 0)
            .await
    );
}

#[tokio::test]
async fn backends_get_a_proxy_v2_header_with_the_clients_address() {
    use tokio::net::TcpListener;
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let yaml = tcp_config(&[("a", backend_addr)], "    proxy_protocol: v2\n");
    let proxy = Proxy::start(&yaml).await;
    // Health checks connect too: accept until a connection carries data.
    let received = tokio::spawn(async move {
        loop {
            let (mut s, _) = backend.accept().await.unwrap();
            let mut head = [0u8; 28];
            if s.read_exact(&mut head).await.is_ok() {
                let mut payload = [0u8; 5];
                s.read_exact(&mut payload).await.unwrap();
                return (head, payload);
            }
        }
    });
    proxy.wait_health("cache", "a", Health::Up).await;
    let mut client = TcpStream::connect(proxy.addr("cache")).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    client.write_all(b"hello").await.unwrap();
    let (head, payload) = tokio::time::timeout(WAIT, received).await.unwrap().unwrap();
    assert_eq!(&head[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(
        &head[12..16],
        &[0x21, 0x11, 0, 12],
        "v2 PROXY over TCP/IPv4"
    );
    let std::net::SocketAddr::V4(c) = client_addr else {
        panic!("ipv4 client")
    };
    assert_eq!(&head[16..20], &c.ip().octets(), "client address");
    assert_eq!(&head[24..26], &c.port().to_be_bytes(), "client port");
    assert_eq!(&head[20..24], &[127, 0, 0, 1]);
    assert_eq!(
        u16::from_be_bytes([head[26], head[27]]),
        proxy.addr("cache").port(),
        "listener port"
    );
    assert_eq!(&payload, b"hello", "the client's bytes follow the header");
}
