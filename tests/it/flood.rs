//! A connection flood far above a listener's limit, against the real binary so its file
//! descriptors can be counted: every extra connection is closed at once, the held ones are
//! still served, and afterwards the process holds no more descriptors than before.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::backends::{read_to_eof, HttpBackend};
use crate::common::*;

const LIMIT: usize = 20;
const FLOOD: usize = 400;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits (bounded) until the process holds at most `most` descriptors; returns the count.
async fn fds_settle(pid: u32, most: usize) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = open_fds(pid);
        if n <= most || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_above_the_limit_is_refused_and_leaks_no_descriptor() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flood.yaml");
    // Health checks far apart, so no probe socket comes and goes while descriptors are counted.
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, max_connections: {LIMIT}, routes: [ {{ pool: web }} ] }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{}" }} ]
    health: {{ interval: 30s, timeout: 1s, healthy_after: 1, tcp: {{}} }}
"#,
        a.addr
    );
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c", path.to_str().unwrap(), "--threads", "1"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let _proxy = Running(child);
    let addr = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        let addr = lines
            .find(|l| l.contains("listening") && l.contains("listener=web"))
            .and_then(|l| {
                let at = l.find("addr=")? + 5;
                l[at..].split_whitespace().next().map(str::to_owned)
            })
            .expect("the listener's address is logged");
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        addr
    })
    .await
    .unwrap();
    let url = format!("http://{addr}/");
    let c = client();
    let deadline = tokio::time::Instant::now() + WAIT;
    while get(&c, &url).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    let before = open_fds(pid);

    // Fill the limit with live keep-alive connections, each served once and busy with the
    // start of a next head (idle ones would make room for the flood).
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        assert!(
            s.read(&mut buf).await.unwrap() > 0,
            "a connection within the limit was refused"
        );
        held.push(s);
    }
    // The flood: every connection is closed without a byte, all at once.
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await.ok()?;
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
                Some(read_to_eof(&mut s, WAIT).await)
            })
        })
        .collect();
    let mut refused = 0;
    for t in flood {
        if let Some((data, eof)) = t.await.unwrap() {
            assert!(
                eof && data.is_empty(),
                "a connection above the limit was served"
            );
            refused += 1;
        }
    }
    assert!(
        refused >= FLOOD / 2,
        "only {refused} flood connections got through to accept"
    );
    // The held connections are still served.
    for s in &mut held {
        s.write_all(b"Host: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "held connection lost"
        );
    }
    drop(held);
    // The requests went one at a time, so the pool holds the one upstream connection it
    // held before; one more is allowed for a health probe in flight.
    let after = fds_settle(pid, before).await;
    assert!(
        after <= before + 1,
        "descriptors: {before} before, {after} after {FLOOD} refused connections"
    );
    println!("flood: {refused} refused, descriptors {before} before, {after} after");
}
