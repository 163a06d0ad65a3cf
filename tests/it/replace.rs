//! Replace rollouts: the hook starts each new node as a real process (`handoff
//! demo-backend`) at a new port beside the old one; the old node is drained and removed
//! only once the new one serves, then retired. A replacement that fails analysis is drained
//! and removed, and the old node never stops serving.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::common::backends::HttpBackend;
use crate::common::*;

/// The hook: `provision` starts a demo backend at the target version (or the one in the
/// file `version`, when there is one) on a free port (in a session of its own, so it
/// outlives the hook) and prints its address; `retire` stops the backend at the node's
/// address (or notes an old node that was not started here).
pub fn hook(dir: &Path) -> PathBuf {
    let d = dir.display();
    let script = dir.join("hook.sh");
    std::fs::write(
        &script,
        format!(
            r#"set -e
mkdir -p "{d}/pids"
case "$HANDOFF_ACTION" in
provision)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  version=$HANDOFF_TARGET_VERSION
  [ -f "{d}/version" ] && version=$(cat "{d}/version")
  setsid "{BIN}" demo-backend --name "new-$HANDOFF_NODE" --version "$version" --listen "127.0.0.1:$port" >/dev/null 2>&1 < /dev/null &
  echo $! > "{d}/pids/$port"
  for i in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
    sleep 0.05
  done
  echo "provision $HANDOFF_NODE 127.0.0.1:$port" >> "{d}/log"
  echo "127.0.0.1:$port"
  ;;
retire)
  port=${{HANDOFF_NODE_ADDR##*:}}
  [ -f "{d}/pids/$port" ] && kill "$(cat "{d}/pids/$port")" || true
  echo "retire $HANDOFF_NODE $HANDOFF_NODE_ADDR" >> "{d}/log"
  ;;
esac
"#
        ),
    )
    .unwrap();
    script
}

fn yaml(a: std::net::SocketAddr, b: std::net::SocketAddr, script: &Path, analysis: &str) -> String {
    format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{a}" }}, {{ name: b, addr: "{b}" }} ]
    health: {FAST_HEALTH}
    warmup: 500ms
    drain: {{ timeout: 5s }}
    rollout: {{ strategy: replace, ready_timeout: 20s, hook: {{ exec: ["/bin/sh", "{}"] }}{analysis} }}
"#,
        script.display()
    )
}

/// Samples the pool's `serving` count every 100 ms until stopped; the smallest seen.
struct Serving {
    stop: Arc<AtomicBool>,
    least: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    fn start(proxy: &Proxy) -> Serving {
        let (stop, least) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(usize::MAX)),
        );
        let url = format!("http://{}/v1/pools/web", proxy.admin);
        let (s, l) = (Arc::clone(&stop), Arc::clone(&least));
        let task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while !s.load(SeqCst) && tokio::time::Instant::now() < deadline {
                let (_, body) = send(Method::GET, &url, None).await;
                let pool: Value = serde_json::from_slice(&body).unwrap_or_default();
                if let Some(n) = pool["serving"].as_u64() {
                    l.fetch_min(n as usize, SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Serving { stop, least, task }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, SeqCst);
        let _ = self.task.await;
        self.least.load(SeqCst)
    }
}

pub fn log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Stops every backend the hook started and did not retire.
pub fn stop_started(dir: &Path) {
    for entry in std::fs::read_dir(dir.join("pids"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(pid) = std::fs::read_to_string(entry.path()) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

async fn start_rollout(proxy: &Proxy, version: &str) -> String {
    let (status, started) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/rollouts",
            json!({ "version": version }),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["strategy"], "replace", "{started}");
    started["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_rollout_is_never_a_node_short_and_retires_the_old_nodes() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&yaml(a.addr, b.addr, &hook(dir.path()), "")).await;
    proxy
        .wait_health("web", "a", handoff::pool::Health::Up)
        .await;
    proxy
        .wait_health("web", "b", handoff::pool::Health::Up)
        .await;
    let load = Load::start(proxy.url("web", "/"), 4, Duration::from_secs(90));
    let serving = Serving::start(&proxy);

    let id = start_rollout(&proxy, "2.0.0").await;
    let done = proxy.rollout_end(&id, Duration::from_secs(60)).await;
    let least = serving.finish().await;
    let (sent, failed) = load.finish().await;
    stop_started(dir.path());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(failed, 0, "of {sent}");
    assert!(
        least >= 2,
        "the pool served with {least} node(s) at some point"
    );

    let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    let nodes: Vec<(String, String)> = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["version"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            ("a-2.0.0".to_string(), "2.0.0".to_string()),
            ("b-2.0.0".to_string(), "2.0.0".to_string())
        ],
        "{pool}"
    );
    let lines = log(dir.path());
    for old in [&a, &b] {
        let retire = format!("retire {} {}", old.name, old.addr);
        assert!(lines.contains(&retire), "{retire} missing: {lines:#?}");
    }
    let phases: Vec<&str> = done["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["phase"].as_str())
        .collect();
    for phase in [
        "provisioning",
        "waiting_ready",
        "warming",
        "draining",
        "retiring",
    ] {
        assert!(phases.contains(&phase), "{phase}: {phases:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_fails_analysis_is_removed_and_the_old_node_keeps_serving() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let analysis = ", analysis: { window: 3s, min_requests: 20, max_error_rate: 0.05 }";
    let proxy = Proxy::start(&yaml(a.addr, b.addr, &hook(dir.path()), analysis)).await;
    proxy
        .wait_health("web", "a", handoff::pool::Health::Up)
        .await;
    proxy
        .wait_health("web", "b", handoff::pool::Health::Up)
        .await;
    let load = Load::start(proxy.url("web", "/"), 4, Duration::from_secs(90));
    let serving = Serving::start(&proxy);

    // Version 2.0.0-bad answers 500 to every third request.
    let started = std::time::Instant::now();
    let id = start_rollout(&proxy, "2.0.0-bad").await;
    let done = proxy.rollout_end(&id, Duration::from_secs(60)).await;
    let took = started.elapsed();
    let least = serving.finish().await;
    let (sent, failed) = load.finish().await;
    println!(
        "a failed replacement: caught and removed {took:.1?} after the start; {failed} of {sent} requests failed; fewest nodes serving {least}"
    );
    stop_started(dir.path());
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.contains("analysis of web/a-2.0.0-bad failed")
            && reason.contains("drained and removed")
            && reason.contains("web/a kept serving"),
        "{reason}"
    );
    assert!(
        least >= 2,
        "the pool served with {least} node(s) at some point"
    );
    assert!(failed * 100 < sent, "{failed} of {sent} failed");
    let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    let nodes: Vec<(&str, &str)> = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(nodes, [("a", "active"), ("b", "active")], "{pool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_admission_only_preview_requests_reach_the_new_node_and_an_abort_removes_it() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let preview = ", preview: { header: \"X-Handoff-Preview\", for: 30s }";
    let proxy = Proxy::start(&yaml(a.addr, b.addr, &hook(dir.path()), preview)).await;
    proxy
        .wait_health("web", "a", handoff::pool::Health::Up)
        .await;
    proxy
        .wait_health("web", "b", handoff::pool::Health::Up)
        .await;
    let id = start_rollout(&proxy, "2.0.0").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, r) = proxy
            .admin(Method::GET, &format!("/v1/rollouts/{id}"), None)
            .await;
        if r["phase"] == "preview" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never in preview: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = client();
    let url = proxy.url("web", "/");
    let ask = |header: Option<(&'static str, &'static str)>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut req = http::Request::get(url);
            if let Some((k, v)) = header {
                req = req.header(k, v);
            }
            let resp = client
                .request(
                    req.body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8_lossy(&body).to_string())
        }
    };
    for _ in 0..20 {
        let (status, body) = ask(Some(("x-handoff-preview", "2.0.0"))).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("node new-a (version 2.0.0)"),
            "a preview request: {body}"
        );
        let (status, body) = ask(Some(("cookie", "handoff_preview=2.0.0"))).await;
        assert_eq!(status, 200);
        assert!(body.contains("new-a"), "a preview cookie: {body}");
        let (_, body) = ask(None).await;
        assert!(
            !body.contains("new-"),
            "a plain request reached the new node: {body}"
        );
        let (_, body) = ask(Some(("x-handoff-preview", "9.9.9"))).await;
        assert!(!body.contains("new-"), "another version: {body}");
    }
    let (_, node) = proxy
        .admin(Method::GET, "/v1/pools/web/nodes/a-2.0.0", None)
        .await;
    assert_eq!(node["state"], "drained", "not admitted: {node}");
    assert_eq!(node["traffic"]["preview_requests"], 40, "{node}");

    // An abort in preview takes the replacement out; the pool is as before.
    let (status, _) = proxy
        .admin(Method::POST, &format!("/v1/rollouts/{id}/abort"), None)
        .await;
    assert_eq!(status, 200);
    let done = proxy.rollout_end(&id, Duration::from_secs(20)).await;
    stop_started(dir.path());
    assert_eq!(done["state"], "aborted", "{done}");
    let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    let names: Vec<&str> = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "{pool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_hook_an_operator_adds_each_replacement() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let news = [
        HttpBackend::start("a2", "2.0.0").await,
        HttpBackend::start("b2", "2.0.0").await,
    ];
    let text = yaml(a.addr, b.addr, Path::new("/unused"), "")
        .replace(", hook: { exec: [\"/bin/sh\", \"/unused\"] }", "");
    let proxy = Proxy::start(&text).await;
    proxy
        .wait_health("web", "a", handoff::pool::Health::Up)
        .await;
    proxy
        .wait_health("web", "b", handoff::pool::Health::Up)
        .await;
    // Not waiting for one: refused, nothing added.
    let (status, refused) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/nodes",
            json!({ "name": "x", "addr": news[0].addr.to_string(), "replaces": "a" }),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    let id = start_rollout(&proxy, "2.0.0").await;
    for (old, new) in [("a", &news[0]), ("b", &news[1])] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, r) = proxy
                .admin(Method::GET, &format!("/v1/rollouts/{id}"), None)
                .await;
            if r["phase"] == "provisioning" && r["current_node"] == old {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not provisioning {old}: {r}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let name = format!("{old}-new");
        let (status, added) = proxy
            .admin_json(
                Method::POST,
                "/v1/pools/web/nodes",
                json!({ "name": name, "addr": new.addr.to_string(), "replaces": old }),
            )
            .await;
        assert_eq!(status, 201, "{added}");
        assert_eq!(added["state"], "drained", "held out until ready: {added}");
    }
    let done = proxy.rollout_end(&id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    let names: Vec<&str> = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-new", "b-new"], "{pool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_in_the_middle_of_a_replace_rollout_finishes_it() {
    use crate::common::process::{call, Handoff};
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let preview = ", preview: { for: 2s }";
    let config = dir.path().join("handoff.yaml");
    let text = yaml(a.addr, b.addr, &hook(dir.path()), preview)
        .replace("listeners:", "upgrade: { timeout: 10s }\nlisteners:");
    std::fs::write(&config, text).unwrap();
    let old = Handoff::start(&config).await;
    old.wait_up("a").await;
    old.wait_up("b").await;
    let (_, status) = call(&client(), Method::GET, &old.url("/v1/status"), None)
        .await
        .unwrap();
    let web = format!(
        "http://{}/",
        status["listeners"][0]["listen"].as_str().unwrap()
    );
    let load = Load::start(web, 4, Duration::from_secs(60));
    let (code, started) = call(
        &client(),
        Method::POST,
        &old.url("/v1/pools/web/rollouts"),
        Some(json!({ "version": "2.0.0" })),
    )
    .await
    .unwrap();
    assert_eq!(code, 201, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let rollout = |h: &Handoff| h.url(&format!("/v1/rollouts/{id}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, r) = call(&client(), Method::GET, &rollout(&old), None)
            .await
            .unwrap();
        if r["phase"] == "preview" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never in preview: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new process takes the rollout over mid-way (the replacement of a is in the pool).
    let new = Handoff::take_over(&config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, r) = call(&client(), Method::GET, &rollout(&new), None)
            .await
            .unwrap();
        if r["state"] != "running" {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "still running: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (sent, failed) = load.finish().await;
    stop_started(dir.path());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(failed, 0, "of {sent}");
    let (_, pool) = call(&client(), Method::GET, &new.url("/v1/pools/web"), None)
        .await
        .unwrap();
    let names: Vec<&str> = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-2.0.0", "b-2.0.0"], "{pool}");
    let provisions = log(dir.path())
        .iter()
        .filter(|l| l.starts_with("provision a "))
        .count();
    assert_eq!(
        provisions,
        1,
        "a's replacement was provisioned once: {:#?}",
        log(dir.path())
    );
}

/// The same pool of two real backend processes, upgraded in place and by replacement under
/// the same load: the figures docs/upgrade-guide.md quotes (run with `--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_dips_to_one_node_and_replace_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let script = hook(dir.path());
    let mut figures = Vec::new();
    for strategy in ["in_place", "replace"] {
        let procs: Vec<(String, Running)> = ["a", "b"]
            .iter()
            .map(|name| {
                let addr = format!("127.0.0.1:{}", free_port());
                let child = std::process::Command::new(BIN)
                    .args([
                        "demo-backend",
                        "--name",
                        name,
                        "--version",
                        "1.0.0",
                        "--listen",
                        &addr,
                    ])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                (addr, Running(child))
            })
            .collect();
        let rollout = match strategy {
            "in_place" => format!("{{ ready_timeout: 20s, hook: {{ exec: [\"{BIN}\", \"demo-upgrade\"] }} }}"),
            _ => format!(
                "{{ strategy: replace, ready_timeout: 20s, hook: {{ exec: [\"/bin/sh\", \"{}\"] }} }}",
                script.display()
            ),
        };
        let text = format!(
            r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{}" }}, {{ name: b, addr: "{}" }} ]
    health: {FAST_HEALTH}
    warmup: 500ms
    drain: {{ timeout: 5s }}
    rollout: {rollout}
"#,
            procs[0].0, procs[1].0
        );
        let proxy = Proxy::start(&text).await;
        proxy
            .wait_health("web", "a", handoff::pool::Health::Up)
            .await;
        proxy
            .wait_health("web", "b", handoff::pool::Health::Up)
            .await;
        let load = Load::start(proxy.url("web", "/"), 4, Duration::from_secs(90));
        let serving = Serving::start(&proxy);
        let started = std::time::Instant::now();
        let (status, r) = proxy
            .admin_json(
                Method::POST,
                "/v1/pools/web/rollouts",
                json!({ "version": "2.0.0" }),
            )
            .await;
        assert_eq!(status, 201, "{r}");
        let done = proxy
            .rollout_end(r["id"].as_str().unwrap(), Duration::from_secs(60))
            .await;
        let took = started.elapsed();
        let least = serving.finish().await;
        let (sent, failed) = load.finish().await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(failed, 0, "of {sent}");
        figures.push((strategy, least, took, sent));
        drop(procs);
    }
    stop_started(dir.path());
    for (strategy, least, took, sent) in &figures {
        println!(
            "{strategy}: fewest nodes serving {least}, took {took:.1?}, {sent} requests, 0 failed"
        );
    }
    assert_eq!(
        figures[0].1, 1,
        "in place, the pool is one node short meanwhile"
    );
    assert_eq!(figures[1].1, 2, "replace is never a node short");
}

/// Waits until rollout `id` is in `phase`.
async fn until_phase(proxy: &Proxy, id: &str, phase: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, r) = proxy
            .admin(Method::GET, &format!("/v1/rollouts/{id}"), None)
            .await;
        if r["phase"] == phase {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never in {phase}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_while_provisioning_or_waiting_for_readiness_leaves_the_pool_as_it_was() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    for phase in ["provisioning", "waiting_ready"] {
        let dir = tempfile::tempdir().unwrap();
        let script = hook(dir.path());
        // Provisioning: no hook, so the rollout waits for an operator. Waiting for
        // readiness: the new node reports another version than the target.
        let text = match phase {
            "provisioning" => yaml(a.addr, b.addr, Path::new("/unused"), "")
                .replace(", hook: { exec: [\"/bin/sh\", \"/unused\"] }", ""),
            _ => {
                std::fs::write(dir.path().join("version"), "1.9.9").unwrap();
                yaml(a.addr, b.addr, &script, "")
            }
        };
        let proxy = Proxy::start(&text).await;
        proxy
            .wait_health("web", "a", handoff::pool::Health::Up)
            .await;
        proxy
            .wait_health("web", "b", handoff::pool::Health::Up)
            .await;
        let load = Load::start(proxy.url("web", "/"), 2, Duration::from_secs(60));
        let id = start_rollout(&proxy, "2.0.0").await;
        until_phase(&proxy, &id, phase).await;
        if phase == "waiting_ready" {
            // The replacement is in the pool, held out.
            let (status, _) = proxy
                .admin(Method::GET, "/v1/pools/web/nodes/a-2.0.0", None)
                .await;
            assert_eq!(status, 200);
        }
        let (status, _) = proxy
            .admin(Method::POST, &format!("/v1/rollouts/{id}/abort"), None)
            .await;
        assert_eq!(status, 200);
        let done = proxy.rollout_end(&id, Duration::from_secs(20)).await;
        let (sent, failed) = load.finish().await;
        stop_started(dir.path());
        assert_eq!(done["state"], "aborted", "{phase}: {done}");
        assert_eq!(failed, 0, "{phase}: of {sent}");
        let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
        let nodes: Vec<(&str, &str)> = pool["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["name"].as_str().unwrap(), n["state"].as_str().unwrap()))
            .collect();
        assert_eq!(nodes, [("a", "active"), ("b", "active")], "{phase}: {pool}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_state_file_resumes_a_replace_rollout() {
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(a.addr, b.addr, &hook(dir.path()), ", preview: { for: 1s }")
        .replace("listeners:", "state_file: \"{DIR}/state.json\"\nlisteners:");
    let proxy = Proxy::start(&text).await;
    proxy
        .wait_health("web", "a", handoff::pool::Health::Up)
        .await;
    proxy
        .wait_health("web", "b", handoff::pool::Health::Up)
        .await;
    let id = start_rollout(&proxy, "2.0.0").await;
    until_phase(&proxy, &id, "preview").await;
    // Restarted mid-way: the record, a's replacement and its admin state come back.
    let proxy = proxy.restart().await;
    let done = proxy.rollout_end(&id, Duration::from_secs(60)).await;
    stop_started(dir.path());
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    let names: Vec<&str> = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-2.0.0", "b-2.0.0"], "{pool}");
    let provisions = log(dir.path())
        .iter()
        .filter(|l| l.starts_with("provision a "))
        .count();
    assert_eq!(provisions, 1, "{:#?}", log(dir.path()));
}
