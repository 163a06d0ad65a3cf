//! Test support: the real app on ephemeral loopback ports, real backends, and clients.

pub mod backends;
pub mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use handoff::app::{self, App};
use handoff::pool::{Health, Node};
use handoff::shutdown::Shutdown;

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// The handoff binary, for tests that run it as a user would.
pub const BIN: &str = env!("CARGO_BIN_EXE_handoff");

/// A child process (the binary, run by a test) that is killed when the test ends.
/// A port free on loopback a moment ago, for a config a separate process binds.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a peer program (a Python client, a checker) to its end, within `limit`; asserts it
/// succeeded, showing its output otherwise, and returns its standard output.
pub async fn run_peer(cmd: &mut tokio::process::Command, limit: Duration, what: &str) -> String {
    let out = tokio::time::timeout(limit, cmd.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what} could not start: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Health settings that make tests quick: up after 2 checks 100 ms apart.
pub const FAST_HEALTH: &str = "{ interval: 100ms, timeout: 100ms, healthy_after: 2, unhealthy_after: 2, http: { path: \"/healthz\", version_header: \"X-Version\" } }";

pub struct Proxy {
    pub app: Arc<App>,
    pub config_path: PathBuf,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    pub _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts handoff with `yaml` written to a temporary file (so reloads can re-read it).
    pub async fn start(yaml: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("handoff.yaml");
        // `{DIR}` in a test config is the instance's temporary directory (state files).
        let yaml = yaml.replace("{DIR}", &dir.path().display().to_string());
        std::fs::write(&config_path, &yaml).expect("write config");
        let config = handoff::config::load(&config_path)
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let bound = app::bind(&config).await.expect("bind");
        let app = App::start(
            config,
            Some(config_path.clone()),
            bound.listeners,
            Shutdown::new(),
        )
        .await
        .expect("start");
        let admin = handoff::admin::spawn(&app, bound.admin).expect("admin API");
        let listeners = app.listener_addrs().await;
        Proxy {
            admin,
            app,
            config_path,
            listeners,
            _dir: dir,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{}", self.addr(listener), path)
    }

    pub fn node(&self, pool: &str, node: &str) -> Arc<Node> {
        let snapshot = self.app.snapshot.load();
        Arc::clone(snapshot.pool(pool).expect("pool").node(node).expect("node"))
    }

    /// Waits (on the node's change signal) until it has `health`.
    pub async fn wait_health(&self, pool: &str, node: &str, health: Health) {
        let n = self.node(pool, node);
        let ok = n.state.wait_until(WAIT, |s| s.health() == health).await;
        assert!(
            ok,
            "{pool}/{node} did not become {health:?} (is {:?})",
            n.state.health()
        );
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let (status, body) = send(method, &format!("http://{}{}", self.admin, path), token).await;
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// An admin call with a JSON body.
    pub async fn admin_json(
        &self,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.admin, path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = tokio::time::timeout(WAIT * 3, client().request(req))
            .await
            .expect("admin call timed out")
            .expect("admin call");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Waits (the admin API's long poll, 5 s) until the node is drained; returns its view.
    pub async fn wait_drained(&self, pool: &str, node: &str) -> serde_json::Value {
        let path = format!("/v1/pools/{pool}/nodes/{node}/wait?state=drained&timeout=5s");
        let (status, view) = self.admin(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{pool}/{node} not drained: {view}");
        view
    }

    /// Drains this instance and starts a new one on the same config file (new ports).
    pub async fn restart(self) -> Proxy {
        self.app.shutdown.run(Duration::from_secs(1)).await;
        self.app.flush_state().await;
        let yaml = std::fs::read_to_string(&self.config_path).unwrap();
        let dir = self._dir;
        let config = handoff::config::parse(&yaml).expect("config");
        let bound = app::bind(&config).await.expect("bind");
        let app = App::start(
            config,
            Some(self.config_path.clone()),
            bound.listeners,
            Shutdown::new(),
        )
        .await
        .expect("start");
        let admin = handoff::admin::spawn(&app, bound.admin).expect("admin API");
        let listeners = app.listener_addrs().await;
        Proxy {
            admin,
            app,
            config_path: self.config_path,
            listeners,
            _dir: dir,
        }
    }

    /// Polls a rollout until it is no longer running.
    pub async fn rollout_end(&self, id: &str, limit: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (_, r) = self
                .admin(Method::GET, &format!("/v1/rollouts/{id}"), None)
                .await;
            if r["state"] != "running" {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rollout still running: {r}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let (_, body) = send(Method::GET, &format!("http://{}/metrics", self.admin), None).await;
        String::from_utf8(body.to_vec()).unwrap()
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive HTTP/1.1 client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One request on a fresh connection.
pub async fn send(method: Method, url: &str, token: Option<&str>) -> (StatusCode, Bytes) {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = tokio::time::timeout(
        WAIT,
        client().request(req.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .expect("request timed out")
    .expect("request failed");
    let status = resp.status();
    (
        status,
        resp.into_body().collect().await.expect("body").to_bytes(),
    )
}

/// One HTTP/2 connection (prior knowledge) to `addr`, driven in the background: its
/// requests share it as streams.
pub async fn h2_connection(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `url` as a new stream of `sender`'s connection ([`h2_connection`]): its status.
pub fn h2_get(
    sender: &hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    url: String,
) -> impl std::future::Future<Output = hyper::Result<http::StatusCode>> {
    let mut sender = sender.clone();
    let req = Request::get(url)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    async move { sender.send_request(req).await.map(|r| r.status()) }
}

/// GET with a client, returning status and body text (errors become status 0).
pub async fn get(client: &TestClient, url: &str) -> (u16, String) {
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    match tokio::time::timeout(WAIT, client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            match resp.into_body().collect().await {
                Ok(b) => (status, String::from_utf8_lossy(&b.to_bytes()).into_owned()),
                Err(e) => (0, format!("body error: {e}")),
            }
        }
        Ok(Err(e)) => (0, format!("request error: {e:?}")),
        Err(_) => (0, "timed out".into()),
    }
}

/// Backends `a` and `b` reporting 1.0.0, handoff in front of them (pool and listener `web`,
/// as [`http_config`] builds them), both nodes up.
pub async fn http_pair_up() -> (backends::HttpBackend, backends::HttpBackend, Proxy) {
    let a = backends::HttpBackend::start("a", "1.0.0").await;
    let b = backends::HttpBackend::start("b", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr), ("b", b.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    (a, b, proxy)
}

/// An HTTP pool of the given backends, named `web`, behind a listener `web`.
pub fn http_config(backends: &[(&str, SocketAddr)], extra_listener: &str) -> String {
    let nodes: String = backends
        .iter()
        .map(|(n, a)| format!("      - {{ name: {n}, addr: \"{a}\" }}\n"))
        .collect();
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - name: web
    listen: "127.0.0.1:0"
    protocol: http
{extra_listener}    routes:
      - {{ pool: web }}
pools:
  - name: web
    nodes:
{nodes}    health: {FAST_HEALTH}
"#
    )
}

/// Polls `cond` every 10 ms until it holds, for at most [`WAIT`]. Only for facts that have
/// no signal to wait on (counters of a backend, say).
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Steady HTTP load from `clients` keep-alive clients until stopped; counts sent and failed.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub sent: Arc<std::sync::atomic::AtomicUsize>,
    pub failed: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the load; every client stops by itself after `limit`.
    pub fn start(url: String, clients: usize, limit: Duration) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop, sent, failed) =
                    (url.clone(), stop.clone(), sent.clone(), failed.clone());
                tokio::spawn(async move {
                    let client = client();
                    let deadline = tokio::time::Instant::now() + limit;
                    while !stop.load(SeqCst) && tokio::time::Instant::now() < deadline {
                        let (status, body) = get(&client, &url).await;
                        sent.fetch_add(1, SeqCst);
                        if status != 200 {
                            failed.fetch_add(1, SeqCst);
                            eprintln!("failed request: {status} {body}");
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    /// Stops and returns (sent, failed).
    pub async fn finish(self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        self.stop.store(true, SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.sent.load(SeqCst), self.failed.load(SeqCst))
    }
}

/// The value of one series in Prometheus text (-1 when absent).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse().unwrap_or(-1.0))
        })
        .unwrap_or(-1.0)
}

/// Writes `msg` and reads it back (an echo backend behind the proxy).
pub async fn echo_once(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(buf, msg);
}

/// Starts `yaml` (TCP listener `t` in front of pool `p` of echo nodes `a` and `b`), waits
/// for both to be up, opens one session (echoed once) and drains the node it landed on with
/// `drain` as the body. Returns the proxy, the open session and that node's name.
pub async fn tcp_session_drained(
    yaml: &str,
    drain: serde_json::Value,
) -> (Proxy, tokio::net::TcpStream, &'static str) {
    let proxy = Proxy::start(yaml).await;
    proxy.wait_health("p", "a", Health::Up).await;
    proxy.wait_health("p", "b", Health::Up).await;
    let mut long = tokio::net::TcpStream::connect(proxy.addr("t"))
        .await
        .unwrap();
    echo_once(&mut long, b"x").await;
    let tcp = handoff::pool::SessionKind::Tcp;
    let busy = if proxy.node("p", "a").state.sessions(tcp) == 1 {
        "a"
    } else {
        "b"
    };
    let path = format!("/v1/pools/p/nodes/{busy}/drain");
    let (status, view) = proxy.admin_json(Method::POST, &path, drain).await;
    assert_eq!(status, 200, "{view}");
    (proxy, long, busy)
}

/// A TCP session to `addr` from 127.0.0.`host` (each its own client address), echoed once.
pub async fn echo_session_from(host: u8, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from(([127, 0, 0, host], 0)))
        .unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    echo_once(&mut s, b"x").await;
    s
}
