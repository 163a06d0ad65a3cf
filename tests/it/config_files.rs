//! The example configs and `handoff check`, run as the real binary.

use std::process::Command;

use crate::common::BIN;

#[test]
fn every_example_config_passes_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let out = Command::new(BIN)
                .arg("check")
                .arg("-c")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} example configs");
}

#[test]
fn check_reports_every_mistake_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - name: web\n    listen: \"127.0.0.1:8080\"\n    protocol: http\n    routes:\n      - { pool: nope }\npools:\n  - name: web\n    nodes: [ { name: a, addr: \"127.0.0.1:1\" } ]\n    health:\n      interval: 5x\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":6:11: listeners[0].routes[0].pool: unknown pool \"nope\""),
        "{stderr}"
    );
    assert!(
        stderr.contains(":11:7: pools[0].health.interval: invalid duration \"5x\""),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s)"), "{stderr}");
}

#[test]
fn check_reports_an_unreadable_file() {
    let out = Command::new(BIN)
        .args(["check", "-c", "/nonexistent/handoff.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn check_refuses_out_of_range_values_with_their_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - { name: web, listen: \"127.0.0.1:8080\", protocol: http, routes: [ { pool: web } ] }\npools:\n  - name: web\n    nodes: [ { name: a, addr: \"127.0.0.1:1\", weight: 0 } ]\n    health:\n      interval: 999999999h\n      healthy_after: 5000\n    drain: { timeout: 99999999999999999999s }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        ":7:7: pools[0].health.interval: 999999999h is out of range: at most 1h",
        ":8:7: pools[0].health.healthy_after: 5000 is out of range: must be between 1 and 1000",
        "pools[0].nodes[0].weight: 0 is out of range: must be between 1 and 10000",
        "pools[0].drain.timeout: invalid duration \"99999999999999999999s\"",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
}
