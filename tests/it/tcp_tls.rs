//! TLS on tcp listeners: passthrough by SNI (the client sees each backend's own certificate,
//! bytes untouched) and termination (the pool gets plain bytes).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::common::backends::tcp_echo_server;
use crate::common::*;
use handoff::pool::Health;

/// A self-signed certificate for `name`: (certificate, key), also written to `dir`.
fn certificate(dir: &Path, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    (ck.cert.der().clone(), key)
}

/// A TLS server with one certificate: greets each client with `hello from {who}` and then
/// echoes what it gets.
async fn tls_backend(
    who: &'static str,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = tls
                    .write_all(format!("hello from {who}\n").as_bytes())
                    .await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

async fn tls_client(
    addr: SocketAddr,
    sni: &str,
    root: &CertificateDer<'static>,
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
)> {
    let mut store = rustls::RootCertStore::empty();
    store.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio::time::timeout(
        WAIT,
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))??;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((tls, served))
}

async fn read_line(s: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while tokio::time::timeout(WAIT, s.read(&mut byte))
        .await
        .unwrap()
        .unwrap()
        == 1
    {
        if byte[0] == b'\n' {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8(out).unwrap()
}

fn tcp_pools(pools: &[(&str, SocketAddr)]) -> String {
    pools
        .iter()
        .map(|(name, addr)| {
            format!("  - {{ name: {name}, nodes: [ {{ name: n, addr: \"{addr}\" }} ], health: {{ interval: 100ms, tcp: {{}} }} }}\n")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_routes_send_each_name_to_its_own_backend_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = certificate(dir.path(), "a.example.com");
    let (cert_b, key_b) = certificate(dir.path(), "b.example.com");
    let (cert_w, key_w) = certificate(dir.path(), "x.wild.example");
    let a = tls_backend("a", cert_a.clone(), key_a).await;
    let b = tls_backend("b", cert_b.clone(), key_b).await;
    let w = tls_backend("w", cert_w.clone(), key_w).await;
    let echo = tcp_echo_server().await;
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: front
    listen: "127.0.0.1:0"
    protocol: tcp
    pool: other
    sni_routes:
      - {{ sni: a.example.com, pool: pa }}
      - {{ sni: B.Example.com, pool: pb }}
      - {{ sni: "*.wild.example", pool: pw }}
pools:
{}"#,
        tcp_pools(&[("pa", a), ("pb", b), ("pw", w), ("other", echo)])
    );
    let proxy = Proxy::start(&yaml).await;
    for pool in ["pa", "pb", "pw", "other"] {
        proxy.wait_health(pool, "n", Health::Up).await;
    }
    let addr = proxy.addr("front");
    for (sni, root, who) in [
        ("a.example.com", &cert_a, "a"),
        ("b.example.com", &cert_b, "b"),
        ("x.wild.example", &cert_w, "w"),
    ] {
        let (mut tls, served) = tls_client(addr, sni, root)
            .await
            .expect("handshake with the backend");
        // The client verified the backend's own certificate: handoff did not terminate.
        assert_eq!(&served, root, "{sni}");
        assert_eq!(read_line(&mut tls).await, format!("hello from {who}"));
        tls.write_all(b"ping\n").await.unwrap();
        assert_eq!(read_line(&mut tls).await, "ping");
    }
    // No route for the name, and plain bytes (not TLS): the default pool, untouched.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"not tls at all\n").await.unwrap();
    assert_eq!(read_line(&mut plain).await, "not tls at all");
    // A name no route takes goes to the default pool (the plain echo server, which echoes
    // the ClientHello itself: proof that it arrived untouched).
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        tls_client(addr, "c.example.com", &cert_a),
    )
    .await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a handshake with the echo server cannot succeed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_pool_an_unrouted_name_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = certificate(dir.path(), "a.example.com");
    let a = tls_backend("a", cert_a.clone(), key_a).await;
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: front
    listen: "127.0.0.1:0"
    protocol: tcp
    sni_routes: [ {{ sni: a.example.com, pool: pa }} ]
pools:
{}"#,
        tcp_pools(&[("pa", a)])
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("pa", "n", Health::Up).await;
    assert!(tls_client(proxy.addr("front"), "z.example.com", &cert_a)
        .await
        .is_err());
    let (mut tls, _) = tls_client(proxy.addr("front"), "a.example.com", &cert_a)
        .await
        .unwrap();
    assert_eq!(read_line(&mut tls).await, "hello from a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_with_tls_terminates_and_sends_plain_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = certificate(dir.path(), "front.test");
    let echo = tcp_echo_server().await;
    let d = dir.path().display();
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: front
    listen: "127.0.0.1:0"
    protocol: tcp
    pool: plain
    tls: {{ certificates: [ {{ cert: "{d}/front.test.pem", key: "{d}/front.test.key" }} ] }}
pools:
{}"#,
        tcp_pools(&[("plain", echo)])
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("plain", "n", Health::Up).await;
    let (mut tls, served) = tls_client(proxy.addr("front"), "front.test", &cert)
        .await
        .unwrap();
    assert_eq!(served, cert);
    tls.write_all(b"over tls\n").await.unwrap();
    // The echo server got plain bytes and sent them back; handoff encrypted them again.
    assert_eq!(read_line(&mut tls).await, "over tls");
    // Plain bytes to a terminating listener are not passed on.
    let mut plain = TcpStream::connect(proxy.addr("front")).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (got, _) = crate::common::backends::read_to_eof(&mut plain, WAIT).await;
    assert!(!got.starts_with(b"GET"), "{got:?}");
}
