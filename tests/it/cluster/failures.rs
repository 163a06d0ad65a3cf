//! Fail static: etcd members stopped, all of etcd stopped and restarted, and an instance
//! cut off from etcd that comes back.

use std::time::Duration;

use http::Method;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_gone_instances_serve_on_and_refuse_writes_until_it_is_back() {
    let Some(mut pair) = Pair::start("fail-static", Options::default()).await else {
        return;
    };
    let Pair { etcd, one, two, .. } = &mut pair;

    // One member down: the other two are a quorum, and drains work as before.
    etcd.stop(2);
    let (status, view) = write_once_reconnected(two, "/v1/pools/web/nodes/b/drain").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(one.node("web", "b").await["state"], "drained");
    let (status, view) = one
        .call(Method::POST, "/v1/pools/web/nodes/b/enable", None)
        .await;
    assert_eq!(status, 200, "{view}");
    // Applied everywhere when it returned, unless it named an instance as lagging (one that
    // was reconnecting to a live member, say): that one applies it once it has resynced.
    let lagging = view["lagging"].as_array().is_some_and(|l| !l.is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = two.node("web", "b").await["state"].clone();
        if state == "active" {
            break;
        }
        assert!(
            lagging && tokio::time::Instant::now() < deadline,
            "b on instance two: {state} ({view})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every member down: both instances serve on, with 0 failed requests.
    let loads = [
        Load::start(one.web.clone(), 2, Duration::from_secs(60)),
        Load::start(two.web.clone(), 2, Duration::from_secs(60)),
    ];
    etcd.stop(0);
    etcd.stop(1);
    one.wait_connected(false).await;
    two.wait_connected(false).await;
    for i in [&one, &two] {
        let (status, refused) = i
            .call(Method::POST, "/v1/pools/web/nodes/a/drain", None)
            .await;
        assert_eq!(status, 503, "{refused}");
        let error = refused["error"].as_str().unwrap();
        assert!(error.contains("etcd is unreachable"), "{error}");
        assert_eq!(
            i.node("web", "a").await["state"],
            "active",
            "a 503 changed nothing"
        );
    }
    let served = |load: &Load| load.sent.load(std::sync::atomic::Ordering::SeqCst);
    let before: Vec<usize> = loads.iter().map(served).collect();
    eventually(
        "both instances served 200 more requests without etcd",
        || loads.iter().zip(&before).all(|(l, b)| served(l) > b + 200),
    )
    .await;

    // etcd back: each instance resyncs, then accepts writes again.
    etcd.restart(&[0, 1, 2]).await;
    one.wait_connected(true).await;
    two.wait_connected(true).await;
    let (status, view) = one
        .call(Method::POST, "/v1/pools/web/nodes/a/drain", None)
        .await;
    assert_eq!(status, 200, "{view}");
    let there = two.node("web", "a").await["state"].clone();
    assert!(there == "draining" || there == "drained", "{there}");
    let (status, view) = two
        .call(Method::POST, "/v1/pools/web/nodes/a/enable", None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(one.node("web", "a").await["state"], "active");
    for load in loads {
        let (sent, failed) = load.finish().await;
        assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_etcd_converges_when_it_comes_back() {
    // lb-2 reaches etcd only through member 2: stopping it cuts lb-2 off.
    let cut_off = Options {
        lb2_through: Some(2),
        ..Options::default()
    };
    let Some(mut pair) = Pair::start("partition", cut_off).await else {
        return;
    };
    let Pair { etcd, one, two, .. } = &mut pair;
    etcd.stop(2);
    two.wait_connected(false).await;
    // lb-1 drains a while lb-2 cannot hear it (lb-2's lease runs out: it is not waited for).
    let (status, view) = write_once_reconnected(one, "/v1/pools/web/nodes/a/drain").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        two.node("web", "a").await["state"],
        "active",
        "cut off: last known state"
    );

    etcd.restart(&[2]).await;
    two.wait_connected(true).await;
    let view = two.node("web", "a").await;
    assert_eq!(
        view["state"], "drained",
        "resynced before it said connected: {view}"
    );
    let c = client();
    for _ in 0..100 {
        let (status, body) = get(&c, &two.web).await;
        assert_eq!((status, &body[..1]), (200, "b"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_etcd_is_ignored_and_changes_nothing() {
    let Some(pair) = Pair::start("garbage", Options::default()).await else {
        return;
    };
    let Pair { etcd, one, two, .. } = &pair;
    let (_, view) = one.call(Method::GET, "/v1/cluster", None).await;
    let prefix = view["prefix"].as_str().unwrap().to_string();
    let mut client = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap();
    let garbage: [(&str, &[u8]); 7] = [
        ("nodes/web/a", b"{not json"),
        (
            "nodes/web/b",
            br#"{"op":"enable","warmup":"1000h","at_ms":1,"by":"x"}"#,
        ),
        (
            "nodes/echo/a",
            br#"{"op":"drain","deadline_ms":1,"at_ms":1,"by":"x","bomb":1}"#,
        ),
        ("members/evil", b"\xff\xfe"),
        (
            "members/lb-9",
            br#"{"instance":"lb-1","admin":"","since":"","revision":9,"nodes":{}}"#,
        ),
        ("rollouts/web-99", b"[]"),
        ("affinity_key", b"not hex"),
    ];
    for (key, value) in garbage {
        client
            .put(format!("{prefix}/{key}"), value, None)
            .await
            .unwrap();
    }
    // Applied in order with a write after them: once it is, the garbage has been seen.
    let (status, view) = one
        .call(Method::POST, "/v1/pools/echo/nodes/b/drain", None)
        .await;
    assert_eq!(status, 200, "{view}");
    for i in [&one, &two] {
        for (pool, node) in [("web", "a"), ("web", "b"), ("echo", "a")] {
            assert_eq!(
                i.node(pool, node).await["state"],
                "active",
                "{} {pool}/{node}",
                i.name
            );
        }
        let (_, cluster) = i.call(Method::GET, "/v1/cluster", None).await;
        assert_eq!(member_names(&cluster), ["lb-1", "lb-2"], "{cluster}");
        let (_, rollouts) = i.call(Method::GET, "/v1/rollouts", None).await;
        assert_eq!(rollouts["rollouts"], serde_json::json!([]), "{rollouts}");
    }
    let log = one.h.log().join("\n");
    assert!(log.contains("does not parse or is out of range"), "{log}");
    // Writes still work on the pool whose keys hold garbage.
    let (status, view) = two
        .call(Method::POST, "/v1/pools/web/nodes/a/drain", None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(one.node("web", "a").await["state"], "drained");
}
