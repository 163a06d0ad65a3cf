//! TLS termination: certificates by SNI, ALPN h2, HTTP/2 over TLS and prior-knowledge h2c,
//! handshake failures, certificate reload.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common::backends::{read_to_eof, HttpBackend};
use crate::common::*;
use handoff::pool::Health;

/// A self-signed certificate for `name`, written as `name.pem` / `name.key` in `dir`.
fn certificate(dir: &Path, name: &str) -> CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    ck.cert.der().clone()
}

fn tls_config(backend: SocketAddr, dir: &Path) -> String {
    let d = dir.display();
    http_config(&[("a", backend)], &format!(
        "    tls:\n      certificates:\n        - {{ cert: \"{d}/a.test.pem\", key: \"{d}/a.test.key\" }}\n        - {{ cert: \"{d}/b.test.pem\", key: \"{d}/b.test.key\" }}\n"
    ))
}

/// A backend behind a TLS listener with certificates for a.test and b.test (the roots a
/// client trusts); the directory holds the certificate files.
async fn tls_proxy() -> (
    HttpBackend,
    tempfile::TempDir,
    [CertificateDer<'static>; 2],
    Proxy,
) {
    let backend = HttpBackend::start("a", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let roots = [
        certificate(dir.path(), "a.test"),
        certificate(dir.path(), "b.test"),
    ];
    let proxy = Proxy::start(&tls_config(backend.addr, dir.path())).await;
    proxy.wait_health("web", "a", Health::Up).await;
    (backend, dir, roots, proxy)
}

/// Connects with TLS; returns the stream, the certificate served and the ALPN agreed.
async fn connect(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
    Option<Vec<u8>>,
) {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (_, session) = tls.get_ref();
    let served = session.peer_certificates().unwrap()[0].clone();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    (tls, served, alpn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hostname_gets_its_certificate_and_h2_when_offered() {
    let backend = HttpBackend::start("a", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, cert_b) = (
        certificate(dir.path(), "a.test"),
        certificate(dir.path(), "b.test"),
    );
    let yaml = format!(
        "access_log: {{ path: \"{{DIR}}/access.log\" }}\n{}",
        tls_config(backend.addr, dir.path())
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let roots = [cert_a.clone(), cert_b.clone()];

    let (_, served, _) = connect(proxy.addr("web"), "b.test", &roots, &[b"http/1.1"]).await;
    assert_eq!(served, cert_b, "b.test got the wrong certificate");
    let (tls, served, alpn) =
        connect(proxy.addr("web"), "a.test", &roots, &[b"h2", b"http/1.1"]).await;
    assert_eq!(served, cert_a, "a.test got the wrong certificate");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    // HTTP/2 over that connection.
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://a.test/headers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, http::Version::HTTP_2)
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let headers: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["host"], "a.test");
    // The access log names the TLS session.
    let lines = crate::access_log::wait_lines(&proxy._dir.path().join("access.log"), 1).await;
    let line = &lines[0];
    assert_eq!(line["proto"], "HTTP/2", "{line}");
    assert_eq!(line["tls"]["sni"], "a.test", "{line}");
    assert_eq!(line["tls"]["version"], "TLSv1.3", "{line}");
    assert_eq!(line["termination"], "ok", "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 0, "{line}");
}

/// Reads what the server sends until it closes (or stays quiet for a second).
async fn read_until_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_secs(1), s.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

/// ALPN decides the protocol on TLS: a connection that agreed on h2 is spoken to
/// only in HTTP/2 (HTTP/1.1 bytes get a GOAWAY with PROTOCOL_ERROR), one that agreed on
/// http/1.1 (or nothing) only in HTTP/1.1 (the HTTP/2 preface gets an HTTP/1.1 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_alone_decides_the_protocol_on_tls() {
    let (backend, _dir, roots, proxy) = tls_proxy().await;
    let hits = backend.hits();

    let (mut tls, _, alpn) = connect(proxy.addr("web"), "a.test", &roots, &[b"h2"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_close(&mut tls).await;
    assert!(
        !got.starts_with(b"HTTP/1"),
        "h2 connection answered in HTTP/1.x: {got:?}"
    );
    // Frames: 9-byte headers; a GOAWAY (type 7) whose error code is PROTOCOL_ERROR (1).
    let mut at = 0;
    let mut goaway = None;
    while at + 9 <= got.len() {
        let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
        if got[at + 3] == 7 && at + 9 + 8 <= got.len() {
            let code = &got[at + 9 + 4..at + 9 + 8];
            goaway = Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
        }
        at += 9 + len;
    }
    assert_eq!(goaway, Some(1), "no GOAWAY(PROTOCOL_ERROR) in {got:?}");

    for offered in [&[&b"http/1.1"[..]][..], &[][..]] {
        let (mut tls, _, alpn) = connect(proxy.addr("web"), "a.test", &roots, offered).await;
        assert_eq!(alpn.as_deref(), offered.first().copied());
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let got = read_until_close(&mut tls).await;
        assert!(
            got.starts_with(b"HTTP/1.1 400"),
            "offered {offered:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(backend.hits(), hits, "a request reached the backend");
}

#[tokio::test]
async fn a_failed_handshake_is_counted_and_harms_no_one_else() {
    let backend = HttpBackend::start("a", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, cert_b) = (
        certificate(dir.path(), "a.test"),
        certificate(dir.path(), "b.test"),
    );
    let proxy = Proxy::start(&tls_config(backend.addr, dir.path())).await;
    let mut plain = TcpStream::connect(proxy.addr("web")).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let (_, eof) = read_to_eof(&mut plain, WAIT).await;
    assert!(eof);
    let (_, served, _) = connect(
        proxy.addr("web"),
        "a.test",
        &[cert_a, cert_b],
        &[b"http/1.1"],
    )
    .await;
    assert!(!served.is_empty());
    assert!(proxy
        .metrics()
        .await
        .contains("handoff_tls_handshake_failures_total{listener=\"web\"} 1"));
}

#[tokio::test]
async fn certificates_are_reloaded_with_the_config() {
    let backend = HttpBackend::start("a", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let (old_a, cert_b) = (
        certificate(dir.path(), "a.test"),
        certificate(dir.path(), "b.test"),
    );
    let proxy = Proxy::start(&tls_config(backend.addr, dir.path())).await;
    let new_a = certificate(dir.path(), "a.test");
    assert_ne!(old_a, new_a);
    let roots = [old_a.clone(), new_a.clone(), cert_b];
    let (_, served, _) = connect(proxy.addr("web"), "a.test", &roots, &[b"http/1.1"]).await;
    assert_eq!(
        served, old_a,
        "certificates must not change before a reload"
    );
    let (status, body) = proxy.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    let (_, served, _) = connect(proxy.addr("web"), "a.test", &roots, &[b"http/1.1"]).await;
    assert_eq!(
        served, new_a,
        "the reload did not pick up the new certificate"
    );
}

#[test]
fn check_reports_missing_and_mismatched_certificates() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "a.test");
    certificate(dir.path(), "b.test");
    let d = dir.path().display();
    let yaml = format!(
        "listeners:\n  - name: web\n    listen: \"127.0.0.1:0\"\n    protocol: http\n    tls:\n      certificates:\n        - {{ cert: \"{d}/missing.pem\", key: \"{d}/a.test.key\" }}\n        - {{ cert: \"{d}/a.test.pem\", key: \"{d}/b.test.key\" }}\n    routes: [ {{ pool: p }} ]\npools:\n  - {{ name: p, nodes: [ {{ name: a, addr: \"127.0.0.1:1\" }} ] }}\n"
    );
    let errors = match handoff::config::parse(&yaml) {
        Err(handoff::config::ConfigError::Invalid(e)) => e,
        other => panic!("expected errors, got {other:?}"),
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].tls.certificates[0].cert",
            "listeners[0].tls.certificates[1].key"
        ],
        "{errors:?}"
    );
    assert!(
        errors[1].reason.contains("does not belong to"),
        "{}",
        errors[1].reason
    );
}

/// `curl`, as a user would run it, when it is installed (CI installs it).
fn curl(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(args)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_http2_over_tls_and_with_prior_knowledge() {
    let backend = HttpBackend::start("a", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "a.test");
    certificate(dir.path(), "b.test");
    let tls = Proxy::start(&tls_config(backend.addr, dir.path())).await;
    let plain = Proxy::start(&http_config(&[("a", backend.addr)], "")).await;
    tls.wait_health("web", "a", Health::Up).await;
    plain.wait_health("web", "a", Health::Up).await;
    let tls_port = tls.addr("web").port();
    let resolve = format!("a.test:{tls_port}:127.0.0.1");
    let url = format!("https://a.test:{tls_port}/");
    let plain_url = plain.url("web", "/");
    let out = tokio::task::spawn_blocking(move || {
        let over_tls = curl(&[
            "-s",
            "--http2",
            "-k",
            "--resolve",
            &resolve,
            "-w",
            " %{http_version}",
            &url,
        ])?;
        let prior = curl(&[
            "-s",
            "--http2-prior-knowledge",
            "-w",
            " %{http_version}",
            &plain_url,
        ])?;
        Some((over_tls, prior))
    })
    .await
    .unwrap();
    let Some((over_tls, prior)) = out else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install curl (.ci/run does)"
        );
        eprintln!("curl is not installed: skipping the curl check (CI installs it)");
        return;
    };
    assert_eq!(over_tls, "a 1.0.0 2");
    assert_eq!(prior, "a 1.0.0 2");
}

/// At shutdown an idle keep-alive client over TLS is closed at the watchdog's next look (it
/// waits for its next head inside its busy state), not left for the grace deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_keep_alive_client_is_closed_when_handoff_drains() {
    use tokio::io::AsyncReadExt;
    let (_backend, _dir, roots, proxy) = tls_proxy().await;
    let (mut tls, _, _) = connect(proxy.addr("web"), "a.test", &roots, &[b"http/1.1"]).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("a 1.0.0") {
        let n = tokio::time::timeout(WAIT, tls.read(&mut chunk))
            .await
            .expect("the answer came")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&chunk[..n]);
    }
    let shutdown = proxy.app.shutdown.clone();
    let started = tokio::time::Instant::now();
    let run = tokio::spawn(async move { shutdown.run(std::time::Duration::from_secs(30)).await });
    // EOF (or a reset) on the idle connection, long before the 30 s grace period.
    let closed = tokio::time::timeout(WAIT, tls.read(&mut chunk)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection stayed open: {closed:?}"
    );
    assert_eq!(run.await.unwrap(), 0, "a connection had to be cut");
    // The watchdog looks every quarter of header_read (10 s) and a closing connection
    // lingers up to 1 s: 3.5 s at most, with room for a loaded machine, far from the 30 s
    // grace period a forgotten connection would take.
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
}
