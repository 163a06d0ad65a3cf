//! The demo's replace rollout: pool `api` (requests under `/api`) upgrades by bringing each
//! new version up as a new process beside the old node. Its hook is this binary's hidden
//! `demo-replace` command: `provision` starts `handoff demo-backend` at the target version
//! on a free port (in a process group of its own, so it outlives the hook) and prints its
//! address; `retire` stops the process at the retired node's address.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The route and pool added to the demo's config; `{C}`, `{D}`, `{EXE}` and `{DIR}` are
/// filled in at start.
pub(super) const ROUTE: &str = "      - { path_prefix: \"/api\", pool: api }\n";
pub(super) const POOL: &str = r#"
  - name: api
    nodes:
      - { name: c, addr: "{C}" }
      - { name: d, addr: "{D}" }
    health:
      interval: 1s
      timeout: 500ms
      healthy_after: 2
      http: { path: "/healthz", expect_status: 200, version_header: "X-Version" }
    warmup: 5s
    drain: { timeout: 30s, close_spread: 1s }
    rollout:
      strategy: replace
      ready_timeout: 30s
      hook: { exec: ["{EXE}", "demo-replace", "{DIR}"] }
"#;

/// `handoff demo-replace DIR` (hidden): the replace rollout's hook.
pub fn hook(dir: &Path) -> anyhow::Result<i32> {
    let action = std::env::var("HANDOFF_ACTION").context("HANDOFF_ACTION is not set")?;
    let pids = dir.join("pids");
    std::fs::create_dir_all(&pids).context("the demo's pid directory")?;
    match action.as_str() {
        "provision" => {
            let node = std::env::var("HANDOFF_NODE").unwrap_or_default();
            let version = std::env::var("HANDOFF_TARGET_VERSION")
                .context("HANDOFF_TARGET_VERSION is not set")?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let addr = format!("127.0.0.1:{port}");
            let exe = std::env::current_exe()?;
            let child = Command::new(exe)
                .args(["demo-backend", "--name", &format!("{node}-{version}")])
                .args(["--version", &version, "--listen", &addr])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own group: it outlives the hook, whose group is killed if it hangs.
                .process_group(0)
                .spawn()
                .context("starting a demo backend")?;
            std::fs::write(pids.join(port.to_string()), child.id().to_string())?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(&addr).is_err() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the new demo backend did not listen on {addr}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "started demo backend {node}-{version} (pid {}) on {addr}",
                child.id()
            );
            println!("{addr}");
            Ok(0)
        }
        "retire" => {
            let addr =
                std::env::var("HANDOFF_NODE_ADDR").context("HANDOFF_NODE_ADDR is not set")?;
            let port = addr.rsplit(':').next().unwrap_or_default();
            match std::fs::read_to_string(pids.join(port)) {
                Ok(pid) => {
                    let pid: i32 = pid.trim().parse().context("a pid file")?;
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
                    let _ = std::fs::remove_file(pids.join(port));
                    println!("stopped the demo backend at {addr}");
                }
                Err(_) => println!("the demo backend at {addr} runs in the demo process; it is no longer in the pool"),
            }
            Ok(0)
        }
        other => anyhow::bail!("demo-replace: unknown HANDOFF_ACTION {other:?}"),
    }
}

/// Stops every backend the hook started (the demo is ending).
pub(super) fn stop_all(dir: &Path) {
    for entry in std::fs::read_dir(dir.join("pids"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(pid) = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}
