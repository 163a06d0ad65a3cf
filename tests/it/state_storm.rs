//! The real binary under abuse: the state file through a storm of admin changes with a
//! `kill -9` in the middle (every restart must accept whatever the killed process left), and
//! SIGHUP the moment the process has started (a reload, never the default "terminate").

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::common::backends::HttpBackend;
use crate::common::process::{call, Handoff};
use crate::common::*;

/// Every admin state a node can be in (and so in the state file or the status).
const STATES: [&str; 4] = ["active", "draining", "drained", "warming"];

/// How long one storm of admin changes may last at most.
const STORM: Duration = Duration::from_millis(1500);

/// Start, storm, `kill -9`: this many times on the same state file (each round takes about
/// a second, the kill landing later in the storm every round).
const ROUNDS: u64 = 6;

/// TCP listeners (besides `web`) in the SIGHUP test's config.
const LISTENERS: usize = 32;

/// Answers seen during a storm, by status.
type Statuses = Arc<Mutex<BTreeMap<u16, usize>>>;

fn count(statuses: &Statuses, answer: &Option<(u16, Value)>) {
    if let Some((status, _)) = answer {
        *statuses.lock().unwrap().entry(*status).or_default() += 1;
    }
}

/// Drains (forced) and enables `node` over and over, alternating warmups of 0 s and 1 s,
/// until `stop` or the end of the storm.
fn flip_node(
    admin: String,
    node: &'static str,
    offset: usize,
    stop: Arc<AtomicBool>,
    statuses: Statuses,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = client();
        let deadline = Instant::now() + STORM;
        let mut round = offset;
        while !stop.load(SeqCst) && Instant::now() < deadline {
            let (op, body) = if round.is_multiple_of(2) {
                ("drain", json!({ "force": true, "timeout": "1s" }))
            } else {
                let warmup = if round % 4 == 1 { "0s" } else { "1s" };
                ("enable", json!({ "warmup": warmup }))
            };
            let url = format!("http://{admin}/v1/pools/web/nodes/{node}/{op}");
            count(
                &statuses,
                &call(&client, Method::POST, &url, Some(body)).await,
            );
            round += 1;
        }
    })
}

/// Starts rollouts and aborts them (or the one already running) over and over, until `stop`
/// or the end of the storm.
fn churn_rollouts(
    admin: String,
    stop: Arc<AtomicBool>,
    statuses: Statuses,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = client();
        let deadline = Instant::now() + STORM;
        while !stop.load(SeqCst) && Instant::now() < deadline {
            let answer = call(
                &client,
                Method::POST,
                &format!("http://{admin}/v1/pools/web/rollouts"),
                Some(json!({ "version": "9.9.9", "ready_timeout": "1s" })),
            )
            .await;
            count(&statuses, &answer);
            let id = match &answer {
                Some((201, r)) => r["id"].as_str().map(str::to_string),
                Some((409, r)) => r["detail"]["running"].as_str().map(str::to_string),
                _ => None,
            };
            if let Some(id) = id {
                let url = format!("http://{admin}/v1/rollouts/{id}/abort");
                count(&statuses, &call(&client, Method::POST, &url, None).await);
            }
        }
    })
}

/// Runs a storm of admin changes on both nodes and rollouts, and `kill -9`s the process
/// `kill_after` into it. Returns the answers seen, by status.
async fn storm_and_kill(h: &mut Handoff, kill_after: Duration) -> BTreeMap<u16, usize> {
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Statuses::default();
    let mut tasks = Vec::new();
    for (i, node) in ["a", "b", "a", "b"].into_iter().enumerate() {
        tasks.push(flip_node(
            h.admin.clone(),
            node,
            i,
            stop.clone(),
            statuses.clone(),
        ));
    }
    tasks.push(churn_rollouts(
        h.admin.clone(),
        stop.clone(),
        statuses.clone(),
    ));
    // How long the load runs before the kill, not a wait for anything.
    tokio::time::sleep(kill_after).await;
    h.assert_alive("during the storm");
    h.proc.0.kill().expect("SIGKILL");
    let status = tokio::task::block_in_place(|| h.proc.0.wait()).expect("wait");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    stop.store(true, SeqCst);
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("a storm task did not end")
            .expect("storm task");
    }
    Arc::try_unwrap(statuses)
        .expect("the storm tasks ended")
        .into_inner()
        .unwrap()
}

/// What a `kill -9` left: a whole file in format 1 naming both nodes with valid states,
/// which handoff's own loader accepts. Returns it.
fn check_state_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("a state file after the storm");
    let file: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("state file is not JSON after kill -9 ({e}): {text}"));
    assert_eq!(file["format"], 1, "{file}");
    for key in ["web/a", "web/b"] {
        let node = &file["nodes"][key];
        let state = node["state"].as_str().unwrap_or("");
        assert!(STATES.contains(&state), "{key}: {file}");
        assert!(node["since_ms"].is_u64(), "{key}: {file}");
    }
    let rollouts = file["rollouts"].as_array().expect("rollouts");
    let ids: std::collections::HashSet<&str> =
        rollouts.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids.len(), rollouts.len(), "rollout ids not unique: {file}");
    match handoff::persist::load(path) {
        Ok(Some(_)) => {}
        other => panic!("handoff's loader refuses the state file: {other:?}\n{text}"),
    }
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_file_survives_kill_9_in_a_storm_of_changes() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handoff.yaml");
    let state = dir.path().join("state.json");
    std::fs::write(
        &config,
        format!(
            "state_file: \"{}\"\n{}",
            state.display(),
            http_config(&[("a", a.addr), ("b", b.addr)], "")
        ),
    )
    .unwrap();

    // Every round after the first starts on the file the previous kill left.
    let mut tmp_left = 0;
    for round in 0..ROUNDS {
        let mut h = Handoff::start(&config).await;
        h.wait_up("a").await;
        h.wait_up("b").await;
        let kill_after = Duration::from_millis(400 + 150 * round);
        let statuses = storm_and_kill(&mut h, kill_after).await;
        let answers: usize = statuses.values().sum();
        assert!(
            statuses.keys().any(|s| (200..300).contains(s)),
            "round {round}: no change was accepted: {statuses:?}"
        );
        assert!(
            statuses.keys().all(|s| *s < 500),
            "round {round}: server errors: {statuses:?}\n{:#?}",
            h.log()
        );
        check_state_file(&state);
        // A kill in the middle of a write leaves its temporary file: the next start must
        // not mind it.
        if state.with_extension("tmp").exists() {
            tmp_left += 1;
        }
        eprintln!("round {round}: {answers} answers {statuses:?} before kill -9 at {kill_after:?}");
    }
    eprintln!("a temporary file was left by {tmp_left} of {ROUNDS} kills");

    // The last restart: it accepts the file and applies it.
    let file = check_state_file(&state);
    let mut h = Handoff::start(&config).await;
    let c = client();
    let healthz = call(&c, Method::GET, &h.url("/healthz"), None).await;
    assert!(matches!(healthz, Some((200, _))), "{healthz:?}");
    let (status, view) = call(&c, Method::GET, &h.url("/v1/status"), None)
        .await
        .expect("status");
    assert_eq!(status, 200, "{view}");
    let nodes = view["pools"][0]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{view}");
    // A resumed rollout or a pending enable may move a node on: only the states that
    // nothing moves on are checked exactly.
    let rollout_running = file["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["state"] == "running");
    for node in nodes {
        let name = node["name"].as_str().unwrap();
        let state = node["state"].as_str().unwrap_or("");
        assert!(STATES.contains(&state), "{node}");
        let saved = &file["nodes"][format!("web/{name}")];
        if rollout_running || saved.get("enable_pending").is_some() {
            continue;
        }
        match saved["state"].as_str().unwrap() {
            // Its sessions died with the killed process: draining comes back drained.
            "draining" | "drained" => {
                assert_eq!(state, "drained", "saved {saved}, restored {node}");
                let since = handoff::time::rfc3339(saved["since_ms"].as_u64().unwrap());
                assert_eq!(node["state_since"], since.as_str(), "{node}");
            }
            "active" => assert_eq!(state, "active", "saved {saved}, restored {node}"),
            _ => {}
        }
    }
    h.assert_alive("after the last restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_right_after_start_reloads_instead_of_killing() {
    let a = HttpBackend::start("a", "1.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handoff.yaml");
    // Many listeners give the start some length between its first log line and serving:
    // the span in which a SIGHUP handler installed late (after the app started, say) would
    // leave the default action, terminate, in place.
    let tcp: String = (0..LISTENERS)
        .map(|i| {
            format!("  - {{ name: t{i}, listen: \"127.0.0.1:0\", protocol: tcp, pool: web }}\n")
        })
        .collect();
    let yaml = http_config(&[("a", a.addr)], "").replacen("pools:\n", &format!("{tcp}pools:\n"), 1);
    std::fs::write(&config, yaml).unwrap();

    // Two SIGHUPs the moment the first byte of the log arrives. They come from a shell
    // started beforehand and waiting on its stdin, so they follow that byte by microseconds
    // rather than by a fork and exec of `kill`.
    let mut sender = Command::new("sh")
        .args(["-c", "read pid && kill -HUP \"$pid\" && kill -HUP \"$pid\""])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut trigger = sender.stdin.take().unwrap();
    let mut sender = Running(sender);
    let triggered = Arc::new(AtomicBool::new(false));
    let mut h = {
        let triggered = triggered.clone();
        Handoff::start_with(&config, move |pid| {
            if writeln!(trigger, "{pid}").is_ok() {
                triggered.store(true, SeqCst);
            }
        })
        .await
    };
    assert!(triggered.load(SeqCst), "the signals were not requested");
    let deadline = Instant::now() + WAIT;
    let sent = loop {
        if let Some(status) = sender.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the shell did not send the signals"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(sent.success(), "kill -HUP failed: {sent:?}");

    h.assert_alive("after SIGHUP right after start");
    let c = client();
    let healthz = call(&c, Method::GET, &h.url("/healthz"), None).await;
    assert!(matches!(healthz, Some((200, _))), "{healthz:?}");
    let ok = "handoff_config_reloads_total{result=\"ok\"}";
    let failed = "handoff_config_reloads_total{result=\"failed\"}";
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = send(Method::GET, &h.url("/metrics"), None).await;
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body).into_owned();
        assert!(
            metric_value(&text, failed) <= 0.0,
            "a reload failed: {text}"
        );
        if metric_value(&text, ok) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reload counted after SIGHUP: {text}\n{:#?}",
            h.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.assert_alive("after the reload");
    let (status, view) = call(&c, Method::GET, &h.url("/v1/status"), None)
        .await
        .expect("status after the reload");
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["pools"][0]["nodes"][0]["name"], "a", "{view}");
    let listeners = view["listeners"].as_array().map_or(0, Vec::len);
    assert_eq!(listeners, LISTENERS + 1, "{view}");
}
