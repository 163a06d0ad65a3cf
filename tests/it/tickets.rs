//! TLS session resumption by tickets under keys handoff holds itself: a client resumes
//! (TLS 1.3 and 1.2) after a reload, and after `run --upgrade` hands the keys to the next
//! process; resumed handshakes are counted apart from full ones.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common::backends::HttpBackend;
use crate::common::process::Handoff;
use crate::common::*;
use handoff::pool::Health;

/// A self-signed certificate for `a.test` in `dir` (`a.test.pem`, `a.test.key`).
pub fn certificate(dir: &Path) -> CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    std::fs::write(dir.join("a.test.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("a.test.key"), ck.signing_key.serialize_pem()).unwrap();
    ck.cert.der().clone()
}

/// A listener block for `tls.certificates` in `dir` (and `extra` TLS settings).
pub fn tls_block(dir: &Path, extra: &str) -> String {
    format!(
        "    tls:\n      certificates: [ {{ cert: \"{d}/a.test.pem\", key: \"{d}/a.test.key\" }} ]\n{extra}",
        d = dir.display()
    )
}

/// A client that keeps its sessions (tickets) between connections, at `versions`.
pub fn client_config(
    root: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// One request over a new TLS connection, read to its end (a TLS 1.3 client takes its
/// tickets only as it reads): how the handshake went, and the answer's status line.
pub async fn handshake(addr: SocketAddr, config: &Arc<ClientConfig>) -> (HandshakeKind, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(Arc::clone(config))
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer)).await;
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    (kind, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_by_ticket_and_across_a_reload() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let root = certificate(dir.path());
    let yaml = http_config(&[("a", a.addr)], &tls_block(dir.path(), ""));
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let addr = proxy.addr("web");
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let config = client_config(&root, versions);
        let (kind, status) = handshake(addr, &config).await;
        assert_eq!(
            (kind, status.as_str()),
            (HandshakeKind::Full, "HTTP/1.1 200 OK")
        );
        let (kind, _) = handshake(addr, &config).await;
        assert_eq!(kind, HandshakeKind::Resumed, "{versions:?}");
        // A reload rebuilds every TLS config; the keys stay.
        let (status, body) = proxy.admin(http::Method::POST, "/v1/reload", None).await;
        assert_eq!(status, 200, "{body}");
        let (kind, status) = handshake(addr, &config).await;
        assert_eq!(kind, HandshakeKind::Resumed, "after a reload, {versions:?}");
        assert_eq!(status, "HTTP/1.1 200 OK");
    }
    let metrics = proxy.metrics().await;
    let series = |kind| format!("handoff_tls_handshakes_total{{kind=\"{kind}\",listener=\"web\"}}");
    assert_eq!(metric_value(&metrics, &series("full")), 2.0, "{metrics}");
    assert_eq!(metric_value(&metrics, &series("resumed")), 4.0);
    // The keys are nowhere in what the admin API shows.
    let keys = proxy.app.snapshot.load().tickets.keys();
    let secret = serde_json::to_value(&keys).unwrap()["current"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    for path in ["/v1/status", "/v1/pools/web"] {
        let (_, body) = proxy.admin(http::Method::GET, path, None).await;
        assert!(!body.to_string().contains(&secret), "{path}");
    }
    assert!(!metrics.contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_the_process_that_took_over_and_after_a_restart() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let root = certificate(dir.path());
    let state = dir.path().join("state.json");
    let yaml = format!(
        "state_file: \"{}\"\nshutdown_grace: 2s\n{}",
        state.display(),
        http_config(&[("a", a.addr)], &tls_block(dir.path(), ""))
    );
    let path = dir.path().join("handoff.yaml");
    std::fs::write(&path, yaml).unwrap();
    let old = Handoff::start(&path).await;
    old.wait_up("a").await;
    let addr = old.listener().await;
    let tls13 = client_config(&root, &[&rustls::version::TLS13]);
    let tls12 = client_config(&root, &[&rustls::version::TLS12]);
    assert_eq!(handshake(addr, &tls13).await.0, HandshakeKind::Full);
    assert_eq!(handshake(addr, &tls12).await.0, HandshakeKind::Full);

    let mut old = old;
    let mut new = Handoff::take_over(&path).await;
    // The old generation drains and exits by itself.
    let deadline = tokio::time::Instant::now() + WAIT;
    while old.proc.0.try_wait().expect("try_wait").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old generation did not exit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (kind, status) = handshake(addr, &tls13).await;
    assert_eq!(
        (kind, status.as_str()),
        (HandshakeKind::Resumed, "HTTP/1.1 200 OK")
    );
    assert_eq!(handshake(addr, &tls12).await.0, HandshakeKind::Resumed);
    new.assert_alive("after the takeover");

    // The state file keeps the keys (owner-only): a plain restart resumes too.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the state file is readable by others: {mode:o}"
    );
    drop(new);
    let again = Handoff::start(&path).await;
    again.wait_up("a").await;
    let addr = again.listener().await;
    assert_eq!(
        handshake(addr, &tls13).await.0,
        HandshakeKind::Resumed,
        "after a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_on_schedule_and_a_ticket_outlives_a_rotation() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let root = certificate(dir.path());
    let rotate = "      session_tickets: { rotate: 1s }\n";
    let yaml = http_config(&[("a", a.addr)], &tls_block(dir.path(), rotate));
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let addr = proxy.addr("web");
    // TLS 1.2: the client keeps one session and uses it again (a TLS 1.3 ticket is used
    // once, and every resumption brings new ones).
    let config = client_config(&root, &[&rustls::version::TLS12]);
    let tickets = || proxy.app.snapshot.load().tickets.keys();
    let first = tickets();
    assert_eq!(handshake(addr, &config).await.0, HandshakeKind::Full);
    eventually("the keys rotate once", || {
        tickets().previous.as_ref() == Some(&first.current)
    })
    .await;
    assert_eq!(
        handshake(addr, &config).await.0,
        HandshakeKind::Resumed,
        "one rotation later"
    );
    // (That a ticket dies with its key two rotations on is `tickets::tests`' to show: a
    // client renews its ticket whenever it resumes.)
}
