//! Micro-benchmarks of the per-request and per-connection hot paths: node pick, route
//! match, effective weight while warming, header rewrite, PROXY header encoding, and config
//! load (the control path every reload takes), and the signature of a full TLS handshake
//! with each crypto provider (why handoff is built with aws-lc-rs).
//!
//!     cargo bench --bench hot_paths

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use handoff::config;
use handoff::metrics::Metrics;
use handoff::pool::{AdminState, Tried};

/// What the tests forward with: a client address, plain HTTP, no ID, no rules.
const FWD: head::Forwarding<'static> = head::Forwarding {
    forwarded_for: b"192.0.2.7",
    proto: "http",
    request_id: None,
    rules: None,
    default_host: "pool",
};
use handoff::proxy::codec::head;
use handoff::proxy::proxy_protocol::{self, Version};
use handoff::snapshot::Snapshot;

fn config_text(nodes: usize, balance: &str) -> String {
    let nodes: String = (0..nodes)
        .map(|i| {
            format!(
                "      - {{ name: n{i}, addr: \"127.0.0.1:{}\" }}\n",
                9000 + i
            )
        })
        .collect();
    format!(
        r#"listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
    routes:
      - {{ host: "api.example.com", path_prefix: "/v2/", pool: web }}
      - {{ host: "static.example.com", pool: web }}
      - {{ path_prefix: "/assets/", pool: web }}
      - {{ pool: web }}
pools:
  - name: web
    balance: {balance}
    nodes:
{nodes}    health: {{ interval: 1s, http: {{ path: "/healthz", version_header: "X-Version" }} }}
"#
    )
}

/// A snapshot whose nodes are all up (as after their health checks).
fn snapshot(nodes: usize, balance: &str) -> Snapshot {
    let cfg = config::parse(&config_text(nodes, balance)).expect("bench config");
    let snap = Snapshot::build(cfg, None, &Metrics::new(), &Default::default());
    for pool in &snap.pools {
        for node in &pool.nodes {
            for _ in 0..2 {
                node.state.record_check(
                    node.state.address_epoch(),
                    true,
                    Some("1.0.0"),
                    pool.health_config(),
                );
            }
        }
    }
    snap
}

fn pick(c: &mut Criterion) {
    for (balance, nodes) in [
        ("least_conn", 2),
        ("least_conn", 8),
        ("round_robin", 2),
        ("round_robin", 8),
    ] {
        let snap = snapshot(nodes, balance);
        let pool = &snap.pools[0];
        c.bench_function(&format!("pick/{balance}/{nodes}_nodes"), |b| {
            b.iter(|| black_box(pool.pick(Tried::default())))
        });
    }
    let snap = snapshot(2, "least_conn");
    let pool = &snap.pools[0];
    pool.nodes[0].state.set_admin(AdminState::Warming);
    pool.nodes[0]
        .state
        .lifecycle
        .start_warming(Duration::from_secs(3600));
    c.bench_function("pick/least_conn/2_nodes_one_warming", |b| {
        b.iter(|| black_box(pool.pick(Tried::default())))
    });
    c.bench_function("effective_weight/warming", |b| {
        b.iter(|| black_box(pool.nodes[0].effective_weight()))
    });
    c.bench_function("effective_weight/active", |b| {
        b.iter(|| black_box(pool.nodes[1].effective_weight()))
    });
}

/// What each request adds on the data path for rollout analysis and passive ejection: the
/// node's traffic counters and latency bucket (all atomics).
fn traffic(c: &mut Criterion) {
    let snap = snapshot(2, "least_conn");
    let pool = &snap.pools[0];
    let elapsed = Duration::from_micros(850);
    c.bench_function("traffic/answered_200", |b| {
        b.iter(|| pool.answered(black_box(0), black_box(200), black_box(elapsed)))
    });
    let t = &pool.nodes[1].state.traffic;
    c.bench_function("traffic/sample_and_p99", |b| {
        b.iter(|| black_box(t.sample().quantile(0.99)))
    });
}

fn route(c: &mut Criterion) {
    let snap = snapshot(2, "least_conn");
    let listener = &snap.listeners["web"];
    c.bench_function("route/first_rule", |b| {
        b.iter(|| {
            black_box(listener.route(
                black_box(Some("api.example.com:443")),
                black_box("/v2/users"),
            ))
        })
    });
    c.bench_function("route/default_rule", |b| {
        b.iter(|| {
            black_box(listener.route(black_box(Some("www.example.com")), black_box("/index.html")))
        })
    });
}

fn headers(c: &mut Criterion) {
    // What the HTTP/1.1 path does per request head: parse (httparse), check framing and
    // routing facts, and write the rewritten head for the backend.
    let raw =
        b"GET /api/items?page=2 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: bench/1.0\r\n\
Accept: */*\r\nConnection: keep-alive\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n";
    let mut out = Vec::with_capacity(1024);
    c.bench_function("headers/parse_and_rewrite_request", |b| {
        b.iter(|| {
            let mut fields = head::fields();
            let req = head::parse_request(black_box(raw), &mut fields)
                .ok()
                .flatten()
                .expect("a complete head");
            let info = head::inspect(&req).expect("a valid head");
            out.clear();
            head::write_request(&mut out, &req, &info, &FWD);
            black_box(out.len())
        })
    });
}

fn proxy_header(c: &mut Criterion) {
    let src: SocketAddr = "192.0.2.7:50000".parse().unwrap();
    let dst: SocketAddr = "198.51.100.2:6380".parse().unwrap();
    let mut buf = [0u8; proxy_protocol::MAX_LEN];
    c.bench_function("proxy_protocol/v2", |b| {
        b.iter(|| black_box(proxy_protocol::encode(Version::V2, src, dst, &mut buf)))
    });
    c.bench_function("proxy_protocol/v1", |b| {
        b.iter(|| black_box(proxy_protocol::encode(Version::V1, src, dst, &mut buf)))
    });
}

fn config_load(c: &mut Criterion) {
    let text = config_text(8, "least_conn");
    c.bench_function("config/parse_and_validate", |b| {
        b.iter(|| black_box(config::parse(black_box(&text)).is_ok()))
    });
}

/// A full TLS handshake's signature, the bulk of its CPU with an RSA certificate, with
/// aws-lc-rs (handoff's provider) and with ring (the tests' TLS peers' provider, here only
/// for the comparison).
fn tls_signing(c: &mut Criterion) {
    use rustls::crypto::{aws_lc_rs, ring};
    use rustls::SignatureScheme;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;

    // A throwaway key generated for this benchmark (ring cannot generate RSA keys).
    let rsa = PrivateKeyDer::from_pem_slice(include_bytes!("keys/rsa2048.pem")).expect("bench key");
    let ec = rcgen::KeyPair::generate().expect("P-256 key");
    let ec = PrivateKeyDer::try_from(ec.serialize_der()).expect("PKCS#8 key");
    let message = [7u8; 128];
    type Load = fn(
        &PrivateKeyDer<'_>,
    ) -> Result<std::sync::Arc<dyn rustls::sign::SigningKey>, rustls::Error>;
    let providers: [(&str, Load); 2] = [
        ("aws-lc-rs", aws_lc_rs::sign::any_supported_type),
        ("ring", ring::sign::any_supported_type),
    ];
    let keys = [
        ("rsa2048_pss_sha256", &rsa, SignatureScheme::RSA_PSS_SHA256),
        (
            "ecdsa_p256_sha256",
            &ec,
            SignatureScheme::ECDSA_NISTP256_SHA256,
        ),
    ];
    for (key_name, key, scheme) in keys {
        for (provider, load) in providers {
            let signer = load(key)
                .expect("supported key")
                .choose_scheme(&[scheme])
                .expect("supported scheme");
            c.bench_function(&format!("tls_sign/{key_name}/{provider}"), |b| {
                b.iter(|| black_box(signer.sign(black_box(&message)).is_ok()))
            });
        }
    }
}

criterion_group!(
    benches,
    pick,
    traffic,
    route,
    headers,
    proxy_header,
    config_load,
    tls_signing
);
criterion_main!(benches);
