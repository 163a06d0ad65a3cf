//! What a hostile-input case is, and the generators of its parts (names, durations, field values).

use super::*;

/// The state the system is put in before a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Both nodes active, no rollout running.
    BothActive,
    /// `b` drained (stable), `a` active: an unforced drain of `a` meets the pair guard.
    BDrained,
    /// A rollout to a version no node will report waits (stably) in `waiting_upgrade` on
    /// `a`, which it drained: a second rollout meets `AlreadyRunning`.
    RolloutWaiting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Status,
    Pool,
    Node,
    Drain,
    Enable,
    Wait,
    StartRollout,
    Rollouts,
    Rollout,
    Abort,
    Reload,
    Metrics,
    Healthz,
    Junk,
}

impl Shape {
    pub(super) fn method(self) -> &'static str {
        match self {
            Shape::Drain | Shape::Enable | Shape::StartRollout | Shape::Abort | Shape::Reload => {
                "POST"
            }
            _ => "GET",
        }
    }
}

/// How the canonical path is dressed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deco {
    Plain,
    TrailingSlash,
    DoubleSlash,
    Absolute,
    JunkQuery,
}

/// What parsing an input must come to, as far as the test knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Valid,
    /// Refused by the input parsers (400) whatever the state.
    Bad,
    /// The test does not tell.
    Unknown,
    /// Well formed, but names a node the pool does not have (404 when nothing is `Bad`).
    Absent,
}

impl Verdict {
    pub(super) fn and(self, other: Verdict) -> Verdict {
        use Verdict::*;
        match (self, other) {
            (Bad, _) | (_, Bad) => Bad,
            (Unknown, _) | (_, Unknown) => Unknown,
            (Absent, _) | (_, Absent) => Absent,
            _ => Valid,
        }
    }
}

/// What the answer must be, when the test knows more than "2xx or 4xx".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Status(u16),
    /// Some 4xx: the request names no real pool, node or rollout.
    Refused,
}

#[derive(Clone)]
pub(super) struct Case {
    pub(super) shape: Shape,
    pub(super) method: String,
    /// The request target; `{latest}` stands for the newest rollout's id.
    pub(super) target: String,
    pub(super) content_type: Option<&'static str>,
    pub(super) chunked: bool,
    pub(super) body: Vec<u8>,
    pub(super) expect: Option<Expect>,
}

pub(super) fn excerpt(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    let mut s: String = text.escape_debug().collect();
    if bytes.len() > max {
        s.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    s
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({:?}; content-type {:?}{}; expect {:?}) body \"{}\"",
            self.method,
            excerpt(self.target.as_bytes(), 200),
            self.shape,
            self.content_type,
            if self.chunked { ", chunked" } else { "" },
            self.expect,
            excerpt(&self.body, 200),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Generators.

pub(super) fn pick(items: &'static [&'static str]) -> BoxedStrategy<String> {
    select(items).prop_map(String::from).boxed()
}

/// Picks among `items`, each as often as its weight.
pub(super) fn weighted<T: Clone + fmt::Debug + 'static>(items: &[(T, usize)]) -> BoxedStrategy<T> {
    let all: Vec<T> = items
        .iter()
        .flat_map(|(t, w)| std::iter::repeat_n(t.clone(), *w))
        .collect();
    select(all).boxed()
}

/// Path segments that name nothing real.
pub(super) fn hostile_segment() -> BoxedStrategy<String> {
    const FIXED: &[&str] = &[
        "",
        ".",
        "..",
        "%2e%2e",
        "%2F",
        "web%2Fnodes%2Fa",
        "w%65b",
        "%00",
        "web%00",
        "a%20",
        "%ff%fe",
        "%",
        "%zz",
        "WEB",
        "A",
        "web;a",
        "a,b",
        "*",
        "0",
        "-1",
        "18446744073709551616",
        "a?b",
        "a#b",
        "é",
        "日本",
        "\u{202e}a",
        "web-",
        "nodes",
        "v1",
    ];
    prop_oneof![
        24 => pick(FIXED),
        12 => "[a-zA-Z0-9._~%!$&'()*+,;=:@-]{1,24}".boxed(),
        3 => (1usize..20_000).prop_map(|n| "a".repeat(n)).boxed(),
        // Longer than a URI may be (the HTTP layer refuses it).
        1 => Just("x".repeat(70_000)).boxed(),
    ]
    .boxed()
}

pub(super) fn pool_name() -> BoxedStrategy<String> {
    prop_oneof![6 => Just("web".to_string()), 3 => hostile_segment()].boxed()
}

pub(super) fn node_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just("a".to_string()),
        3 => Just("b".to_string()),
        3 => hostile_segment(),
    ]
    .boxed()
}

pub(super) fn rollout_id() -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just("{latest}".to_string()),
        2 => pick(&[
            "web-1",
            "web-2",
            "web-3",
            "web-0",
            "web-00001",
            "web-18446744073709551616",
            "web--1",
        ]),
        3 => hostile_segment(),
    ]
    .boxed()
}

/// What a duration text parses to.
#[derive(Debug, Clone, Copy)]
pub(super) enum D {
    Ms(u64),
    Bad,
    Unknown,
}

/// Duration texts with what src/config/duration.rs makes of them.
pub(super) const DURATIONS: &[(&str, D)] = &[
    ("0s", D::Ms(0)),
    ("0ms", D::Ms(0)),
    ("1ms", D::Ms(1)),
    ("20ms", D::Ms(20)),
    ("1s", D::Ms(1_000)),
    (" 1s ", D::Ms(1_000)),
    ("1m30s", D::Ms(90_000)),
    ("1h", D::Ms(H)),
    ("3600s", D::Ms(H)),
    ("60m", D::Ms(H)),
    ("61m", D::Ms(61 * 60_000)),
    ("3601s", D::Ms(3_601_000)),
    ("3600001ms", D::Ms(3_600_001)),
    ("2h", D::Ms(2 * H)),
    ("24h", D::Ms(24 * H)),
    ("25h", D::Ms(25 * H)),
    ("168h", D::Ms(168 * H)),
    ("169h", D::Ms(169 * H)),
    ("1h1h1h1h", D::Ms(4 * H)),
    ("999999999h", D::Ms(999_999_999 * H)),
    ("18446744073709551615ms", D::Ms(u64::MAX)),
    ("18446744073709551615h", D::Bad),
    ("18446744073709551615s18446744073709551615s", D::Bad),
    ("99999999999999999999s", D::Bad),
    ("-1s", D::Bad),
    ("1.5s", D::Bad),
    ("", D::Bad),
    (" ", D::Bad),
    ("10x", D::Bad),
    ("10", D::Bad),
    ("s", D::Bad),
    ("ms", D::Bad),
    ("1 s", D::Bad),
    ("1e3s", D::Bad),
    ("0x10s", D::Bad),
    ("１s", D::Bad),
    ("1µs", D::Bad),
    ("1ns", D::Bad),
    ("1S", D::Bad),
    ("1H", D::Bad),
    ("+1s", D::Bad),
    ("1s-", D::Bad),
    ("NaN", D::Bad),
    ("inf", D::Bad),
    ("1s\u{0}", D::Bad),
    ("%31s", D::Bad),
    ("1%73", D::Bad),
];

pub(super) fn duration_text() -> BoxedStrategy<(String, D)> {
    prop_oneof![
        5 => select(DURATIONS).prop_map(|(t, d)| (t.to_string(), d)).boxed(),
        2 => "[0-9]{1,22}(ms|s|m|h|d|x|)"
            .prop_map(|t| (t, D::Unknown))
            .boxed(),
    ]
    .boxed()
}

pub(super) fn in_range(d: D, (min, max): (u64, u64)) -> Verdict {
    match d {
        D::Ms(ms) if (min..=max).contains(&ms) => Verdict::Valid,
        D::Ms(_) | D::Bad => Verdict::Bad,
        D::Unknown => Verdict::Unknown,
    }
}

/// Values that are no JSON string (for a string field) or no boolean.
pub(super) fn wrong_types() -> BoxedStrategy<Value> {
    select(vec![
        json!(5),
        json!(-1),
        json!(1.5),
        json!(1e308),
        json!(u64::MAX),
        json!(true),
        json!([]),
        json!(["1s"]),
        json!({}),
        json!({ "s": 1 }),
    ])
    .boxed()
}

/// A duration field's value: text, wrong type or null (null is "absent": valid).
pub(super) fn duration_value(range: (u64, u64)) -> BoxedStrategy<(Value, Verdict)> {
    prop_oneof![
        6 => duration_text()
            .prop_map(move |(t, d)| (Value::String(t), in_range(d, range)))
            .boxed(),
        2 => wrong_types().prop_map(|v| (v, Verdict::Bad)).boxed(),
        1 => Just((Value::Null, Verdict::Valid)).boxed(),
    ]
    .boxed()
}

pub(super) fn force_value() -> BoxedStrategy<(Value, Verdict)> {
    select(vec![
        (json!(true), Verdict::Valid),
        (json!(false), Verdict::Valid),
        (json!("true"), Verdict::Bad),
        (json!(1), Verdict::Bad),
        (json!(0), Verdict::Bad),
        (Value::Null, Verdict::Bad),
        (json!("yes"), Verdict::Bad),
        (json!([true]), Verdict::Bad),
    ])
    .boxed()
}

pub(super) fn version_value() -> BoxedStrategy<(Value, Verdict)> {
    prop_oneof![
        3 => select(vec![
            (json!("2.0.0"), Verdict::Valid),
            (json!("1.0.0"), Verdict::Valid),
            (json!(" 2.0 "), Verdict::Valid),
            (json!("\u{202e}evil"), Verdict::Valid),
            (json!(""), Verdict::Bad),
            (json!("   "), Verdict::Bad),
            (json!("\n"), Verdict::Bad),
            (json!("\u{0}"), Verdict::Bad),
            (json!("a\nb"), Verdict::Bad),
            (json!("2.0\u{7f}"), Verdict::Bad),
            (json!("\u{1b}[31mred"), Verdict::Bad),
            (json!("\u{85}x"), Verdict::Unknown),
            (json!(5), Verdict::Bad),
            (Value::Null, Verdict::Bad),
            (json!([]), Verdict::Bad),
            (json!({}), Verdict::Bad),
            (json!(true), Verdict::Bad),
        ])
        .boxed(),
        1 => (250usize..262)
            .prop_map(|n| (
                Value::String("a".repeat(n)),
                if n <= 256 { Verdict::Valid } else { Verdict::Bad },
            ))
            .boxed(),
        // Characters are counted, not bytes (as the API document's maxLength does).
        1 => (250usize..262)
            .prop_map(|n| (
                Value::String("é".repeat(n)),
                if n <= 256 { Verdict::Valid } else { Verdict::Bad },
            ))
            .boxed(),
    ]
    .boxed()
}

/// `order`: valid as a list of the pool's nodes, each once; checked against pool `web`. A
/// name the pool does not have is a 404, as a path naming it is.
pub(super) fn order_value() -> BoxedStrategy<(Value, Verdict)> {
    prop_oneof![
        4 => select(vec![
            (Value::Null, Verdict::Valid),
            (json!([]), Verdict::Valid),
            (json!(["a"]), Verdict::Valid),
            (json!(["b", "a"]), Verdict::Valid),
            (json!(["a", "b"]), Verdict::Valid),
            (json!(["a", "a"]), Verdict::Bad),
            (json!(["a", "b", "a"]), Verdict::Bad),
            (json!(["zz"]), Verdict::Absent),
            (json!([""]), Verdict::Absent),
            (json!(["A"]), Verdict::Absent),
            (json!(["a", "b", "c"]), Verdict::Absent),
            (json!(["a", 5]), Verdict::Bad),
            (json!("a"), Verdict::Bad),
            (json!(5), Verdict::Bad),
            (json!({ "a": 1 }), Verdict::Bad),
            (json!([["a"]]), Verdict::Bad),
        ])
        .boxed(),
        1 => (2usize..10_000)
            .prop_map(|n| (json!(vec!["a"; n]), Verdict::Bad))
            .boxed(),
    ]
    .boxed()
}

/// An unknown field of a body (every body refuses unknown fields).
pub(super) fn extra_field(
    known: &'static [&'static str],
) -> BoxedStrategy<Option<(String, Value)>> {
    const NAMES: &[&str] = &[
        "extra",
        "Timeout",
        "FORCE",
        "timeout ",
        "",
        "__proto__",
        "force\u{0}",
        "wait",
        "timeout",
        "warmup",
        "force",
        "version",
        "order",
    ];
    prop_oneof![
        6 => Just(None).boxed(),
        1 => (select(NAMES), wrong_types())
            .prop_filter("a known field", move |(n, _)| !known.contains(n))
            .prop_map(|(n, v)| Some((n.to_string(), v)))
            .boxed(),
    ]
    .boxed()
}

pub(super) fn field(
    strategy: BoxedStrategy<(Value, Verdict)>,
) -> BoxedStrategy<Option<(Value, Verdict)>> {
    prop::option::weighted(0.6, strategy).boxed()
}

pub(super) fn object(
    fields: Vec<(&str, Option<(Value, Verdict)>)>,
    extra: Option<(String, Value)>,
) -> (Vec<u8>, Verdict) {
    let mut map = serde_json::Map::new();
    let mut verdict = Verdict::Valid;
    for (name, value) in fields {
        if let Some((v, ver)) = value {
            map.insert(name.to_string(), v);
            verdict = verdict.and(ver);
        }
    }
    if let Some((name, v)) = extra {
        map.insert(name, v);
        verdict = Verdict::Bad;
    }
    (serde_json::to_vec(&Value::Object(map)).unwrap(), verdict)
}
