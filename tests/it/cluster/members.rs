//! Nodes at runtime in a cluster: a node added through one instance is there on the other
//! when the answer returns, and serves through it once up; a removal with drain goes on
//! every instance.

use std::time::Duration;

use http::Method;
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_through_one_instance_serves_through_the_other() {
    let Some(pair) = Pair::start("members", Options::default()).await else {
        return;
    };
    let Pair {
        etcd: _etcd,
        one,
        two,
        a: _a,
        b: _b,
    } = &pair;
    let c = HttpBackend::start("c", "1.0").await;
    let (status, added) = one
        .call(
            Method::POST,
            "/v1/pools/web/nodes",
            Some(json!({ "name": "c", "addr": c.addr.to_string() })),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["lagging"], json!([]), "{added}");
    // Applied on lb-2 when the answer returned.
    let there = two.node("web", "c").await;
    assert_eq!(
        (there["source"].as_str(), there["addr"].as_str()),
        (Some("api"), Some(c.addr.to_string().as_str())),
        "{there}"
    );
    // It serves through lb-2 once its checks see it up.
    two.h.wait_up("c").await;
    let load = Load::start(two.web.clone(), 2, Duration::from_secs(30));
    eventually("c serves through lb-2", || c.hits() > 10).await;

    // A removal with drain, sent to lb-2, removes it everywhere; nothing fails.
    let (status, removing) = two
        .call(Method::DELETE, "/v1/pools/web/nodes/c?drain=true", None)
        .await;
    assert_eq!(status, 202, "{removing}");
    for i in [one, two] {
        until("c is gone", Duration::from_secs(15), async || {
            let (status, view) = i.call(Method::GET, "/v1/pools/web/nodes/c", None).await;
            (status == 404)
                .then_some(())
                .ok_or_else(|| view.to_string())
        })
        .await;
    }
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "of {sent}");
    // A name taken is refused on either instance.
    let (status, refused) = two
        .call(
            Method::POST,
            "/v1/pools/web/nodes",
            Some(json!({ "name": "a", "addr": c.addr.to_string() })),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
}
