//! Cluster (docs/cluster.md) with the real thing: a 3-member etcd cluster (Debian's
//! etcd-server) on loopback ports, and handoff instances as separate processes sharing a
//! prefix. Skipped, saying so, where no etcd binary is installed (`.ci/run` installs it).

mod drain;
mod failures;
mod fencing;
mod members;
mod outcomes;
mod partitions;
mod relay;
mod rollout;
mod takeover;
mod tickets;
mod tls;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::common::backends::{tcp_echo_server, HttpBackend};
use crate::common::process::{call, Handoff};
use crate::common::*;

const ETCD: &str = "/usr/bin/etcd";

/// Whether etcd is installed (a note on stderr when not: the test is skipped).
fn etcd_installed(test: &str) -> bool {
    let ok = std::path::Path::new(ETCD).exists();
    if !ok {
        eprintln!("skipped {test}: {ETCD} not found (apt-get install etcd-server; .ci/run does)");
    }
    ok
}

/// Free loopback ports, reserved together so they differ.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A 3-member etcd cluster on loopback; every member is killed when it is dropped.
pub struct Etcd {
    dir: tempfile::TempDir,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    members: Vec<Option<Running>>,
}

impl Etcd {
    pub async fn start() -> Etcd {
        let ports = free_ports(6);
        let mut etcd = Etcd {
            dir: tempfile::tempdir().unwrap(),
            client_ports: ports[..3].to_vec(),
            peer_ports: ports[3..].to_vec(),
            members: vec![None, None, None],
        };
        for i in 0..3 {
            etcd.start_member(i);
        }
        etcd.wait_ready(&[0, 1, 2]).await;
        etcd
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_ports[i])
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..3).map(|i| self.endpoint(i)).collect()
    }

    fn start_member(&mut self, i: usize) {
        let peers: Vec<String> = (0..3)
            .map(|j| format!("m{j}=http://127.0.0.1:{}", self.peer_ports[j]))
            .collect();
        let peer = format!("http://127.0.0.1:{}", self.peer_ports[i]);
        let child = Command::new(ETCD)
            .arg("--name")
            .arg(format!("m{i}"))
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("m{i}")))
            .args(["--listen-client-urls", &self.endpoint(i)])
            .args(["--advertise-client-urls", &self.endpoint(i)])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &peers.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "handoff-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        self.members[i] = Some(Running(child));
    }

    /// Waits (bounded) until each of `members` answers a read.
    async fn wait_ready(&self, members: &[usize]) {
        for &i in members {
            let endpoint = self.endpoint(i);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let ok = async {
                    let mut c = etcd_client::Client::connect([&endpoint], None).await.ok()?;
                    c.get("/ready", None).await.ok()
                };
                if tokio::time::timeout(Duration::from_secs(2), ok)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "etcd member {i} did not become ready"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Kills member `i` (its data stays for a restart).
    pub fn stop(&mut self, i: usize) {
        self.members[i] = None;
    }

    /// Freezes member `i` (SIGSTOP): it holds its connections and answers nothing.
    pub fn freeze(&self, i: usize) {
        self.signal_member(i, "STOP");
    }

    /// Lets a frozen member `i` run again (SIGCONT).
    pub fn thaw(&self, i: usize) {
        self.signal_member(i, "CONT");
    }

    fn signal_member(&self, i: usize, signal: &str) {
        let pid = self.members[i].as_ref().expect("member running").0.id();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Member `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_ports[i]))
    }

    pub async fn restart(&mut self, members: &[usize]) {
        for &i in members {
            self.start_member(i);
        }
        self.wait_ready(members).await;
    }
}

/// One handoff instance of a cluster, as a separate process with its own directory.
pub struct Instance {
    pub h: Handoff,
    pub name: String,
    pub web: String,
    pub tcp: SocketAddr,
    pub config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// How a test's instances differ from the usual.
#[derive(Default, Clone, Copy)]
pub struct Options {
    /// Web pins clients by cookie (a pinned client holds its node draining until idle).
    pub affinity: bool,
    /// `cluster.lease_ttl` (default 2s: a dead instance leaves quickly).
    pub lease_ttl: Option<&'static str>,
    /// lb-2 reaches etcd only through this member (so stopping it cuts lb-2 off).
    pub lb2_through: Option<usize>,
    /// A third listener, `secure`, terminating TLS with `a.test.pem`/`a.test.key` of this
    /// directory.
    pub tls_dir: Option<&'static str>,
}

/// Pool `web` (HTTP nodes a and b) and pool `echo` (TCP echo nodes a and b), for instance
/// `name` of the cluster at `prefix` over `etcd`.
fn config(
    etcd: &[String],
    prefix: &str,
    name: &str,
    web: [SocketAddr; 2],
    echo: [SocketAddr; 2],
    o: Options,
) -> String {
    let affinity = if o.affinity {
        r#"affinity: { cookie: "handoff_node", idle_timeout: 60s }"#
    } else {
        ""
    };
    let lease_ttl = o.lease_ttl.unwrap_or("2s");
    let endpoints = etcd
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let secure = o.tls_dir.map_or_else(String::new, |d| {
        format!(
            "  - {{ name: secure, listen: \"127.0.0.1:0\", protocol: http, routes: [ {{ pool: web }} ], tls: {{ certificates: [ {{ cert: \"{d}/a.test.pem\", key: \"{d}/a.test.key\" }} ] }} }}\n"
        )
    });
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
shutdown_grace: 2s
cluster: {{ etcd: [{endpoints}], prefix: "{prefix}", instance: "{name}", lease_ttl: {lease_ttl} }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
  - {{ name: tcp, listen: "127.0.0.1:0", protocol: tcp, pool: echo }}
{secure}pools:
  - name: web
    nodes: [ {{ name: a, addr: "{}" }}, {{ name: b, addr: "{}" }} ]
    health: {FAST_HEALTH}
    {affinity}
    warmup: 0s
  - name: echo
    nodes: [ {{ name: a, addr: "{}" }}, {{ name: b, addr: "{}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1 }}
    drain: {{ timeout: 60s }}
"#,
        web[0], web[1], echo[0], echo[1]
    )
}

/// What every cluster test runs: a 3-member etcd, web backends a and b (version 1.0), two
/// echo backends, and instances lb-1 then lb-2 on a prefix of the test's own. Bind every field (`etcd: _etcd`, not `..`): a field left out of
/// a pattern is dropped at once, and with it etcd or a backend.
pub struct Pair {
    pub etcd: Etcd,
    pub one: Instance,
    pub two: Instance,
    pub a: HttpBackend,
    pub b: HttpBackend,
}

impl Pair {
    /// `None` (and a note on stderr) when etcd is not installed: the test then passes
    /// without checking anything, and says so.
    pub async fn start(test: &str, o: Options) -> Option<Pair> {
        if !etcd_installed(test) {
            return None;
        }
        let etcd = Etcd::start().await;
        let (a, b) = (
            HttpBackend::start("a", "1.0").await,
            HttpBackend::start("b", "1.0").await,
        );
        let echo = [tcp_echo_server().await, tcp_echo_server().await];
        let prefix = format!("/handoff-test/{test}-{}", std::process::id());
        let all = etcd.endpoints();
        let only = o.lb2_through.map(|i| vec![etcd.endpoint(i)]);
        let web = [a.addr, b.addr];
        let one = Instance::start(config(&all, &prefix, "lb-1", web, echo, o), "lb-1").await;
        let two_etcd = only.as_deref().unwrap_or(&all);
        let two = Instance::start(config(two_etcd, &prefix, "lb-2", web, echo, o), "lb-2").await;
        // Each knows the other's view of both nodes (the pair guard asks for it): a test
        // that cuts one off right away finds the cluster converged, not mid-publish.
        for (here, other) in [(&one, "lb-2"), (&two, "lb-1")] {
            for node in ["a", "b"] {
                here.wait_sees_up(other, node).await;
            }
        }
        Some(Pair {
            etcd,
            one,
            two,
            a,
            b,
        })
    }
}

/// Polls `probe` every 50 ms until it gives a value, for at most `limit`; panics with
/// `what` (and the last thing `probe` saw) otherwise. For facts only the admin API shows.
pub async fn until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Instance {
    /// Starts the instance and waits until it has joined (connected) with web/a and web/b up.
    pub async fn start(yaml: String, name: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("handoff.yaml");
        std::fs::write(&config, yaml).unwrap();
        let h = Handoff::start(&config).await;
        let status = admin(&h, Method::GET, "/v1/status", None).await.1;
        let listen = |i: usize| {
            status["listeners"][i]["listen"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let instance = Instance {
            web: format!("http://{}/", listen(0)),
            tcp: listen(1).parse().unwrap(),
            name: name.to_string(),
            h,
            config,
            _dir: dir,
        };
        instance.wait_connected(true).await;
        instance.h.wait_up("a").await;
        instance.h.wait_up("b").await;
        instance
    }

    /// Waits (bounded) until this instance has `other`'s view of web/`node` as up.
    pub async fn wait_sees_up(&self, other: &str, node: &str) {
        let what = format!("{} sees web/{node} up on {other}", self.name);
        until(&what, Duration::from_secs(20), async || {
            let view = self.node("web", node).await;
            let up = view["instances"].as_array().is_some_and(|all| {
                all.iter()
                    .any(|i| i["instance"] == other && i["health"] == "up")
            });
            up.then_some(()).ok_or_else(|| view.to_string())
        })
        .await
    }

    /// Waits (bounded) until `GET /v1/cluster` says `connected` is `want`.
    pub async fn wait_connected(&self, want: bool) {
        let what = format!("{} is connected: {want}", self.name);
        until(&what, Duration::from_secs(20), async || {
            let (_, view) = self.call(Method::GET, "/v1/cluster", None).await;
            (view["connected"] == want)
                .then_some(())
                .ok_or_else(|| view.to_string())
        })
        .await
    }

    /// Waits (bounded) until this instance says `want` drives rollout `id`.
    pub async fn wait_driver(&self, id: &str, want: &str) {
        let what = format!("{} sees {want} drive {id}", self.name);
        until(&what, Duration::from_secs(20), async || {
            let (_, view) = self.call(Method::GET, "/v1/cluster", None).await;
            let ok = view["drivers"][id] == want && view["connected"] == true;
            ok.then_some(()).ok_or_else(|| view.to_string())
        })
        .await
    }

    /// Polls rollout `id` on this instance (bounded) until `done` holds for its record.
    pub async fn rollout_until(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("rollout {id} on {}", self.name);
        until(&what, limit, async || {
            let (status, record) = self
                .call(Method::GET, &format!("/v1/rollouts/{id}"), None)
                .await;
            (status == 200 && done(&record))
                .then(|| record.clone())
                .ok_or_else(|| record.to_string())
        })
        .await
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        admin(&self.h, method, path, body).await
    }

    /// This instance's view of `pool/node`.
    pub async fn node(&self, pool: &str, node: &str) -> Value {
        self.call(Method::GET, &format!("/v1/pools/{pool}/nodes/{node}"), None)
            .await
            .1
    }
}

/// One admin call that must be answered.
pub async fn admin(h: &Handoff, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    call(&client(), method, &h.url(path), body)
        .await
        .unwrap_or_else(|| panic!("no answer to {path}: {:#?}", h.log()))
}

/// A write right after an etcd member stopped: an instance whose session ran through that
/// member (or that wrote during the election of a new etcd leader) refuses writes (503)
/// until it has resynced, within a few seconds; an operator retries, and so does this.
pub async fn write_once_reconnected(at: &Instance, path: &str) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, view) = at.call(Method::POST, path, None).await;
        if status != 503 || tokio::time::Instant::now() > deadline {
            return (status, view);
        }
        at.wait_connected(true).await;
    }
}

/// Sends `signal` (STOP, CONT) to a test's own child process.
pub fn signal(h: &Handoff, signal: &str) {
    let pid = h.proc.0.id().to_string();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// The `instance` names of a `GET /v1/cluster` answer's members.
pub fn member_names(view: &Value) -> Vec<String> {
    view["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["instance"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
