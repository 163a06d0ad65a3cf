//! `handoff demo`: two in-process backends forming a pair (each answers with its node name
//! and `X-Version: 1.0.0`), and the proxy in front of them with an embedded config.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::app::{self, App};
use crate::config;
use crate::pool::Health;
use crate::shutdown::Shutdown;

/// The demo's config; `{LISTEN}`, `{ADMIN}`, `{MAXCONN}`, `{A}`, `{B}` and `{EXE}` are
/// filled in at start.
/// The rollout hook is this binary's hidden `demo-upgrade` command, which "upgrades" a demo
/// backend by telling it to report the target version, so a rollout runs end to end.
pub(super) const DEMO_CONFIG: &str = r#"
admin:
  listen: "{ADMIN}"
listeners:
  - name: web
    listen: "{LISTEN}"
    protocol: http
    max_connections: {MAXCONN}
    routes:
      - { pool: web }
pools:
  - name: web
    balance: least_conn
    nodes:
      - { name: a, addr: "{A}" }
      - { name: b, addr: "{B}" }
    health:
      interval: 1s
      timeout: 500ms
      healthy_after: 2
      unhealthy_after: 3
      http: { path: "/healthz", expect_status: 200, version_header: "X-Version" }
    warmup: 10s
    drain: { timeout: 30s, close_spread: 1s }
    rollout:
      ready_timeout: 30s
      hook: { exec: ["{EXE}", "demo-upgrade"] }
      analysis: { window: 10s, min_requests: 10, max_error_rate: 0.05, on_failure: rollback }
"#;

pub(super) const INITIAL_VERSION: &str = "1.0.0";

/// Path on a demo backend that sets the version it reports (the demo's "upgrade").
const UPGRADE_PATH: &str = "/_demo/version";

pub fn demo(listen: &str, admin: &str, threads: Option<usize>) -> anyhow::Result<i32> {
    super::init_logging();
    let rt = super::runtime(threads).context("starting the runtime")?;
    rt.block_on(async move {
        let signals = super::run::Signals::install()?;
        let a = start_backend("a").await?;
        let b = start_backend("b").await?;
        let c = start_backend("c").await?;
        let d = start_backend("d").await?;
        let exe =
            std::env::current_exe().context("locating the handoff binary for the demo hook")?;
        // Written to a file of its own, so a new handoff process can take the proxy over
        // (`run -c FILE --upgrade`) while the demo backends stay in this one.
        let dir = std::env::temp_dir().join(format!("handoff-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("creating the demo's directory")?;
        let text = DEMO_CONFIG.replace(
            "      - { pool: web }\n",
            &format!("{}      - {{ pool: web }}\n", super::demo_replace::ROUTE),
        ) + super::demo_replace::POOL;
        let text = text
            .replace("{LISTEN}", listen)
            .replace("{ADMIN}", admin)
            .replace("{MAXCONN}", &max_connections(1).to_string())
            .replace("{A}", &a.to_string())
            .replace("{B}", &b.to_string())
            .replace("{C}", &c.to_string())
            .replace("{D}", &d.to_string())
            .replace("{DIR}", &dir.display().to_string())
            .replace("{EXE}", &exe.display().to_string());
        let path = dir.join("handoff.yaml");
        std::fs::write(&path, &text).context("writing the demo's config")?;
        let config = config::load(&path)
            .context("the embedded demo config (check --listen and --admin)")?;
        let bound = app::bind(&config)
            .await
            .context("binding the demo's ports (use --listen/--admin to pick others)")?;
        super::run::raise_fd_limit(&config);
        let admin_for_handover = (
            config.admin.listen,
            std::os::fd::AsFd::as_fd(&bound.admin).try_clone_to_owned()?,
        );
        let upgrade_socket = config.upgrade.socket.clone();
        let app = App::start(config, Some(path.clone()), bound.listeners, Shutdown::new()).await?;
        let admin_addr =
            crate::admin::spawn(&app, bound.admin).context("starting the admin API")?;
        let handed_over = tokio_util::sync::CancellationToken::new();
        let unix = crate::upgrade::bind(&upgrade_socket).context("the demo's upgrade socket")?;
        tokio::spawn(crate::upgrade::serve(
            std::sync::Arc::clone(&app),
            unix,
            admin_for_handover,
            handed_over.clone(),
        ));
        let proxy = app
            .listener_addrs()
            .await
            .get("web")
            .copied()
            .context("demo listener missing")?;
        for pool in app.snapshot.load().pools.iter() {
            for node in &pool.nodes {
                node.state
                    .wait_until(Duration::from_secs(10), |s| s.health() == Health::Up)
                    .await;
            }
        }
        let ctl_admin = if admin_addr.to_string() == config::defaults::ADMIN_LISTEN {
            String::new()
        } else {
            format!(" --admin http://{admin_addr}")
        };
        println!(
            r#"
handoff demo is running: two backends (a = {a}, b = {b}, version {INITIAL_VERSION})
behind an HTTP proxy. Both nodes are up.

  proxy:  http://{proxy}/
  admin:  http://{admin_addr}/v1/status
  dashboard: http://{admin_addr}/dashboard

Try, in another terminal:
  for i in $(seq 1 10); do curl -s http://{proxy}/; done
  cargo run --release -- ctl{ctl_admin} status
  cargo run --release -- ctl{ctl_admin} watch          # events as they happen (another terminal)
  cargo run --release -- ctl{ctl_admin} drain web/a
  cargo run --release -- ctl{ctl_admin} wait web/a --state drained
  cargo run --release -- ctl{ctl_admin} enable web/a
  cargo run --release -- ctl{ctl_admin} rollout start web --version 2.0.0
  cargo run --release -- ctl{ctl_admin} rollout status web-1
  curl -s http://{admin_addr}/metrics | grep '^handoff_requests_total'
  cargo run --release -- run -c {config} --upgrade

(The rollout's hook "upgrades" each demo backend when it is drained: watch the version
change in `ctl status` while requests keep being answered. The last command starts a new
handoff process that takes the proxy over without refusing a connection; the backends
stay here.)

A bad version: 2.0.0-bad passes its health checks but answers 500 to every third request.
Keep traffic going in one terminal (it stops after a minute and counts the answers):
  for i in $(seq 1 600); do curl -s -o /dev/null -w '%{{http_code}}\n' http://{proxy}/; sleep 0.1; done | sort | uniq -c
and in another start a rollout to it; handoff judges the upgraded node on that traffic
while it warms, drains it and rolls it back to the version it had (the sibling is never
touched):
  cargo run --release -- ctl{ctl_admin} rollout start web --version 2.0.0-bad
  cargo run --release -- ctl{ctl_admin} rollout status ID    # the id it printed, e.g. web-2
  curl -s http://{admin_addr}/v1/pools/web/nodes/a | grep -o '"traffic":{{[^}}]*}}'

A replace rollout: pool api (c = {c}, d = {d}; requests under /api) upgrades by starting
each new version as a new process on a new port beside the old node, admitting it, and only
then draining and removing the old one: the pool never has fewer than two nodes.
  for i in $(seq 1 300); do curl -s http://{proxy}/api/; sleep 0.1; done | sort | uniq -c
  cargo run --release -- ctl{ctl_admin} rollout start api --version 2.0.0
  cargo run --release -- ctl{ctl_admin} status

Press Ctrl-C to stop."#,
            config = path.display()
        );
        let mut signals = signals;
        let code = super::run::serve_until_signal(app, &mut signals, handed_over.clone(), None).await?;
        if handed_over.is_cancelled() {
            println!("A new handoff process took the proxy over. The demo backends keep running here: press Ctrl-C to stop them.");
            signals.stopped().await;
        }
        super::demo_replace::stop_all(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(code)
    })
}

/// The demo's `max_connections` per listener for `instances` instances in this process:
/// the default, or less where the machine's open-file limit could not hold twice that (so
/// the demo starts without a warning on a stock machine).
pub(super) fn max_connections(instances: u64) -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    let default = config::defaults::MAX_CONNECTIONS as u64;
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return default;
    };
    // Two descriptors a connection (client and backend), and room for the rest.
    (hard.saturating_sub(1024) / (2 * instances.max(1))).clamp(64, default)
}

/// Starts one demo backend on an ephemeral loopback port.
pub(super) async fn start_backend(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a demo backend")?;
    serve_backend(listener, name, INITIAL_VERSION)
}

/// `handoff demo-backend`: one demo backend in a process of its own (the compose demo's
/// backend containers), until SIGTERM or SIGINT.
pub fn backend(listen: &str, name: String, version: String) -> anyhow::Result<i32> {
    super::init_logging();
    let rt = super::runtime(Some(1)).context("starting the runtime")?;
    rt.block_on(async move {
        let mut signals = super::run::Signals::install()?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        // One backend per process: its name lives as long as the process.
        let name: &'static str = Box::leak(name.into_boxed_str());
        let addr = serve_backend(listener, name, &version)?;
        println!("demo backend {name} (version {version}) listening on {addr}");
        signals.stopped().await;
        Ok(0)
    })
}

fn serve_backend(
    listener: TcpListener,
    name: &'static str,
    version: &str,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let version = Arc::new(ArcSwap::from_pointee(version.to_string()));
    let served = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let version = Arc::clone(&version);
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    answer(name, Arc::clone(&version), Arc::clone(&served), req)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A demo version ending in `-bad` passes its health checks and reports its version, but
/// answers 500 to every third request: the case rollout analysis catches.
fn broken(version: &str, served: &AtomicU64) -> bool {
    version.ends_with("-bad") && served.fetch_add(1, Relaxed) % 3 == 2
}

async fn answer(
    name: &'static str,
    version: Arc<ArcSwap<String>>,
    served: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.uri().path() {
        "/healthz" => "ok\n".to_string(),
        UPGRADE_PATH if req.method() == http::Method::POST => {
            let new = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let new = String::from_utf8_lossy(&new).trim().to_string();
            if !new.is_empty() {
                version.store(Arc::new(new));
            }
            format!("node {name} now reports version {}\n", version.load())
        }
        _ if broken(&version.load(), &served) => {
            let mut resp = Response::new(Full::new(Bytes::from(format!(
                "node {name} (version {}) failed this request\n",
                version.load()
            ))));
            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            return Ok(resp);
        }
        _ => format!("Hello from node {name} (version {})\n", version.load()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    let headers = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&version.load()) {
        headers.insert("x-version", v);
    }
    headers.insert("x-node", http::HeaderValue::from_static(name));
    Ok(resp)
}

/// `handoff demo-upgrade` (hidden): the demo's rollout hook. Tells the demo backend at
/// `HANDOFF_NODE_ADDR` to report `HANDOFF_TARGET_VERSION`.
pub fn upgrade_hook() -> anyhow::Result<i32> {
    let addr = std::env::var("HANDOFF_NODE_ADDR").context("HANDOFF_NODE_ADDR is not set")?;
    let version =
        std::env::var("HANDOFF_TARGET_VERSION").context("HANDOFF_TARGET_VERSION is not set")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::post(UPGRADE_PATH)
            .header(http::header::HOST, addr.as_str())
            .body(Full::new(Bytes::from(version.clone())))?;
        let status = sender.send_request(req).await?.status();
        anyhow::ensure!(status.is_success(), "the demo backend answered {status}");
        println!("demo backend {addr} upgraded to {version}");
        Ok(0)
    })
}
