//! TLS session tickets in a cluster: the instances share their ticket keys through etcd, so
//! a session made on one instance resumes on the other.

use rustls::HandshakeKind;

use super::*;
use crate::tickets::{certificate, client_config, handshake};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_one_instance_resumes_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let root = certificate(dir.path());
    let tls_dir: &'static str = Box::leak(dir.path().display().to_string().into_boxed_str());
    let o = Options {
        tls_dir: Some(tls_dir),
        ..Default::default()
    };
    let Some(Pair {
        etcd: _etcd,
        one,
        two,
        a: _a,
        b: _b,
    }) = Pair::start("tickets", o).await
    else {
        return;
    };
    let (at_one, at_two) = (secure(&one).await, secure(&two).await);
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let config = client_config(&root, versions);
        let (kind, status) = handshake(at_one, &config).await;
        assert_eq!(
            (kind, status.as_str()),
            (HandshakeKind::Full, "HTTP/1.1 200 OK")
        );
        let (kind, status) = handshake(at_two, &config).await;
        assert_eq!(
            kind,
            HandshakeKind::Resumed,
            "on the other instance, {versions:?}"
        );
        assert_eq!(status, "HTTP/1.1 200 OK");
    }
}

/// The address of an instance's `secure` listener.
async fn secure(i: &Instance) -> SocketAddr {
    let status = admin(&i.h, Method::GET, "/v1/status", None).await.1;
    status["listeners"][2]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}
