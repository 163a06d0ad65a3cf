//! Generators of request targets: `wait` queries with their verdicts, and junk paths.

use super::*;

/// `state=` values: known states, and names that are none.
pub(super) const STATES: &[(&str, bool)] = &[
    ("active", true),
    ("draining", true),
    ("drained", true),
    ("warming", true),
    ("up", true),
    ("down", true),
    ("unknown", true),
    ("Active", false),
    ("UP", false),
    ("", false),
    ("zz", false),
    ("dr%61ined", false),
    ("up,down", false),
    ("drained%00", false),
    ("activ", false),
    ("up=x", false),
    ("up%26timeout=1s", false),
];

#[derive(Debug, Clone)]
pub(super) enum Param {
    State(&'static str, bool),
    Timeout(String, D),
    Junk(&'static str),
}

pub(super) fn param() -> BoxedStrategy<Param> {
    const JUNK: &[&str] = &[
        "x=1",
        "state",
        "timeout",
        "=",
        "STATE=up",
        "state%3Dup",
        ";",
        "%26",
        "Timeout=1s",
        "?state=up",
        "x",
        "state[]=up",
    ];
    prop_oneof![
        4 => select(STATES).prop_map(|(s, ok)| Param::State(s, ok)).boxed(),
        4 => duration_text().prop_map(|(t, d)| Param::Timeout(t, d)).boxed(),
        1 => select(JUNK).prop_map(Param::Junk).boxed(),
    ]
    .boxed()
}

/// Percent-encodes what may not stand in a request target; a duration that needed it is
/// no duration.
pub(super) fn query_text(text: &str, d: D) -> (String, D) {
    let mut out = String::new();
    for b in text.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'&' && b != b'#' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    let d = if out.contains('%') { D::Bad } else { d };
    (out, d)
}

/// A `wait` query and its verdict. A query the product may accept always ends with a short
/// timeout, so no valid long poll holds the test (the default is 30 s, the limit 1 h).
pub(super) fn wait_query() -> BoxedStrategy<(String, Verdict)> {
    (prop::collection::vec(param(), 0..4), any::<bool>())
        .prop_map(|(params, double_amp)| {
            let mut verdict = Verdict::Valid;
            let mut state: Option<bool> = None;
            // The last timeout: Some(Some(ms)) known, Some(None) unknown.
            let mut timeout: Option<Option<u64>> = None;
            let mut parts = Vec::new();
            for p in params {
                match p {
                    Param::State(s, ok) => {
                        state = Some(ok);
                        parts.push(format!("state={s}"));
                    }
                    Param::Timeout(t, d) => {
                        let (t, d) = query_text(&t, d);
                        match in_range(d, WAIT_TIMEOUT) {
                            Verdict::Valid => {
                                timeout = Some(match d {
                                    D::Ms(ms) => Some(ms),
                                    _ => None,
                                })
                            }
                            Verdict::Bad => verdict = Verdict::Bad,
                            // A duration names no node: never Absent.
                            Verdict::Unknown | Verdict::Absent => {
                                verdict = verdict.and(Verdict::Unknown);
                                timeout = Some(None);
                            }
                        }
                        parts.push(format!("timeout={t}"));
                    }
                    Param::Junk(j) => {
                        verdict = Verdict::Bad;
                        parts.push(j.to_string());
                    }
                }
            }
            match state {
                None | Some(false) => verdict = Verdict::Bad,
                Some(true) => {}
            }
            let short = matches!(timeout, Some(Some(ms)) if ms <= 500);
            if verdict != Verdict::Bad && !short {
                parts.push("timeout=20ms".into());
            }
            let sep = if double_amp { "&&" } else { "&" };
            (parts.join(sep), verdict)
        })
        .boxed()
}

pub(super) fn junk_path() -> BoxedStrategy<String> {
    const FIXED: &[&str] = &[
        "/",
        "",
        "*",
        "/v1",
        "/v1/",
        "/v2/status",
        "/V1/status",
        "/v1/status/extra",
        "/v1/pools",
        "/v1/pools/web/nodes",
        "/v1/pools/web/nodes/a/drain/x",
        "/v1/pools/web/nodes/a/DRAIN",
        "/v1/pools/web/rollouts/x",
        "/v1/rollouts/web-1/abort/x",
        "/v1/reload/now",
        "/healthz/x",
        "/metrics/x",
        "/../v1/status",
        "/v1/./status",
        "/%76%31/status",
        "/v1/status%00",
        "/v1/status;x",
        "/v1/status?",
        "?",
        "/#",
        "/v1/status#frag",
        "/v1//status",
        "/v1/pools//nodes/a",
        "http://127.0.0.1/v1/status",
        "http://[::1]:1/v1/pools/web",
        "https://x/v1/status",
        "127.0.0.1:80",
        "/v1/pools/web/nodes/a/wait/",
    ];
    prop_oneof![
        4 => pick(FIXED),
        2 => prop::collection::vec(hostile_segment(), 0..6)
            .prop_map(|s| format!("/{}", s.join("/")))
            .boxed(),
        2 => prop::collection::vec(hostile_segment(), 0..6)
            .prop_map(|s| format!("/v1/{}", s.join("/")))
            .boxed(),
    ]
    .boxed()
}
