//! Enable and slow start: the returned node's share of new sessions ramps up.

use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::common::*;
use handoff::pool::Health;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_returned_nodes_share_rises_over_the_warmup() {
    let (_a, _b, proxy) = http_pair_up().await;
    proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    proxy.wait_drained("web", "a").await;

    let warmup = Duration::from_secs(3);
    let (status, node) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/nodes/a/enable",
            json!({"warmup": "3s"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), node["state"].as_str()),
        (200, Some("warming")),
        "{node}"
    );
    let started = tokio::time::Instant::now();
    // Sequential requests (idle pool: every pick is a tie, broken by effective weight),
    // bucketed into six slices of the warmup.
    let slices = 6;
    let mut counts = vec![(0u32, 0u32); slices];
    let c = client();
    while started.elapsed() < warmup {
        let slice =
            (started.elapsed().as_secs_f64() / warmup.as_secs_f64() * slices as f64) as usize;
        let (status, body) = get(&c, &proxy.url("web", "/")).await;
        assert_eq!(status, 200);
        let entry = &mut counts[slice.min(slices - 1)];
        if body.starts_with('a') {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    let shares: Vec<f64> = counts
        .iter()
        .map(|(a, b)| f64::from(*a) / f64::from((a + b).max(1)))
        .collect();
    println!(
        "share of the returned node per sixth of the warmup: {shares:.2?} (requests {counts:?})"
    );
    assert!(shares[0] < 0.30, "first slice share {:.2}", shares[0]);
    assert!(
        shares[slices - 1] > 0.35,
        "last slice share {:.2}",
        shares[slices - 1]
    );
    assert!(
        shares[slices - 1] > shares[0] + 0.15,
        "share did not rise: {shares:.2?}"
    );
    let (status, node) = proxy
        .admin(
            Method::GET,
            "/v1/pools/web/nodes/a/wait?state=active&timeout=5s",
            None,
        )
        .await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["effective_weight"], 100);
}

#[tokio::test]
async fn enabling_a_node_that_is_down_waits_for_it_to_be_up() {
    let (mut a, _b, proxy) = http_pair_up().await;
    proxy
        .admin_json(Method::POST, "/v1/pools/web/nodes/a/drain", json!({}))
        .await;
    a.stop().await;
    proxy.wait_health("web", "a", Health::Down).await;
    let (status, node) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/web/nodes/a/enable",
            json!({"warmup": "200ms"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(node["state"], "drained");
    assert_eq!(node["enable_pending"], true);
    a.restart("1.0.0").await;
    let (status, node) = proxy
        .admin(
            Method::GET,
            "/v1/pools/web/nodes/a/wait?state=active&timeout=5s",
            None,
        )
        .await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["enable_pending"], false);
}
