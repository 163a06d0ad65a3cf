//! `handoff demo --cluster`: a local one-member etcd (the `etcd` binary on PATH; Debian's
//! etcd-server package), the two demo backends, and two handoff instances in this process
//! that share their admin state through that etcd, so a newcomer can drain on one and watch
//! the other obey.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::demo::{start_backend, DEMO_CONFIG, INITIAL_VERSION};
use crate::app::{self, App};
use crate::config;
use crate::pool::Health;
use crate::shutdown::Shutdown;

/// How long the local etcd may take to answer its first read.
const ETCD_START: Duration = Duration::from_secs(20);

pub fn demo(listen: &str, admin: &str, threads: Option<usize>) -> anyhow::Result<i32> {
    super::init_logging();
    let etcd_bin = find_etcd()?;
    let listen: SocketAddr = listen.parse().context("--listen must be IP:PORT")?;
    let admin: SocketAddr = admin.parse().context("--admin must be IP:PORT")?;
    let rt = super::runtime(threads).context("starting the runtime")?;
    rt.block_on(async move {
        let mut signals = super::run::Signals::install()?;
        let dir = std::env::temp_dir().join(format!("handoff-demo-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("creating the demo's directory")?;
        let (etcd, endpoint) = start_etcd(&etcd_bin, &dir).await?;
        let a = start_backend("a").await?;
        let b = start_backend("b").await?;
        let exe = std::env::current_exe().context("locating the handoff binary")?;
        let mut apps = Vec::new();
        for i in 0..2u16 {
            let name = format!("lb-{}", i + 1);
            // Port 0 (any free port) stays 0 for both.
            let at = |addr: SocketAddr| match addr.port() {
                0 => addr,
                port => SocketAddr::new(addr.ip(), port.saturating_add(i)),
            };
            let text = DEMO_CONFIG
                .replace("{LISTEN}", &at(listen).to_string())
                .replace("{ADMIN}", &at(admin).to_string())
                .replace("{MAXCONN}", &super::demo::max_connections(2).to_string())
                .replace("{A}", &a.to_string())
                .replace("{B}", &b.to_string())
                .replace("{EXE}", &exe.display().to_string())
                + &format!(
                    "cluster: {{ etcd: [\"{endpoint}\"], prefix: \"/handoff/demo\", instance: \"{name}\", lease_ttl: 5s }}\n"
                );
            let own = dir.join(&name);
            std::fs::create_dir_all(&own)?;
            let path = own.join("handoff.yaml");
            std::fs::write(&path, &text)?;
            let config = config::load(&path).context("the embedded demo config (check --listen and --admin)")?;
            let bound = app::bind(&config)
                .await
                .context("binding the demo's ports (use --listen/--admin to pick others)")?;
            let app = App::start(config, Some(path), bound.listeners, Shutdown::new()).await?;
            let admin_addr = crate::admin::spawn(&app, bound.admin)?;
            app.join_cluster(admin_addr);
            apps.push((name, app, admin_addr));
        }
        for (_, app, _) in &apps {
            for node in &app.snapshot.load().pools[0].nodes {
                node.state
                    .wait_until(Duration::from_secs(10), |s| s.health() == Health::Up)
                    .await;
                // And every instance knows the other sees it up: the pair guard asks both.
                if let Some(cluster) = app.cluster() {
                    cluster
                        .wait_seen_up(&node.key(), apps.len(), Duration::from_secs(10))
                        .await;
                }
            }
        }
        print_help(&apps, &endpoint, etcd.id().unwrap_or(0), a, b).await;
        signals.stopped().await;
        for (_, app, _) in &apps {
            app.leave_cluster().await;
            app.shutdown.run(Duration::from_secs(2)).await;
        }
        drop(etcd);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(0)
    })
}

async fn print_help(
    apps: &[(String, Arc<App>, SocketAddr)],
    etcd: &str,
    etcd_pid: u32,
    a: SocketAddr,
    b: SocketAddr,
) {
    let mut lines = String::new();
    for (name, app, admin) in apps {
        let proxy = app.listener_addrs().await.get("web").copied();
        let proxy = proxy.map_or_else(|| "?".into(), |p| p.to_string());
        lines.push_str(&format!(
            "  {name}: proxy http://{proxy}/   admin http://{admin}/v1/cluster\n"
        ));
    }
    let (one, two) = (apps[0].2, apps[1].2);
    println!(
        r#"
handoff demo --cluster is running: two backends (a = {a}, b = {b}, version {INITIAL_VERSION}),
a local etcd at {etcd} (pid {etcd_pid}), and two handoff instances sharing their admin
state through it:

{lines}
Try, in another terminal:
  cargo run --release -- ctl --admin http://{one} cluster
  cargo run --release -- ctl --admin http://{one} drain web/a
  cargo run --release -- ctl --admin http://{two} status        # lb-2 drained a too
  cargo run --release -- ctl --admin http://{two} rollout start web --version 2.0.0
  cargo run --release -- ctl --admin http://{one} rollout status web-1

Press Ctrl-C to stop (etcd stops with the demo)."#
    );
}

/// `etcd` from PATH, or why the demo cannot run.
fn find_etcd() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("etcd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("demo --cluster needs the etcd server on PATH (Debian: apt-get install etcd-server)")
}

/// A one-member etcd on free loopback ports, killed when the returned child is dropped.
async fn start_etcd(bin: &Path, dir: &Path) -> anyhow::Result<(tokio::process::Child, String)> {
    let ports: Vec<u16> = {
        let held = [
            std::net::TcpListener::bind("127.0.0.1:0")?,
            std::net::TcpListener::bind("127.0.0.1:0")?,
        ];
        held.iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?
    };
    let client = format!("http://127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let child = tokio::process::Command::new(bin)
        .args(["--name", "demo", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("demo={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = tokio::time::Instant::now() + ETCD_START;
    loop {
        let ready = async {
            let mut c = etcd_client::Client::connect([&client], None).await.ok()?;
            c.get("/", None).await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(2), ready)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return Ok((child, client));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the demo's etcd did not answer within {ETCD_START:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
