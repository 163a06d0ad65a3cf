//! Self-upgrade with the real binary as separate processes: `run --upgrade` takes over the
//! listening sockets and the runtime state of the running process under load, and failed
//! takeovers change nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::affinity::Browser;
use crate::common::backends::HttpBackend;
use crate::common::process::{call, Handoff};
use crate::common::*;

fn config(a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
shutdown_grace: 5s
upgrade: {{ timeout: 10s }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{a}" }}, {{ name: b, addr: "{b}" }} ]
    health: {FAST_HEALTH}
    affinity: {{ cookie: "handoff_node", idle_timeout: 60s }}
"#
    )
}

async fn status(h: &Handoff) -> Value {
    match call(&client(), Method::GET, &h.url("/v1/status"), None).await {
        Some((200, v)) => v,
        other => panic!("status: {other:?}\n{:#?}", h.log()),
    }
}

fn listener_url(status: &Value, path: &str) -> String {
    format!(
        "http://{}{path}",
        status["listeners"][0]["listen"].as_str().unwrap()
    )
}

/// Waits (bounded) for the child to exit; its exit code.
async fn exit_code(h: &mut Handoff) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = h.proc.0.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not exit: {:#?}",
            h.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn started(dir: &Path, yaml: &str) -> Handoff {
    let path = dir.join("handoff.yaml");
    std::fs::write(&path, yaml).unwrap();
    let h = Handoff::start(&path).await;
    h.wait_up("a").await;
    h.wait_up("b").await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_under_load_fails_no_request_and_carries_the_state_over() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut old = started(dir.path(), &config(a.addr, b.addr)).await;
    let before = status(&old).await;
    assert_eq!(before["process"]["generation"], 1, "{before}");
    let url = listener_url(&before, "/");
    // b drained, a client pinned to a by its cookie.
    let drain = call(
        &client(),
        Method::POST,
        &old.url("/v1/pools/web/nodes/b/drain"),
        Some(json!({})),
    )
    .await;
    assert!(matches!(drain, Some((200, _))), "{drain:?}");
    let mut browser = Browser::new();
    assert_eq!(browser.get(&url).await, "a");
    let cookie = browser.cookie.clone();

    let load = Load::start(url.clone(), 4, Duration::from_secs(20));
    let fresh = FreshConnections::start(listener_addr(&before), 2);
    eventually("the load runs", || {
        load.sent.load(std::sync::atomic::Ordering::SeqCst) > 50
    })
    .await;
    let mut new = Handoff::take_over(&dir.path().join("handoff.yaml")).await;
    assert_eq!(
        new.admin, old.admin,
        "the admin listener was not handed over"
    );
    assert_eq!(
        exit_code(&mut old).await,
        Some(0),
        "the old generation: {:#?}",
        old.log()
    );
    let sent_at_exit = load.sent.load(std::sync::atomic::Ordering::SeqCst);
    eventually("the new generation serves the load", || {
        load.sent.load(std::sync::atomic::Ordering::SeqCst) > sent_at_exit + 50
    })
    .await;
    let (sent, failed) = load.finish().await;
    println!("takeover under keep-alive load: {sent} requests, {failed} failed");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the takeover"
    );
    let (sent, failed) = fresh.finish().await;
    println!("takeover under connection-per-request load: {sent} requests, {failed} failed");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} fresh-connection requests failed"
    );

    let after = status(&new).await;
    assert_eq!(after["process"]["generation"], 2, "{after}");
    assert_ne!(after["process"]["pid"], before["process"]["pid"]);
    assert_eq!(listener_url(&after, "/"), url, "the listener moved");
    let nodes = &after["pools"][0]["nodes"];
    assert_eq!(nodes[1]["state"], "drained", "{after}");
    assert_eq!(
        nodes[0]["health"], "up",
        "health was not carried over: {after}"
    );
    assert_eq!(nodes[0]["version"], "1.0.0", "{after}");
    assert_eq!(browser.get(&url).await, "a", "the cookie lost its node");
    assert_eq!(browser.cookie, cookie, "the cookie was not recognised");
    eventually_async(&new, |s| s.get("previous").is_none()).await;
    new.assert_alive("after the takeover");
}

fn listener_addr(status: &Value) -> std::net::SocketAddr {
    status["listeners"][0]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Clients that open a new connection for every request (`Connection: close`), counting
/// requests and failures (anything but a complete 200 answer).
struct FreshConnections {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(usize, usize)>>,
}

impl FreshConnections {
    fn start(addr: std::net::SocketAddr, clients: usize) -> FreshConnections {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                tokio::spawn(async move {
                    let (mut sent, mut failed) = (0, 0);
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                    while !stop.load(std::sync::atomic::Ordering::SeqCst)
                        && tokio::time::Instant::now() < deadline
                    {
                        sent += 1;
                        let answer = async {
                            let mut s = tokio::net::TcpStream::connect(addr).await?;
                            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                                .await?;
                            let mut buf = Vec::new();
                            s.read_to_end(&mut buf).await?;
                            Ok::<_, std::io::Error>(buf)
                        };
                        match tokio::time::timeout(WAIT, answer).await {
                            Ok(Ok(buf)) if buf.starts_with(b"HTTP/1.1 200") => {}
                            other => {
                                failed += 1;
                                eprintln!("fresh connection failed: {other:?}");
                            }
                        }
                    }
                    (sent, failed)
                })
            })
            .collect();
        FreshConnections { stop, tasks }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (mut sent, mut failed) = (0, 0);
        for t in self.tasks {
            let (s, f) = t.await.unwrap();
            sent += s;
            failed += f;
        }
        (sent, failed)
    }
}

/// Polls the status until `cond` holds (bounded).
async fn eventually_async(h: &Handoff, cond: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = status(h).await;
        if cond(&s) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_with_an_invalid_config_exits_1_and_changes_nothing() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut old = started(dir.path(), &config(a.addr, b.addr)).await;
    let url = listener_url(&status(&old).await, "/");
    let load = Load::start(url, 2, Duration::from_secs(20));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listeners: []\npools: [ { name: web, nodes: [] } ]\nbogus: 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--upgrade", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bogus"), "{stderr}");
    // A config whose upgrade socket nobody listens on: refused, saying so.
    let lonely = tempfile::tempdir().unwrap();
    let elsewhere = lonely.path().join("handoff.yaml");
    std::fs::write(&elsewhere, config(a.addr, b.addr)).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--upgrade", "-c"])
        .arg(&elsewhere)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no handoff is listening"), "{stderr}");
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} failed while the takeovers were refused"
    );
    old.assert_alive("after refused takeovers");
    assert_eq!(status(&old).await["process"]["generation"], 1);
}

/// Pool `web` (a, b) on an http listener and pool `p` (one echo node) on a tcp listener.
fn config_with_tcp(
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    echo: std::net::SocketAddr,
) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
shutdown_grace: 30s
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
  - {{ name: t, listen: "127.0.0.1:0", protocol: tcp, pool: p }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{a}" }}, {{ name: b, addr: "{b}" }} ]
    health: {FAST_HEALTH}
    warmup: 200ms
  - name: p
    nodes: [ {{ name: e, addr: "{echo}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, tcp: {{}} }}
"#
    )
}

/// A deterministic byte stream (xorshift), so the reader can check every byte.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

const STREAM_BYTES: usize = 50 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_stream_crosses_a_takeover_byte_exact_and_generations_count_up() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let echo = crate::common::backends::tcp_echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gen1 = started(dir.path(), &config_with_tcp(a.addr, b.addr, echo)).await;
    let s = status(&gen1).await;
    let tcp = s["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "t")
        .unwrap()["listen"]
        .as_str()
        .unwrap()
        .to_string();
    let up = call(
        &client(),
        Method::GET,
        &gen1.url("/v1/pools/p/nodes/e/wait?state=up&timeout=5s"),
        None,
    )
    .await;
    assert!(matches!(up, Some((200, _))), "{up:?}");
    let conn = tokio::net::TcpStream::connect(&tcp).await.unwrap();
    let (mut r, mut w) = conn.into_split();
    let written = Arc::new(AtomicUsize::new(0));
    let progress = Arc::clone(&written);
    // The stream holds at 40 MiB until both takeovers are done and checked.
    let (resume, resumed) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        let mut data = Stream(0x9E37_79B9_7F4A_7C15);
        let mut buf = vec![0u8; CHUNK];
        let mut resumed = Some(resumed);
        while progress.load(SeqCst) < STREAM_BYTES {
            if progress.load(SeqCst) >= 40 * 1024 * 1024 {
                if let Some(r) = resumed.take() {
                    let _ = r.await;
                }
            }
            data.fill(&mut buf);
            w.write_all(&buf).await.unwrap();
            progress.fetch_add(CHUNK, SeqCst);
            // Paced over a few seconds, so the takeovers happen mid-stream.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        w.shutdown().await.unwrap();
    });
    let reader = tokio::spawn(async move {
        let mut want = Stream(0x9E37_79B9_7F4A_7C15);
        let (mut got, mut expect) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        let mut total = 0usize;
        let mut pending = 0usize;
        loop {
            let n = r.read(&mut got[pending..]).await.unwrap();
            if n == 0 {
                break;
            }
            pending += n;
            if pending == CHUNK {
                want.fill(&mut expect);
                assert!(got == expect, "byte mismatch in the chunk at {total}");
                total += CHUNK;
                pending = 0;
            }
        }
        assert_eq!(pending, 0, "a partial chunk at the end");
        total
    });
    eventually("10 MiB are through", || {
        written.load(SeqCst) >= 10 * 1024 * 1024
    })
    .await;
    let config = dir.path().join("handoff.yaml");
    let mut gen2 = Handoff::take_over(&config).await;
    // Until the old generation retires, both accept on the shared sockets (admin included).
    eventually_async(&gen2, |s| s["process"]["generation"] == 2).await;
    eventually_async(&gen2, |s| s["previous"]["sessions"]["tcp"] == 1).await;
    // A second takeover while generation 1 still carries the stream.
    let gen3 = Handoff::take_over(&config).await;
    eventually_async(&gen3, |s| s["process"]["generation"] == 3).await;
    assert_eq!(
        exit_code(&mut gen2).await,
        Some(0),
        "generation 2: {:#?}",
        gen2.log()
    );
    gen1.assert_alive("while its TCP session streams");
    let _ = resume.send(());
    writer.await.unwrap();
    let total = tokio::time::timeout(WAIT * 3, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(total, STREAM_BYTES);
    assert_eq!(
        exit_code(&mut gen1).await,
        Some(0),
        "generation 1: {:#?}",
        gen1.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_continues_in_the_new_process_and_succeeds() {
    let (mut a, mut b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let echo = crate::common::backends::tcp_echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut old = started(dir.path(), &config_with_tcp(a.addr, b.addr, echo)).await;
    let start = call(
        &client(),
        Method::POST,
        &old.url("/v1/pools/web/rollouts"),
        Some(json!({"version": "2.0.0", "ready_timeout": "20s"})),
    )
    .await;
    let Some((201, rollout)) = start else {
        panic!("{start:?}")
    };
    let id = rollout["id"].as_str().unwrap().to_string();
    let wait_a = call(
        &client(),
        Method::GET,
        &old.url("/v1/pools/web/nodes/a/wait?state=drained&timeout=5s"),
        None,
    )
    .await;
    assert!(matches!(wait_a, Some((200, _))), "{wait_a:?}");
    let new = Handoff::take_over(&dir.path().join("handoff.yaml")).await;
    assert_eq!(exit_code(&mut old).await, Some(0));
    // The operator upgrades each node while the new process drives the rollout.
    a.restart("2.0.0").await;
    let wait_b = call(
        &client(),
        Method::GET,
        &new.url("/v1/pools/web/nodes/b/wait?state=drained&timeout=20s"),
        None,
    )
    .await;
    assert!(matches!(wait_b, Some((200, _))), "{wait_b:?}");
    b.restart("2.0.0").await;
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let done = loop {
        let r = call(
            &client(),
            Method::GET,
            &new.url(&format!("/v1/rollouts/{id}")),
            None,
        )
        .await;
        let Some((200, r)) = r else { panic!("{r:?}") };
        if r["state"] != "running" {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout still running: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["state"], "succeeded", "{done}");
    let timeline = done["timeline"].to_string();
    assert!(
        timeline.contains("continued after a takeover"),
        "{timeline}"
    );
}

/// One frame of the upgrade socket's protocol: a 4-byte big-endian length, then JSON.
fn frame(v: &Value) -> Vec<u8> {
    let body = v.to_string().into_bytes();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_vanishes_mid_takeover_changes_nothing() {
    use std::io::{Read, Write};
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut old = started(dir.path(), &config(a.addr, b.addr)).await;
    let url = listener_url(&status(&old).await, "/");
    let load = Load::start(url, 2, Duration::from_secs(20));
    // A "new process" that asks, takes the handover, and dies before saying it is ready.
    let mut sock =
        std::os::unix::net::UnixStream::connect(dir.path().join("handoff.upgrade.sock")).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let hello = json!({"type": "hello", "pid": 1, "listeners": [["web", "127.0.0.1:0"]], "admin": "127.0.0.1:0"});
    sock.write_all(&frame(&hello)).unwrap();
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    sock.read_exact(&mut body).unwrap();
    let handover: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(handover["type"], "handover", "{handover}");
    assert_eq!(handover["state"]["generation"], 1);
    // While the state is on its way, admin writes are refused, not lost.
    let drain = call(
        &client(),
        Method::POST,
        &old.url("/v1/pools/web/nodes/a/drain"),
        Some(json!({})),
    )
    .await;
    assert!(matches!(drain, Some((503, _))), "{drain:?}");
    drop(sock);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let drain = call(
            &client(),
            Method::POST,
            &old.url("/v1/pools/web/nodes/a/drain"),
            Some(json!({})),
        )
        .await;
        match drain {
            Some((200, _)) => break,
            Some((503, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("admin writes did not come back: {other:?}"),
        }
    }
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} failed around the failed takeover"
    );
    old.assert_alive("after the failed takeover");
    assert_eq!(status(&old).await["process"]["generation"], 1);
}
