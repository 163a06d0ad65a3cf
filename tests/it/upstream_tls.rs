//! HTTP/2 over TLS to backends (`upstream: { protocol: h2, tls }`): the backend's
//! certificate verified against the configured CA, a wrong CA refused with 502, a client
//! certificate for backends that require one, health checks over the same TLS, and both
//! HTTP/1.1 and HTTP/2 clients served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::common::*;
use handoff::pool::Health;

/// A test CA: its certificate as PEM, and the issuer that signs with it.
struct Ca {
    pem: String,
    der: CertificateDer<'static>,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca {
            pem: issuer.pem(),
            der: issuer.der().clone(),
            issuer,
        }
    }

    /// A certificate for `name` signed by this CA: (chain PEM, key PEM, chain, key).
    fn sign(
        &self,
        name: &str,
    ) -> (
        String,
        String,
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    ) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (
            cert.pem(),
            key.serialize_pem(),
            vec![cert.der().clone()],
            der,
        )
    }
}

/// An HTTP/2-over-TLS backend (ALPN h2) answering `tls {name} {path}` and `/healthz` with
/// `X-Version: 1.0.0`; with `clients`, it requires a client certificate signed by that CA.
async fn h2_tls_backend(name: &'static str, ca: &Ca, clients: Option<&Ca>) -> SocketAddr {
    tls_backend(name, ca, clients, true).await
}

/// As [`h2_tls_backend`], speaking HTTP/2 (`h2`) or HTTP/1.1.
async fn tls_backend(name: &'static str, ca: &Ca, clients: Option<&Ca>, h2: bool) -> SocketAddr {
    tls_backend_counted(name, ca, clients, h2).await.0
}

/// As [`tls_backend`], with a count of the TLS handshakes it completed.
async fn tls_backend_counted(
    name: &'static str,
    ca: &Ca,
    clients: Option<&Ca>,
    h2: bool,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&handshakes);
    let (_, _, chain, key) = ca.sign("backend.test");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(client_ca.der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let text = format!("tls {name} {path} {}", String::from_utf8_lossy(&body));
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    resp.headers_mut()
                        .insert("x-version", "1.0.0".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                }
            });
        }
    });
    (addr, handshakes)
}

/// The proxy in front of `backend`, its pool's `upstream.tls` trusting `ca_pem`.
async fn proxy(
    dir: &Path,
    backend: SocketAddr,
    ca_pem: &str,
    client: Option<(&str, &str)>,
    check: &str,
) -> Proxy {
    proxy_with(dir, backend, ca_pem, client, check, "h2").await
}

async fn proxy_with(
    dir: &Path,
    backend: SocketAddr,
    ca_pem: &str,
    client: Option<(&str, &str)>,
    check: &str,
    protocol: &str,
) -> Proxy {
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    let d = dir.display();
    let client_cert = match client {
        Some((cert, key)) => {
            std::fs::write(dir.join("client.pem"), cert).unwrap();
            std::fs::write(dir.join("client.key"), key).unwrap();
            format!(", client_cert: {{ cert: \"{d}/client.pem\", key: \"{d}/client.key\" }}")
        }
        None => String::new(),
    };
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    routes: [ {{ pool: secure }} ]
pools:
  - name: secure
    upstream: {{ protocol: {protocol}, tls: {{ ca: "{d}/ca.pem", server_name: backend.test{client_cert} }} }}
    nodes: [ {{ name: a, addr: "{backend}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, {check} }}
"#
    );
    Proxy::start(&yaml).await
}

/// An HTTP/2 (prior knowledge) GET through the proxy.
async fn h2_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_pool_serves_when_the_backend_is_signed_by_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("good ca");
    let backend = h2_tls_backend("a", &ca, None).await;
    // The http check runs over the same TLS and HTTP/2, and reads the version.
    let check = "http: { path: \"/healthz\", version_header: \"X-Version\" }";
    let proxy = proxy(dir.path(), backend, &ca.pem, None, check).await;
    proxy.wait_health("secure", "a", Health::Up).await;
    assert_eq!(
        proxy
            .node("secure", "a")
            .state
            .version()
            .as_deref()
            .map(String::as_str),
        Some("1.0.0")
    );
    // An HTTP/1.1 client, bridged to the HTTP/2 backend.
    let c = client();
    let (status, body) = get(&c, &proxy.url("web", "/hello")).await;
    assert_eq!((status, body.as_str()), (200, "tls a /hello "));
    // A request body streams through the bridge.
    let req = Request::post(proxy.url("web", "/echo"))
        .body(Full::new(Bytes::from(vec![b'x'; 100_000])))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), "tls a /echo ".len() + 100_000);
    // An HTTP/2 client.
    assert_eq!(
        h2_get(proxy.addr("web"), "/two").await,
        (200, "tls a /two ".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_signed_by_another_ca_gets_502_and_counts_as_a_connect_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, wrong) = (Ca::new("backend ca"), Ca::new("some other ca"));
    let backend = h2_tls_backend("a", &ca, None).await;
    // A tcp check is a connect: the node is up, and requests show what TLS says.
    let proxy = proxy(dir.path(), backend, &wrong.pem, None, "tcp: {}").await;
    proxy.wait_health("secure", "a", Health::Up).await;
    let (status, body) = get(&client(), &proxy.url("web", "/hello")).await;
    assert_eq!(status, 502, "{body}");
    let metrics = proxy.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "handoff_connect_failures_total{node=\"a\",pool=\"secure\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "handoff_upstream_tls_failures_total{node=\"a\",pool=\"secure\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // An http check over the same TLS fails, with the verification error as its reason.
    let dir2 = tempfile::tempdir().unwrap();
    let check = "http: { path: \"/healthz\" }";
    let proxy = proxy_with_wrong_ca_http_check(dir2.path(), backend, &wrong.pem, check).await;
    assert_ne!(proxy.node("secure", "a").state.health(), Health::Up);
}

async fn proxy_with_wrong_ca_http_check(
    dir: &Path,
    backend: SocketAddr,
    ca: &str,
    check: &str,
) -> Proxy {
    let p = proxy(dir, backend, ca, None, check).await;
    // Several failed checks in: it never goes up.
    let node = p.node("secure", "a");
    let up = node
        .state
        .wait_until(std::time::Duration::from_millis(600), |s| {
            s.health() == Health::Up
        })
        .await;
    assert!(
        !up,
        "a node behind a certificate the CA did not sign went up"
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtls_backend_serves_only_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, client_ca) = (Ca::new("backend ca"), Ca::new("client ca"));
    let backend = h2_tls_backend("m", &ca, Some(&client_ca)).await;
    let without = proxy(dir.path(), backend, &ca.pem, None, "tcp: {}").await;
    without.wait_health("secure", "a", Health::Up).await;
    let (status, _) = get(&client(), &without.url("web", "/x")).await;
    assert_eq!(status, 502);
    let (cert, key, _, _) = client_ca.sign("handoff.test");
    let dir2 = tempfile::tempdir().unwrap();
    let with = proxy(
        dir2.path(),
        backend,
        &ca.pem,
        Some((&cert, &key)),
        "tcp: {}",
    )
    .await;
    with.wait_health("secure", "a", Health::Up).await;
    let (status, body) = get(&client(), &with.url("web", "/x")).await;
    assert_eq!((status, body.as_str()), (200, "tls m /x "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_pool_speaks_tls_to_its_backends_and_reuses_the_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("http1 ca");
    let (backend, handshakes) = tls_backend_counted("h1", &ca, None, false).await;
    let check = "http: { path: \"/healthz\", version_header: \"X-Version\" }";
    let proxy = proxy_with(dir.path(), backend, &ca.pem, None, check, "http1").await;
    proxy.wait_health("secure", "a", Health::Up).await;
    let c = client();
    for i in 0..20 {
        let (status, body) = get(&c, &proxy.url("web", &format!("/n{i}"))).await;
        assert_eq!((status, body), (200, format!("tls h1 /n{i} ")));
    }
    let req = Request::post(proxy.url("web", "/up"))
        .body(Full::new(Bytes::from(vec![b'y'; 200_000])))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), "tls h1 /up ".len() + 200_000);
    // 21 requests and the checks went over pooled TLS connections, not one handshake each
    // (each check makes its own).
    let checks = metric_value(
        &proxy.metrics().await,
        "handoff_health_checks_total{node=\"a\",pool=\"secure\",result=\"pass\"}",
    ) as usize;
    let made = handshakes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        made <= checks + 3,
        "{made} handshakes for 21 requests and {checks} checks"
    );
    // A certificate from another CA: 502.
    let dir2 = tempfile::tempdir().unwrap();
    let wrong = Ca::new("other");
    let proxy = proxy_with(dir2.path(), backend, &wrong.pem, None, "tcp: {}", "http1").await;
    proxy.wait_health("secure", "a", Health::Up).await;
    let (status, _) = get(&client(), &proxy.url("web", "/x")).await;
    assert_eq!(status, 502);
}
