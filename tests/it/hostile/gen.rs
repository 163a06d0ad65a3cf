//! Generators of whole requests: bodies per endpoint, wait queries, junk paths, and the case.

use super::*;

pub(super) fn drain_body() -> BoxedStrategy<(Vec<u8>, Verdict)> {
    (
        field(duration_value(DRAIN_TIMEOUT)),
        field(force_value()),
        extra_field(&["timeout", "force"]),
    )
        .prop_map(|(timeout, force, extra)| {
            object(vec![("timeout", timeout), ("force", force)], extra)
        })
        .boxed()
}

pub(super) fn enable_body() -> BoxedStrategy<(Vec<u8>, Verdict)> {
    (field(duration_value(WARMUP)), extra_field(&["warmup"]))
        .prop_map(|(warmup, extra)| object(vec![("warmup", warmup)], extra))
        .boxed()
}

pub(super) fn rollout_body() -> BoxedStrategy<(Vec<u8>, Verdict)> {
    (
        prop::option::weighted(0.9, version_value()),
        field(order_value()),
        field(duration_value(DRAIN_TIMEOUT)),
        field(duration_value(READY_TIMEOUT)),
        field(duration_value(WARMUP)),
        extra_field(&[
            "version",
            "order",
            "drain_timeout",
            "ready_timeout",
            "warmup",
        ]),
    )
        .prop_map(|(version, order, drain, ready, warmup, extra)| {
            let missing = version.is_none();
            let (body, verdict) = object(
                vec![
                    ("version", version),
                    ("order", order),
                    ("drain_timeout", drain),
                    ("ready_timeout", ready),
                    ("warmup", warmup),
                ],
                extra,
            );
            (body, if missing { Verdict::Bad } else { verdict })
        })
        .boxed()
}

/// A rollout the product starts (to a version the nodes report, or one they never will).
pub(super) fn valid_rollout_body() -> BoxedStrategy<(Vec<u8>, Verdict)> {
    (
        select(vec!["1.0.0", "2.0.0"]),
        select(vec![json!(["a", "b"]), json!(["b"]), Value::Null]),
        select(vec!["0s", "100ms", "24h"]),
    )
        .prop_map(|(version, order, warmup)| {
            let body = json!({
                "version": version,
                "order": order,
                "drain_timeout": "1s",
                "ready_timeout": "2s",
                "warmup": warmup,
            });
            (serde_json::to_vec(&body).unwrap(), Verdict::Valid)
        })
        .boxed()
}

/// Bodies that are no proper JSON object of the endpoint.
#[derive(Debug, Clone, Copy)]
pub(super) enum Junk {
    /// Empty or blank: all defaults for drain and enable, refused by rollouts.
    Blank,
    /// `{}`: the same.
    EmptyObject,
    Bad,
    Unknown,
}

pub(super) fn junk_body() -> BoxedStrategy<(Vec<u8>, Junk)> {
    const BAD: &[&str] = &[
        "{",
        "[",
        "}",
        "nul",
        "{'timeout':'1s'}",
        "{\"timeout\":}",
        "{\"timeout\":\"1s\",}",
        "{\"timeout\":\"1s\"} x",
        "{\"timeout\":\"1s\"}{}",
        "{\"timeout\":\"1s\",\"timeout\":\"2s\"}",
        "{\"warmup\":\"0s\",\"warmup\":\"0s\"}",
        "{\"version\":\"2\",\"version\":\"3\"}",
        "{\"force\":true,\"force\":true}",
        "{\"timeout\":1e400}",
        "{\"timeout\":18446744073709551616}",
        "{\"force\":1e400}",
        "{\"timeout\":\"\\u0000\"}",
        "{\"timeout\":\"\\ud800\"}",
        "{\"version\":\"\\ud800\"}",
        "{\"warmup\":\"\\ud800\"}",
        "null",
        "1",
        "\"x\"",
        "true",
        "\u{feff}{}",
        "{\"timeout\":\"1s\u{0}\"}",
        "{\"version\":\"2\u{1}\"}",
    ];
    const UNKNOWN: &[&str] = &[
        "[]",
        "[\"1s\", true]",
        "[\"0s\"]",
        "[\"2.0\", null, null, null, null]",
        "{\"timeout\":\"1s\"}\n",
        "{\"warmup\":\"0s\"}\r\n",
    ];
    prop_oneof![
        2 => select(vec!["", " ", "\n\t\r "])
            .prop_map(|s| (s.as_bytes().to_vec(), Junk::Blank))
            .boxed(),
        1 => Just((b"{}".to_vec(), Junk::EmptyObject)).boxed(),
        6 => select(BAD).prop_map(|s| (s.as_bytes().to_vec(), Junk::Bad)).boxed(),
        2 => select(UNKNOWN).prop_map(|s| (s.as_bytes().to_vec(), Junk::Unknown)).boxed(),
        1 => Just((vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'], Junk::Bad)).boxed(),
        1 => (1usize..6_000)
            .prop_map(|n| (format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes(), Junk::Bad))
            .boxed(),
        1 => (200usize..3_000)
            .prop_map(|n| ("{\"timeout\":".repeat(n).into_bytes(), Junk::Bad))
            .boxed(),
        2 => prop::collection::vec(any::<u8>(), 0..400)
            .prop_map(|b| (b, Junk::Unknown))
            .boxed(),
        2 => (1usize..4_096, select(vec!["{\"timeout\":\"1s\"}", "{\"version\":\"2\"}", "{}"]))
            .prop_map(|(extra, json)| {
                let mut b = json.as_bytes().to_vec();
                b.resize(MAX_BODY + extra, b' ');
                (b, Junk::Bad)
            })
            .boxed(),
        1 => (MAX_BODY + 1..MAX_BODY * 2)
            .prop_map(|n| (vec![b'x'; n], Junk::Bad))
            .boxed(),
    ]
    .boxed()
}

/// Shallow nesting is no error: deep nesting (serde_json's limit is 128) is.
pub(super) fn deep_enough(b: &(Vec<u8>, Junk)) -> (Vec<u8>, Junk) {
    let depth = b.0.iter().take_while(|&&c| c == b'[').count();
    match b.1 {
        Junk::Bad if depth > 0 && depth <= 128 => (b.0.clone(), Junk::Unknown),
        _ => b.clone(),
    }
}

pub(super) fn junk_verdict(junk: Junk, shape: Shape) -> Verdict {
    match (junk, shape) {
        (Junk::Blank | Junk::EmptyObject, Shape::StartRollout) => Verdict::Bad,
        (Junk::Blank | Junk::EmptyObject, _) => Verdict::Valid,
        (Junk::Bad, _) => Verdict::Bad,
        (Junk::Unknown, _) => Verdict::Unknown,
    }
}

pub(super) fn body_for(shape: Shape) -> BoxedStrategy<(Vec<u8>, Verdict)> {
    let junk = move || {
        junk_body()
            .prop_map(move |b| {
                let (bytes, junk) = deep_enough(&b);
                (bytes, junk_verdict(junk, shape))
            })
            .boxed()
    };
    match shape {
        Shape::Drain => prop_oneof![5 => drain_body(), 4 => junk()].boxed(),
        Shape::Enable => prop_oneof![5 => enable_body(), 4 => junk()].boxed(),
        Shape::StartRollout => prop_oneof![
            5 => rollout_body(),
            4 => junk(),
            1 => valid_rollout_body(),
        ]
        .boxed(),
        _ => prop_oneof![4 => Just((Vec::new(), Verdict::Unknown)), 1 => junk()].boxed(),
    }
}

pub(super) fn shape() -> BoxedStrategy<Shape> {
    use Shape::*;
    weighted(&[
        (Status, 3),
        (Pool, 4),
        (Node, 5),
        (Drain, 14),
        (Enable, 12),
        (Wait, 12),
        (StartRollout, 12),
        (Rollouts, 2),
        (Rollout, 4),
        (Abort, 5),
        (Reload, 2),
        (Metrics, 2),
        (Healthz, 2),
        (Junk, 12),
    ])
}

pub(super) fn method(natural: &'static str) -> BoxedStrategy<String> {
    const METHODS: &[&str] = &[
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "get", "post", "FOO",
        "M-SEARCH",
    ];
    prop_oneof![4 => Just(natural.to_string()), 1 => pick(METHODS)].boxed()
}

pub(super) fn deco() -> BoxedStrategy<Deco> {
    weighted(&[
        (Deco::Plain, 6),
        (Deco::TrailingSlash, 1),
        (Deco::DoubleSlash, 1),
        (Deco::Absolute, 1),
        (Deco::JunkQuery, 1),
    ])
}

pub(super) fn case() -> impl Strategy<Value = Case> {
    shape()
        .prop_flat_map(|shape| {
            (
                Just(shape),
                method(shape.method()),
                (pool_name(), node_name(), rollout_id()),
                wait_query(),
                junk_path(),
                body_for(shape),
                (
                    deco(),
                    weighted(&[
                        (None, 1),
                        (Some("application/json"), 2),
                        (Some("text/plain"), 1),
                        (Some("multipart/form-data; boundary=x"), 1),
                    ]),
                    prop::bool::weighted(0.2),
                ),
            )
        })
        .prop_map(
            |(shape, method, (pool, node, id), (query, qv), junk, (body, bv), extra)| {
                let (deco, content_type, chunked) = extra;
                build(
                    shape,
                    method,
                    (&pool, &node, &id),
                    (&query, qv),
                    &junk,
                    (body, bv),
                    (deco, content_type, chunked),
                )
            },
        )
}

pub(super) fn build(
    shape: Shape,
    method: String,
    (pool, node, id): (&str, &str, &str),
    (query, query_verdict): (&str, Verdict),
    junk: &str,
    (body, body_verdict): (Vec<u8>, Verdict),
    (deco, content_type, chunked): (Deco, Option<&'static str>, bool),
) -> Case {
    let node_path = format!("/v1/pools/{pool}/nodes/{node}");
    let path = match shape {
        Shape::Status => "/v1/status".to_string(),
        Shape::Pool => format!("/v1/pools/{pool}"),
        Shape::Node => node_path,
        Shape::Drain => format!("{node_path}/drain"),
        Shape::Enable => format!("{node_path}/enable"),
        Shape::Wait => format!("{node_path}/wait"),
        Shape::StartRollout => format!("/v1/pools/{pool}/rollouts"),
        Shape::Rollouts => "/v1/rollouts".to_string(),
        Shape::Rollout => format!("/v1/rollouts/{id}"),
        Shape::Abort => format!("/v1/rollouts/{id}/abort"),
        Shape::Reload => "/v1/reload".to_string(),
        Shape::Metrics => "/metrics".to_string(),
        Shape::Healthz => "/healthz".to_string(),
        Shape::Junk => junk.to_string(),
    };
    let dressed = if shape == Shape::Junk {
        path
    } else {
        match deco {
            Deco::Plain => path,
            Deco::TrailingSlash => format!("{path}/"),
            Deco::DoubleSlash => format!("/{path}"),
            Deco::Absolute => format!("http://127.0.0.1{path}"),
            Deco::JunkQuery => format!("{path}?x=1&state=zz"),
        }
    };
    let target = if shape == Shape::Wait && deco != Deco::JunkQuery {
        format!("{dressed}?{query}")
    } else {
        dressed
    };

    // What the answer must be, where the test can tell.
    let natural = method == shape.method();
    let real_pool = pool == "web";
    let real_node = real_pool && (node == "a" || node == "b");
    // Segments that could split, vanish or be refused by the HTTP layer are left out.
    let plain_segment = |s: &str| {
        !s.is_empty()
            && s.len() < 1_000
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    };
    let routed = matches!(deco, Deco::Plain | Deco::TrailingSlash | Deco::JunkQuery);
    let wait_verdict = if deco == Deco::JunkQuery {
        Verdict::Bad
    } else {
        query_verdict
    };
    let expect = if !natural || !routed || shape == Shape::Junk {
        None
    } else {
        match shape {
            Shape::Drain | Shape::Enable if real_node && body_verdict == Verdict::Bad => {
                Some(Expect::Status(400))
            }
            Shape::Wait if real_node && wait_verdict == Verdict::Bad => Some(Expect::Status(400)),
            Shape::StartRollout if real_pool && body_verdict == Verdict::Bad => {
                Some(Expect::Status(400))
            }
            Shape::StartRollout if real_pool && body_verdict == Verdict::Absent => {
                Some(Expect::Status(404))
            }
            Shape::StartRollout if plain_segment(pool) && !real_pool => Some(Expect::Refused),
            Shape::Pool if plain_segment(pool) && !real_pool => Some(Expect::Status(404)),
            Shape::Node | Shape::Drain | Shape::Enable | Shape::Wait
                if plain_segment(pool) && plain_segment(node) && !real_node =>
            {
                Some(Expect::Status(404))
            }
            Shape::Rollout | Shape::Abort if plain_segment(id) && !id.starts_with("web-") => {
                Some(Expect::Status(404))
            }
            Shape::Status | Shape::Rollouts | Shape::Metrics | Shape::Healthz => {
                Some(Expect::Status(200))
            }
            _ => None,
        }
    };
    Case {
        shape,
        method,
        target,
        content_type,
        chunked,
        body,
        expect,
    }
}

// ---------------------------------------------------------------------------------------
