//! Replace rollouts: the hook starts each new node as a real process (`handoff
//! demo-backend`) at a new port beside the old one; the old node is drained and removed
//! only once the new one serves, then retired. [`rollouts`]: what a replace rollout does,
//! and costs against in place; [`driven`]: how operators, aborts, restarts and takeovers
//! meet one. Shared here: the hook, the config, and samplers of the pool.

mod driven;
mod rollouts;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

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

pub fn yaml(
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    script: &Path,
    analysis: &str,
) -> String {
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
pub struct Serving {
    stop: Arc<AtomicBool>,
    least: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    pub fn start(proxy: &Proxy) -> Serving {
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

    pub async fn finish(self) -> usize {
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

pub async fn start_rollout(proxy: &Proxy, version: &str) -> String {
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

/// Waits until rollout `id` is in `phase`.
pub async fn until_phase(proxy: &Proxy, id: &str, phase: &str) {
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

/// Waits (on the nodes' change signals) until web/a and web/b are up.
pub async fn both_up(proxy: &Proxy) {
    proxy
        .wait_health("web", "a", handoff::pool::Health::Up)
        .await;
    proxy
        .wait_health("web", "b", handoff::pool::Health::Up)
        .await;
}

/// The pool's nodes, each as "name state".
pub async fn states(proxy: &Proxy) -> Vec<String> {
    let (_, pool) = proxy.admin(Method::GET, "/v1/pools/web", None).await;
    pool["nodes"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|n| {
            format!(
                "{} {}",
                n["name"].as_str().unwrap_or_default(),
                n["state"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// The names of the pool's nodes.
pub async fn names(proxy: &Proxy) -> Vec<String> {
    states(proxy)
        .await
        .into_iter()
        .map(|s| s.split(' ').next().unwrap_or_default().to_string())
        .collect()
}
