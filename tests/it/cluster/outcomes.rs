//! An answer says only what is known: drains and enables sent while the etcd member the
//! instance talks to is frozen (SIGSTOP), thawed at various times before and after the
//! answer. Every answer is checked against what etcd holds once everything settled: a 200
//! is there, a 503 or 4xx never is (not even after the member thawed and delivered what it
//! held), and a 504 "outcome unknown" is settled later, in the node's history, as etcd has
//! it.

use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::partitions::{endpoints, prefix, relays, start, Spec};
use super::*;

/// What etcd holds for `web/a` under `prefix` (the last drain or enable written).
async fn held(etcd: &Etcd, prefix: &str) -> Option<Value> {
    let mut c = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .expect("etcd answers");
    let got = c
        .get(format!("{prefix}/nodes/web/a"), None)
        .await
        .expect("etcd answers");
    let kv = got.kvs().first()?;
    Some(serde_json::from_slice(kv.value()).expect("a node op"))
}

/// One round: `member` frozen, the write sent 50 ms later, the member thawed `thaw_after`
/// the freeze. Returns the answer.
async fn round(
    etcd: &Etcd,
    at: &Instance,
    member: usize,
    op: &str,
    thaw_after: Duration,
) -> (u16, Value) {
    etcd.freeze(member);
    let path = format!("/v1/pools/web/nodes/a/{op}");
    let write = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        at.call(Method::POST, &path, None).await
    };
    let thaw = async {
        tokio::time::sleep(thaw_after).await;
        etcd.thaw(member);
    };
    let (answer, ()) = tokio::join!(write, thaw);
    answer
}

/// Waits until the node's history on `at` says how write `id` ended.
async fn settled(at: &Instance, id: &str) -> String {
    until(
        &format!("write {id} is settled"),
        Duration::from_secs(30),
        async || {
            let view = at.node("web", "a").await;
            view["history"]
                .as_array()
                .and_then(|h| {
                    h.iter().find_map(|e| {
                        let event = e["event"].as_str()?;
                        event.contains(id).then(|| event.to_string())
                    })
                })
                .ok_or_else(|| view["history"].to_string())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_answered_503_is_ever_found_applied() {
    if !etcd_installed("frozen-member") {
        return;
    }
    let etcd = Etcd::start().await;
    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let p = prefix("frozen-member");
    let through = relays(&etcd).await;
    let spec = |name, etcd| Spec::new(name, etcd, a.addr, b.addr);
    // lb-1 knows every member (through relays, to see which one its session uses); lb-2
    // knows member 0 only, so nothing can tell it what happened while 0 is frozen.
    let one = start(&p, spec("lb-1", endpoints(&through))).await;
    let two = start(&p, spec("lb-2", vec![etcd.endpoint(0)])).await;
    one.h.wait_up("a").await;
    one.h.wait_up("b").await;

    let mut ops = ["drain", "enable"].into_iter().cycle();
    let mut answers = Vec::new();
    let rounds: [(bool, u64); 7] = [
        (true, 400),
        (true, 1000),
        (true, 1800),
        (true, 2600),
        (true, 3400),
        (false, 1000),
        (false, 6000),
    ];
    for (on_one, thaw_ms) in rounds {
        let op = ops.next().unwrap();
        let (at, member) = if on_one {
            // The member lb-1's session runs through: the relay holding a connection.
            let member = (0..3).max_by_key(|&i| through[i].open()).unwrap();
            (&one, member)
        } else {
            (&two, 0)
        };
        let before = held(&etcd, &p).await;
        let (status, answer) = round(&etcd, at, member, op, Duration::from_millis(thaw_ms)).await;
        // Everything the frozen member held is delivered and done with once the instance
        // has a session again and etcd answers it.
        at.wait_connected(true).await;
        let outcome = match status {
            504 => {
                assert_eq!(answer["error"], "outcome unknown", "{answer}");
                let id = answer["detail"]["write"].as_str().unwrap().to_string();
                let event = settled(at, &id).await;
                if event.contains("not_applied") {
                    "refused"
                } else {
                    "applied"
                }
            }
            200 => "applied",
            _ => "refused",
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = held(&etcd, &p).await;
        let what = format!(
            "{op} on {} with member {member} frozen for {thaw_ms} ms: answered {status} {answer}; etcd held {before:?}, holds {after:?}",
            at.name
        );
        match outcome {
            // A new op of this kind, by this instance.
            "applied" => assert!(
                after != before
                    && after
                        .as_ref()
                        .is_some_and(|v| v["op"] == op && v["by"] == at.name.as_str()),
                "{what}"
            ),
            _ => assert_eq!(after, before, "{what}"),
        }
        answers.push(status);
        eprintln!(
            "{op} on {}, member {member} frozen {thaw_ms} ms: {status}",
            at.name
        );
    }
    // The rounds covered both kinds of answers where something could go wrong.
    assert!(answers.contains(&200), "{answers:?}");
    assert!(
        answers.iter().any(|s| *s == 504 || *s == 503),
        "{answers:?}"
    );
}
