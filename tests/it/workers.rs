//! `run --threads 2`: the control plane on the main thread, client connections on two
//! worker threads, each connection on the worker with the fewest open ones, for its life.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};

use crate::common::backends::HttpBackend;
use crate::common::process::Handoff;
use crate::common::*;

/// The process's worker threads, by name: (name, thread id).
fn workers(pid: u32) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let tid = t.ok()?.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            let name = comm.trim().to_string();
            name.starts_with("worker-").then_some((name, tid))
        })
        .collect();
    found.sort();
    found
}

/// Nanoseconds a thread has run, from the scheduler's statistics.
fn ran_ns(pid: u32, tid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).unwrap();
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_two_worker_threads_and_stay_on_theirs() {
    let a = HttpBackend::start("a", "1.0").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handoff.yaml");
    std::fs::write(&config, http_config(&[("a", a.addr)], "")).unwrap();
    let h = Handoff::start_in(&["env", "HANDOFF_WORKER_THREADS=2"], &config).await;
    h.wait_up("a").await;
    let pid = h.proc.0.id();
    let threads = workers(pid);
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["worker-0", "worker-1"]);
    let web = h.listener().await;

    // Four keep-alive connections held open together: two on each worker.
    let mut conns = Vec::new();
    for _ in 0..4 {
        let tcp = tokio::net::TcpStream::connect(&web).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        conns.push(send);
    }
    let before: Vec<u64> = threads.iter().map(|(_, t)| ran_ns(pid, t)).collect();
    let mut served = 0;
    for _ in 0..300 {
        for send in &mut conns {
            let req = Request::get("/")
                .header("host", "app.test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            // hyper hands a connection a new request only once the last one's end is
            // processed.
            let ready = tokio::time::timeout(WAIT, send.ready()).await;
            ready.expect("ready in time").expect("ready");
            let resp = tokio::time::timeout(WAIT, send.send_request(req))
                .await
                .expect("answered in time")
                .expect("answered");
            assert_eq!(resp.status(), 200);
            let _ = resp.into_body().collect().await;
            served += 1;
        }
    }
    assert_eq!(served, 1200);
    let used: Vec<u64> = threads
        .iter()
        .zip(&before)
        .map(|((_, t), b)| ran_ns(pid, t) - b)
        .collect();
    let total: u64 = used.iter().sum();
    // Each worker served half the requests: at least a fifth of the time each (a worker
    // with no connection would have run for next to nothing).
    for (i, u) in used.iter().enumerate() {
        assert!(u * 5 >= total, "worker-{i} ran {u} ns of {total}: {used:?}");
    }
}
