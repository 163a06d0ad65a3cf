//! Talking to the admin API byte for byte, snapshotting what a refusal must not change, and
//! bringing the system back to a known state between cases.

use super::*;

pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) raw: Vec<u8>,
}

/// One request on a fresh connection, written byte for byte; the answer is read to the
/// end (the request says `Connection: close`).
pub(super) async fn raw_request(
    addr: SocketAddr,
    case: &Case,
    target: &str,
) -> Result<Answer, String> {
    let mut req = Vec::new();
    req.extend_from_slice(case.method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(ct) = case.content_type {
        req.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    let with_body = !case.body.is_empty() || matches!(case.method.as_str(), "POST" | "PUT");
    if case.chunked && with_body {
        req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for chunk in case.body.chunks(7_919) {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
    } else if with_body {
        req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", case.body.len()).as_bytes());
        req.extend_from_slice(&case.body);
    } else {
        req.extend_from_slice(b"\r\n");
    }

    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    // Written beside the read: the server may answer (and close) before reading a body
    // it refuses. The write half is kept open until the answer is in.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&req).await;
        let _ = wr.flush().await;
        wr
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    writer.abort();
    let _ = writer.await;
    let status = parse_status(&raw);
    match (read, status) {
        (Err(_), _) => Err(format!(
            "no answer within {WAIT:?} (read so far: \"{}\")",
            excerpt(&raw, 300)
        )),
        (Ok(Err(e)), None) => Err(format!(
            "connection failed before an answer: {e} (read: \"{}\")",
            excerpt(&raw, 300)
        )),
        (Ok(Ok(())), None) => Err(format!(
            "connection closed without an answer (read: \"{}\")",
            excerpt(&raw, 300)
        )),
        (Ok(_), Some(status)) => Ok(Answer { status, raw }),
    }
}

pub(super) fn parse_status(raw: &[u8]) -> Option<u16> {
    let line = raw.split(|&b| b == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/1.1 ")?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

/// What a 4xx must leave as it was: every node's admin fields, and the rollouts.
#[derive(Debug, PartialEq)]
pub(super) struct Snapshot {
    pub(super) nodes: Vec<Value>,
    pub(super) rollouts: Vec<Value>,
}

impl Snapshot {
    pub(super) fn latest_rollout(&self) -> Option<&str> {
        self.rollouts.last().and_then(|r| r["id"].as_str())
    }

    /// What differs between two snapshots, for a failure message.
    pub(super) fn diff(&self, after: &Snapshot) -> String {
        let mut out = String::new();
        if self.nodes != after.nodes {
            out += &format!(
                "  nodes before: {}\n  nodes after:  {}\n",
                Value::from(self.nodes.clone()),
                Value::from(after.nodes.clone())
            );
        }
        if self.rollouts != after.rollouts {
            out += &format!(
                "  rollouts before: {:?}\n  rollouts after:  {:?}\n",
                self.rollouts_brief(),
                after.rollouts_brief()
            );
            let changed = self
                .rollouts
                .iter()
                .zip(&after.rollouts)
                .find(|(b, a)| b != a);
            if let Some((b, a)) = changed {
                out += &format!("  first changed rollout before: {b}\n  and after: {a}\n");
            }
        }
        out
    }

    /// Rollouts in short: id, state, phase, timeline length.
    pub(super) fn rollouts_brief(&self) -> Vec<String> {
        self.rollouts
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} timeline {}",
                    r["id"].as_str().unwrap_or("?"),
                    r["state"].as_str().unwrap_or("?"),
                    r["phase"].as_str().unwrap_or("-"),
                    r["timeline"].as_array().map_or(0, Vec::len)
                )
            })
            .collect()
    }
}

pub(super) async fn snapshot(proxy: &Proxy) -> Result<Snapshot, String> {
    let (status, body) = proxy.admin(Method::GET, "/v1/status", None).await;
    if status != 200 {
        return Err(format!("GET /v1/status: {status} {body}"));
    }
    let mut nodes = Vec::new();
    for pool in body["pools"].as_array().into_iter().flatten() {
        for n in pool["nodes"].as_array().into_iter().flatten() {
            nodes.push(json!({
                "pool": pool["name"],
                "name": n["name"],
                "state": n["state"],
                "deadline": n["deadline"],
                "enable_pending": n["enable_pending"],
                "state_since": n["state_since"],
            }));
        }
    }
    let complete = |n: &Value| {
        n["state"].is_string() && n["state_since"].is_string() && n["enable_pending"].is_boolean()
    };
    if nodes.len() != 2 || !nodes.iter().all(complete) {
        return Err(format!("the status lost a node or a field: {body}"));
    }
    let rollouts = body["rollouts"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("no rollouts in the status: {body}"))?;
    for r in &rollouts {
        if !r["timeline"].is_array() {
            return Err(format!("a rollout without a timeline: {r}"));
        }
    }
    Ok(Snapshot { nodes, rollouts })
}

// ---------------------------------------------------------------------------------------
// Bringing the system to a known state between cases.

pub(super) async fn expect_admin(
    proxy: &Proxy,
    method: Method,
    path: &str,
    body: Option<Value>,
    want: u16,
) -> Result<Value, String> {
    let (status, view) = match body {
        Some(b) => proxy.admin_json(method.clone(), path, b).await,
        None => proxy.admin(method.clone(), path, None).await,
    };
    if status.as_u16() == want {
        Ok(view)
    } else {
        Err(format!(
            "settling: {method} {path} answered {status}: {view}"
        ))
    }
}

pub(super) async fn running_rollouts(proxy: &Proxy) -> Result<Vec<Value>, String> {
    let view = expect_admin(proxy, Method::GET, "/v1/rollouts", None, 200).await?;
    Ok(view["rollouts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["state"] == "running")
        .cloned()
        .collect())
}

/// Forced drain with no deadline, then enable with no warmup: active, nothing pending.
pub(super) async fn reset_node(proxy: &Proxy, node: &str) -> Result<(), String> {
    let base = format!("/v1/pools/web/nodes/{node}");
    let drain = json!({ "force": true, "timeout": "0s" });
    expect_admin(
        proxy,
        Method::POST,
        &format!("{base}/drain"),
        Some(drain),
        200,
    )
    .await?;
    let drained = format!("{base}/wait?state=drained&timeout=5s");
    expect_admin(proxy, Method::GET, &drained, None, 200).await?;
    let enable = json!({ "warmup": "0s" });
    expect_admin(
        proxy,
        Method::POST,
        &format!("{base}/enable"),
        Some(enable),
        200,
    )
    .await?;
    // A node that went down meanwhile (a slow health check) warms up once it is up again.
    let active = format!("{base}/wait?state=active&timeout=5s");
    for _ in 0..3 {
        if proxy.admin(Method::GET, &active, None).await.0 == 200 {
            return Ok(());
        }
    }
    Err(format!("settling: {node} did not become active"))
}

pub(super) async fn settle(proxy: &Proxy, mode: Mode) -> Result<(), String> {
    // No rollout running. Abort stops one at its next step; draining and warming are let
    // finish, so a long warmup is cut short by resetting the nodes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rounds = 0;
    loop {
        let running = running_rollouts(proxy).await?;
        if running.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("rollouts still running after abort: {running:?}"));
        }
        for r in &running {
            let id = r["id"].as_str().unwrap_or_default();
            expect_admin(
                proxy,
                Method::POST,
                &format!("/v1/rollouts/{id}/abort"),
                None,
                200,
            )
            .await?;
        }
        rounds += 1;
        if rounds % 50 == 0 {
            for node in ["a", "b"] {
                reset_node(proxy, node).await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both nodes active, no pending enable.
    let view = expect_admin(proxy, Method::GET, "/v1/pools/web", None, 200).await?;
    for n in view["nodes"].as_array().into_iter().flatten() {
        if n["state"] != "active" || n["enable_pending"] != false {
            reset_node(proxy, n["name"].as_str().unwrap_or_default()).await?;
        }
    }
    match mode {
        Mode::BothActive => {}
        Mode::BDrained => {
            let drain = json!({ "force": true, "timeout": "0s" });
            expect_admin(
                proxy,
                Method::POST,
                "/v1/pools/web/nodes/b/drain",
                Some(drain),
                200,
            )
            .await?;
            let drained = "/v1/pools/web/nodes/b/wait?state=drained&timeout=5s";
            expect_admin(proxy, Method::GET, drained, None, 200).await?;
        }
        Mode::RolloutWaiting => {
            let body = json!({
                "version": "9.9.9-never",
                "order": ["a", "b"],
                "drain_timeout": "0s",
                "ready_timeout": "1h",
                "warmup": "0s",
            });
            let record = expect_admin(
                proxy,
                Method::POST,
                "/v1/pools/web/rollouts",
                Some(body),
                201,
            )
            .await?;
            let id = record["id"].as_str().unwrap_or_default().to_string();
            let deadline = Instant::now() + WAIT;
            loop {
                let r = expect_admin(proxy, Method::GET, &format!("/v1/rollouts/{id}"), None, 200)
                    .await?;
                if r["phase"] == "waiting_upgrade" && r["current_node"] == "a" {
                    break;
                }
                if r["state"] != "running" || Instant::now() > deadline {
                    return Err(format!("rollout {id} did not reach waiting_upgrade: {r}"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
