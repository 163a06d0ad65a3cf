//! Test support: the real app on ephemeral loopback ports, real backends, and clients.

pub mod backends;

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

/// Health settings that make tests quick: up after 2 checks 100 ms apart.
pub const FAST_HEALTH: &str = "{ interval: 100ms, timeout: 100ms, healthy_after: 2, unhealthy_after: 2, http: { path: \"/healthz\", version_header: \"X-Version\" } }";

pub struct Proxy {
    pub app: Arc<App>,
    pub config_path: PathBuf,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts handoff with `yaml` written to a temporary file (so reloads can re-read it).
    pub async fn start(yaml: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("handoff.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let config = handoff::config::load(&config_path)
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let bound = app::bind(&config).await.expect("bind");
        let app = App::start(config, Some(config_path.clone()), bound, Shutdown::new())
            .await
            .expect("start");
        let listeners = app.listener_addrs().await;
        Proxy {
            admin: app.admin_addr(),
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
