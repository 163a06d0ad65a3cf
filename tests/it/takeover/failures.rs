//! Takeovers that fail change nothing: an invalid config, no process to take over, a new
//! process that vanishes mid-way, and a user who may not reach the upgrade socket.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_with_an_invalid_config_exits_1_and_changes_nothing() {
    let (a, b) = pair().await;
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

/// One frame of the upgrade socket's protocol: a 4-byte big-endian length, then JSON.
fn frame(v: &Value) -> Vec<u8> {
    let body = v.to_string().into_bytes();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// A stand-in for a new process: connects to the upgrade socket, says hello, and reads the
/// handover (its sockets, sent as SCM_RIGHTS, are simply dropped). Returns the connection,
/// still open, and the handover.
fn fake_new_process(dir: &Path) -> (std::os::unix::net::UnixStream, Value) {
    use std::io::{Read, Write};
    let mut sock =
        std::os::unix::net::UnixStream::connect(dir.join("handoff.upgrade.sock")).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let hello = json!({"type": "hello", "pid": 1, "listeners": [["web", "127.0.0.1:0"]], "admin": "127.0.0.1:0"});
    sock.write_all(&frame(&hello)).unwrap();
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    sock.read_exact(&mut body).unwrap();
    (sock, serde_json::from_slice(&body).unwrap())
}

/// Drains node a of `h`: the status, or `None` without an answer.
async fn drain_a(h: &Handoff) -> Option<u16> {
    let url = h.url("/v1/pools/web/nodes/a/drain");
    call(&client(), Method::POST, &url, Some(json!({})))
        .await
        .map(|(status, _)| status)
}

/// Waits (bounded) until admin writes are taken again after a refused takeover.
async fn writes_come_back(h: &Handoff) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match drain_a(h).await {
            Some(200) => return,
            Some(503) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("admin writes did not come back: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_vanishes_mid_takeover_changes_nothing() {
    let (a, b) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    let mut old = started(dir.path(), &config(a.addr, b.addr)).await;
    let url = listener_url(&status(&old).await, "/");
    let load = Load::start(url, 2, Duration::from_secs(20));
    // A "new process" that asks, takes the handover, and dies before saying it is ready.
    let (sock, handover) = fake_new_process(dir.path());
    assert_eq!(handover["type"], "handover", "{handover}");
    assert_eq!(handover["state"]["generation"], 1);
    // While the state is on its way, admin writes are refused, not lost.
    assert_eq!(drain_a(&old).await, Some(503));
    drop(sock);
    writes_come_back(&old).await;
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} failed around the failed takeover"
    );
    old.assert_alive("after the failed takeover");
    assert_eq!(status(&old).await["process"]["generation"], 1);
}

#[test]
fn another_user_cannot_reach_the_upgrade_socket() {
    // Root can reach any file: the check is whether an unprivileged user can.
    if !nix::unistd::getuid().is_root()
        || Command::new("setpriv").arg("--version").output().is_err()
        || !Path::new("/usr/bin/python3").exists()
    {
        eprintln!("skipped: needs root, setpriv and /usr/bin/python3 to act as another user");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (a, b) = pair().await;
        let dir = tempfile::tempdir().unwrap();
        // Let the other user into the directory, so only the socket's own mode stops it.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut old = started(dir.path(), &config(a.addr, b.addr)).await;
        let sock = dir.path().join("handoff.upgrade.sock");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "upgrade socket mode {mode:o}");
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect({:?})\nexcept PermissionError:\n  sys.exit(3)\nsys.exit(0)",
            sock.display().to_string()
        );
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", &script])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "another user connected: {out:?}");
        old.assert_alive("after a refused stranger");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_misses_the_timeout_changes_nothing() {
    let (a, b) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml =
        config(a.addr, b.addr).replace("upgrade: { timeout: 10s }", "upgrade: { timeout: 1s }");
    let mut old = started(dir.path(), &yaml).await;
    // A "new process" that takes the handover and then never says it is ready.
    let (sock, _) = fake_new_process(dir.path());
    let started_at = tokio::time::Instant::now();
    writes_come_back(&old).await;
    let waited = started_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "gave up after {waited:?}, before the 1s timeout"
    );
    old.assert_alive("after a takeover that timed out");
    assert_eq!(status(&old).await["process"]["generation"], 1);
    drop(sock);
}
