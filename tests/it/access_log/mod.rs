//! The access log (`access_log:`): one JSON line per request, naming its node, the node's
//! version and how the exchange ended, for every way it can end; a log that cannot be
//! written costs lines (counted), never requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::common::backends::{self, dead_addr, tcp_echo_server, HttpBackend};
use crate::common::*;
use handoff::pool::Health;

/// `yaml` with an access log in the instance's directory (and request IDs on).
fn logged(yaml: &str) -> String {
    format!("access_log: {{ path: \"{{DIR}}/access.log\", format: json }}\nrequest_id: {{ header: X-Request-Id }}\n{yaml}")
}

fn log_path(proxy: &Proxy) -> PathBuf {
    proxy._dir.path().join("access.log")
}

/// The file's lines, each parsed (a line that is not JSON fails the test).
fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits (bounded) until the file holds at least `n` lines; returns them all.
pub async fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let lines = read_lines(path);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} lines in the access log, expected {n}: {lines:#?}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one line whose `path` is `path`.
async fn line_for(proxy: &Proxy, path: &str) -> Value {
    let file = log_path(proxy);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let lines = read_lines(&file);
        let found: Vec<&Value> = lines.iter().filter(|l| l["path"] == path).collect();
        match found.as_slice() {
            [one] => return (*one).clone(),
            [] => {}
            more => panic!("{} lines for {path}: {more:#?}", more.len()),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no line for {path}: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_one_line_with_the_version_that_served_it_across_a_readmission() {
    let (mut a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let proxy = Proxy::start(&logged(&http_config(&[("a", a.addr), ("b", b.addr)], ""))).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let url = proxy.url("web", "/");
    // Four clients; each answer's request ID, node and version, as the client saw them.
    const PER_CLIENT: usize = 600;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = client();
                let mut seen = Vec::new();
                for _ in 0..PER_CLIENT {
                    let resp = c.get(url.parse().unwrap()).await.expect("request");
                    let h = |n: &str| resp.headers()[n].to_str().unwrap().to_string();
                    seen.push((h("x-request-id"), h("x-node"), h("x-version")));
                    assert_eq!(resp.status(), 200);
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                }
                seen
            })
        })
        .collect();
    // Meanwhile a is drained, upgraded and readmitted at 2.0.0: once it has answered at
    // 1.0.0 (the drain could otherwise land before any client's first request reached a).
    let a_node = proxy.node("web", "a");
    let deadline = tokio::time::Instant::now() + WAIT;
    while a_node.state.traffic.sample().requests == 0 {
        assert!(tokio::time::Instant::now() < deadline, "a answered nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _) = proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    assert_eq!(status, 200);
    proxy.wait_drained("web", "a").await;
    a.restart("2.0.0").await;
    let node = proxy.node("web", "a");
    let upgraded = node
        .state
        .wait_until(WAIT, |s| {
            s.health() == Health::Up && s.version().as_deref().map(String::as_str) == Some("2.0.0")
        })
        .await;
    assert!(upgraded, "a never reported 2.0.0");
    let (status, _) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/nodes/a/enable",
            json!({"warmup": "0s"}),
        )
        .await;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    let total = seen.len();
    let lines = wait_lines(&log_path(&proxy), total).await;
    assert_eq!(lines.len(), total, "lines != requests");
    let by_id: std::collections::HashMap<&str, &Value> = lines
        .iter()
        .map(|l| (l["request_id"].as_str().expect("request_id"), l))
        .collect();
    assert_eq!(by_id.len(), total, "request IDs repeat in the log");
    let mut versions = std::collections::HashSet::new();
    for (id, node, version) in &seen {
        let line = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("no line for request {id}"));
        assert_eq!(line["node"], node.as_str(), "{line}");
        assert_eq!(line["node_version"], version.as_str(), "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["termination"], "ok", "{line}");
        assert_eq!(line["attempts"], json!([node]), "{line}");
        assert_eq!(line["pool"], "web");
        assert_eq!(line["method"], "GET");
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
        versions.insert(format!("{node} {version}"));
    }
    assert!(
        versions.contains("a 1.0.0") && versions.contains("a 2.0.0"),
        "the readmission is not in the log: {versions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_written_costs_lines_not_requests() {
    let a = HttpBackend::start("a", "1.0.0").await;
    // /dev/full: every write fails with ENOSPC, as on a full file system.
    let yaml = format!(
        "access_log: {{ path: /dev/full }}\n{}",
        http_config(&[("a", a.addr)], "")
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let c = client();
    for _ in 0..50 {
        let (status, _) = get(&c, &proxy.url("web", "/")).await;
        assert_eq!(status, 200);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = proxy.metrics().await;
        let lost = metric_value(
            &text,
            "handoff_access_log_dropped_total{reason=\"write_error\"}",
        );
        let errors = metric_value(&text, "handoff_access_log_write_errors_total");
        if lost >= 50.0 && errors >= 1.0 {
            assert_eq!(metric_value(&text, "handoff_access_log_lines_total"), 0.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lost {lost}, write errors {errors}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_name_the_rollout_and_phase_a_node_is_in() {
    let mut a = HttpBackend::start("a", "1.0.0").await;
    let mut b = HttpBackend::start("b", "1.0.0").await;
    let analysis = "{ window: 1s, min_requests: 10, max_error_rate: 0.05, max_p99_ratio: 5 }";
    let yaml = crate::analysis::config(a.addr, b.addr, "300ms", analysis);
    let proxy = Proxy::start(&logged(&yaml)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;
    let load = Load::start(proxy.url("web", "/"), 4, Duration::from_secs(60));
    let sent = || load.sent.load(std::sync::atomic::Ordering::SeqCst);
    eventually("requests end before the rollout", || sent() > 20).await;
    let id = crate::analysis::start(&proxy, "2.0.0").await;
    for backend in [&mut a, &mut b] {
        proxy.wait_drained("web", backend.name).await;
        backend.restart("2.0.0").await;
    }
    let r = proxy.rollout_end(&id, Duration::from_secs(30)).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0);
    let lines = wait_lines(&log_path(&proxy), sent).await;
    assert_eq!(lines.len(), sent, "lines != requests");
    let judged: Vec<&Value> = lines
        .iter()
        .filter(|l| l["rollout"]["phase"] == "analysis")
        .collect();
    assert!(!judged.is_empty(), "no line during analysis");
    for l in &judged {
        assert_eq!(l["rollout"]["id"], id.as_str(), "{l}");
        assert_eq!(l["node_version"], "2.0.0", "{l}");
    }
    // The requests that ended before the rollout began name none.
    let before = lines.iter().filter(|l| l.get("rollout").is_none()).count();
    assert!(before >= 20, "{before} lines without a rollout");
    // Once the rollout is over, no node is in it.
    let (status, _) = get(&client(), &proxy.url("web", "/after")).await;
    assert_eq!(status, 200);
    let after = line_for(&proxy, "/after").await;
    assert!(after.get("rollout").is_none(), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_log_to_its_new_file_and_loses_nothing() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let base = http_config(&[("a", a.addr)], "");
    let proxy = Proxy::start(&logged(&base)).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let c = client();
    for i in 0..20 {
        let (status, _) = get(&c, &proxy.url("web", &format!("/before/{i}"))).await;
        assert_eq!(status, 200);
    }
    let moved = proxy._dir.path().join("moved.log");
    let yaml = format!(
        "access_log: {{ path: \"{}\", format: text }}\n{base}",
        moved.display()
    );
    std::fs::write(&proxy.config_path, yaml).unwrap();
    let (status, body) = proxy.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    for i in 0..20 {
        let (status, _) = get(&c, &proxy.url("web", &format!("/after/{i}"))).await;
        assert_eq!(status, 200);
    }
    let old = wait_lines(&log_path(&proxy), 20).await;
    assert!(old
        .iter()
        .all(|l| l["path"].as_str().unwrap().starts_with("/before/")));
    // The new file is in the text format: one line a request, `-` for what is absent.
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&moved).unwrap_or_default();
        if text.lines().count() >= 20 || tokio::time::Instant::now() >= deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(text.lines().count(), 20, "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains("\"/after/") && l.ends_with("\"ok\"")),
        "{text}"
    );
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_file_system_every_request_is_answered_and_every_line_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let _fs = Tmpfs(dir.path().to_path_buf());
    let a = HttpBackend::start("a", "1.0.0").await;
    let log = dir.path().join("access.log");
    let yaml = format!(
        "access_log: {{ path: \"{}\" }}\n{}",
        log.display(),
        http_config(&[("a", a.addr)], "")
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let c = client();
    const REQUESTS: usize = 400; // about 170 lines fill 64 KiB
    for i in 0..REQUESTS {
        let (status, _) = get(&c, &proxy.url("web", &format!("/{i}"))).await;
        assert_eq!(status, 200);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let (written, lost) = loop {
        let text = proxy.metrics().await;
        let written = metric_value(&text, "handoff_access_log_lines_total");
        let lost = metric_value(
            &text,
            "handoff_access_log_dropped_total{reason=\"write_error\"}",
        );
        if written + lost >= REQUESTS as f64 || tokio::time::Instant::now() >= deadline {
            break (written, lost);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        written + lost,
        REQUESTS as f64,
        "written {written}, lost {lost}"
    );
    assert!(
        lost > 0.0 && written > 0.0,
        "written {written}, lost {lost}"
    );
    // The lines counted as written are whole; at most the one cut by the full disk is not.
    let text = std::fs::read_to_string(&log).unwrap();
    let whole = text
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .count();
    assert_eq!(
        whole as f64,
        written,
        "{} lines in the file",
        text.lines().count()
    );
    assert!(text.lines().count() <= whole + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_of_unknown_length_is_counted_as_it_streams() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let a = HttpBackend::start("a", "1.0.0").await;
    let proxy = Proxy::start(&logged(&http_config(&[("a", a.addr)], ""))).await;
    proxy.wait_health("web", "a", Health::Up).await;
    let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Three frames, no content-length: the proxy streams it to the node, chunked.
    let frames = ["abc", "defgh", "ij"].map(|s| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(s)))
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = http::Request::post("http://t/echo").body(body).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&echoed[..], b"abcdefghij");
    let line = line_for(&proxy, "/echo").await;
    assert_eq!(line["bytes_in"], 10, "{line}");
    assert_eq!(line["bytes_out"], 10, "{line}");
    assert_eq!(line["proto"], "HTTP/2");
}

mod ends;
