//! DNS discovery against a real DNS server: Debian's dnsmasq, serving A records from a hosts
//! file it re-reads on SIGHUP (and SRV records from its command line), started by the test
//! on a port of its own. Skipped, saying so, where dnsmasq is not installed (`.ci/run`
//! installs dnsmasq-base).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::common::backends::HttpBackend;
use crate::common::*;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

struct Dns {
    proc: Option<Running>,
    port: u16,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dns {
    /// dnsmasq answering `hosts` (name, address) and the SRV records in `srv`
    /// (`_svc._tcp.name,target,port,priority,weight`); `None` when it is not installed.
    async fn start(test: &str, hosts: &[(&str, IpAddr)], srv: &[String]) -> Option<Dns> {
        if !std::path::Path::new(DNSMASQ).exists() {
            eprintln!(
                "skipped {test}: {DNSMASQ} not found (apt-get install dnsmasq-base; .ci/run does)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        write_hosts(&file, hosts);
        let port = free_port();
        let child = Command::new(DNSMASQ)
            .args([
                "--no-daemon",
                "--user=root",
                "--pid-file=",
                "--bind-interfaces",
            ])
            .args(["--listen-address=127.0.0.1", "--no-resolv", "--no-hosts"])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", file.display()))
            .arg("--local-ttl=1")
            .args(srv.iter().map(|s| format!("--srv-host={s}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq");
        let dns = Dns {
            proc: Some(Running(child)),
            port,
            hosts: file,
            _dir: dir,
        };
        // Answers once it is up (bounded).
        let name = hosts.first().map_or("none.test", |h| h.0).to_string();
        let deadline = tokio::time::Instant::now() + WAIT;
        while dns.lookup(&name).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "dnsmasq did not answer"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(dns)
    }

    async fn lookup(&self, name: &str) -> Option<Vec<IpAddr>> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
        // A minimal A query (id 1, recursion desired): enough to see dnsmasq answer.
        let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        socket.send_to(&q, ("127.0.0.1", self.port)).await.ok()?;
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        // Answer count > 0.
        (n > 7 && u16::from_be_bytes([buf[6], buf[7]]) > 0).then(Vec::new)
    }

    /// Replaces the A records and makes dnsmasq re-read them (SIGHUP).
    fn set(&self, hosts: &[(&str, IpAddr)]) {
        write_hosts(&self.hosts, hosts);
        let pid = self.proc.as_ref().unwrap().0.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Stops answering at all.
    fn stop(&mut self) {
        self.proc = None;
    }

    fn resolver(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn write_hosts(path: &std::path::Path, hosts: &[(&str, IpAddr)]) {
    let text: String = hosts.iter().map(|(n, ip)| format!("{ip} {n}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A port free on 127.0.0.2 to .5 (backends on several loopback "hosts" at one port).
async fn shared_port() -> u16 {
    for _ in 0..20 {
        let port = free_port();
        let free = (2..=5).all(|i| std::net::TcpListener::bind((ip(i), port)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no port free on 127.0.0.2-5");
}

fn yaml(discovery: &str) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
pools:
  - name: web
    nodes: []
    discovery: {discovery}
    health: {FAST_HEALTH}
    warmup: 500ms
    drain: {{ timeout: 5s }}
"#
    )
}

/// The pool's nodes: (name, state, source, weight).
async fn nodes(proxy: &Proxy) -> Vec<(String, String, String, u64)> {
    let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    pool["nodes"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|n: &Value| {
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                n["state"].as_str().unwrap_or_default().to_string(),
                n["source"].as_str().unwrap_or_default().to_string(),
                n["weight"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

async fn until_nodes(proxy: &Proxy, want: &[String], state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = nodes(proxy).await;
        let names: Vec<String> = now.iter().map(|n| n.0.clone()).collect();
        if names == want && now.iter().all(|n| n.1 == state && n.2 == "dns") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes {now:?}, want {want:?} {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_set_that_moves_to_other_addresses_moves_the_pool_with_nothing_failed() {
    let port = shared_port().await;
    let Some(mut dns) = Dns::start(
        "dns-moves",
        &[("web.test", ip(2)), ("web.test", ip(3))],
        &[],
    )
    .await
    else {
        return;
    };
    let backends = [
        HttpBackend::start_at("b2", "1.0", SocketAddr::new(ip(2), port)).await,
        HttpBackend::start_at("b3", "1.0", SocketAddr::new(ip(3), port)).await,
        HttpBackend::start_at("b4", "1.0", SocketAddr::new(ip(4), port)).await,
        HttpBackend::start_at("b5", "1.0", SocketAddr::new(ip(5), port)).await,
    ];
    let discovery = format!(
        "{{ dns: \"web.test\", port: {port}, interval: 200ms, resolver: \"{}\" }}",
        dns.resolver()
    );
    let proxy = Proxy::start(&yaml(&discovery)).await;
    let name = |i: u8| format!("127.0.0.{i}:{port}");
    until_nodes(&proxy, &[name(2), name(3)], "active").await;

    let load = Load::start(proxy.url("web", "/"), 4, Duration::from_secs(60));
    eventually("both first addresses serve", || {
        backends[0].hits() > 0 && backends[1].hits() > 0
    })
    .await;
    // The record set moves to two other addresses.
    dns.set(&[("web.test", ip(4)), ("web.test", ip(5))]);
    until_nodes(&proxy, &[name(4), name(5)], "active").await;
    let before = (backends[0].hits(), backends[1].hits());
    eventually("the new addresses serve", || {
        backends[2].hits() > 0 && backends[3].hits() > 0
    })
    .await;
    assert_eq!(
        (backends[0].hits(), backends[1].hits()),
        before,
        "removed nodes took no request"
    );

    // The DNS server stops answering: nothing changes, every node keeps serving.
    dns.stop();
    eventually_async(&proxy, "resolutions failed twice", 2.0).await;
    until_nodes(&proxy, &[name(4), name(5)], "active").await;
    let served = (backends[2].hits(), backends[3].hits());
    eventually("both keep serving without DNS", || {
        backends[2].hits() > served.0 + 5 && backends[3].hits() > served.1 + 5
    })
    .await;

    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "of {sent}");
    assert!(sent > 100, "{sent}");
    let metrics = proxy.metrics().await;
    let removed =
        "handoff_pool_membership_changes_total{change=\"removed\",pool=\"web\",source=\"dns\"}";
    assert_eq!(metric_value(&metrics, removed), 2.0, "{metrics}");
}

/// Waits until the pool's discovery error counter reaches `at_least`.
async fn eventually_async(proxy: &Proxy, what: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = proxy.metrics().await;
        let v = metric_value(
            &m,
            "handoff_discovery_errors_total{pool=\"web\",reason=\"error\"}",
        );
        if v >= at_least {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_each_node_its_port_and_weight() {
    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let srv = [
        format!("_web._tcp.svc.test,a.svc.test,{},0,10", a.addr.port()),
        format!("_web._tcp.svc.test,b.svc.test,{},0,30", b.addr.port()),
        // A backup (a higher priority number) is not used while the others answer.
        format!("_web._tcp.svc.test,c.svc.test,{},5,10", free_port()),
    ];
    let Some(dns) = Dns::start(
        "dns-srv",
        &[
            ("a.svc.test", ip(1)),
            ("b.svc.test", ip(1)),
            ("c.svc.test", ip(1)),
        ],
        &srv,
    )
    .await
    else {
        return;
    };
    let discovery = format!(
        "{{ dns: \"_web._tcp.svc.test\", srv: true, interval: 200ms, resolver: \"{}\" }}",
        dns.resolver()
    );
    let proxy = Proxy::start(&yaml(&discovery)).await;
    let mut want = vec![a.addr.to_string(), b.addr.to_string()];
    want.sort();
    until_nodes(&proxy, &want, "active").await;
    let weights: Vec<(String, u64)> = nodes(&proxy)
        .await
        .into_iter()
        .map(|n| (n.0, n.3))
        .collect();
    assert!(weights.contains(&(a.addr.to_string(), 10)), "{weights:?}");
    assert!(weights.contains(&(b.addr.to_string(), 30)), "{weights:?}");
}

/// A node given by host name follows the name: handoff runs in a mount namespace of its own
/// whose /etc/hosts the test rewrites (as a DNS change would), so the system resolver it
/// uses at load and after sees the change. Needs root and `unshare` (util-linux).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_given_by_host_name_moves_with_the_name_never_cut() {
    let root = nix_is_root();
    if !root || !std::path::Path::new("/usr/bin/unshare").exists() {
        eprintln!("skipped: needs root and unshare (a mount namespace with its own /etc/hosts)");
        return;
    }
    let port = shared_port().await;
    let old = HttpBackend::start_at("old", "1.0", SocketAddr::new(ip(2), port)).await;
    let new = HttpBackend::start_at("new", "1.0", SocketAddr::new(ip(3), port)).await;
    let b = HttpBackend::start("b", "1.0").await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.2 backend.test\n").unwrap();
    let config = dir.path().join("handoff.yaml");
    std::fs::write(
        &config,
        format!(
            r#"admin: {{ listen: "127.0.0.1:0" }}
resolve_interval: 200ms
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "backend.test:{port}" }}, {{ name: b, addr: "{}" }} ]
    health: {FAST_HEALTH}
    warmup: 500ms
    drain: {{ timeout: 5s }}
"#,
            b.addr
        ),
    )
    .unwrap();
    let script = "mount --bind \"$0\" /etc/hosts && exec \"$@\"";
    let hosts_arg = hosts.display().to_string();
    let h = crate::common::process::Handoff::start_in(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            &hosts_arg,
        ],
        &config,
    )
    .await;
    h.wait_up("a").await;
    h.wait_up("b").await;
    let node = |view: &Value| {
        (
            view["addr"].as_str().unwrap_or_default().to_string(),
            view["state"].as_str().unwrap_or_default().to_string(),
        )
    };
    let url = |path: &str| h.url(path);
    let get_node = || async {
        crate::common::process::call(&client(), Method::GET, &url("/v1/pools/web/nodes/a"), None)
            .await
            .map(|(_, v)| node(&v))
            .unwrap_or_default()
    };
    assert_eq!(
        get_node().await,
        (format!("127.0.0.2:{port}"), "active".to_string())
    );
    let (_, status) =
        crate::common::process::call(&client(), Method::GET, &url("/v1/status"), None)
            .await
            .unwrap();
    let web = format!(
        "http://{}/",
        status["listeners"][0]["listen"].as_str().unwrap()
    );
    let load = Load::start(web, 4, Duration::from_secs(60));
    eventually("the old address serves", || old.hits() > 0).await;

    // The name moves (rewritten in place: the bind mount shows the new content).
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.3 backend.test\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = get_node().await;
        if now == (format!("127.0.0.3:{port}"), "active".to_string()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a is {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = old.hits();
    eventually("the new address serves", || new.hits() > 0).await;
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "of {sent}");
    assert!(
        old.hits() <= moved + 4,
        "the old address took new requests after the move"
    );
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
