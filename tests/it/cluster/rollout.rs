//! One rollout driver at a time: SIGKILL the driver mid-rollout, and another instance
//! finishes the rollout at its step; a stalled driver that wakes up changes nothing.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use super::*;

fn timeline(record: &Value) -> Vec<String> {
    record["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|e| e["message"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts a rollout of pool web to 2.0 on `at`; its id.
async fn start_rollout(at: &Instance) -> String {
    let body = json!({ "version": "2.0", "ready_timeout": "60s" });
    let (status, started) = at
        .call(Method::POST, "/v1/pools/web/rollouts", Some(body))
        .await;
    assert_eq!(status, 201, "{started}");
    started["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_finishes_a_rollout_whose_driver_was_killed() {
    let Some(mut pair) = Pair::start("driver-killed", Options::default()).await else {
        return;
    };
    let Pair { one, two, a, b, .. } = &mut pair;
    let load = Load::start(two.web.clone(), 2, Duration::from_secs(60));
    // Started on lb-1: lb-1 drives it.
    let id = start_rollout(one).await;
    two.wait_driver(&id, "lb-1").await;
    // Instance 2 shows the rollout the driver runs, up to the wait for a's upgrade; the
    // driver moved on only once a was drained on every instance.
    let waiting = two
        .rollout_until(&id, WAIT, |r| r["phase"] == "waiting_upgrade")
        .await;
    assert_eq!(waiting["current_node"], "a", "{waiting}");
    assert_eq!(two.node("web", "a").await["state"], "drained");

    one.h.proc.0.kill().unwrap();
    one.h.proc.0.wait().unwrap();
    a.set_version("2.0");
    b.set_version("2.0");

    // The lease of lb-1 runs out (2 s), lb-2 is elected and resumes at waiting_upgrade.
    let done = two
        .rollout_until(&id, Duration::from_secs(40), |r| r["state"] != "running")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let messages = timeline(&done);
    assert!(
        messages.contains(&"driven by lb-2 (took over from lb-1)".to_string()),
        "{messages:#?}"
    );
    let (_, cluster) = two.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(member_names(&cluster), ["lb-2"], "{cluster}");
    // A finished rollout gives its driver key back (just after its last record write).
    until("the finished rollout has no driver", WAIT, async || {
        let (_, view) = two.call(Method::GET, "/v1/cluster", None).await;
        (view["drivers"] == json!({}))
            .then_some(())
            .ok_or_else(|| view.to_string())
    })
    .await;
    for node in ["a", "b"] {
        let view = two.node("web", node).await;
        assert_eq!(
            (view["state"].as_str(), view["version"].as_str()),
            (Some("active"), Some("2.0")),
            "{view}"
        );
    }
    let (sent, failed) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(failed, 0, "{failed} of {sent} requests through lb-2 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_driver_that_wakes_up_after_its_term_changes_nothing() {
    let Some(pair) = Pair::start("driver-stalled", Options::default()).await else {
        return;
    };
    let Pair { one, two, a, b, .. } = &pair;
    // Started on lb-1, so driven by lb-1; lb-2 shows it.
    let id = start_rollout(one).await;
    two.wait_driver(&id, "lb-1").await;
    two.rollout_until(&id, WAIT, |r| r["phase"] == "waiting_upgrade")
        .await;

    // lb-1 stalls past its lease; lb-2 drives on to b.
    signal(&one.h, "STOP");
    two.wait_driver(&id, "lb-2").await;
    a.set_version("2.0");
    let at_b = |r: &Value| r["current_node"] == "b" && r["phase"] == "waiting_upgrade";
    two.rollout_until(&id, Duration::from_secs(20), at_b).await;

    // lb-1 wakes up believing it drives at a's waiting_upgrade: every write it would make
    // is fenced off by its term, it stops, and it shows lb-2's record.
    signal(&one.h, "CONT");
    one.wait_driver(&id, "lb-2").await;
    let seen = one
        .rollout_until(&id, WAIT, |r| r["current_node"] == "b")
        .await;
    assert_eq!(seen["phase"], "waiting_upgrade", "{seen}");
    assert_eq!(one.node("web", "b").await["state"], "drained");
    assert_eq!(two.node("web", "b").await["state"], "drained");

    b.set_version("2.0");
    let done = one
        .rollout_until(&id, Duration::from_secs(30), |r| r["state"] != "running")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let messages = timeline(&done);
    let takeover = messages
        .iter()
        .position(|m| m == "driven by lb-2 (took over from lb-1)")
        .unwrap_or_else(|| panic!("{messages:#?}"));
    assert!(
        !messages[takeover..]
            .iter()
            .any(|m| m.contains("driven by lb-1")),
        "{messages:#?}"
    );
    for i in [&one, &two] {
        for node in ["a", "b"] {
            assert_eq!(
                i.node("web", node).await["state"],
                "active",
                "{} {node}",
                i.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_sent_to_another_instance_stops_the_rollout() {
    let Some(pair) = Pair::start("abort", Options::default()).await else {
        return;
    };
    let Pair { one, two, .. } = &pair;
    let id = start_rollout(one).await;
    two.rollout_until(&id, WAIT, |r| r["phase"] == "waiting_upgrade")
        .await;
    let (status, view) = two
        .call(Method::POST, &format!("/v1/rollouts/{id}/abort"), None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["abort_requested"], true, "{view}");
    for at in [&one, &two] {
        let done = at
            .rollout_until(&id, WAIT, |r| r["state"] != "running")
            .await;
        assert_eq!(done["state"], "aborted", "{done}");
        let reason = done["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("a=drained"), "{reason}");
    }
    // Nothing else moved: b kept serving everywhere.
    assert_eq!(one.node("web", "b").await["state"], "active");
    assert_eq!(two.node("web", "b").await["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_rollout_whose_driver_is_killed_is_finished_by_another_instance() {
    use super::partitions::{prefix, start, Spec};
    if !etcd_installed("replace-driver-killed") {
        return;
    }
    let etcd = Etcd::start().await;
    let (a, b) = (
        HttpBackend::start("a", "1.0.0").await,
        HttpBackend::start("b", "1.0.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let script = crate::replace::hook(dir.path());
    let p = prefix("replace-driver-killed");
    let spec = |name| Spec {
        hook: Some(script.clone()),
        rollout: ", strategy: replace, preview: { for: 3s }",
        ..Spec::new(name, etcd.endpoints(), a.addr, b.addr)
    };
    let mut one = start(&p, spec("lb-1")).await;
    let two = start(&p, spec("lb-2")).await;
    for i in [&one, &two] {
        i.h.wait_up("a").await;
        i.h.wait_up("b").await;
    }
    let load = Load::start(two.web.clone(), 2, Duration::from_secs(60));
    let id = start_rollout(&one).await;
    // Killed while a's replacement is in preview, beside a.
    two.rollout_until(&id, WAIT, |r| r["phase"] == "preview")
        .await;
    one.h.proc.0.kill().unwrap();
    one.h.proc.0.wait().unwrap();
    let done = two
        .rollout_until(&id, Duration::from_secs(60), |r| r["state"] != "running")
        .await;
    let (sent, failed) = load.finish().await;
    crate::replace::stop_started(dir.path());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        timeline(&done).contains(&"driven by lb-2 (took over from lb-1)".to_string()),
        "{done}"
    );
    assert_eq!(failed, 0, "of {sent}");
    let (_, pool) = two.call(Method::GET, "/v1/pools/web", None).await;
    let names: Vec<&str> = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-2.0", "b-2.0"], "{pool}");
    let lines = crate::replace::log(dir.path());
    let provisions = lines
        .iter()
        .filter(|l| l.starts_with("provision a "))
        .count();
    assert_eq!(
        provisions, 1,
        "a's replacement was provisioned once: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_offered_on_another_instance_reaches_the_driver() {
    use super::partitions::{prefix, start, Spec};
    if !etcd_installed("replace-offer") {
        return;
    }
    let etcd = Etcd::start().await;
    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let news = [
        HttpBackend::start("a2", "2.0").await,
        HttpBackend::start("b2", "2.0").await,
    ];
    let p = prefix("replace-offer");
    let spec = |name| Spec {
        rollout: ", strategy: replace",
        ..Spec::new(name, etcd.endpoints(), a.addr, b.addr)
    };
    let one = start(&p, spec("lb-1")).await;
    let two = start(&p, spec("lb-2")).await;
    for i in [&one, &two] {
        i.h.wait_up("a").await;
        i.h.wait_up("b").await;
    }
    let id = start_rollout(&one).await;
    for (old, new) in [("a", &news[0]), ("b", &news[1])] {
        two.rollout_until(&id, WAIT, |r| {
            r["phase"] == "provisioning" && r["current_node"] == old
        })
        .await;
        // Sent to lb-2; lb-1 drives the rollout.
        let (status, added) = two
            .call(
                Method::POST,
                "/v1/pools/web/nodes",
                Some(json!({ "name": format!("{old}-2"), "addr": new.addr.to_string(), "replaces": old })),
            )
            .await;
        assert_eq!(status, 201, "{added}");
    }
    let done = two
        .rollout_until(&id, Duration::from_secs(40), |r| r["state"] != "running")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    for i in [&one, &two] {
        let (_, pool) = i.call(Method::GET, "/v1/pools/web", None).await;
        let names: Vec<&str> = pool["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a-2", "b-2"], "{}: {pool}", i.name);
    }
}
