//! Strong drain, the pair guard across instances, the cluster-wide wait, and the shared
//! affinity key.

use std::time::Duration;

use http::Method;
use serde_json::json;

use super::*;
use crate::affinity::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_on_one_instance_holds_on_every_instance_when_it_returns() {
    let Some(pair) = Pair::start("strong-drain", Options::default()).await else {
        return;
    };
    let Pair { one, two, a, b, .. } = &pair;
    let (_, view) = one.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(member_names(&view), ["lb-1", "lb-2"], "{view}");
    assert_eq!(view["connected"], true);

    let (status, drained) = one
        .call(Method::POST, "/v1/pools/web/nodes/a/drain", None)
        .await;
    assert_eq!(status, 200, "{drained}");
    assert_eq!(drained["lagging"], json!([]), "{drained}");
    // The moment the call returned, instance 2 has it too.
    let there = two.node("web", "a").await;
    assert!(
        there["state"] == "draining" || there["state"] == "drained",
        "{there}"
    );
    let (a_before, b_before) = (a.hits(), b.hits());
    let c = client();
    for _ in 0..1000 {
        let (status, body) = get(&c, &two.web).await;
        assert_eq!((status, &body[..1]), (200, "b"), "{body}");
    }
    assert_eq!(
        a.hits(),
        a_before,
        "a got requests after its drain returned"
    );
    assert_eq!(b.hits() - b_before, 1000);

    // The pair guard sees the whole cluster: b cannot be drained from instance 2.
    let (status, refused) = two
        .call(Method::POST, "/v1/pools/web/nodes/b/drain", None)
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(two.node("web", "b").await["state"], "active");

    // Enable from instance 2: both instances serve a again.
    let (status, enabled) = two
        .call(Method::POST, "/v1/pools/web/nodes/a/enable", None)
        .await;
    assert_eq!(status, 200, "{enabled}");
    assert_eq!(one.node("web", "a").await["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_one_instance_counts_the_sessions_of_the_other() {
    let Some(pair) = Pair::start("cluster-wait", Options::default()).await else {
        return;
    };
    let Pair { one, two, .. } = &pair;
    // One TCP session through instance 1; drain the node it landed on, from instance 2.
    let mut session = echo_session_from(1, one.tcp).await;
    let busy = if one.node("echo", "a").await["sessions"]["tcp"] == 1 {
        "a"
    } else {
        "b"
    };
    let (status, view) = two
        .call(
            Method::POST,
            &format!("/v1/pools/echo/nodes/{busy}/drain"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{view}");

    let wait = format!("/v1/pools/echo/nodes/{busy}/wait?state=drained&timeout=2s");
    let (status, view) = two.call(Method::GET, &wait, None).await;
    assert_eq!(status, 504, "{view}");
    assert_eq!(view["sessions"]["tcp"], 1, "summed over instances: {view}");
    let by_instance: Vec<(String, u64)> = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap().to_string(),
                i["sessions"]["tcp"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        by_instance.contains(&("lb-1".to_string(), 1))
            && by_instance.contains(&("lb-2".to_string(), 0)),
        "{view}"
    );

    // A long poll in flight; the session closes; the answer follows within the publishing
    // period and a watch.
    let long = format!("/v1/pools/echo/nodes/{busy}/wait?state=drained&timeout=10s");
    let url = two.h.url(&long);
    let poll = tokio::spawn(async move {
        let answer = process::call(&client(), Method::GET, &url, None).await;
        (answer, tokio::time::Instant::now())
    });
    // Still waiting while the session is open (the poll is answered only once it closes).
    echo_once(&mut session, b"still here").await;
    assert!(!poll.is_finished());
    let closed = tokio::time::Instant::now();
    drop(session);
    let (answer, answered) = tokio::time::timeout(WAIT, poll).await.unwrap().unwrap();
    let (status, view) = answer.expect("wait answered");
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["sessions"]["total"], 0, "{view}");
    let after = answered - closed;
    eprintln!("cluster-wide wait answered {after:?} after the session closed");
    // Counts are published at most every 100 ms, then travel through etcd's watch: a few
    // hundred ms on a loaded 2-core machine (a poll of the counts would take seconds).
    assert!(
        after < Duration::from_millis(500),
        "answered {after:?} after the close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_issued_by_one_instance_reaches_the_same_node_through_the_other() {
    let affinity = Options {
        affinity: true,
        ..Options::default()
    };
    let Some(pair) = Pair::start("cookie", affinity).await else {
        return;
    };
    let Pair { one, two, .. } = &pair;
    for _ in 0..4 {
        let mut browser = Browser::new();
        let first = browser.get(&one.web).await;
        assert!(browser.cookie.is_some(), "instance 1 pinned the client");
        for _ in 0..5 {
            assert_eq!(browser.get(&two.web).await, first);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drains_of_a_pair_sent_to_two_instances_cannot_both_pass() {
    let Some(pair) = Pair::start("guard-race", Options::default()).await else {
        return;
    };
    let Pair { one, two, .. } = &pair;
    for round in 0..20 {
        let (first, second) = tokio::join!(
            one.call(Method::POST, "/v1/pools/web/nodes/a/drain", None),
            two.call(Method::POST, "/v1/pools/web/nodes/b/drain", None),
        );
        let mut statuses = [first.0, second.0];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "round {round}: {first:?} {second:?}");
        // Readmit whichever was drained, on both, before the next round.
        for node in ["a", "b"] {
            let (status, view) = one
                .call(
                    Method::POST,
                    &format!("/v1/pools/web/nodes/{node}/enable"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{view}");
        }
        for i in [&one, &two] {
            for node in ["a", "b"] {
                assert_eq!(i.node("web", node).await["state"], "active");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_names_the_instances_that_did_not_apply_it_within_2s() {
    // A long lease: a stopped instance stays a member for the whole test.
    let long_lease = Options {
        lease_ttl: Some("30s"),
        ..Options::default()
    };
    let Some(pair) = Pair::start("lagging", long_lease).await else {
        return;
    };
    let Pair { one, two, .. } = &pair;
    signal(&two.h, "STOP");
    let started = tokio::time::Instant::now();
    let (status, view) = one
        .call(Method::POST, "/v1/pools/web/nodes/a/drain", None)
        .await;
    let took = started.elapsed();
    signal(&two.h, "CONT");
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["lagging"], json!(["lb-2"]), "{view}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Once it runs again it applies the drain.
    let wait = "/v1/pools/web/nodes/a/wait?state=drained&timeout=5s";
    let (status, view) = two.call(Method::GET, wait, None).await;
    assert_eq!(status, 200, "{view}");
}
