//! Validation tests: defaults, every-error reporting with positions, refused fields.

use super::*;
use crate::config::OnFailure;

const GOOD: &str = r#"
listeners:
  - name: web
    listen: "127.0.0.1:8080"
    protocol: http
    routes:
      - { host: "API.example.com", path_prefix: "/v1", pool: api }
      - { pool: api }
pools:
  - name: api
    nodes:
      - { name: a, addr: "127.0.0.1:9001" }
      - { name: b, addr: "127.0.0.1:9002", weight: 50 }
    health:
      interval: 500ms
      http: { path: "/healthz", version_header: "X-Version" }
"#;

#[test]
fn accepts_a_good_file_with_defaults() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
    let pool = c.pool("api").unwrap();
    assert_eq!(pool.balance, Balance::LeastConn);
    assert_eq!(pool.nodes[1].weight, 50);
    assert_eq!(pool.health.timeout, Duration::from_millis(500));
    let ListenerKind::Http { routes } = &c.listeners[0].kind else {
        panic!()
    };
    assert_eq!(routes[0].host.as_deref(), Some("api.example.com"));
}

#[test]
fn reports_every_mistake_with_position() {
    let bad = GOOD
        .replace("interval: 500ms", "interval: 5x")
        .replace("{ pool: api }", "{ pool: nope }")
        .replace("weight: 50", "weight: 50, colour: red");
    let errors = match parse(&bad) {
        Err(ConfigError::Invalid(e)) => e,
        other => panic!("expected errors, got {other:?}"),
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"listeners[0].routes[1].pool"), "{errors:?}");
    assert!(paths.contains(&"pools[0].health.interval"), "{errors:?}");
    assert!(paths.contains(&"pools[0].nodes[1].colour"), "{errors:?}");
    let interval = errors
        .iter()
        .find(|e| e.path.ends_with("interval"))
        .unwrap();
    assert_eq!((interval.line, interval.col), (15, 7));
}

#[test]
fn tcp_listeners_route_by_sni_or_terminate_tls() {
    let tcp = |extra: &str| {
        GOOD.replace(
            "    protocol: http\n    routes:\n      - { host: \"API.example.com\", path_prefix: \"/v1\", pool: api }\n      - { pool: api }\n",
            &format!("    protocol: tcp\n{extra}"),
        )
    };
    let c = parse(&tcp(
        "    sni_routes: [ { sni: A.example.com, pool: api }, { sni: \"*.example.org\", pool: api } ]\n",
    ))
    .expect("valid");
    let ListenerKind::Tcp { pool, sni_routes } = &c.listeners[0].kind else {
        panic!()
    };
    assert_eq!(pool, &None);
    assert_eq!(sni_routes[0].sni, "a.example.com");
    assert!(parse(&tcp("    pool: api\n")).is_ok());
    for (extra, path) in [
        ("", "listeners[0]"),
        ("    sni_routes: [ { sni: \"a b\", pool: api } ]\n", "listeners[0].sni_routes[0].sni"),
        ("    sni_routes: [ { sni: a.example.com, pool: nope } ]\n", "listeners[0].sni_routes[0].pool"),
        (
            "    pool: api\n    sni_routes: [ { sni: a.example.com, pool: api } ]\n    tls: { certificates: [] }\n",
            "listeners[0].tls",
        ),
        ("    pool: api\n    tls: { certificates: [] }\n", "listeners[0].tls.certificates"),
    ] {
        let errors = match parse(&tcp(extra)) {
            Err(ConfigError::Invalid(e)) => e,
            other => panic!("{extra} accepted: {other:?}"),
        };
        assert!(errors.iter().any(|e| e.path == path), "{extra}: {errors:?}");
    }
}

#[test]
fn affinity_needs_exactly_one_mode() {
    let with = |a: &str| GOOD.replace("    health:", &format!("    affinity: {a}\n    health:"));
    assert!(parse(&with("{ cookie: sid, idle_timeout: 30s }")).is_ok());
    assert!(parse(&with("{ source_ip: true }")).is_ok());
    for bad in [
        "{ }",
        "{ cookie: sid, source_ip: true }",
        "{ cookie: \"a b\" }",
        "{ cookie: sid, idle_timeout: 0s }",
    ] {
        assert!(parse(&with(bad)).is_err(), "{bad} accepted");
    }
}

#[test]
fn rollout_analysis_and_passive_ejection() {
    let with = |rollout: &str, passive: &str| {
        GOOD.replace(
            "      interval: 500ms\n",
            &format!("      interval: 500ms\n      passive: {passive}\n"),
        ) + &format!("    rollout: {{ analysis: {rollout} }}\n")
    };
    let c = parse(&with("{}", "{ consecutive_5xx: 5 }")).expect("valid");
    let pool = c.pool("api").unwrap();
    assert_eq!(pool.health.consecutive_5xx, Some(5));
    let a = pool.rollout.analysis.as_ref().expect("analysis");
    assert_eq!(
        (
            a.window,
            a.min_requests,
            a.max_error_rate,
            a.max_p99_ratio,
            a.on_failure
        ),
        (Duration::from_secs(30), 50, 0.05, None, OnFailure::Rollback)
    );
    let c = parse(&with(
        "{ window: 2m, min_requests: 10, max_error_rate: 0.01, max_p99_ratio: 2.5, on_failure: pause }",
        "{ consecutive_5xx: 1 }",
    ))
    .expect("valid");
    let a = c.pool("api").unwrap().rollout.analysis.clone().unwrap();
    assert_eq!(
        (a.max_p99_ratio, a.on_failure),
        (Some(2.5), OnFailure::Pause)
    );
    for (rollout, passive, path) in [
        (
            "{ on_failure: retry }",
            "{ consecutive_5xx: 5 }",
            "rollout.analysis.on_failure",
        ),
        (
            "{ max_error_rate: 1.5 }",
            "{ consecutive_5xx: 5 }",
            "rollout.analysis.max_error_rate",
        ),
        (
            "{ max_error_rate: .nan }",
            "{ consecutive_5xx: 5 }",
            "rollout.analysis.max_error_rate",
        ),
        (
            "{ max_p99_ratio: 0.5 }",
            "{ consecutive_5xx: 5 }",
            "rollout.analysis.max_p99_ratio",
        ),
        (
            "{ min_requests: 0 }",
            "{ consecutive_5xx: 5 }",
            "rollout.analysis.min_requests",
        ),
        (
            "{ window: 10ms }",
            "{ consecutive_5xx: 5 }",
            "rollout.analysis.window",
        ),
        (
            "{ windw: 10s }",
            "{ consecutive_5xx: 5 }",
            "rollout.analysis.windw",
        ),
        (
            "{}",
            "{ consecutive_5xx: 0 }",
            "health.passive.consecutive_5xx",
        ),
        ("{}", "{}", "health.passive"),
    ] {
        let errors = match parse(&with(rollout, passive)) {
            Err(ConfigError::Invalid(e)) => e,
            other => panic!("{rollout} {passive} accepted: {other:?}"),
        };
        assert!(
            errors.iter().any(|e| e.path == format!("pools[0].{path}")),
            "{rollout} {passive}: {errors:?}"
        );
    }
}

#[test]
fn syntax_errors_have_a_position() {
    let err = parse("listeners: [\n").unwrap_err();
    let e = &err.field_errors()[0];
    assert!(e.line >= 1 && e.reason.contains("YAML"), "{e:?}");
}

#[test]
fn cluster_defaults_and_mistakes() {
    let with = |cluster: &str| format!("{GOOD}cluster: {cluster}\n");
    let c = parse(&with(r#"{ etcd: ["http://127.0.0.1:2379"] }"#)).expect("valid");
    let cluster = c.cluster.expect("cluster");
    assert_eq!(cluster.prefix, "/handoff");
    assert_eq!(cluster.lease_ttl, Duration::from_secs(10));
    assert!(cluster.instance.ends_with(":9901"), "{}", cluster.instance);
    assert!(parse(GOOD).expect("valid").cluster.is_none());

    let bad = with(
        r#"{ etcd: ["https://e:2379", "e:2379"], prefix: "handoff/", instance: "lb 1", lease_ttl: 1s, colour: red }"#,
    );
    let errors = match parse(&bad) {
        Err(ConfigError::Invalid(e)) => e,
        other => panic!("expected errors, got {other:?}"),
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["cluster.colour"],
        "unknown fields are reported first: {errors:?}"
    );
    let errors = match parse(&bad.replace(", colour: red", "")) {
        Err(ConfigError::Invalid(e)) => e,
        other => panic!("expected errors, got {other:?}"),
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "cluster.etcd[0]",
            "cluster.etcd[1]",
            "cluster.prefix",
            "cluster.instance",
            "cluster.lease_ttl"
        ],
        "{errors:?}"
    );
    assert!(
        errors[0]
            .reason
            .contains("https:// endpoints need `cluster.tls`"),
        "{errors:?}"
    );
    assert!(errors[4].reason.contains("at least 2s"), "{errors:?}");
    let empty = parse(&with("{ etcd: [] }"));
    assert!(matches!(empty, Err(ConfigError::Invalid(e)) if e[0].path == "cluster.etcd"));
}

#[test]
fn cluster_tls_files_are_read_and_endpoints_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let with = |cluster: String| format!("{GOOD}cluster: {cluster}\n");
    let good = with(format!(
        r#"{{ etcd: ["https://127.0.0.1:2379"], tls: {{ ca: "{}" }} }}"#,
        ca.display()
    ));
    let c = parse(&good).expect("valid");
    assert!(c
        .cluster
        .unwrap()
        .tls
        .unwrap()
        .ca
        .starts_with(b"-----BEGIN CERTIFICATE"));
    let bad = with(format!(
        r#"{{ etcd: ["http://127.0.0.1:2379"], tls: {{ ca: "{}", cert: "{}" }} }}"#,
        dir.path().join("missing.pem").display(),
        ca.display()
    ));
    let errors = match parse(&bad) {
        Err(ConfigError::Invalid(e)) => e,
        other => panic!("expected errors, got {other:?}"),
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["cluster.etcd[0]", "cluster.tls.ca"], "{errors:?}");
    assert!(
        errors[0].reason.contains("every endpoint is https://"),
        "{errors:?}"
    );
    assert!(errors[1].reason.contains("cannot read"), "{errors:?}");
}
