//! TLS to etcd: an instance reaches an etcd that serves https only and checks client
//! certificates (`--client-cert-auth`), with `cluster.tls` naming the CA and its own
//! certificate.

use std::process::{Command, Stdio};

use http::Method;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

use super::*;
use crate::common::backends::{tcp_echo_server, HttpBackend};

/// Writes `name.pem` (and `name.key`) signed by `ca` for `names`, with `usage`.
fn issue(
    dir: &std::path::Path,
    ca: &CertifiedIssuer<'_, KeyPair>,
    name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_joins_an_etcd_that_serves_tls_and_checks_clients() {
    if !etcd_installed("TLS to etcd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    issue(
        dir.path(),
        &ca,
        "server",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    issue(
        dir.path(),
        &ca,
        "client",
        &["lb-1"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );

    let ports = free_ports(2);
    let client_url = format!("https://127.0.0.1:{}", ports[0]);
    let peer_url = format!("http://127.0.0.1:{}", ports[1]);
    let file = |n: &str| dir.path().join(n).display().to_string();
    let child = Command::new(ETCD)
        .args(["--name", "tls", "--data-dir", &file("data")])
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("tls={peer_url}")])
        .args([
            "--cert-file",
            &file("server.pem"),
            "--key-file",
            &file("server.key"),
        ])
        .args(["--trusted-ca-file", &file("ca.pem"), "--client-cert-auth"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _etcd = Running(child);

    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let echo = [tcp_echo_server().await, tcp_echo_server().await];
    let tls = format!(
        "cluster: {{ etcd: [\"{client_url}\"], prefix: \"/tls\", instance: \"lb-1\", lease_ttl: 2s, tls: {{ ca: \"{}\", cert: \"{}\", key: \"{}\" }} }}\n",
        file("ca.pem"),
        file("client.pem"),
        file("client.key")
    );
    let yaml = config(
        std::slice::from_ref(&client_url),
        "/tls",
        "lb-1",
        [a.addr, b.addr],
        echo,
        Options::default(),
    );
    let yaml: String = yaml
        .lines()
        .map(|l| {
            if l.starts_with("cluster:") {
                tls.clone()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    // Instance::start waits (bounded) until the instance has connected through TLS.
    let one = Instance::start(yaml, "lb-1").await;
    let (status, view) = one
        .call(Method::POST, "/v1/pools/web/nodes/a/drain", None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["lagging"], serde_json::json!([]), "{view}");
    let (_, cluster) = one.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(member_names(&cluster), ["lb-1"], "{cluster}");
}
