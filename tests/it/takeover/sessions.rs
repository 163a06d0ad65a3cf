//! Sessions across takeovers: a TCP stream byte-exact through two of them, a rollout that
//! continues in the new process, and client addresses that keep their node.

use super::*;

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

    let (a, b) = pair().await;
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
    let (mut a, mut b) = pair().await;
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

/// The node the TCP client from 127.0.0.`host` lands on, read from the admin API.
async fn tcp_home(h: &Handoff, tcp: std::net::SocketAddr, host: u8) -> String {
    let s = echo_session_from(host, tcp).await;
    let pool = match call(&client(), Method::GET, &h.url("/v1/pools/p"), None).await {
        Some((200, v)) => v,
        other => panic!("{other:?}"),
    };
    let home = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["sessions"]["tcp"] == 1)
        .map(|n| n["name"].as_str().unwrap().to_string())
        .expect("the session is on a node");
    drop(s);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let Some((200, pool)) = call(&client(), Method::GET, &h.url("/v1/pools/p"), None).await
        else {
            panic!("pool view")
        };
        let open: u64 = pool["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["sessions"]["tcp"].as_u64().unwrap())
            .sum();
        if open == 0 {
            return home;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session did not end"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_address_keeps_its_node_across_a_takeover() {
    let (ea, eb) = (
        crate::common::backends::tcp_echo_server().await,
        crate::common::backends::tcp_echo_server().await,
    );
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: t, listen: "127.0.0.1:0", protocol: tcp, pool: p }}
pools:
  - name: p
    nodes: [ {{ name: a, addr: "{ea}" }}, {{ name: b, addr: "{eb}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, tcp: {{}} }}
    affinity: {{ source_ip: true, idle_timeout: 60s }}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handoff.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut old = Handoff::start(&path).await;
    for node in ["a", "b"] {
        let url = old.url(&format!(
            "/v1/pools/p/nodes/{node}/wait?state=up&timeout=5s"
        ));
        assert!(matches!(
            call(&client(), Method::GET, &url, None).await,
            Some((200, _))
        ));
    }
    let tcp = listener_addr(&status(&old).await);
    let mut before = Vec::new();
    for host in 2..10 {
        before.push(tcp_home(&old, tcp, host).await);
    }
    let new = Handoff::take_over(&path).await;
    assert_eq!(exit_code(&mut old).await, Some(0));
    let mut after = Vec::new();
    for host in 2..10 {
        after.push(tcp_home(&new, tcp, host).await);
    }
    assert_eq!(
        before, after,
        "a client address changed node across the takeover"
    );
}
