//! `handoff demo`: two in-process backends forming a pair (each answers with its node name
//! and `X-Version: 1.0.0`), and the proxy in front of them with an embedded config.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::app::{self, App};
use crate::config;
use crate::pool::Health;
use crate::shutdown::Shutdown;

/// The demo's config; `{LISTEN}`, `{ADMIN}`, `{A}` and `{B}` are filled in at start.
const DEMO_CONFIG: &str = r#"
admin:
  listen: "{ADMIN}"
listeners:
  - name: web
    listen: "{LISTEN}"
    protocol: http
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
"#;

const DEMO_VERSION: &str = "1.0.0";

pub fn demo(listen: &str, admin: &str, threads: Option<usize>) -> anyhow::Result<i32> {
    super::init_logging();
    let rt = super::runtime(threads).context("starting the runtime")?;
    rt.block_on(async move {
        let a = start_backend("a").await?;
        let b = start_backend("b").await?;
        let text = DEMO_CONFIG
            .replace("{LISTEN}", listen)
            .replace("{ADMIN}", admin)
            .replace("{A}", &a.to_string())
            .replace("{B}", &b.to_string());
        let config = config::parse(&text)
            .context("the embedded demo config (check --listen and --admin)")?;
        let bound = app::bind(&config)
            .await
            .context("binding the demo's ports (use --listen/--admin to pick others)")?;
        let app = App::start(config, None, bound, Shutdown::new()).await?;
        let proxy = app
            .listener_addrs()
            .await
            .get("web")
            .copied()
            .context("demo listener missing")?;
        let admin_addr = app.admin_addr();
        let pool = app.snapshot.load().pools[0].clone();
        for node in &pool.nodes {
            node.state
                .wait_until(Duration::from_secs(10), |s| s.health() == Health::Up)
                .await;
        }
        let ctl_admin = if admin_addr.to_string() == config::defaults::ADMIN_LISTEN {
            String::new()
        } else {
            format!(" --admin http://{admin_addr}")
        };
        println!(
            r#"
handoff demo is running: two backends (a = {a}, b = {b}, version {DEMO_VERSION})
behind an HTTP proxy. Both nodes are up.

  proxy:  http://{proxy}/
  admin:  http://{admin_addr}/v1/status

Try, in another terminal:
  for i in $(seq 1 10); do curl -s http://{proxy}/; done
  cargo run --release -- ctl{ctl_admin} status
  curl -s http://{admin_addr}/v1/pools/web/nodes/a
  curl -s http://{admin_addr}/metrics | grep '^handoff_requests_total'

Press Ctrl-C to stop."#
        );
        super::run::serve_until_signal(app).await
    })
}

/// Starts one demo backend on an ephemeral loopback port.
async fn start_backend(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a demo backend")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(name, req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.uri().path() == "/healthz" {
        "ok\n".to_string()
    } else {
        format!("Hello from node {name} (version {DEMO_VERSION})\n")
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    let headers = resp.headers_mut();
    headers.insert("x-version", http::HeaderValue::from_static(DEMO_VERSION));
    headers.insert("x-node", http::HeaderValue::from_static(name));
    Ok(resp)
}
