//! The cluster when instances disagree: one instance sees a node down that the others see
//! up (its own backend address for it), and one is cut off from etcd (through relays that
//! stop passing bytes) while a drain is answered. Also the set-up the partition tests share:
//! instances whose etcd endpoints, node addresses, lease and hook each test chooses.

use std::net::SocketAddr;
use std::path::PathBuf;

use http::Method;
use serde_json::{json, Value};

use super::relay::Relay;
use super::*;

/// One instance of a partition test.
pub struct Spec {
    pub name: &'static str,
    pub etcd: Vec<String>,
    /// web/a and web/b as this instance reaches them.
    pub a: SocketAddr,
    pub b: SocketAddr,
    pub lease_ttl: &'static str,
    /// A shell script run as the rollout hook.
    pub hook: Option<PathBuf>,
    /// More of the pool's `rollout:` map (`, strategy: replace`, say).
    pub rollout: &'static str,
}

impl Spec {
    /// Instance `name` through `etcd`, with nodes a and b, the smallest lease and no hook.
    pub fn new(name: &'static str, etcd: Vec<String>, a: SocketAddr, b: SocketAddr) -> Spec {
        Spec {
            name,
            etcd,
            a,
            b,
            lease_ttl: "2s",
            hook: None,
            rollout: "",
        }
    }
}

/// A prefix of the test's own.
pub fn prefix(test: &str) -> String {
    format!("/handoff-test/{test}-{}", std::process::id())
}

/// Starts the instance and waits until it has joined (connected).
pub async fn start(prefix: &str, s: Spec) -> Instance {
    let endpoints = s
        .etcd
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let rollout = match &s.hook {
        Some(path) => format!(
            "rollout: {{ ready_timeout: 30s, hook: {{ exec: [\"/bin/sh\", \"{}\"] }}{} }}",
            path.display(),
            s.rollout
        ),
        None if !s.rollout.is_empty() => {
            format!("rollout: {{ ready_timeout: 30s{} }}", s.rollout)
        }
        None => String::new(),
    };
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
shutdown_grace: 2s
cluster: {{ etcd: [{endpoints}], prefix: "{prefix}", instance: "{name}", lease_ttl: {ttl} }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: web }} ] }}
pools:
  - name: web
    nodes: [ {{ name: a, addr: "{a}" }}, {{ name: b, addr: "{b}" }} ]
    health: {FAST_HEALTH}
    warmup: 0s
    {rollout}
"#,
        name = s.name,
        ttl = s.lease_ttl,
        a = s.a,
        b = s.b,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handoff.yaml");
    std::fs::write(&config, yaml).unwrap();
    let h = Handoff::start(&config).await;
    let status = admin(&h, Method::GET, "/v1/status", None).await.1;
    let web: SocketAddr = status["listeners"][0]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let instance = Instance {
        web: format!("http://{web}/"),
        tcp: web,
        name: s.name.to_string(),
        h,
        config,
        _dir: dir,
    };
    instance.wait_connected(true).await;
    instance
}

/// Relays to each of etcd's members, for one instance to reach etcd through.
pub async fn relays(etcd: &Etcd) -> Vec<Relay> {
    let mut all = Vec::new();
    for i in 0..3 {
        all.push(Relay::start(etcd.client_addr(i)).await);
    }
    all
}

pub fn endpoints(relays: &[Relay]) -> Vec<String> {
    relays.iter().map(Relay::endpoint).collect()
}

/// `instance`'s health of node `node` as `at` knows it (from the node's `instances`).
async fn health_seen(at: &Instance, node: &str, instance: &str) -> String {
    let view = at.node("web", node).await;
    view["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["instance"] == instance))
        .and_then(|i| i["health"].as_str())
        .unwrap_or("none")
        .to_string()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_would_leave_any_instance_without_a_serving_node_gets_409() {
    if !etcd_installed("split-health") {
        return;
    }
    let etcd = Etcd::start().await;
    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let p = prefix("split-health");
    let spec = |name, a| Spec::new(name, etcd.endpoints(), a, b.addr);
    // lb-2 lost its path to a: its a is an address where nothing listens.
    let one = start(&p, spec("lb-1", a.addr)).await;
    let two = start(&p, spec("lb-2", crate::common::backends::dead_addr().await)).await;
    one.h.wait_up("a").await;
    one.h.wait_up("b").await;
    two.h.wait_up("b").await;
    // Each instance knows the other's whole view (views are published as health changes,
    // so one with a down may still lack b up).
    for (at, node, of, health) in [
        (&one, "a", "lb-2", "down"),
        (&one, "b", "lb-2", "up"),
        (&two, "a", "lb-1", "up"),
        (&two, "b", "lb-1", "up"),
    ] {
        let what = format!("{} knows {of} sees {node} {health}", at.name);
        until(&what, WAIT, async || {
            let seen = health_seen(at, node, of).await;
            (seen == health).then_some(()).ok_or(seen)
        })
        .await;
    }

    // On lb-1 both nodes are up, yet draining b would leave lb-2 nothing.
    let (status, refused) = one
        .call(Method::POST, "/v1/pools/web/nodes/b/drain", None)
        .await;
    assert_eq!(status, 409, "{refused}");
    let reason = refused["detail"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("instance lb-2 would keep no serving node")
            && reason.contains("a is active/down"),
        "{refused}"
    );
    for i in [&one, &two] {
        assert_eq!(
            i.node("web", "b").await["state"],
            "active",
            "a 409 changed nothing"
        );
    }
    // lb-2 itself refuses it too (its own guard).
    let (status, refused) = two
        .call(Method::POST, "/v1/pools/web/nodes/b/drain", None)
        .await;
    assert_eq!(status, 409, "{refused}");

    // Draining a takes nothing lb-2 serves with, and lb-1 keeps b: it passes, everywhere.
    let (status, drained) = two
        .call(Method::POST, "/v1/pools/web/nodes/a/drain", None)
        .await;
    assert_eq!(status, 200, "{drained}");
    assert_eq!(
        names(&drained["lagging"]),
        Vec::<String>::new(),
        "{drained}"
    );
    assert_ne!(one.node("web", "a").await["state"], "active");
    // b is now the last serving node of every instance.
    for i in [&one, &two] {
        let (status, refused) = i
            .call(Method::POST, "/v1/pools/web/nodes/b/drain", None)
            .await;
        assert_eq!(status, 409, "{}: {refused}", i.name);
    }
    let (_, served) = get(&client(), &one.web).await;
    assert!(served.contains('b'), "lb-1 still serves from b: {served}");

    // Force overrides the guard, as it does on one instance.
    let (status, forced) = one
        .call(
            Method::POST,
            "/v1/pools/web/nodes/b/drain",
            Some(json!({ "force": true })),
        )
        .await;
    assert_eq!(status, 200, "{forced}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_answered_while_an_instance_is_cut_off_names_it() {
    if !etcd_installed("cut-off-lagging") {
        return;
    }
    let etcd = Etcd::start().await;
    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let p = prefix("cut-off-lagging");
    let through = relays(&etcd).await;
    let spec = |name, etcd| Spec::new(name, etcd, a.addr, b.addr);
    let one = start(&p, spec("lb-1", etcd.endpoints())).await;
    let two = start(&p, spec("lb-2", endpoints(&through))).await;
    two.h.wait_up("a").await;
    until("lb-1 counts lb-2", WAIT, async || {
        let (_, view) = one.call(Method::GET, "/v1/cluster", None).await;
        (member_names(&view).len() == 2)
            .then_some(())
            .ok_or_else(|| view.to_string())
    })
    .await;

    // lb-2 is cut off from etcd; its lease (2 s) runs out while the drain waits for it.
    through.iter().for_each(Relay::cut);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, drained) = one
        .call(Method::POST, "/v1/pools/web/nodes/a/drain", None)
        .await;
    assert_eq!(status, 200, "{drained}");
    assert!(
        names(&drained["lagging"]).contains(&"lb-2".to_string()),
        "lb-2 never applied the drain and must be named: {drained}"
    );
    // It did not apply it: cut off, it serves with what it knew (fail static).
    assert_eq!(two.node("web", "a").await["state"], "active");

    // Cut off, it claims nothing: members stale, no driver.
    two.wait_connected(false).await;
    let (_, view) = two.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(view["members_stale"], true, "{view}");

    // Healed, it resyncs and applies the drain.
    through.iter().for_each(Relay::heal);
    two.wait_connected(true).await;
    assert_ne!(two.node("web", "a").await["state"], "active");
}
