//! Hostile input over every admin endpoint: proptest drives the full admin router of the
//! real app in process, with raw HTTP/1.1 requests over loopback. Every request gets an
//! answer (2xx or 4xx; 504 only from the `wait` long poll); a 4xx leaves every node's admin
//! fields and the rollouts exactly as they were; a panic in the product's code fails the test.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Once;
use std::time::Duration;

use http::Method;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::backends::HttpBackend;
use crate::common::*;
use handoff::pool::Health;

/// Generated requests (each also snapshots the status before and after).
const CASES: u32 = 2000;
/// The seed, unless `PROPTEST_RNG_SEED` names another (to explore other inputs).
const SEED: u64 = 0x6861_6e64_6f66_6621;
/// Largest admin body the product accepts (src/admin/mod.rs).
const MAX_BODY: usize = 64 * 1024;

const H: u64 = 3_600_000;
/// Ranges, in ms, of the admin durations (src/config/limits.rs).
const DRAIN_TIMEOUT: (u64, u64) = (0, 168 * H);
const WARMUP: (u64, u64) = (0, 24 * H);
const READY_TIMEOUT: (u64, u64) = (1, 168 * H);
const WAIT_TIMEOUT: (u64, u64) = (0, H);

// ---------------------------------------------------------------------------------------
// Panics in the product's code (src/), wherever they happen: in a handler, a spawned task,
// a connection. Tokio and hyper would swallow most of them; this hook does not.

static PRODUCT_PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

fn count_product_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().starts_with("src/"))
            {
                PRODUCT_PANICS.fetch_add(1, SeqCst);
            }
            previous(info);
        }));
    });
}

mod cases;
mod gen;
mod targets;
mod wire;

use cases::*;
use gen::*;
use targets::*;
use wire::*;

// One case.

#[derive(Default)]
struct Stats {
    cases: usize,
    refused: usize,
    settles: usize,
    expected: usize,
    by_status: BTreeMap<u16, usize>,
}

struct World<'a> {
    proxy: &'a Proxy,
    /// Cases run so far (shrinking included): the mode changes every [`MODE_BLOCK`].
    runs: Cell<usize>,
    /// The mode the system is known to be in (None: unknown, settle first).
    mode: Cell<Option<Mode>>,
    /// The last snapshot, taken after the previous case, while the mode is known: nothing
    /// has run since, so it is this case's "before" (one `/v1/status` less per case).
    last: RefCell<Option<Snapshot>>,
    stats: RefCell<Stats>,
}

/// Cases run in one mode before the next (switching costs a settle).
const MODE_BLOCK: usize = 50;
const MODES: [Mode; 4] = [
    Mode::BothActive,
    Mode::BDrained,
    Mode::BothActive,
    Mode::RolloutWaiting,
];

async fn run_case(w: &World<'_>, case: &Case, mode: Mode) -> Result<(), String> {
    let last = w.last.take();
    if w.mode.get() != Some(mode) {
        w.mode.set(None);
        settle(w.proxy, mode).await?;
        w.stats.borrow_mut().settles += 1;
    }
    // Until this case is through, the state is unknown.
    let known = w.mode.replace(None) == Some(mode);
    let before = match last {
        Some(snapshot) if known => snapshot,
        _ => snapshot(w.proxy).await?,
    };
    let panics = PRODUCT_PANICS.load(SeqCst);
    let latest = before.latest_rollout().unwrap_or("web-0").to_string();
    let target = case.target.replace("{latest}", &latest);
    let answer = raw_request(w.proxy.admin, case, &target).await;
    let after = snapshot(w.proxy).await?;
    let describe = || {
        format!(
            "[{mode:?}] {case:?}\n  sent to {}",
            excerpt(target.as_bytes(), 300)
        )
    };
    let answer = answer.map_err(|e| format!("{e}\n  request: {}", describe()))?;
    let status = answer.status;
    let shown = || excerpt(&answer.raw, 600);
    {
        let mut s = w.stats.borrow_mut();
        s.cases += 1;
        *s.by_status.entry(status).or_default() += 1;
    }
    if PRODUCT_PANICS.load(SeqCst) != panics {
        return Err(format!(
            "the product panicked (see the panic message above)\n  request: {}\n  answer: {}",
            describe(),
            shown()
        ));
    }
    let refused = (400..500).contains(&status);
    let wait_path = target
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .ends_with("/wait");
    let ok_class = (200..300).contains(&status)
        || refused
        || (status == 504 && case.method == "GET" && wait_path);
    if !ok_class {
        return Err(format!(
            "answered {status} (a defect: only 2xx, 4xx, and 504 from wait)\n  request: {}\n  answer: {}",
            describe(),
            shown()
        ));
    }
    if let Some(expect) = case.expect {
        let met = match expect {
            Expect::Status(s) => status == s,
            Expect::Refused => refused,
        };
        if !met {
            return Err(format!(
                "answered {status}, expected {expect:?}\n  request: {}\n  answer: {}",
                describe(),
                shown()
            ));
        }
        w.stats.borrow_mut().expected += 1;
    }
    if refused {
        w.stats.borrow_mut().refused += 1;
        if before != after {
            return Err(format!(
                "a {status} changed the state\n  request: {}\n  answer: {}\n{}",
                describe(),
                shown(),
                before.diff(&after),
            ));
        }
    }
    // Anything but a refusal may have started something (a drain, a warmup, a rollout, a
    // reload): the next case settles first. Reads leave the mode as it is.
    let read = matches!(case.method.as_str(), "GET" | "HEAD");
    if refused || (read && before == after) {
        w.mode.set(Some(mode));
        *w.last.borrow_mut() = Some(after);
    }
    Ok(())
}

/// Requests whose answer the documented limits fix, one a line: method, target, body (none
/// when absent; no spaces), status.
const FIXED: &str = r#"
GET  /v1/pools/web/nodes/a/wait?state=drained&timeout=2h           400
GET  /v1/pools/web/nodes/a/wait?state=drained&timeout=61m          400
GET  /v1/pools/web/nodes/a/wait?state=drained&timeout=999999999h   400
GET  /v1/pools/web/nodes/a/wait?state=drained&timeout=-1s          400
GET  /v1/pools/web/nodes/a/wait?state=zz&timeout=1h                400
GET  /v1/pools/web/nodes/a/wait?timeout=1s                         400
GET  /v1/pools/web/nodes/a/wait?state=drained&timeout=0s           504
GET  /v1/pools/web/nodes/a/wait?state=active&timeout=1h            200
POST /v1/pools/web/nodes/a/drain  {"timeout":"999999999h"}             400
POST /v1/pools/web/nodes/a/drain  {"timeout":"18446744073709551615h"}  400
POST /v1/pools/web/nodes/a/drain  {"timeout":"169h"}                   400
POST /v1/pools/web/nodes/a/drain  {"timeout":"1.5s"}                   400
POST /v1/pools/web/nodes/a/drain  {"force":"true"}                     400
POST /v1/pools/web/nodes/a/drain  {"colour":1}                         400
POST /v1/pools/web/nodes/a/enable {"warmup":"25h"}                     400
POST /v1/pools/web/nodes/a/enable {"warmup":""}                        400
POST /v1/pools/web/rollouts                                            400
POST /v1/pools/web/rollouts {"version":""}                             400
POST /v1/pools/web/rollouts {"version":"2\u0007"}                     400
POST /v1/pools/web/rollouts {"version":"2","order":["a","a"]}          400
POST /v1/pools/web/rollouts {"version":"2","order":["zz"]}             404
POST /v1/pools/web/rollouts {"version":"2","ready_timeout":"0s"}       400
POST /v1/pools/web/rollouts {"version":"2","warmup":"999999999h"}      400
POST /v1/pools/nope/rollouts {"version":"2"}                           404
POST /v1/rollouts/nope/abort                                           404
POST /v1/status                                                        405
GET  /v1/reload                                                        405
POST /v1/reload                                                        200
"#;

/// [`FIXED`], and bodies just over the limits, run before the generated cases.
fn fixed_cases() -> Vec<Case> {
    let case = |method: &str, target: &str, body: Vec<u8>, status: u16| Case {
        shape: Shape::Junk,
        method: method.into(),
        target: target.into(),
        content_type: Some("application/json"),
        chunked: false,
        body,
        expect: Some(Expect::Status(status)),
    };
    let mut oversized = br#"{"timeout":"1s"}"#.to_vec();
    oversized.resize(MAX_BODY + 1, b' ');
    let long_version = format!(r#"{{"version":"{}"}}"#, "a".repeat(257));
    let mut cases: Vec<Case> = FIXED
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let body = if words.len() == 4 { words[2] } else { "" };
            let status = words.last().unwrap().parse().unwrap();
            case(words[0], words[1], body.as_bytes().to_vec(), status)
        })
        .collect();
    cases.insert(
        0,
        case("POST", "/v1/pools/web/nodes/a/drain", oversized, 400),
    );
    let rollouts = "/v1/pools/web/rollouts";
    cases.insert(0, case("POST", rollouts, long_version.into_bytes(), 400));
    cases
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_every_admin_endpoint() {
    count_product_panics();
    let a = HttpBackend::start("a", "1.0.0").await;
    let b = HttpBackend::start("b", "1.0.0").await;
    let proxy = Proxy::start(&http_config(&[("a", a.addr), ("b", b.addr)], "")).await;
    proxy.wait_health("web", "a", Health::Up).await;
    proxy.wait_health("web", "b", Health::Up).await;

    let world = World {
        proxy: &proxy,
        runs: Cell::new(0),
        mode: Cell::new(None),
        last: RefCell::new(None),
        stats: RefCell::new(Stats::default()),
    };
    let started = std::time::Instant::now();
    let fixed = fixed_cases();
    for case in &fixed {
        if let Err(e) = run_case(&world, case, Mode::BothActive).await {
            panic!("{e}");
        }
    }

    let mut config = Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 200,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    let mut runner = TestRunner::new(config);
    let handle = tokio::runtime::Handle::current();
    // The runner is synchronous: each case leaves the runtime context for a blocking
    // section and drives its requests there (the app keeps running on the workers).
    let result = tokio::task::block_in_place(|| {
        runner.run(&case(), |case| {
            let run = world.runs.get();
            world.runs.set(run + 1);
            let mode = MODES[run / MODE_BLOCK % MODES.len()];
            handle
                .block_on(run_case(&world, &case, mode))
                .map_err(TestCaseError::fail)
        })
    });
    let stats = world.stats.borrow();
    eprintln!(
        "hostile admin inputs: {} cases ({} fixed, the rest generated), {} refused with 4xx ({} with a known answer, {} settles, by status {:?}) in {:.1?}",
        stats.cases,
        fixed.len(),
        stats.refused,
        stats.expected,
        stats.settles,
        stats.by_status,
        started.elapsed(),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(
        PRODUCT_PANICS.load(SeqCst),
        0,
        "the product panicked (see the panic messages above)"
    );
    assert!(
        stats.refused * 2 > stats.cases,
        "most hostile inputs must be refused: {} of {}",
        stats.refused,
        stats.cases
    );
    assert!(stats.cases >= fixed.len() + CASES as usize);
}
