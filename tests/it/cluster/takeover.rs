//! Self-upgrade of a cluster instance: the new process takes the instance's place in the
//! cluster (same name, its own lease) without a gap in what the others see.

use std::time::Duration;

use http::Method;
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_over_an_instance_and_obeys_the_cluster() {
    let Some(mut pair) = Pair::start("takeover", Options::default()).await else {
        return;
    };
    let Pair { one, two, .. } = &mut pair;
    let load = Load::start(one.web.clone(), 2, Duration::from_secs(60));

    let new = Handoff::take_over(&one.config).await;
    // The old process leaves once its connections are done; the new one is lb-1 now.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while one.h.proc.0.try_wait().unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "old process still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, view) = admin(&new, Method::GET, "/v1/cluster", None).await;
    assert_eq!(view["instance"], "lb-1", "{view}");
    // Membership survives the old process revoking its lease (the new one publishes again).
    until("lb-2 sees lb-1 and itself", WAIT, async || {
        let (_, view) = two.call(Method::GET, "/v1/cluster", None).await;
        let ok = member_names(&view) == ["lb-1", "lb-2"];
        ok.then_some(()).ok_or_else(|| view.to_string())
    })
    .await;

    // A drain from lb-2 is applied by the new lb-1 before it returns.
    let (status, drained) = two
        .call(Method::POST, "/v1/pools/web/nodes/a/drain", None)
        .await;
    assert_eq!(status, 200, "{drained}");
    assert_eq!(drained["lagging"], json!([]), "{drained}");
    let (_, there) = admin(&new, Method::GET, "/v1/pools/web/nodes/a", None).await;
    assert!(
        there["state"] == "draining" || there["state"] == "drained",
        "{there}"
    );
    let (sent, failed) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests through lb-1 failed across the takeover"
    );
}
