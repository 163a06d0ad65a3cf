//! The real binary as a separate process: start it, learn its admin address from its log,
//! call its admin API, and check it is alive.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::*;

/// One run of the binary: the process (killed on drop), its admin address, its log so far.
pub struct Handoff {
    pub proc: Running,
    pub admin: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Handoff {
    /// Starts `handoff run -c config` and waits (bounded) until the admin API is listening.
    pub async fn start(config: &Path) -> Handoff {
        Self::start_with(config, |_| {}).await
    }

    /// As [`Handoff::start`], running `on_first_output` (given the process id) the moment
    /// the first byte of the process's log arrives.
    pub async fn start_with(
        config: &Path,
        on_first_output: impl FnOnce(u32) + Send + 'static,
    ) -> Handoff {
        Self::spawn(config, &[], on_first_output).await
    }

    /// `handoff run -c config --upgrade`: takes over from the process running `config`.
    pub async fn take_over(config: &Path) -> Handoff {
        Self::spawn(config, &["--upgrade"], |_| {}).await
    }

    /// Starts `wrapper... handoff run -c config` (a command that sets up the process's
    /// environment, then runs the rest of its arguments).
    pub async fn start_in(wrapper: &[&str], config: &Path) -> Handoff {
        Self::spawn_in(wrapper, config, &[], |_| {}).await
    }

    async fn spawn(
        config: &Path,
        extra: &[&str],
        on_first_output: impl FnOnce(u32) + Send + 'static,
    ) -> Handoff {
        Self::spawn_in(&[], config, extra, on_first_output).await
    }

    async fn spawn_in(
        wrapper: &[&str],
        config: &Path,
        extra: &[&str],
        on_first_output: impl FnOnce(u32) + Send + 'static,
    ) -> Handoff {
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(["run", "-c"])
            .arg(config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn handoff");
        let stderr = child.stderr.take().unwrap();
        let pid = child.id();
        let mut proc = Running(child);
        let log = Arc::new(Mutex::new(Vec::new()));
        let admin = read_log(stderr, Arc::clone(&log), move || on_first_output(pid));
        match tokio::time::timeout(WAIT, admin).await {
            Ok(Ok(admin)) => Handoff { proc, admin, log },
            failed => {
                // Ended (or stuck) before serving: say how, with everything it logged.
                let _ = proc.0.kill();
                let status = proc.0.wait();
                let why = if failed.is_err() {
                    "did not start in time"
                } else {
                    "exited before serving"
                };
                panic!("handoff {why} ({status:?}): {:#?}", log.lock().unwrap())
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The address the first listener is bound to, from `GET /v1/status`.
    pub async fn listener(&self) -> std::net::SocketAddr {
        let (_, status) = call(&client(), Method::GET, &self.url("/v1/status"), None)
            .await
            .expect("status");
        status["listeners"][0]["listen"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("a listener address")
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Panics (with the log) unless the process is still running.
    pub fn assert_alive(&mut self, when: &str) {
        let status = self.proc.0.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "handoff exited ({status:?}) {when}: {:#?}",
            self.log()
        );
    }

    /// Waits (the admin API's long poll) until `node` of pool `web` is up.
    pub async fn wait_up(&self, node: &str) {
        let url = self.url(&format!(
            "/v1/pools/web/nodes/{node}/wait?state=up&timeout=5s"
        ));
        let answer = call(&client(), Method::GET, &url, None).await;
        assert!(
            matches!(answer, Some((200, _))),
            "web/{node} not up: {answer:?}"
        );
    }
}

/// Reads the child's log on a thread of its own until EOF, so the child never blocks on a
/// full pipe, keeping every line in `log`. `on_first_output` runs the moment the first bytes
/// arrive, before they are parsed. Resolves to the address from the "admin API listening"
/// line (or to an error if the process ends without one).
fn read_log(
    stderr: ChildStderr,
    log: Arc<Mutex<Vec<String>>>,
    on_first_output: impl FnOnce() + Send + 'static,
) -> tokio::sync::oneshot::Receiver<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        if reader.fill_buf().map_or(true, |b| b.is_empty()) {
            return;
        }
        on_first_output();
        let mut tx = Some(tx);
        for line in reader.lines().map_while(Result::ok) {
            if line.contains("admin API listening") {
                let addr = line
                    .split("admin=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next());
                if let (Some(addr), Some(tx)) = (addr, tx.take()) {
                    let _ = tx.send(addr.to_string());
                }
            }
            log.lock().unwrap().push(line);
        }
    });
    rx
}

/// One admin call: status and JSON body (`Null` when not JSON), or `None` when no answer
/// came (the process is gone, say).
pub async fn call(
    client: &TestClient,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    let mut req = Request::builder().method(method).uri(url);
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let req = req.body(Full::new(body)).unwrap();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let bytes = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}
