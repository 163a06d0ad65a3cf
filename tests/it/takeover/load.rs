//! A takeover under HTTP load: no request fails, and the state carries over.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_under_load_fails_no_request_and_carries_the_state_over() {
    let (a, b) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    let mut old = started(dir.path(), &config(a.addr, b.addr)).await;
    let before = status(&old).await;
    assert_eq!(before["process"]["generation"], 1, "{before}");
    let url = listener_url(&before, "/");
    // b drained, a client pinned to a by its cookie.
    let drain = call(
        &client(),
        Method::POST,
        &old.url("/v1/pools/web/nodes/b/drain"),
        Some(json!({})),
    )
    .await;
    assert!(matches!(drain, Some((200, _))), "{drain:?}");
    let mut browser = Browser::new();
    assert_eq!(browser.get(&url).await, "a");
    let cookie = browser.cookie.clone();

    let load = Load::start(url.clone(), 4, Duration::from_secs(20));
    let fresh = FreshConnections::start(listener_addr(&before), 2);
    eventually("the load runs", || {
        load.sent.load(std::sync::atomic::Ordering::SeqCst) > 50
    })
    .await;
    let mut new = Handoff::take_over(&dir.path().join("handoff.yaml")).await;
    assert_eq!(
        new.admin, old.admin,
        "the admin listener was not handed over"
    );
    assert_eq!(
        exit_code(&mut old).await,
        Some(0),
        "the old generation: {:#?}",
        old.log()
    );
    let sent_at_exit = load.sent.load(std::sync::atomic::Ordering::SeqCst);
    eventually("the new generation serves the load", || {
        load.sent.load(std::sync::atomic::Ordering::SeqCst) > sent_at_exit + 50
    })
    .await;
    let (sent, failed) = load.finish().await;
    println!("takeover under keep-alive load: {sent} requests, {failed} failed");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the takeover"
    );
    let (sent, failed) = fresh.finish().await;
    println!("takeover under connection-per-request load: {sent} requests, {failed} failed");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} fresh-connection requests failed"
    );

    let after = status(&new).await;
    assert_eq!(after["process"]["generation"], 2, "{after}");
    assert_ne!(after["process"]["pid"], before["process"]["pid"]);
    assert_eq!(listener_url(&after, "/"), url, "the listener moved");
    let nodes = &after["pools"][0]["nodes"];
    assert_eq!(nodes[1]["state"], "drained", "{after}");
    assert_eq!(
        nodes[0]["health"], "up",
        "health was not carried over: {after}"
    );
    assert_eq!(nodes[0]["version"], "1.0.0", "{after}");
    assert_eq!(browser.get(&url).await, "a", "the cookie lost its node");
    assert_eq!(browser.cookie, cookie, "the cookie was not recognised");
    eventually_async(&new, |s| s.get("previous").is_none()).await;
    new.assert_alive("after the takeover");
}
