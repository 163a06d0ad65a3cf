//! The event stream (`GET /v1/events`, Server-Sent Events) and `handoff ctl watch`: a drain
//! appears as it happens, a reconnect with `Last-Event-ID` replays what was missed, bad
//! input is refused.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// An open event stream, read message by message.
struct Stream {
    tcp: TcpStream,
    pending: String,
}

impl Stream {
    async fn open(proxy: &Proxy, query: &str, last: Option<u64>) -> Stream {
        let mut tcp = TcpStream::connect(proxy.admin).await.unwrap();
        let last = last.map_or_else(String::new, |id| format!("Last-Event-ID: {id}\r\n"));
        let head = format!("GET /v1/events{query} HTTP/1.1\r\nHost: admin\r\n{last}\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut s = Stream {
            tcp,
            pending: String::new(),
        };
        // The head, then the connected comment.
        let first = s.message().await;
        assert!(
            first.contains("200 OK") && first.contains("text/event-stream"),
            "{first}"
        );
        s
    }

    /// The next SSE message (or head), up to its blank line.
    async fn message(&mut self) -> String {
        loop {
            if let Some(end) = self
                .pending
                .find("\n\n")
                .or_else(|| self.pending.find("\r\n\r\n"))
            {
                let len = if self.pending[end..].starts_with("\r\n\r\n") {
                    4
                } else {
                    2
                };
                return self.pending.drain(..end + len).collect();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("an event in time")
                .unwrap();
            assert!(n > 0, "the stream ended");
            self.pending.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }

    /// The next event's JSON (skipping comments; chunk-size lines are not JSON).
    async fn event(&mut self) -> Value {
        loop {
            let m = self.message().await;
            if let Some(data) = m.lines().find_map(|l| l.strip_prefix("data: ")) {
                return serde_json::from_str(data).unwrap();
            }
        }
    }

    /// Events until one satisfies `want` (bounded by `WAIT` per event).
    async fn until(&mut self, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let e = self.event().await;
            let done = want(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

fn is(e: &Value, kind: &str, node: &str, value: &str) -> bool {
    e["kind"] == kind && e["node"] == node && e["value"] == value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_appears_in_the_stream_as_it_happens() {
    let (_a, _b, proxy) = http_pair_up().await;
    let mut stream = Stream::open(&proxy, "", None).await;
    let started = tokio::time::Instant::now();
    let (status, _) = proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    assert_eq!(status, 200);
    let seen = stream.until(|e| is(e, "node_state", "a", "draining")).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let e = seen.last().unwrap();
    assert_eq!(e["pool"], "web");
    assert!(e["id"].as_u64().unwrap() >= 1 && e["at"].as_str().unwrap().ends_with('Z'));
    // Then the drain completes (nothing in flight): drained, and a drain_done.
    let rest = stream
        .until(|e| e["kind"] == "drain_done" && e["node"] == "a")
        .await;
    assert!(
        rest.iter().any(|e| is(e, "node_state", "a", "drained")) || {
            // drained may come right after drain_done.
            let next = stream.event().await;
            is(&next, "node_state", "a", "drained")
        },
        "{rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_last_event_id_gets_what_it_missed() {
    let (_a, _b, proxy) = http_pair_up().await;
    let mut first = Stream::open(&proxy, "?pool=web", None).await;
    proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    let draining = first.until(|e| is(e, "node_state", "a", "draining")).await;
    let last = draining.last().unwrap()["id"].as_u64().unwrap();
    drop(first);
    // Missed while away: the drain ends, and a is enabled again.
    proxy.wait_drained("web", "a").await;
    proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/enable", json!({}))
        .await;
    let mut again = Stream::open(&proxy, "", Some(last)).await;
    let replayed = again.until(|e| is(e, "node_state", "a", "warming")).await;
    assert!(
        replayed.iter().all(|e| e["id"].as_u64().unwrap() > last),
        "{replayed:?}"
    );
    assert!(
        replayed.iter().any(|e| is(e, "node_state", "a", "drained")),
        "{replayed:?}"
    );
    // Ids rise by one: nothing in between was lost.
    let ids: Vec<u64> = replayed.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_requests_are_refused() {
    let (_a, _b, proxy) = http_pair_up().await;
    for (path, status) in [
        ("/v1/events?pool=nope", 404),
        ("/v1/events?last_event_id=abc", 400),
        ("/v1/events?colour=red", 400),
    ] {
        let (got, body) = proxy.admin(Method::GET, path, None).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_watch_prints_the_drain() {
    let (_a, _b, proxy) = http_pair_up().await;
    let mut child = Command::new(BIN)
        .args([
            "ctl",
            "--admin",
            &format!("http://{}", proxy.admin),
            "watch",
            "web",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _watch = Running(child);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = tokio::time::timeout_at(deadline, rx.recv())
        .await
        .expect("ctl watch connected in time")
        .expect("ctl watch is running");
    assert!(
        first.starts_with("# watching events of pool web"),
        "{first}"
    );
    proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/b/drain", json!({}))
        .await;
    loop {
        let line = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("ctl watch printed the drain in time")
            .expect("ctl watch is running");
        if line.contains("node_state") && line.contains("web/b") && line.contains("draining") {
            break;
        }
    }
}
