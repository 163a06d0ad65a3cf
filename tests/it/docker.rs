//! docker/: the image builds from this build's binary on a base made here (no registry),
//! and the compose demo rolls both backend containers to 2.0.0 under load with 0 failed
//! requests (`docker/rollout.sh`), and the same by replacement, new containers at new
//! addresses (`docker/replace.sh`). Skipped, saying so, where no Docker engine answers.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

fn docker() -> bool {
    let answers = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    let compose = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(answers && compose) {
        eprintln!("skipped: no Docker engine answers (or no docker-compose): the image and compose demo were not tested");
    }
    answers && compose
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_demo_replaces_both_backend_containers_under_load_with_nothing_failed() {
    if !docker() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docker");
    let build = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::new(dir.join("build-local.sh"))
            .arg(BIN)
            .output(),
    )
    .await
    .expect("the image built in time")
    .unwrap();
    assert!(
        build.status.success(),
        "{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    // In place (pool web), then by replacement (pool api: new containers at new addresses).
    // One after the other: the compose network has fixed addresses.
    for script in ["rollout.sh", "replace.sh"] {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(400),
            tokio::process::Command::new(dir.join(script))
                .env(
                    "COMPOSE_PROJECT_NAME",
                    format!("handofftest{}", std::process::id()),
                )
                .env("HANDOFF_DEMO_PORT", free_port().to_string())
                .env("HANDOFF_DEMO_ADMIN", free_port().to_string())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the compose rollout finished in time")
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let last = text.lines().last().unwrap_or_default().to_string();
        println!("{last}");
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            last.contains("succeeded") && last.ends_with(", 0 failed"),
            "{last}"
        );
        let sent: usize = last
            .split(": ")
            .last()
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(sent > 50, "too little load: {last}");
    }
}
